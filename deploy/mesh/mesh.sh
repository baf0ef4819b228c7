#!/usr/bin/env bash
# The mesh playground behind `make mesh`: pods as network namespaces on one machine,
# each with its octopus sidecar, the capture rules `octopus init` writes, and mTLS
# between the sidecars. Traffic is real and captured: unmodified clients (curl, a
# Python socket) run as an ordinary user in the frontend pod and never name octopus.
#
#   node                      bridge br0 (a namespace of its own: the host's network
#                             is never touched)
#   frontend     NET.2        clients ──capture──> octopus (outbound): route
#                             `payments` splits 90/10 over payments-v1 / payments-v2,
#                             tcp_route `ledger` takes port 5432; mTLS on the way out
#   payments-v1  NET.3        octopus (inbound :15006, strict mTLS) ──> HTTP app :8080
#   payments-v2  NET.4        octopus (inbound :15006, strict mTLS) ──> HTTP app :8080
#   ledger       NET.5        octopus (inbound :15006, strict mTLS) ──> banner app :5432
#
# Usage: mesh.sh up | status | try | canary N | down
#
# Environment:
#   OCTOPUS      the octopus binary (default: target/release/octopus of this repository)
#   MESH_DIR     state: certificates, configs, logs, pids (default /tmp/octopus-mesh)
#   MESH_PREFIX  prefix of the namespace names (default omesh-)
#   MESH_NET     the first three octets of the pods' /24 (default 10.201.0)
#   PYTHON       the interpreter of the apps and clients (default /usr/bin/python3: the
#                client runs as uid 65534, which cannot reach a per-user Python)
#
# Needs root (namespaces, veths, iptables), iproute2, iptables, openssl, curl, setpriv
# and python3. Everything it creates is removed by `mesh.sh down`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MESH_DIR=${MESH_DIR:-/tmp/octopus-mesh}
PREFIX=${MESH_PREFIX:-omesh-}
NET=${MESH_NET:-10.201.0}
OCTOPUS=${OCTOPUS:-$ROOT/target/release/octopus}
PYTHON=${PYTHON:-/usr/bin/python3}
# This script as the messages name it: relative to the working directory when inside it.
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
case $SELF in "$PWD"/*) SELF=${SELF#"$PWD"/} ;; esac

PODS=(frontend payments-v1 payments-v2 ledger)
SPIFFE=spiffe://cluster.local/ns/shop/sa
CLIENT_UID=65534
PAYMENTS_HOST=payments.shop.svc.cluster.local
# Exit code of a missing prerequisite (not root, a tool, namespaces refused).
EXIT_PREREQ=3

say() { printf '%s\n' "$*"; }
die() {
    printf 'mesh.sh: %s\n' "$*" >&2
    exit 1
}
die_prereq() {
    printf 'mesh.sh: %s\n' "$*" >&2
    exit "$EXIT_PREREQ"
}

usage() {
    cat <<EOF
usage: $SELF up | status | try | canary N | down

  up        create the pods (network namespaces), certificates, configs, apps and
            sidecars; replaces a mesh left over by an earlier run
  status    which namespaces and processes are up, and the frontend's split
  try       20 captured HTTP requests frontend -> payments (v1 vs v2 counted), one TCP
            exchange with the ledger, and the frontend's route metrics
  canary N  send N% of payments traffic to payments-v2 (hot reload, no restart)
  down      stop what up started and delete its namespaces and state dir

environment: OCTOPUS, MESH_DIR ($MESH_DIR), MESH_PREFIX ($PREFIX), MESH_NET ($NET)
EOF
}

ns() { printf '%s%s' "$PREFIX" "$1"; }

ip_of() {
    case $1 in
    frontend) say "$NET.2" ;;
    payments-v1) say "$NET.3" ;;
    payments-v2) say "$NET.4" ;;
    ledger) say "$NET.5" ;;
    *) die "unknown pod $1" ;;
    esac
}

check_settings() {
    [[ $NET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] ||
        die "MESH_NET=$NET: expected the first three octets of a /24, e.g. 10.201.0"
    [[ $PREFIX =~ ^[A-Za-z0-9_.-]{1,20}$ ]] ||
        die "MESH_PREFIX=$PREFIX: expected 1-20 characters of [A-Za-z0-9_.-]"
    case $MESH_DIR in
    /*) ;;
    *) MESH_DIR=$PWD/$MESH_DIR ;;
    esac
    [ "$MESH_DIR" != / ] || die "MESH_DIR=/ is not a state dir"
}

need_root() {
    [ "$(id -u)" -eq 0 ] && return
    die_prereq "run me as root: the playground creates network namespaces, veths and iptables rules.
  sudo $SELF ${1:-up}      (make mesh calls sudo for you when it is installed)"
}

need_tools() {
    local missing=() t
    command -v ip >/dev/null 2>&1 || missing+=("ip (iproute2)")
    command -v iptables >/dev/null 2>&1 || missing+=("iptables")
    command -v openssl >/dev/null 2>&1 || missing+=("openssl")
    command -v curl >/dev/null 2>&1 || missing+=("curl")
    command -v setpriv >/dev/null 2>&1 || missing+=("setpriv (util-linux)")
    [ -x "$PYTHON" ] || missing+=("$PYTHON (python3)")
    [ ${#missing[@]} -eq 0 ] && return
    local list=""
    for t in "${missing[@]}"; do list+="  - $t"$'\n'; done
    die_prereq "missing tools:
${list}install them with:
  apt-get install iproute2 iptables openssl python3 curl util-linux"
}

resolve_octopus() {
    case $OCTOPUS in
    /*) ;;
    *) OCTOPUS=$PWD/$OCTOPUS ;;
    esac
    [ -x "$OCTOPUS" ] || die "no octopus binary at $OCTOPUS
  build it first: cargo build --release -p octopus --bin octopus  (make mesh does), or set OCTOPUS=/path/to/octopus"
}

# The state dir's record of a running mesh (key=value lines; read, never sourced).
state_get() {
    local key=$1 file=$MESH_DIR/mesh.env
    [ -f "$file" ] || return 0
    sed -n "s/^$key=//p" "$file" | head -n 1
}

# Later subcommands use what `up` used, whatever their own environment says.
load_state() {
    [ -f "$MESH_DIR/mesh.env" ] ||
        die "no mesh is up in $MESH_DIR (start one with: $SELF up)"
    PREFIX=$(state_get prefix)
    NET=$(state_get net)
    OCTOPUS=$(state_get octopus)
    PYTHON=$(state_get python)
}

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF -- "$1"; }

# In the pod, as root (not captured: root is the proxy UID the rules exempt).
in_pod() {
    local pod=$1
    shift
    ip netns exec "$(ns "$pod")" "$@"
}

# In the pod, as uid 65534: the connection is captured by the sidecar.
as_client() {
    local pod=$1
    shift
    ip netns exec "$(ns "$pod")" setpriv --reuid "$CLIENT_UID" --regid "$CLIENT_UID" --clear-groups "$@"
}

metrics() { in_pod "$1" curl -sf --max-time 5 http://127.0.0.1:9901/metrics; }

# `metric TEXT SERIES`: the value of one series, 0 when absent.
metric() {
    awk -v s="$2" '$1 == s { v = $2 } END { print (v == "" ? 0 : v) }' <<<"$1"
}

# `wait_for WHAT SECONDS CMD...`: polls CMD every 0.1 s.
wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for ((i = 0; i < secs * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "$what did not come up within ${secs}s; logs in $MESH_DIR"
}

# `spawn POD NAME CMD...`: runs CMD in the pod's namespace, detached from this shell's
# session (a Ctrl-C in the terminal does not reach it), logs to NAME.log, pid recorded.
spawn() {
    local pod=$1 name=$2 pid
    shift 2
    setsid ip netns exec "$(ns "$pod")" "$@" </dev/null >>"$MESH_DIR/$name.log" 2>&1 &
    pid=$!
    say "$pid $name" >>"$MESH_DIR/pids"
}

# Whether PID is a process this playground started: alive, and its command line names
# the state dir (every app and sidecar is given a file in it).
ours() {
    local pid=$1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$MESH_DIR/"
}

# ---------------------------------------------------------------------------- pki

pki() {
    local d=$MESH_DIR/pki pod log=$MESH_DIR/openssl.log
    mkdir -p "$d"
    chmod 700 "$d"
    (
        cd "$d"
        printf '%s\n' 'basicConstraints = critical, CA:TRUE' \
            'keyUsage = critical, keyCertSign, cRLSign' >ca.ext
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
        openssl req -new -key ca.key -subj "/CN=octopus mesh playground ca" -out ca.csr
        openssl x509 -req -in ca.csr -signkey ca.key -sha256 -days 30 -extfile ca.ext -out ca.crt
        for pod in "${PODS[@]}"; do
            printf '%s\n' 'basicConstraints = critical, CA:FALSE' \
                'keyUsage = critical, digitalSignature' \
                'extendedKeyUsage = serverAuth, clientAuth' \
                "subjectAltName = URI:$SPIFFE/$pod, DNS:$pod.shop.svc.cluster.local" >"$pod.ext"
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pod.key"
            openssl req -new -key "$pod.key" -subj "/CN=$pod" -out "$pod.csr"
            openssl x509 -req -in "$pod.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
                -sha256 -days 30 -extfile "$pod.ext" -out "$pod.crt"
            openssl verify -CAfile ca.crt "$pod.crt"
        done
        rm -f ./*.csr ./*.ext ca.srl
    ) >"$log" 2>&1 || die "openssl failed making the certificates; see $log"
}

# ------------------------------------------------------------------------- configs

frontend_config() {
    local v1=$1 v2=$2 d=$MESH_DIR/pki
    local tls="cert: $d/frontend.crt, key: $d/frontend.key, ca: $d/ca.crt"
    cat <<EOF
# The frontend's sidecar (octopus-mesh playground). Octopus watches this file: save
# an edit and it is applied without a restart (mesh.sh canary N edits the weights).
namespace: shop
outbound:
  listen: 127.0.0.1:15001
  routes:
    - name: payments
      match: { host: payments }   # also payments.shop, payments.shop.svc.cluster.local
      split:
        - { cluster: payments-v1, weight: $v1 }
        - { cluster: payments-v2, weight: $v2 }
  tcp_routes:
    - name: ledger
      match: { port: 5432 }
      cluster: ledger
clusters:
  payments-v1:
    endpoints: [$(ip_of payments-v1):8080]
    tls: { $tls, server_identity: "$SPIFFE/payments-v1" }
  payments-v2:
    endpoints: [$(ip_of payments-v2):8080]
    tls: { $tls, server_identity: "$SPIFFE/payments-v2" }
  ledger:
    protocol: tcp
    endpoints: [$(ip_of ledger):5432]
    tls: { $tls, server_identity: "$SPIFFE/ledger" }
EOF
}

# Strict mTLS: only the frontend's identity gets in. A third argument declares the
# app's port opaque (raw TCP, not HTTP): only such ports take opaque connections.
inbound_config() {
    local pod=$1 app_port=$2 opaque=${3:-} d=$MESH_DIR/pki
    cat <<EOF
# The $pod sidecar (octopus-mesh playground).
namespace: shop
inbound:
  listen: 0.0.0.0:15006
  forward_to: 127.0.0.1:$app_port
  opaque_ports: [${opaque}]
  tls:
    cert: $d/$pod.crt
    key: $d/$pod.key
    client_ca: $d/ca.crt
    allowed_identities: ["$SPIFFE/frontend"]
EOF
}

# ---------------------------------------------------------------------------- up

on_up_exit() {
    local rc=$?
    [ "$rc" -eq 0 ] && return
    [ "$rc" -eq "$EXIT_PREREQ" ] && [ ! -f "$MESH_DIR/mesh.env" ] && return
    printf 'mesh.sh: up failed; logs in %s. "%s down" removes what was created.\n' \
        "$MESH_DIR" "$SELF" >&2
}

cmd_up() {
    need_root up
    need_tools
    resolve_octopus
    if [ -f "$MESH_DIR/mesh.env" ] || ns_exists "$(ns node)"; then
        say "removing the previous mesh first"
        cmd_down >/dev/null
    fi
    if [ -e "$MESH_DIR" ]; then
        if [ ! -d "$MESH_DIR" ] || [ ! -O "$MESH_DIR" ] || [ -L "$MESH_DIR" ]; then
            die "$MESH_DIR exists and is not a directory of mine; remove it or set MESH_DIR"
        fi
        [ -z "$(ls -A "$MESH_DIR")" ] ||
            die "$MESH_DIR is not empty and holds no mesh; remove it or set MESH_DIR"
    fi
    mkdir -p "$MESH_DIR"
    # The client runs as uid 65534: it must reach apps.py (keys stay in pki/, 0700).
    chmod 755 "$MESH_DIR"
    trap on_up_exit EXIT
    {
        say "prefix=$PREFIX"
        say "net=$NET"
        say "octopus=$OCTOPUS"
        say "python=$PYTHON"
    } >"$MESH_DIR/mesh.env"
    : >"$MESH_DIR/pids"
    : >"$MESH_DIR/namespaces"

    say "namespaces: $(ns node) (bridge br0), $(for p in "${PODS[@]}"; do printf '%s %s  ' "$(ns "$p")" "$(ip_of "$p")"; done)"
    local err
    if ! err=$(ip netns add "$(ns node)" 2>&1); then
        rm -rf "$MESH_DIR"
        die_prereq "the kernel refused to create a network namespace: $err
  (in a container, run it privileged: it needs CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    fi
    say "$(ns node)" >>"$MESH_DIR/namespaces"
    in_pod node ip link set lo up
    in_pod node ip link add br0 type bridge
    in_pod node ip link set br0 up
    local pod
    for pod in "${PODS[@]}"; do
        ip netns add "$(ns "$pod")"
        say "$(ns "$pod")" >>"$MESH_DIR/namespaces"
        in_pod node ip link add "v$pod" type veth peer name eth0 netns "$(ns "$pod")"
        in_pod node ip link set "v$pod" master br0 up
        in_pod "$pod" ip addr add "$(ip_of "$pod")/24" dev eth0
        in_pod "$pod" ip link set eth0 up
        in_pod "$pod" ip link set lo up
    done

    say "certificates: a CA and one per pod (SPIFFE IDs $SPIFFE/<pod>) in $MESH_DIR/pki"
    pki
    cp "$HERE/apps.py" "$MESH_DIR/apps.py"
    chmod 644 "$MESH_DIR/apps.py"

    frontend_config 90 10 >"$MESH_DIR/frontend.yaml"
    inbound_config payments-v1 8080 >"$MESH_DIR/payments-v1.yaml"
    inbound_config payments-v2 8080 >"$MESH_DIR/payments-v2.yaml"
    inbound_config ledger 5432 5432 >"$MESH_DIR/ledger.yaml"
    for pod in "${PODS[@]}"; do
        "$OCTOPUS" validate --config "$MESH_DIR/$pod.yaml" >"$MESH_DIR/validate.log" 2>&1 ||
            die "$MESH_DIR/$pod.yaml is invalid: $(cat "$MESH_DIR/validate.log")"
    done
    rm -f "$MESH_DIR/validate.log"

    say "apps: payments-v1 and payments-v2 (HTTP, 127.0.0.1:8080), ledger (banner/echo, 127.0.0.1:5432)"
    spawn payments-v1 payments-v1-app "$PYTHON" "$MESH_DIR/apps.py" http payments-v1 127.0.0.1 8080
    spawn payments-v2 payments-v2-app "$PYTHON" "$MESH_DIR/apps.py" http payments-v2 127.0.0.1 8080
    spawn ledger ledger-app "$PYTHON" "$MESH_DIR/apps.py" banner ledger 127.0.0.1 5432

    say "sidecars: octopus in every pod, and its capture rules (octopus init --proxy-uid 0)"
    for pod in "${PODS[@]}"; do
        spawn "$pod" "$pod-octopus" "$OCTOPUS" run --config "$MESH_DIR/$pod.yaml"
        in_pod "$pod" "$OCTOPUS" init --proxy-uid 0 --skip-inbound-ports 9901 \
            >"$MESH_DIR/$pod-init.log" 2>&1 ||
            die "octopus init in $(ns "$pod") failed: $(cat "$MESH_DIR/$pod-init.log")"
    done

    for pod in "${PODS[@]}"; do
        wait_for "octopus in $(ns "$pod") (see $MESH_DIR/$pod-octopus.log)" 15 \
            in_pod "$pod" curl -sf --max-time 1 http://127.0.0.1:9901/ready
    done
    wait_for "the payments-v1 app" 15 in_pod payments-v1 curl -sf --max-time 1 http://127.0.0.1:8080/
    wait_for "the payments-v2 app" 15 in_pod payments-v2 curl -sf --max-time 1 http://127.0.0.1:8080/
    wait_for "the ledger app" 15 in_pod ledger "$PYTHON" "$MESH_DIR/apps.py" client 127.0.0.1 5432 warm-up
    trap - EXIT

    local s=""
    [ -n "${SUDO_USER:-}" ] && s="sudo "
    cat <<EOF

The mesh is up. State, configs and logs: $MESH_DIR

Call payments from the frontend pod as an ordinary app would (uid $CLIENT_UID, so the
connection is captured; it is routed on the name, split 90/10 and crosses to the
chosen pod over mTLS):

  ${s}ip netns exec $(ns frontend) setpriv --reuid $CLIENT_UID --regid $CLIENT_UID --clear-groups \\
    curl -s --resolve $PAYMENTS_HOST:8080:$(ip_of payments-v1) http://$PAYMENTS_HOST:8080/

The ledger (a server-speaks-first TCP app on 5432, through tcp_route ledger):

  ${s}ip netns exec $(ns frontend) setpriv --reuid $CLIENT_UID --regid $CLIENT_UID --clear-groups \\
    $PYTHON $MESH_DIR/apps.py client $(ip_of ledger) 5432 hello

Move the canary (payments-v2's share, in percent; a hot reload, no restart):

  ${s}$SELF canary 50

or edit the weights in $MESH_DIR/frontend.yaml and save it: octopus watches the file.

  ${s}$SELF try       20 requests (v1 vs v2 counted), a ledger exchange, the metrics
  ${s}$SELF status    what is up
  ${s}$SELF down      remove it all

Metrics: ${s}ip netns exec $(ns frontend) curl -s 127.0.0.1:9901/metrics
(likewise /config, /clusters; in the other pods too)
EOF
}

# -------------------------------------------------------------------------- down

cmd_down() {
    need_root down
    check_settings
    local prefix=$PREFIX
    if [ -f "$MESH_DIR/mesh.env" ]; then
        prefix=$(state_get prefix)
    fi
    # 1. The processes up started (recorded by pid, checked before each kill).
    local pids=() pid name
    if [ -f "$MESH_DIR/pids" ]; then
        while read -r pid name; do
            [[ $pid =~ ^[0-9]+$ ]] || continue
            if ours "$pid"; then pids+=("$pid"); fi
        done <"$MESH_DIR/pids"
    fi
    if [ ${#pids[@]} -gt 0 ]; then
        say "stopping ${#pids[@]} processes: ${pids[*]}"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        local i left
        for ((i = 0; i < 50; i++)); do
            left=()
            for pid in "${pids[@]}"; do
                if ours "$pid" && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
                    left+=("$pid")
                fi
            done
            [ ${#left[@]} -eq 0 ] && break
            sleep 0.1
        done
        if [ ${#left[@]} -gt 0 ]; then
            kill -KILL "${left[@]}" 2>/dev/null || true
        fi
    fi
    # 2. Its namespaces (deleting one removes its veths and iptables rules).
    local all=() n
    if [ -f "$MESH_DIR/namespaces" ]; then
        while read -r n; do [ -n "$n" ] && all+=("$n"); done <"$MESH_DIR/namespaces"
    fi
    all+=("${prefix}node")
    for n in "${PODS[@]}"; do all+=("$prefix$n"); done
    local seen=" "
    for n in "${all[@]}"; do
        case $seen in *" $n "*) continue ;; esac
        seen+="$n "
        ns_exists "$n" || continue
        # Anything of ours still inside (a client `try` left behind).
        for pid in $(ip netns pids "$n" 2>/dev/null); do
            if ours "$pid"; then
                kill -KILL "$pid" 2>/dev/null || true
            else
                say "note: pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-60)) still runs in $n; not mine, left alone" >&2
            fi
        done
        ip netns delete "$n"
        say "deleted namespace $n"
    done
    # 3. The state dir, when it is one up made.
    if [ -f "$MESH_DIR/mesh.env" ]; then
        rm -rf "$MESH_DIR"
        say "removed $MESH_DIR"
    elif [ -e "$MESH_DIR" ]; then
        say "left $MESH_DIR alone: it holds no mesh state (no mesh.env)" >&2
    fi
}

# ------------------------------------------------------------------------ status

cmd_status() {
    need_root status
    check_settings
    load_state
    local bad=0 pod pid name state where
    say "mesh in $MESH_DIR (namespaces $PREFIX*, pods on $NET.0/24)"
    say "namespaces:"
    for pod in node "${PODS[@]}"; do
        if ns_exists "$(ns "$pod")"; then
            state=up
        else
            state=MISSING
            bad=1
        fi
        if [ "$pod" = node ]; then where=bridge; else where=$(ip_of "$pod"); fi
        printf '  %-24s %-16s %s\n' "$(ns "$pod")" "$where" "$state"
    done
    say "processes:"
    while read -r pid name; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        if ours "$pid" && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
            state="running"
        else
            state="NOT RUNNING (see $MESH_DIR/$name.log)"
            bad=1
        fi
        printf '  %-20s pid %-8s %s\n' "$name" "$pid" "$state"
    done <"$MESH_DIR/pids"
    say "sidecars:"
    for pod in "${PODS[@]}"; do
        if in_pod "$pod" curl -sf --max-time 2 http://127.0.0.1:9901/ready >/dev/null 2>&1; then
            state=ready
        else
            state="NOT READY"
            bad=1
        fi
        printf '  %-20s %s\n' "$pod" "$state"
    done
    say "frontend split: $(split_of "$MESH_DIR/frontend.yaml")"
    return "$bad"
}

# "payments-v1 90%, payments-v2 10%" from the config's split lines.
split_of() {
    sed -n 's/.*{ *cluster: *\(payments-v[12]\), *weight: *\([0-9]*\) *}.*/\1 \2/p' "$1" |
        awk '{ w[NR] = $2; n[NR] = $1; t += $2 }
             END { for (i = 1; i <= NR; i++) printf "%s%s %s%%", (i > 1 ? ", " : ""), n[i], (t ? int(w[i] * 100 / t + 0.5) : 0); print "" }'
}

