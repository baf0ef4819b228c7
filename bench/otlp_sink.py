#!/usr/bin/env python3
"""A minimal OTLP/HTTP trace receiver for the benchmark: answers 200 to every POST to
/v1/traces after reading its body, and counts requests and bytes (printed on exit).
Started by bench/run.py on the load generator's core; listens on 127.0.0.1 only."""
import http.server, signal, sys

received = {"requests": 0, "bytes": 0}


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        received["requests"] += 1
        received["bytes"] += n
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 24318
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink)

    def stop(*_):
        print(f"otlp sink: {received['requests']} exports, {received['bytes']} bytes", file=sys.stderr)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
