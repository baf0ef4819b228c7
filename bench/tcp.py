#!/usr/bin/env python3
"""Opaque TCP throughput, side by side: iperf3 directly, through HAProxy (mode tcp), nginx
(stream), and octopus as one sidecar (a tcp_routes hop), two sidecars in plain TCP, and two
sidecars with mTLS between them (outbound `protocol: tcp` cluster with tls -> the peer's
inbound listener -> the server), the way a database connection crosses a mesh.

Same pinning as bench/run.py (servers and proxies on core 0, iperf3 client on core 1),
targets interleaved A B C ... per round. Writes benchmarks-tcp.md into $BENCH_OUT (default
docs/). Run with `make bench-tcp`. Only 127.0.0.1 is contacted; every process started here is
stopped by pid.
"""
import json, os, shutil, statistics, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402  (the helpers of the HTTP benchmark: start/stop, pinning, certs)

SECS = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SERVER = 25400
PORTS = {
    "direct": SERVER,
    "HAProxy": 25410,
    "nginx": 25420,
    "octopus, 1 sidecar": 25430,
    "octopus, 2 sidecars": 25440,
    "octopus, 2 sidecars + mTLS": 25450,
}
NGINX_STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so"


def octopus(run, name, yaml):
    path = os.path.join(run, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(yaml.replace("RUNDIR", run))
    return B.start(name, [os.path.join(B.REL, "octopus"), "run", "--worker-threads", "1", "--config", path])


def tcp_route(listen, admin, to, tls=""):
    return (f"admin: {{ listen: 127.0.0.1:{admin} }}\n"
            f"outbound:\n  listen: 127.0.0.1:{listen}\n  tcp_routes:\n    - {{ name: bench, cluster: up }}\n"
            f"clusters:\n  up:\n    protocol: tcp\n    endpoints: [127.0.0.1:{to}]\n{tls}")


MTLS_CLIENT = """    tls:
      cert: RUNDIR/client.crt
      key: RUNDIR/client.key
      ca: RUNDIR/ca.crt
      server_identity: "spiffe://bench.local/ns/default/sa/svc"
"""


def iperf(port):
    r = B.sh(["taskset", "-c", B.LOAD_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(SECS), "-J"])
    if r.returncode != 0:
        raise SystemExit(f"iperf3 to {port}: {r.stdout[-800:]} {r.stderr}")
    out = json.loads(r.stdout)
    if "error" in out:
        raise SystemExit(f"iperf3 to {port}: {out['error']}")
    return out["end"]["sum_received"]["bits_per_second"] / 1e9


def main():
    for tool in ["iperf3", "haproxy", "nginx", "openssl", "taskset"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (make bench-tcp installs it)")
    run = tempfile.mkdtemp(prefix="octopus-bench-tcp-")
    B.make_certs(run)
    try:
        B.start("iperf3", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(SERVER)])
        hap = os.path.join(run, "haproxy.cfg")
        with open(hap, "w") as f:
            f.write(f"global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n"
                    f"  timeout server 1h\nfrontend f\n  bind 127.0.0.1:{PORTS['HAProxy']}\n  default_backend b\n"
                    f"backend b\n  server s 127.0.0.1:{SERVER}\n")
        B.start("haproxy", ["haproxy", "-f", hap])
        have_nginx = os.path.exists(NGINX_STREAM)
        if have_nginx:
            ngx = os.path.join(run, "nginx.conf")
            with open(ngx, "w") as f:
                f.write(f"load_module {NGINX_STREAM};\ndaemon off;\nworker_processes 1;\npid {run}/nginx.pid;\n"
                        f"error_log stderr;\nevents {{ worker_connections 1024; }}\n"
                        f"stream {{ server {{ listen 127.0.0.1:{PORTS['nginx']}; proxy_pass 127.0.0.1:{SERVER}; }} }}\n")
            B.start("nginx", ["nginx", "-c", ngx, "-p", run])
        else:
            print(f"nginx: no stream module ({NGINX_STREAM}); skipped", file=sys.stderr)
            del PORTS["nginx"]
        octopus(run, "one", tcp_route(PORTS["octopus, 1 sidecar"], 29920, SERVER))
        octopus(run, "two-a", tcp_route(PORTS["octopus, 2 sidecars"], 29921, 25441))
        octopus(run, "two-b", tcp_route(25441, 29922, SERVER))
        octopus(run, "mtls-a", tcp_route(PORTS["octopus, 2 sidecars + mTLS"], 29923, 25451, MTLS_CLIENT))
        octopus(run, "mtls-b", "admin: { listen: 127.0.0.1:29924 }\ninbound:\n  listen: 127.0.0.1:25451\n"
                f"  forward_to: 127.0.0.1:{SERVER}\n  opaque_ports: [{SERVER}]\n"
                "  tls: { cert: RUNDIR/server.crt, key: RUNDIR/server.key, client_ca: RUNDIR/ca.crt }\n")
        for port in list(PORTS.values()) + [25441, 25451]:
            B.wait_port(port)
        results = {t: [] for t in PORTS}
        for r in range(ROUNDS):
            for t, port in PORTS.items():
                gbps = iperf(port)
                results[t].append(gbps)
                print(f"round {r + 1} {t}: {gbps:.2f} Gbit/s", file=sys.stderr)
    finally:
        B.stop_all()
    report(results)


def report(results):
    direct = statistics.median(results["direct"])
    lines = ["# TCP throughput", "",
             f"Generated by `make bench-tcp` (bench/tcp.py): iperf3, one stream, {SECS} s per run, {ROUNDS} "
             "rounds interleaved; median (min-max) of the rounds. Servers and proxies on core 0, the iperf3 client "
             "on core 1, all on 127.0.0.1. Octopus runs `--worker-threads 1` per process; the two-sidecar rows "
             "are two octopus processes, the second either a plain TCP hop or the peer's mTLS inbound listener "
             "(ALPN `octopus-tcp`) forwarding to the server, as a database connection crosses a mesh.", "",
             "| path | Gbit/s | vs direct |", "|---|---|---|"]
    for t, xs in results.items():
        m = statistics.median(xs)
        lines.append(f"| {t} | {m:.2f} ({min(xs):.2f}-{max(xs):.2f}) | {m / direct:.2f}x |")
    B.write_report("benchmarks-tcp.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        B.stop_all()
