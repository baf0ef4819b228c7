#!/usr/bin/env python3
"""Side-by-side proxy benchmark: the upstream directly, octopus, nginx, HAProxy and, when it
has been built, a minimal pingora proxy (bench/peers/pingora; skipped otherwise), same upstream,
same pinning (servers on core 0, load generator on core 1), scenarios interleaved
A B C D A B C D ... so machine drift hits all alike.

Writes benchmarks.md and benchmarks.png into $BENCH_OUT (default docs/). Run with
`make bench`. Only 127.0.0.1 is ever contacted; every process started here is stopped by pid.
"""
import os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
REL = os.path.join(ROOT, "target", "release")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECS = int(os.environ.get("BENCH_SECONDS", "5"))
S3_SECS = int(os.environ.get("BENCH_FIXED_RATE_SECONDS", "30"))
# Where the markdown and the chart go; another directory keeps a trial run off docs/.
OUT = os.path.abspath(os.environ.get("BENCH_OUT") or os.path.join(ROOT, "docs"))
SERVER_CPU, LOAD_CPU = "0", "1"
# The pingora peer is built outside the workspace (`make bench` builds it, and carries on
# without it when the build fails); without its binary every scenario runs without it.
PINGORA_DIR = os.path.join(BENCH, "peers", "pingora")
PINGORA_BIN = os.path.join(PINGORA_DIR, "target", "release", "pingora-peer")
HAVE_PINGORA = os.access(PINGORA_BIN, os.X_OK)

TARGETS = {  # name -> (HTTP/1.1 URL, h2c URL)
    "direct": ("http://127.0.0.1:28081", "http://127.0.0.1:28081"),
    "octopus": ("http://127.0.0.1:25001", "http://127.0.0.1:25001"),
    "nginx": ("http://127.0.0.1:25101", "http://127.0.0.1:25102"),
    "haproxy": ("http://127.0.0.1:25201", "http://127.0.0.1:25202"),
}
if HAVE_PINGORA:
    TARGETS["pingora"] = ("http://127.0.0.1:25301", "http://127.0.0.1:25302")
PEERS = [t for t in TARGETS if t not in ("direct", "octopus")]  # what octopus is compared with
NAMES = {"nginx": "nginx", "haproxy": "HAProxy", "pingora": "pingora"}
started = []


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


LOGS = {}


def start(name, cmd):
    log = tempfile.NamedTemporaryFile(prefix=f"octopus-bench-{name}-", suffix=".log", delete=False)
    LOGS[name] = log.name
    p = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, stdout=subprocess.DEVNULL, stderr=log)
    started.append((name, p))
    return p


def stop_all():
    for _, p in reversed(started):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for _, p in started:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    tails = "".join(f"--- {n} ({path}):\n" + open(path).read()[-1500:] for n, path in LOGS.items())
    raise SystemExit(f"port {port} never opened\n{tails}")


def tree_pids(pid):
    """pid and its children (nginx's worker)."""
    out = sh(["ps", "-o", "pid=", "--ppid", str(pid)]).stdout.split()
    return [pid] + [int(x) for x in out]


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def proc_roles(pid):
    """A proxy's processes with their roles: the started process is the master when it has
    children (nginx; HAProxy only with -W), else the single process; its children are workers."""
    pids = tree_pids(pid)
    if len(pids) == 1:
        return [(pid, "single process")]
    return [(pid, "master")] + [(p, "worker") for p in pids[1:]]


def cmdline(pid):
    """What the process calls itself (nginx rewrites it to "nginx: worker process")."""
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ").strip()
    except FileNotFoundError:
        return "?"


def reset_hwm(pid):
    """Set VmHWM back to the current RSS (clear_refs 5, Linux >= 4.0), so the next VmHWM read
    is the peak of what follows rather than of every scenario before it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_times(pid):
    """(user, kernel) CPU seconds of a process, all threads: fields 14 and 15 (utime, stime) of
    /proc/PID/stat, counted after the parenthesised name since the name may hold spaces."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def proxy_cpu(pid):
    """(user, kernel) CPU seconds summed over every process of a proxy (nginx: master + worker)."""
    times = [cpu_times(p) for p in tree_pids(pid)]
    return sum(u for u, _ in times), sum(k for _, k in times)


