"""hello: the co-op's sample app. A tiny HTTP server that says which commit it runs.

    GET /health  -> 200 {"status": "ok", "app": "hello", "version": "<git sha>"}
    GET /        -> 200 "hello from <git sha>"

The version is the git sha the image was built from (the build passes it as GIT_SHA, the
Dockerfile puts it in APP_VERSION). The port is $PORT (default 8000, topology.yaml apps.hello.port).
Standard library only: the image needs nothing but the base image's Python.
"""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("APP_VERSION", "unknown")
NAME = os.environ.get("APP_NAME", "hello")


class Handler(BaseHTTPRequestHandler):
    server_version = f"{NAME}/{VERSION[:12]}"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(
                200,
                "application/json",
                json.dumps({"status": "ok", "app": NAME, "version": VERSION}) + "\n",
            )
        elif path == "/":
            self._send(200, "text/plain; charset=utf-8", f"hello from {VERSION}\n")
        else:
            self._send(404, "text/plain; charset=utf-8", "not found\n")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _send(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App-Version", VERSION)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def _stop(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    host = os.environ.get("HOST", "0.0.0.0")
    server = ThreadingHTTPServer((host, port), Handler)
    # Stop cleanly on SIGTERM (podman stop; the container also runs with --init).
    signal.signal(signal.SIGTERM, _stop)
    sys.stdout.write(f"{NAME} {VERSION} listening on {host}:{port}\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
