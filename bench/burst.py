#!/usr/bin/env python3
"""Connection-burst memory check: does octopus give memory back after a burst?

Opens CONNS concurrent keep-alive HTTP/1.1 connections to the outbound listener,
sends REQUESTS requests (`Host: catalog`) on each, holds every connection open until
all of them are open and answered, then closes them all at once. Meanwhile it reads
octopus' RSS (VmRSS in /proc/PID/status) and prints

    baseline  after start and a few warm-up requests
    peak      the highest RSS seen during the burst
    after     1 s after the client closed everything
    idle      after IDLE seconds without traffic (default 60), with a timeline

and the open descriptors after the burst and after the idle time (pooled upstream
connections show there: they are closed after 30-60 s idle).

Self-contained (builds nothing; needs `cargo build --release -p octopus -p
octopus-testkit --bins`): starts target/release/octopus-demo-upstreams and
target/release/octopus on a temporary config, runs the burst, stops both by pid:

    python3 bench/burst.py
    python3 bench/burst.py --env MALLOC_ARENA_MAX=1 --env OCTOPUS_WORKER_THREADS=2
    python3 bench/burst.py --octopus /tmp/octopus-other-build --idle 90 --json out.jsonl

Against an octopus that is already running (outbound on ADDR, a route for
`Host: catalog`):

    python3 bench/burst.py --pid "$(pidof octopus)" --addr 127.0.0.1:15001

The client raises its own open-file soft limit (CONNS + 1024 must fit under the hard
limit; octopus raises its own to the hard limit). Only 127.0.0.1 is contacted.
"""

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")

CONFIG = """\
admin:
  listen: 127.0.0.1:{admin}
outbound:
  listen: 127.0.0.1:{outbound}
  routes:
    - name: catalog
      match: {{ host: catalog }}
      cluster: catalog
clusters:
  catalog:
    endpoints: [127.0.0.1:{upstream}]
"""