def with_cpu(pid, load):
    """Runs load() (a wrk run) and charges the proxy's CPU over it to the requests wrk counted:
    requests per proxy CPU-second, user and kernel µs per request. No pid (direct): nothing to charge."""
    if pid is None:
        return load()
    u0, k0 = proxy_cpu(pid)
    res = load()
    u1, k1 = proxy_cpu(pid)
    du, dk, n = u1 - u0, k1 - k0, res["requests"]
    nan = float("nan")
    res["req_per_cpu_s"] = n / (du + dk) if du + dk > 0 else nan
    res["user_us"] = du / n * 1e6 if n else nan
    res["kernel_us"] = dk / n * 1e6 if n else nan
    return res


def wrk(url, path="/", conns=32):
    out = sh(["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{SECS}s", "--latency",
              "-H", "Host: svc", url + path]).stdout
    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    done = re.search(r"(\d+) requests in", out)
    tr = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    mbs = float(tr.group(1)) * {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}[tr.group(2)] if tr else 0.0
    errors = "Non-2xx" in out or "Socket errors" in out
    return {"rps": rps, "p50": lat(50), "p99": lat(99), "mbs": mbs, "errors": errors,
            "requests": int(done.group(1)) if done else 0}


def h2load(url):
    # HTTP/2 names the service in :authority (octopus routes on it).
    out = sh(["taskset", "-c", LOAD_CPU, "h2load", "-c32", "-m10", "-D", str(SECS), "-H", ":authority: svc", url + "/"]).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded, (\d+) failed", out)
    return {"rps": float(m.group(1)) if m else 0.0, "failed": int(ok.group(2)) if ok else -1}