# --------------------------------------------------------------------------- try

cmd_try() {
    need_root try
    check_settings
    load_state
    local n=20 i body app v1=0 v2=0 failed=0 first_failure="" peer=""
    say "HTTP: $n captured requests from $(ns frontend) (uid $CLIENT_UID) to http://$PAYMENTS_HOST:8080/"
    say "  (split in frontend.yaml: $(split_of "$MESH_DIR/frontend.yaml"))"
    for ((i = 1; i <= n; i++)); do
        body=$(as_client frontend curl -s --max-time 10 \
            --resolve "$PAYMENTS_HOST:8080:$(ip_of payments-v1)" \
            "http://$PAYMENTS_HOST:8080/try/$i" 2>&1) || true
        app=$(sed -n 's/^{"app": "\([^"]*\)".*/\1/p' <<<"$body")
        case $app in
        payments-v1) v1=$((v1 + 1)) ;;
        payments-v2) v2=$((v2 + 1)) ;;
        *)
            failed=$((failed + 1))
            [ -n "$first_failure" ] || first_failure=$body
            ;;
        esac
        if [ -z "$peer" ] && [ -n "$app" ]; then
            peer=$(sed -n 's/.*"x-octopus-peer-identity": "\([^"]*\)".*/\1/p' <<<"$body")
        fi
    done
    say "  payments-v1: $v1"
    say "  payments-v2: $v2"
    if [ "$failed" -gt 0 ]; then
        say "  failed: $failed (first: ${first_failure:-no answer})"
    fi
    [ -z "$peer" ] || say "  the apps saw the caller's verified identity: $peer"

    local line="hello-ledger" out greeting reply
    say "TCP: $(ns frontend) (uid $CLIENT_UID) to $(ip_of ledger):5432, the ledger (server speaks first)"
    out=$(as_client frontend "$PYTHON" "$MESH_DIR/apps.py" client "$(ip_of ledger)" 5432 "$line" 2>&1) || true
    greeting=$("$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])["greeting"].strip())' "$out" 2>/dev/null) || greeting=""
    reply=$("$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])["reply"].strip())' "$out" 2>/dev/null) || reply=""
    if [ -n "$greeting" ]; then
        say "  greeting: $greeting"
        say "  sent:     $line"
        say "  echo:     $reply"
    else
        say "  failed: ${out:-no answer}"
        failed=$((failed + 1))
    fi

    say "frontend metrics (route and tcp series; all of them: ip netns exec $(ns frontend) curl -s 127.0.0.1:9901/metrics):"
    metrics frontend | grep -E '^octopus_(requests_total|tcp_connections_total|tcp_bytes_total)\{' |
        grep -E 'route="(payments|ledger)"' | grep -vE ' 0$' | sed 's/^/  /' || true
    [ "$failed" -eq 0 ]
}

# ------------------------------------------------------------------------ canary

cmd_canary() {
    need_root canary
    check_settings
    local pct=${1:-}
    if [[ ! $pct =~ ^[0-9]{1,3}$ ]] || ((10#$pct > 100)); then
        die "canary N: N is payments-v2's share in percent, 0-100 (got '${pct}')"
    fi
    pct=$((10#$pct))
    load_state
    local cfg=$MESH_DIR/frontend.yaml tmp=$MESH_DIR/.frontend.yaml.tmp
    local v1=$((100 - pct)) v2=$pct
    sed -E "s/(\{ *cluster: *payments-v1, *weight: *)[0-9]+/\1$v1/; s/(\{ *cluster: *payments-v2, *weight: *)[0-9]+/\1$v2/" \
        "$cfg" >"$tmp"
    if ! grep -qE "cluster: *payments-v1, *weight: *$v1 *\}" "$tmp" ||
        ! grep -qE "cluster: *payments-v2, *weight: *$v2 *\}" "$tmp"; then
        rm -f "$tmp"
        die "could not find the split lines '- { cluster: payments-vN, weight: W }' in $cfg; edit it by hand"
    fi
    if cmp -s "$tmp" "$cfg"; then
        rm -f "$tmp"
        say "canary: already payments-v1 $v1% / payments-v2 $v2%"
        return
    fi
    local err
    if ! err=$("$OCTOPUS" validate --config "$tmp" 2>&1); then
        rm -f "$tmp"
        die "the new config is invalid, left unchanged: $err"
    fi
    local text before after failures_before
    if ! text=$(metrics frontend); then
        rm -f "$tmp"
        die "the frontend's octopus does not answer on 127.0.0.1:9901 (is the mesh up? $SELF status)"
    fi
    before=$(metric "$text" 'octopus_config_reloads_total{result="success"}')
    failures_before=$(metric "$text" 'octopus_config_reloads_total{result="failure"}')
    chmod 644 "$tmp"
    mv -f "$tmp" "$cfg" # atomic: octopus reads either the old file or the new one
    local i pid
    for ((i = 1; i <= 100; i++)); do
        text=$(metrics frontend || true)
        after=$(metric "$text" 'octopus_config_reloads_total{result="success"}')
        if [ "$after" != "$before" ]; then
            say "canary: payments-v1 $v1% / payments-v2 $v2% (reloaded: octopus_config_reloads_total{result=\"success\"} $before -> $after)"
            return
        fi
        if [ "$(metric "$text" 'octopus_config_reloads_total{result="failure"}')" != "$failures_before" ]; then
            die "octopus refused the new config; see $MESH_DIR/frontend-octopus.log"
        fi
        # The file watcher normally answers within 50-250 ms; if it missed the change,
        # SIGHUP makes octopus re-read the file.
        if [ "$i" -eq 50 ] && pid=$(awk '$2 == "frontend-octopus" { print $1 }' "$MESH_DIR/pids") &&
            [ -n "$pid" ] && ours "$pid"; then
            say "no reload after 5 s: sending SIGHUP to the frontend's octopus (pid $pid)"
            kill -HUP "$pid"
        fi
        sleep 0.1
    done
    die "the frontend's octopus did not reload within 10 s; see $MESH_DIR/frontend-octopus.log"
}

main() {
    local cmd=${1:-}
    [ $# -gt 0 ] && shift
    case $cmd in
    up)
        check_settings
        cmd_up
        ;;
    down) cmd_down ;;
    status) cmd_status ;;
    try) cmd_try ;;
    canary) cmd_canary "$@" ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