def status_field(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def rss_kib(pid):
    return status_field(pid, "VmRSS:")


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


async def read_response(reader):
    """Reads one HTTP/1.1 response (Content-Length or chunked); returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def one_request(host, port, vhost):
    r, w = await asyncio.open_connection(host, port)
    w.write(f"GET / HTTP/1.1\r\nHost: {vhost}\r\n\r\n".encode())
    await w.drain()
    status = await read_response(r)
    w.close()
    return status


async def burst(args, host, port, pid, stats):
    req = f"GET /burst HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode()
    connect_gate = asyncio.Semaphore(args.connect_concurrency)
    done = 0
    all_done = asyncio.Event()
    release = asyncio.Event()
    statuses, errors = {}, {}

    async def client():
        nonlocal done
        w = None
        try:
            async with connect_gate:
                r, w = await asyncio.open_connection(host, port)
            for _ in range(args.requests):
                w.write(req)
                await w.drain()
                s = await read_response(r)
                statuses[s] = statuses.get(s, 0) + 1
        except Exception as e:  # counted and reported
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        finally:
            done += 1
            if done == args.conns:
                all_done.set()
        await release.wait()
        if w is not None:
            w.close()

    peak = rss_kib(pid)
    sampling = True

    async def sampler():
        nonlocal peak
        while sampling:
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(0.05)

    samp = asyncio.create_task(sampler())
    t0 = time.monotonic()
    tasks = [asyncio.create_task(client()) for _ in range(args.conns)]
    await all_done.wait()
    stats["open_s"] = round(time.monotonic() - t0, 2)
    await asyncio.sleep(args.hold)  # everyone connected and answered: hold, then close
    stats["threads"] = status_field(pid, "Threads:")
    release.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)
    sampling = False
    await samp
    stats.update(peak=peak, after=rss_kib(pid), fds_after=fds(pid))
    stats.update(statuses=statuses, errors=errors)


async def measure(args, host, port, pid):
    stats = {"label": args.label, "env": args.env, "conns": args.conns, "requests": args.requests}
    for _ in range(args.warmup):
        await one_request(host, port, args.host)
    await asyncio.sleep(1.0)
    stats["baseline"] = rss_kib(pid)
    await burst(args, host, port, pid, stats)
    timeline, t = [(1, stats["after"])], 1.0
    while t < args.idle:
        step = min(args.every, args.idle - t)
        await asyncio.sleep(step)
        t += step
        timeline.append((round(t), rss_kib(pid)))
    stats.update(idle=timeline[-1][1], fds_idle=fds(pid), timeline=timeline)
    return stats


def wait_port(port, proc, seconds=10.0):
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pid", type=int, help="measure this running octopus instead of starting one")
    p.add_argument("--addr", default="127.0.0.1:19001", help="outbound listener (host:port)")
    p.add_argument("--octopus", default=os.path.join(REL, "octopus"), help="binary to start")
    p.add_argument("--upstreams", default=os.path.join(REL, "octopus-demo-upstreams"))
    p.add_argument("--upstream-port", type=int, default=19084)
    p.add_argument("--admin-port", type=int, default=19901)
    p.add_argument("--env", action="append", default=[], metavar="VAR=VALUE",
                   help="environment of the started octopus (repeatable)")
    p.add_argument("--host", default="catalog", help="Host header of every request")
    p.add_argument("--conns", type=int, default=5000, help="concurrent connections")
    p.add_argument("--requests", type=int, default=3, help="requests per connection")
    p.add_argument("--connect-concurrency", type=int, default=512, help="connects in progress at once")
    p.add_argument("--hold", type=float, default=1.0, help="seconds all connections stay open")
    p.add_argument("--idle", type=float, default=60.0, help="idle seconds before the last sample")
    p.add_argument("--every", type=float, default=10.0, help="idle sample interval, seconds")
    p.add_argument("--warmup", type=int, default=20, help="warm-up requests before the baseline")
    p.add_argument("--label", default="", help="name of this run in the output")
    p.add_argument("--json", help="append the result as one JSON line to this file")
    args = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.conns + 1024
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            sys.exit(f"open-file hard limit {hard} < {want}: lower --conns")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    started = []
    try:
        pid = args.pid
        if pid is None:
            tmp = tempfile.mkdtemp(prefix="octopus-burst-")
            config = os.path.join(tmp, "octopus.yaml")
            with open(config, "w") as f:
                f.write(CONFIG.format(admin=args.admin_port, outbound=port, upstream=args.upstream_port))
            up = subprocess.Popen([args.upstreams, f"catalog=127.0.0.1:{args.upstream_port}"],
                                  stdout=subprocess.DEVNULL)
            started.append(up)
            wait_port(args.upstream_port, up)
            env = dict(os.environ, **dict(e.split("=", 1) for e in args.env))
            with open(os.path.join(tmp, "octopus.log"), "w") as log:
                octo = subprocess.Popen([args.octopus, "run", "--config", config], env=env,
                                        stdout=log, stderr=log)
            started.append(octo)
            wait_port(port, octo)
            pid = octo.pid
        stats = asyncio.run(measure(args, host, port, pid))
    finally:
        for proc in reversed(started):
            proc.terminate()
            proc.wait(timeout=15)

    mib = lambda k: f"{k / 1024:.1f} MiB"  # noqa: E731
    print(f"{args.label or 'burst'}{' ' + ' '.join(args.env) if args.env else ''}: "
          f"baseline {mib(stats['baseline'])}  peak {mib(stats['peak'])}  "
          f"after {mib(stats['after'])}  idle {args.idle:.0f}s {mib(stats['idle'])}")
    print(f"  {args.conns} connections open in {stats['open_s']} s; statuses {stats['statuses']}, "
          f"errors {stats['errors']}; threads {stats['threads']}; "
          f"descriptors {stats['fds_after']} after, {stats['fds_idle']} idle")
    print("  idle RSS (s: MiB): " + "  ".join(f"{t}: {k / 1024:.1f}" for t, k in stats["timeline"]))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(stats) + "\n")
    bad = sum(stats["errors"].values()) + sum(n for s, n in stats["statuses"].items() if s != 200)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
