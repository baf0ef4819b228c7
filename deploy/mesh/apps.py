"""Apps and tools of the mesh playground (deploy/mesh/mesh.sh, `make mesh`) and of the
mesh test (crates/octopus/tests/mesh.rs, which embeds this file), run inside the
network namespaces they create. Standard library only.

  http NAME HOST PORT           an HTTP app answering JSON: app, path, request headers
                                (HOST "::" serves IPv6)
  banner NAME HOST PORT         a server-speaks-first TCP app: a greeting on connect,
                                then each line echoed back as NAME:line
  client HOST PORT LINE         connects, reads the greeting, sends LINE, prints
                                {"greeting", "reply", "connect_ms", "greeting_ms"}
  latency HOST PORT N           N connections: prints the median connect->greeting ms
  hold HOST PORT SECONDS LINE   connects, reads the greeting, waits, sends LINE: prints
                                {"greeting", "reply", "error"}
  sniff IFACE FILE              appends every frame seen on IFACE to FILE until killed
"""

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def http_app(name, host, port):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = json.dumps(
                {"app": name, "path": self.path, "headers": dict(self.headers.items())}
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        # An IPv6 host ("::") serves IPv6 (and IPv4-mapped) clients.
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    Server((host, int(port)), Handler).serve_forever()


def banner_app(name, host, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(128)

    def serve(conn):
        with conn:
            conn.sendall(f"220 {name} ready\r\n".encode())
            buf = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    conn.sendall(name.encode() + b":" + line + b"\n")

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def read_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def client(host, port, line):
    start = time.monotonic()
    sock = socket.create_connection((host, int(port)), timeout=10)
    connected = time.monotonic()
    greeting = read_line(sock)
    greeted = time.monotonic()
    sock.sendall(line.encode() + b"\n")
    reply = read_line(sock)
    sock.close()
    print(
        json.dumps(
            {
                "greeting": greeting,
                "reply": reply,
                "connect_ms": (connected - start) * 1000,
                "greeting_ms": (greeted - start) * 1000,
            }
        )
    )


def latency(host, port, n):
    times = []
    for _ in range(int(n)):
        start = time.monotonic()
        sock = socket.create_connection((host, int(port)), timeout=10)
        read_line(sock)
        times.append((time.monotonic() - start) * 1000)
        sock.close()
    times.sort()
    print(json.dumps({"median_ms": times[len(times) // 2], "min_ms": times[0], "max_ms": times[-1]}))


def hold(host, port, seconds, line):
    """Connects, reads the greeting, waits, then sends LINE: what an open connection
    sees when the sidecar under it restarts."""
    out = {"greeting": "", "reply": "", "error": None}
    try:
        sock = socket.create_connection((host, int(port)), timeout=10)
        out["greeting"] = read_line(sock)
        print("greeted", flush=True)
        time.sleep(float(seconds))
        sock.sendall(line.encode() + b"\n")
        out["reply"] = read_line(sock)
    except OSError as e:
        out["error"] = type(e).__name__
    print(json.dumps(out), flush=True)


def sniff(iface, path):
    eth_p_all = 0x0003
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_all))
    s.bind((iface, 0))
    with open(path, "ab", buffering=0) as out:
        while True:
            out.write(s.recv(65535))


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"http": http_app, "banner": banner_app, "client": client, "latency": latency, "hold": hold, "sniff": sniff}[mode](*args)