def make_certs(run):
    """A CA, a server certificate (SPIFFE URI + DNS SAN) and a client certificate,
    EC P-256, with openssl, for scenario 6."""
    def ossl(*args):
        r = sh(["openssl", *args], cwd=run)
        if r.returncode != 0:
            raise SystemExit(f"openssl {' '.join(args)}: {r.stderr}")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=bench-ca",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, san in [("server", "URI:spiffe://bench.local/ns/default/sa/svc,DNS:svc.bench.local"),
                      ("client", "URI:spiffe://bench.local/ns/default/sa/client")]:
        ossl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        with open(os.path.join(run, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext")


def substituted(run, name):
    """bench/NAME with RUNDIR replaced, written into the run directory."""
    out = os.path.join(run, name)
    with open(os.path.join(BENCH, name)) as f:
        open(out, "w").write(f.read().replace("RUNDIR", run))
    return out


def oha_fixed_rate(url, rate=1000, secs=None):
    """Scenario 3: open-loop fixed rate with latency correction (latency counted from
    when each request was due, so a stall is not hidden by coordinated omission)."""
    secs = secs or S3_SECS
    r = sh(["taskset", "-c", LOAD_CPU, "oha", "--no-tui", "--output-format", "json", "-z", f"{secs}s", "-q", str(rate),
            "--latency-correction", "-c", "16", "-H", "Host: svc", url + "/"])
    try:
        import json
        j = json.loads(r.stdout)
    except ValueError:
        raise SystemExit(f"oha failed: {r.stderr or r.stdout}")
    p = j["latencyPercentiles"]
    ok = sum(v for k, v in j.get("statusCodeDistribution", {}).items() if k == "200")
    return {"p50": p["p50"] * 1000, "p99": p["p99"] * 1000, "max": j["summary"]["slowest"] * 1000,
            "rps": j["summary"]["requestsPerSec"], "ok": ok, "total": sum(j.get("statusCodeDistribution", {}).values())}


def pingora_version():
    """pingora-proxy's version as locked in bench/peers/pingora/Cargo.lock."""
    try:
        lock = open(os.path.join(PINGORA_DIR, "Cargo.lock")).read()
    except FileNotFoundError:
        return "pingora-proxy (no Cargo.lock)"
    m = re.search(r'name = "pingora-proxy"\nversion = "([^"]+)"', lock)
    return f"pingora-proxy {m.group(1) if m else '?'} (bench/peers/pingora, no TLS feature)"


def metric_lines(url, prefix):
    """The exposition lines of a metric family, from an octopus admin port."""
    try:
        import urllib.request
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError as e:
        return [f"(unreadable: {e})"]
    return [line for line in text.splitlines() if line.startswith(prefix)]


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def scenario4(pid, url, conns=1000):
    """Scenario 4 for one proxy: CONNS keep-alive connections that have each been answered once
    and then sit idle, and a load run on top. Per process: VmRSS before the connections and with
    them open, VmHWM over the process' lifetime (what the summed figure always was) and over this
    scenario alone (VmHWM reset just before it)."""
    procs = proc_roles(pid)
    lifetime = {p: status_kib(p, "VmHWM") for p, _ in procs}
    fresh = {p: reset_hwm(p) for p, _ in procs}
    before = {p: status_kib(p, "VmRSS") for p, _ in procs}
    port = int(url.rsplit(":", 1)[1])
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        s.recv(65536)
    time.sleep(0.5)  # the last answers are out; give the proxy a moment to park the connections
    held = {p: status_kib(p, "VmRSS") for p, _ in procs}
    wrk(url)
    peak = {p: status_kib(p, "VmHWM") for p, _ in procs}
    for s in socks:
        s.close()
    return [{"pid": p, "role": role, "cmd": cmdline(p), "rss_before": before[p], "rss_idle_conns": held[p],
             "hwm": max(lifetime[p], peak[p]), "hwm_s4": peak[p] if fresh[p] else float("nan"), "conns": conns}
            for p, role in procs]


def main():
    for tool in ["wrk", "h2load", "nginx", "haproxy", "taskset", "oha", "openssl"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run `make bench`, which installs it")
    run = tempfile.mkdtemp(prefix="octopus-bench-")
    nginx_conf = os.path.join(run, "nginx.conf")
    with open(os.path.join(BENCH, "nginx.conf")) as f:
        open(nginx_conf, "w").write(f.read().replace("RUNDIR", run))
    make_certs(run)
    if not HAVE_PINGORA:
        print(f"pingora peer skipped: {os.path.relpath(PINGORA_BIN, ROOT)} is not built "
              "(`make bench` builds it)", file=sys.stderr)
    try:
        start("upstream", [os.path.join(REL, "octopus-demo-upstreams"), "svc=127.0.0.1:28081"])
        wait_port(28081)
        procs = {
            "octopus": start("octopus", [os.path.join(REL, "octopus"), "run", "--worker-threads", "1", "--config", os.path.join(BENCH, "octopus.yaml")]),
            "nginx": start("nginx", ["nginx", "-c", nginx_conf, "-p", run]),
            "haproxy": start("haproxy", ["haproxy", "-f", os.path.join(BENCH, "haproxy.cfg")]),
        }
        if HAVE_PINGORA:
            procs["pingora"] = start("pingora", [PINGORA_BIN, "--listen", "127.0.0.1:25301", "--listen-h2c",
                                                 "127.0.0.1:25302", "--upstream", "127.0.0.1:28081"])
        layered = start("octopus-layers", [os.path.join(REL, "octopus"), "run", "--worker-threads", "1", "--config", os.path.join(BENCH, "octopus-layers.yaml")])
        # Scenario 9: the same bare route with an access log, and with tracing at 100 %
        # exported to a local OTLP sink (on the load generator's core, like wrk).
        sink = subprocess.Popen(["taskset", "-c", LOAD_CPU, sys.executable, os.path.join(BENCH, "otlp_sink.py"), "24318"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(("otlp-sink", sink))
        observed = {
            "access log": start("octopus-log", [os.path.join(REL, "octopus"), "run", "--worker-threads", "1", "--config", substituted(run, "octopus-log.yaml")]),
            "tracing 100%": start("octopus-trace", [os.path.join(REL, "octopus"), "run", "--worker-threads", "1", "--config", os.path.join(BENCH, "octopus-trace.yaml")]),
        }
        observed_urls = {"access log": "http://127.0.0.1:25003", "tracing 100%": "http://127.0.0.1:25004"}
        mtls = {
            "octopus": start("octopus-mtls", [os.path.join(REL, "octopus"), "run", "--worker-threads", "1", "--config", substituted(run, "octopus-mtls.yaml")]),
            "nginx": start("nginx-mtls", ["nginx", "-c", substituted(run, "nginx-mtls.conf"), "-p", run]),
        }
        mtls_urls = {"octopus": "http://127.0.0.1:25011", "nginx": "http://127.0.0.1:25111"}
        for port in (25001, 25002, 25003, 25004, 24318, 25101, 25102, 25201, 25202, 25011, 25016, 25111, 25116) + ((25301, 25302) if HAVE_PINGORA else ()):
            wait_port(port)
        if HAVE_PINGORA:
            print("pingora peer: no mTLS setup, so scenario 6 covers octopus and nginx only", file=sys.stderr)
        time.sleep(0.5)
        idle = {n: sum(status_kib(p, "VmRSS") for p in tree_pids(procs[n].pid)) for n in procs}

        results = {s: {t: [] for t in TARGETS} for s in ("h1", "h2", "big", "rate", "c1")}
        results["mtls"] = {t: [] for t in mtls}
        layers = {"bare": [], "all layers": []}
        observability = {"off": [], "access log": [], "tracing 100%": []}
        for r in range(ROUNDS):
            for t, (h1, h2) in TARGETS.items():
                print(f"round {r + 1}/{ROUNDS} {t}", file=sys.stderr)
                pid = procs[t].pid if t in procs else None
                results["h1"][t].append(with_cpu(pid, lambda: wrk(h1)))
                results["h2"][t].append(h2load(h2))
                before = sum(proxy_cpu(pid)) if pid else 0
                big = wrk(h1, "/bytes/102400", conns=8)
                after = sum(proxy_cpu(pid)) if pid else 0
                gb = big["mbs"] * SECS / 1000
                big["cpu_per_gb"] = (after - before) / gb if pid and gb else float("nan")
                results["big"][t].append(big)
                # One connection, one request at a time: the proxy's own hop, not its queueing.
                results["c1"][t].append(wrk(h1, conns=1))
            for t, url in mtls_urls.items():
                print(f"round {r + 1}/{ROUNDS} {t} mTLS hop", file=sys.stderr)
                results["mtls"][t].append(wrk(url))
            for t, (h1, _) in TARGETS.items():
                print(f"round {r + 1}/{ROUNDS} {t} fixed rate", file=sys.stderr)
                results["rate"][t].append(oha_fixed_rate(h1))
            layers["bare"].append(wrk(TARGETS["octopus"][0])["rps"])
            layers["all layers"].append(wrk("http://127.0.0.1:25002")["rps"])
            print(f"round {r + 1}/{ROUNDS} octopus observability", file=sys.stderr)
            observability["off"].append(with_cpu(procs["octopus"].pid, lambda: wrk(TARGETS["octopus"][0])))
            for name, url in observed_urls.items():
                observability[name].append(with_cpu(observed[name].pid, lambda: wrk(url)))
        spans = metric_lines("http://127.0.0.1:29906/metrics", "octopus_trace_spans_total")
        log_lines = metric_lines("http://127.0.0.1:29905/metrics", "octopus_access_log_")

        # Scenario 4: 1000 idle keep-alive connections held open during a load run.
        s4 = {}
        for t in procs:
            print(f"scenario 4 {t}", file=sys.stderr)
            s4[t] = scenario4(procs[t].pid, TARGETS[t][0])
        versions = {
            "nginx": sh(["nginx", "-v"]).stderr.strip(),
            "haproxy": sh(["haproxy", "-v"]).stdout.splitlines()[0],
            "wrk": sh(["wrk", "--version"]).stdout.splitlines()[0] if sh(["wrk", "--version"]).stdout else "wrk (Debian)",
            "h2load": sh(["h2load", "--version"]).stdout.strip(),
            "oha": sh(["oha", "--version"]).stdout.strip(),
            "openssl": sh(["openssl", "version"]).stdout.strip(),
            "octopus": sh([os.path.join(REL, "octopus"), "--version"]).stdout.strip(),
        }
        if HAVE_PINGORA:
            versions["pingora"] = pingora_version()
    finally:
        stop_all()
        shutil.rmtree(run, ignore_errors=True)
        for path in LOGS.values():
            os.unlink(path)
    report(results, layers, idle, s4, versions, (observability, spans, log_lines))


def added(results, s, t, k):
    """The target's value minus the direct connection's in the same round, median over rounds."""
    return median([x[k] - d[k] for x, d in zip(results[s][t], results[s]["direct"])])


def workers_kib(rows, k):
    """K summed over the processes that serve connections: the workers, or the single process."""
    return sum(r[k] for r in rows if r["role"] != "master")


def per_conn_bytes(rows):
    return sum(r["rss_idle_conns"] - r["rss_before"] for r in rows) * 1024 / rows[0]["conns"]


def fmt(x, spec):
    return "-" if x != x else format(x, spec)


def summary(results, s4):
    """Octopus against nginx and against the best of the peers (nginx, HAProxy, and pingora when
    built), one row per headline metric. Better means higher for rates and lower for costs; the
    ratio is octopus / the other either way, so read it against the 'better' column."""
    med = lambda s, t, k: median([x[k] for x in results[s][t]])
    rows = [("S1 req/s (HTTP/1.1, 32 conns)", "higher", lambda t: med("h1", t, "rps")),
            ("S1 requests per proxy CPU-second", "higher", lambda t: med("h1", t, "req_per_cpu_s")),
            ("S1 user µs per request", "lower", lambda t: med("h1", t, "user_us")),
            ("added p50 µs at concurrency 1 (S8)", "lower", lambda t: added(results, "c1", t, "p50") * 1000),
            ("S4 peak RSS KiB, worker process, lifetime", "lower", lambda t: workers_kib(s4[t], "hwm")),
            ("S4 peak RSS KiB, worker process, during S4 only", "lower", lambda t: workers_kib(s4[t], "hwm_s4")),
            ("S2 h2c req/s", "higher", lambda t: med("h2", t, "rps"))]
    ratio = lambda a, b: f"{a / b:.2f}" if a == a and b == b and b > 0 else "-"
    lines = ["## Summary: octopus against the others", "",
             "Ratio = octopus' value / the other's; whether above 1 is good depends on the 'better' column.", "",
             f"| metric | better | octopus | {' | '.join(PEERS)} | octopus / nginx | octopus / best of {', '.join(PEERS)} |",
             "|---|---|---|" + "---|" * len(PEERS) + "---|---|"]
    for name, better, get in rows:
        v = {t: get(t) for t in ["octopus"] + PEERS}
        pick = max if better == "higher" else min
        best = pick(PEERS, key=lambda t: v[t] if v[t] == v[t] else (float("-inf") if better == "higher" else float("inf")))
        spec = ",.1f" if abs(v["octopus"]) < 100 else ",.0f"
        lines.append(f"| {name} | {better} | {fmt(v['octopus'], spec)} | {' | '.join(fmt(v[t], spec) for t in PEERS)} | "
                     f"{ratio(v['octopus'], v['nginx'])} | {ratio(v['octopus'], v[best])} ({best}) |")
    return lines + [""]


def write_report(name, text):
    """Writes OUT/name and prints it; hand-written analysis below the marker in the
    existing file survives a re-run."""
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    marker = "<!-- analysis: kept across runs -->"
    try:
        old = open(path).read()
        if marker in old:
            text += "\n" + old[old.index(marker):]
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(text)
    print(text)


def report(results, layers, idle, s4, versions, observed):
    med = lambda s, t, k: median([x[k] for x in results[s][t]])
    o1, o2 = med("h1", "octopus", "rps"), med("h2", "octopus", "rps")
    conns_rss = {t: sum(r["hwm"] for r in rows) for t, rows in s4.items()}
    lines = ["# Benchmarks", "",
             f"Generated by `make bench` (bench/run.py). Every server (upstream, octopus, {', '.join(NAMES[t] for t in PEERS)}) is pinned to core 0,",
             "the load generator to core 1; each proxy has one worker and talks to the same upstream (octopus' demo upstream,",
             f"hyper). {ROUNDS} interleaved rounds of {SECS} s; medians. Ratio = the target's value / octopus'.", ""]
    if not HAVE_PINGORA:
        lines += ["The pingora peer (bench/peers/pingora) was not built, so it is not in this run.", ""]
    lines += summary(results, s4)
    lines += ["## Scenario 1: HTTP/1.1 keep-alive, 32 connections, tiny response (`wrk -t1 -c32`)", "",
              "| target | req/s | ratio to octopus | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for t in TARGETS:
        r = med("h1", t, "rps")
        lines.append(f"| {t} | {r:,.0f} | {r / o1:.2f} | {med('h1', t, 'p50'):.2f} | {med('h1', t, 'p99'):.2f} |")
    lines += ["", "Proxy CPU over the same runs: utime and stime (/proc/PID/stat) of every process of the proxy",
              "(nginx: master + worker), read before and after each run, against the requests wrk completed.", "",
              "| proxy | requests per proxy CPU-second | user µs per request | kernel µs per request |", "|---|---|---|---|"]
    for t in s4:
        lines.append(f"| {t} | {fmt(med('h1', t, 'req_per_cpu_s'), ',.0f')} | {fmt(med('h1', t, 'user_us'), '.1f')} | "
                     f"{fmt(med('h1', t, 'kernel_us'), '.1f')} |")
    lines += ["", "## Scenario 2: HTTP/2 (h2c prior knowledge), 32 connections x 10 streams (`h2load -c32 -m10`)", "",
              "| target | req/s | ratio to octopus | failed requests (all rounds) |", "|---|---|---|---|"]
    for t in TARGETS:
        r = med("h2", t, "rps")
        failed = sum(x["failed"] for x in results["h2"][t])
        lines.append(f"| {t} | {r:,.0f} | {r / o2:.2f} | {failed} |")
    lines += ["", f"## Scenario 3: fixed rate, 1000 req/s for {S3_SECS} s, latency-corrected (`oha -q 1000 --latency-correction -c 16`)", "",
              "Added latency = the target's percentile minus the direct connection's, same round, then the median over rounds.", "",
              "| target | p50 ms | p99 ms | max ms | added p50 ms | added p99 ms | non-200 (all rounds) |", "|---|---|---|---|---|---|---|"]
    for t in TARGETS:
        rows = results["rate"][t]
        bad = sum(x["total"] - x["ok"] for x in rows)
        a50, a99 = ("-", "-") if t == "direct" else (f"{added(results, 'rate', t, 'p50'):+.3f}", f"{added(results, 'rate', t, 'p99'):+.3f}")
        lines.append(f"| {t} | {med('rate', t, 'p50'):.3f} | {med('rate', t, 'p99'):.3f} | {med('rate', t, 'max'):.2f} | "
                     f"{a50} | {a99} | {bad} |")
    lines += ["", "## Scenario 4: memory", "",
              "| proxy | idle RSS after start (KiB) | peak RSS with 1000 idle keep-alive connections + load (KiB) | bytes per idle client connection |",
              "|---|---|---|---|"]
    for t in idle:
        lines.append(f"| {t} | {idle[t]:,} | {conns_rss.get(t, 0):,} | {per_conn_bytes(s4[t]):,.0f} |" if t in s4 else f"| {t} | {idle[t]:,} | - | - |")
    lines += ["", "This table adds up every process of a proxy (nginx: master and worker). Peak RSS is VmHWM, the process' peak",
              "over the whole benchmark; bytes per idle connection = (VmRSS with the 1000 answered, idle connections open",
              "- VmRSS just before opening them) / 1000. It counts only pages newly touched: memory an allocator kept from",
              "earlier scenarios and reuses does not show.", "",
              "| proxy | process | role | VmRSS before the connections (KiB) | VmRSS with 1000 idle connections (KiB) | bytes per idle connection | VmHWM, lifetime (KiB) | VmHWM during scenario 4 only (KiB) |",
              "|---|---|---|---|---|---|---|---|"]
    for t, rows in s4.items():
        for r in rows:
            lines.append(f"| {t} | `{r['cmd'][:48]}` | {r['role']} | {r['rss_before']:,} | {r['rss_idle_conns']:,} | "
                         f"{(r['rss_idle_conns'] - r['rss_before']) * 1024 / r['conns']:,.0f} | {r['hwm']:,} | {fmt(r['hwm_s4'], ',.0f')} |")
    lines += ["", "VmHWM during scenario 4 only: the peak was reset to the current RSS (`echo 5 > /proc/PID/clear_refs`) just",
              "before the connections were opened.", "",
              "## Scenario 5: 100 KiB responses, 8 connections", "",
              "| target | MB/s | proxy CPU seconds per GB |", "|---|---|---|"]
    for t in TARGETS:
        cpu = med("big", t, "cpu_per_gb")
        lines.append(f"| {t} | {med('big', t, 'mbs'):,.0f} | {'-' if cpu != cpu else f'{cpu:.2f}'} |")
    om = med("mtls", "octopus", "rps")
    lines += ["", "## Scenario 6: mTLS hop (sidecar to sidecar), HTTP/1.1, 32 connections", "",
              "app -> outbound sidecar -> mTLS (TLS 1.3, client certificate, peer identity checked) -> inbound sidecar -> upstream;",
              "one process of each proxy plays both sidecars (octopus: bench/octopus-mtls.yaml; nginx: bench/nginx-mtls.conf with `proxy_ssl`).",
              f"{' and '.join(NAMES[t] for t in PEERS if t != 'nginx')} {'have' if HAVE_PINGORA else 'has'} no mTLS setup here and {'are' if HAVE_PINGORA else 'is'} not in this scenario.", "",
              "| proxy | req/s | ratio to octopus | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for t in results["mtls"]:
        r = med("mtls", t, "rps")
        lines.append(f"| {t} | {r:,.0f} | {r / om:.2f} | {med('mtls', t, 'p50'):.2f} | {med('mtls', t, 'p99'):.2f} |")
    b, a = median(layers["bare"]), median(layers["all layers"])
    lines += ["", "## Scenario 7: price of the layers (octopus, HTTP/1.1, 32 connections)", "",
              "| octopus config | req/s per round | median |", "|---|---|---|",
              f"| bare route | {' / '.join(f'{x:,.0f}' for x in layers['bare'])} | {b:,.0f} |",
              f"| all layers (retry + per-try timeout, route timeout, least-connections, circuit breaker, outlier detection, health checks) | {' / '.join(f'{x:,.0f}' for x in layers['all layers'])} | {a:,.0f} ({(a / b - 1) * 100:+.1f}%) |",
              "", "## Scenario 8: latency at concurrency 1, HTTP/1.1 keep-alive (`wrk -t1 -c1`)", "",
              "One connection, one request at a time, so the latency is the hop itself, not queueing behind other requests.",
              "Added = the target's percentile minus the direct connection's, same round, then the median over rounds.", "",
              "| target | p50 µs | p99 µs | added p50 µs | added p99 µs |", "|---|---|---|---|---|"]
    for t in TARGETS:
        a50, a99 = ("-", "-") if t == "direct" else (f"{added(results, 'c1', t, 'p50') * 1000:+.0f}", f"{added(results, 'c1', t, 'p99') * 1000:+.0f}")
        lines.append(f"| {t} | {med('c1', t, 'p50') * 1000:.0f} | {med('c1', t, 'p99') * 1000:.0f} | {a50} | {a99} |")
    lines += ["", "## Scenario 9: price of access logging and tracing (octopus, HTTP/1.1, 32 connections)", "",
              "The bare route three ways, in the same rounds: as is; with `access_log` (every request, JSON lines to a file);",
              "with `tracing` at `sample_ratio: 1.0` (a server and a client span per request, OTLP/HTTP to bench/otlp_sink.py",
              "on the load generator's core). Requests per proxy CPU-second from /proc/PID/stat as in scenario 1.", "",
              "| octopus config | req/s (median) | ratio to off | requests per proxy CPU-second | user µs per request |", "|---|---|---|---|---|"]
    obs, spans, log_lines = observed
    off = median([x["rps"] for x in obs["off"]])
    for name, runs in obs.items():
        rps = median([x["rps"] for x in runs])
        lines.append(f"| {name} | {rps:,.0f} | {rps / off:.2f} | {median([x['req_per_cpu_s'] for x in runs]):,.0f} | "
                     f"{median([x['user_us'] for x in runs]):.1f} |")
    lines += ["", "At the end of the run (the spans octopus exported, dropped at a full queue, or failed to send; the lines logged):", "", "```text"] + spans + log_lines + ["```"]
    lines += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in versions.items()] + [
              "", "Configs: bench/octopus.yaml, bench/octopus-layers.yaml, bench/octopus-mtls.yaml, bench/octopus-log.yaml, bench/octopus-trace.yaml, bench/nginx.conf, bench/nginx-mtls.conf, bench/haproxy.cfg"
              + (", bench/peers/pingora/src/main.rs." if HAVE_PINGORA else "."), "",
              "![requests per second](benchmarks.png)", ""]
    errs = [f"{t} ({s})" for s in ("h1", "big", "mtls", "c1") for t in results[s] if any(x["errors"] for x in results[s][t])]
    if errs:
        lines.append(f"Warning: non-2xx responses or socket errors were seen for: {', '.join(sorted(set(errs)))}.")
    write_report("benchmarks.md", "\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (s, title) in zip(axes, [("h1", "HTTP/1.1, 32 conns"), ("h2", "h2c, 32x10 streams")]):
            names = list(TARGETS)
            colors = {"direct": "#999", "octopus": "#2a7", "nginx": "#38c", "haproxy": "#c63", "pingora": "#a5c"}
            ax.bar(names, [med(s, t, "rps") for t in names], color=[colors[t] for t in names])
            ax.set_title(title)
            ax.set_ylabel("requests/s (median)")
        fig.tight_layout()
        fig.savefig(os.path.join(OUT, "benchmarks.png"), dpi=100)
    except ImportError:
        print("matplotlib missing: no chart written", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
