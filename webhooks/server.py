"""The webhook endpoint's HTTP server (`infra webhooks serve`).

    POST /push/<app>   a branch of the app's repository moved: start its run (webhooks/push.py)
    POST /registry     the registry's notifications: wake registry_image_sensor
                       (webhooks/registry.py); `Authorization: Bearer <token>`, the token
                       derived from the same secret
                       (infra_assets/topology/secrets.registry_notify_token)
    GET  /health       200 while it runs

Every POST is signed: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` with the
`webhooks.secret` of the secrets file, the header GitHub, Gitea and Forgejo send for a webhook
with a secret, and the one the project's post-receive hook sends. An unsigned or wrongly signed
call is refused (401) before anything is read. The body is one of:
- the post-receive hook's: `{"pushed_at": <seconds since the epoch>, "updates": [{"old": ...,
  "new": ..., "ref": "refs/heads/main"}]}`;
- a forge's push event: `{"ref": "refs/heads/main", ...}`;
- anything else signed (`{}`): look at the app's branch anyway.
The answer is JSON: what started (the run's id and URL), or why nothing did.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from infra_assets.topology.secrets import registry_notify_token
from resources.dagster_api import DagsterApiError
from webhooks.push import PushError, PushHandler
from webhooks.registry import RegistryWake, pushed_apps

MAX_BODY = 5 * 1024 * 1024  # a forge's push event lists its commits
SIGNATURE_HEADER = "X-Hub-Signature-256"
PUSH_PATH = re.compile(r"\A/push/([a-z0-9][a-z0-9-]{0,62})\Z")


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def same(given: str, expected: str) -> bool:
    """`given` (a header, any characters) equals `expected`, compared in constant time: as
    bytes, since `hmac.compare_digest` refuses a str that is not ASCII."""
    return hmac.compare_digest(given.encode("latin-1", "replace"), expected.encode())


def parse_push(body: bytes) -> tuple[list[str] | None, float | None]:
    """(the refs the payload says moved, or None when it names none; the push's time, if
    given). Raises ValueError for a body that is not a JSON object."""
    data = json.loads(body.decode("utf-8") or "{}")  # RecursionError: a body nested too deep
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    refs: list[str] | None = None
    if isinstance(data.get("updates"), list):
        refs = [str(u.get("ref")) for u in data["updates"] if isinstance(u, dict)]
    elif isinstance(data.get("ref"), str):
        refs = [data["ref"]]
    pushed = data.get("pushed_at")
    pushed_at = float(pushed) if isinstance(pushed, (int, float)) else None
    return refs, pushed_at


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """One line, not a traceback, for a client that closed its kept-alive connection (the
        registry's HTTP client does); anything else as the standard library says it."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionResetError, BrokenPipeError)):
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} {client_address[0]}: {error}\n")
            return
        super().handle_error(request, client_address)

    def __init__(self, address: tuple[str, int], *, secret: bytes, pushes: PushHandler):
        super().__init__(address, _Handler)
        self.secret = secret
        self.pushes = pushes
        self.registry_token = "Bearer " + registry_notify_token(secret)
        self.registry = RegistryWake(pushes.api)


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds a client may take to send a request (its body too)

    def log_message(self, format: str, *args: Any) -> None:  # one line per call, to the log
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.address_string()} {format % args}\n")

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode() + b"\n"
        if status >= 400:  # a body left unread must not be taken for the next request
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, {"ok": True})
        else:
            self._answer(404, {"error": f"no such path {self.path!r}: POST /push/<app>"})

    def _body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._answer(413, {"error": f"the body must have a Content-Length of 0 to {MAX_BODY}"})
            return None
        return self.rfile.read(length)

    def do_POST(self) -> None:
        if self.path == "/registry":
            self._registry()
            return
        match = PUSH_PATH.match(self.path)
        if match is None:
            self._answer(404, {"error": f"no such path {self.path!r}: POST /push/<app>"})
            return
        body = self._body()
        if body is None:
            return
        given = self.headers.get(SIGNATURE_HEADER) or ""
        if not same(given, signature(self.server.secret, body)):
            self._answer(
                401,
                {
                    "error": f"missing or wrong {SIGNATURE_HEADER}: sign the body with the"
                    " secret (HMAC-SHA256; webhooks.secret in the secrets file)"
                },
            )
            return
        try:
            refs, pushed_at = parse_push(body)
        except (ValueError, UnicodeDecodeError, OverflowError, RecursionError) as err:
            self._answer(400, {"error": f"the body is not a push: {err}"})
            return
        app = match[1]
        try:
            outcome = self.server.pushes.push(app, refs=refs, pushed_at=pushed_at)
        except PushError as err:
            self._answer(err.status, {"app": app, "error": str(err)})
            return
        except DagsterApiError as err:
            self._answer(502, {"app": app, "error": str(err)})
            return
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} push {app}: {outcome.why}\n")
        self._answer(202 if outcome.started else 200, outcome.as_json())

    def _registry(self) -> None:
        """Answered at once (the registry waits 2 s at most); the sensor is woken after."""
        given = self.headers.get("Authorization") or ""
        if not same(given, self.server.registry_token):
            self._answer(401, {"error": "missing or wrong Authorization: Bearer <token>"})
            return
        body = self._body()
        if body is None:
            return
        try:
            envelope = json.loads(body.decode("utf-8") or "{}")
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            self._answer(400, {"error": f"the body is not a registry notification: {err}"})
            return
        apps = pushed_apps(envelope, self.server.pushes.topology_file)
        self._answer(202 if apps else 200, {"apps": apps, "woken": bool(apps)})
        if apps:
            threading.Thread(target=self._wake, args=(apps,), daemon=True).start()

    def _wake(self, apps: list[str]) -> None:
        try:
            self.server.registry.wake()
        except DagsterApiError as err:
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} registry ({', '.join(apps)}): {err}\n")
