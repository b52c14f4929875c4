"""A FAKE Jenkins REST API, for tests only: no Jenkins server can be installed on this machine.

It speaks the real wire protocol (HTTP + JSON, on 127.0.0.1) to the real client, python-jenkins,
for the subset the `jenkins` builder uses:

- basic auth (user + API token) on every request, 401 without it;
- `GET /crumbIssuer/api/json` and the CSRF crumb required on every POST (403 without it);
- `GET /api/json` (server info, with the `X-Jenkins` version header);
- `POST /job/<name>/buildWithParameters?...` -> 201 with `Location: .../queue/item/<id>/`;
- `GET /queue/item/<id>/api/json`: `why` while waiting, `executable` once a build runs,
  `cancelled` after `POST /queue/cancelItem?id=<id>`;
- `GET /job/<name>/<n>/api/json`: `building`, `result`, `description`, `duration`, parameters;
- `GET /job/<name>/<n>/consoleText`: the console so far (it grows while the build runs);
- `POST /job/<name>/<n>/stop`: aborts a build.

What a build *does* is the test's business: each job has a runner, `runner(params, console)`,
called on an executor thread once the item leaves the queue; it writes lines with
`console.line(...)` and returns `(result, description)`. The product never uses this module.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

CRUMB_FIELD = "Jenkins-Crumb"
VERSION = "2.440.3"


class Console:
    """A build's console text, written by the runner, read by the API while it grows."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.abort = threading.Event()

    def line(self, text: str) -> None:
        with self._lock:
            self._lines.append(text)

    def text(self) -> str:
        with self._lock:
            return "".join(line + "\n" for line in self._lines)


Runner = Callable[[dict[str, str], Console], tuple[str, str | None]]


@dataclass
class Build:
    job: str
    number: int
    params: dict[str, str]
    console: Console = field(default_factory=Console)
    result: str | None = None
    description: str | None = None
    started: float = field(default_factory=time.time)
    duration_ms: int = 0

    @property
    def building(self) -> bool:
        return self.result is None


@dataclass
class QueueItem:
    id: int
    job: str
    params: dict[str, str]
    build: Build | None = None
    cancelled: bool = False


class FakeJenkins:
    """Start with `with FakeJenkins(...) as jenkins:`; `jenkins.url` is the server's address."""

    def __init__(
        self,
        *,
        username: str = "dagster",
        api_token: str | None = None,
        jobs: dict[str, Runner] | None = None,
        queue_delay_s: float = 0.3,
        hold_in_queue: bool = False,
    ):
        self.username = username
        self.api_token = api_token or secrets.token_hex(16)
        self.jobs: dict[str, Runner] = dict(jobs or {})
        self.queue_delay_s = queue_delay_s
        self.hold_in_queue = hold_in_queue  # True: items wait forever ("no executor")
        self.crumb = secrets.token_hex(16)
        self.queue: dict[int, QueueItem] = {}
        self.builds: dict[tuple[str, int], Build] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for asserts
        self._next_queue_id = 100
        self._next_build: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> FakeJenkins:
        handler = type("Handler", (_Handler,), {"jenkins": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for build in self.builds.values():
            build.console.abort.set()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    # --- what the API does --------------------------------------------------------------------

    def enqueue(self, job: str, params: dict[str, str]) -> QueueItem:
        with self._lock:
            self._next_queue_id += 1
            item = QueueItem(self._next_queue_id, job, params)
            self.queue[item.id] = item
        if not self.hold_in_queue:
            threading.Thread(target=self._execute, args=(item,), daemon=True).start()
        return item

    def _execute(self, item: QueueItem) -> None:
        time.sleep(self.queue_delay_s)
        with self._lock:
            if item.cancelled:
                return
            number = self._next_build.get(item.job, 0) + 1
            self._next_build[item.job] = number
            build = Build(item.job, number, item.params)
            self.builds[(item.job, number)] = build
            item.build = build
        build.console.line(f"Started by user {self.username}")
        try:
            result, description = self.jobs[item.job](item.params, build.console)
        except Exception as exc:  # noqa: BLE001 - a crashing runner is a failed build
            build.console.line(f"ERROR: {exc}")
            result, description = "FAILURE", None
        if build.console.abort.is_set():
            result = "ABORTED"
        build.console.line(f"Finished: {result}")
        build.description = description
        build.duration_ms = int((time.time() - build.started) * 1000)
        build.result = result

    def build_json(self, build: Build) -> dict[str, Any]:
        return {
            "_class": "org.jenkinsci.plugins.workflow.job.WorkflowRun",
            "number": build.number,
            "url": f"{self.url}job/{build.job}/{build.number}/",
            "building": build.building,
            "result": build.result,
            "description": build.description,
            "duration": build.duration_ms,
            "timestamp": int(build.started * 1000),
            "fullDisplayName": f"{build.job} #{build.number}",
            "actions": [
                {
                    "_class": "hudson.model.ParametersAction",
                    "parameters": [{"name": k, "value": v} for k, v in build.params.items()],
                }
            ],
        }

    def queue_json(self, item: QueueItem) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": item.id,
            "task": {"name": item.job, "url": f"{self.url}job/{item.job}/"},
            "cancelled": item.cancelled,
            "executable": None,
        }
        if item.cancelled:
            data["_class"] = "hudson.model.Queue$LeftItem"
        elif item.build is None:
            data["_class"] = "hudson.model.Queue$WaitingItem"
            data["why"] = "Waiting for next available executor on 'jenkins-agent'"
        else:
            data["_class"] = "hudson.model.Queue$LeftItem"
            data["executable"] = {
                "_class": "org.jenkinsci.plugins.workflow.job.WorkflowRun",
                "number": item.build.number,
                "url": f"{self.url}job/{item.job}/{item.build.number}/",
            }
        return data


class _Handler(BaseHTTPRequestHandler):
    jenkins: FakeJenkins
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args) -> None:  # quiet
        pass

    # --- plumbing -----------------------------------------------------------------------------

    def _send(self, status: int, body: Any = b"", *, ctype="application/json", headers=None):
        data = body if isinstance(body, bytes) else (
            json.dumps(body).encode() if ctype == "application/json" else str(body).encode()
        )  # fmt: skip
        self.send_response(status)
        self.send_header("X-Jenkins", VERSION)
        self.send_header("Content-Type", f"{ctype};charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        path = urlsplit(self.path).path
        self.jenkins.requests.append((self.command, path, status))

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, token = base64.b64decode(header[6:]).decode().partition(":")
            if user == self.jenkins.username and token == self.jenkins.api_token:
                return True
        self._send(
            401,
            "<html><body>Authentication required</body></html>",
            ctype="text/html",
            headers={"WWW-Authenticate": 'Basic realm="Jenkins"'},
        )
        return False

    def _read_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    # --- routes -------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        j = self.jenkins
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/") if p]
        if parts == ["api", "json"]:
            return self._send(200, {"mode": "NORMAL", "jobs": [{"name": n} for n in j.jobs]})
        if parts == ["crumbIssuer", "api", "json"]:
            return self._send(
                200,
                {
                    "_class": "hudson.security.csrf.DefaultCrumbIssuer",
                    "crumb": j.crumb,
                    "crumbRequestField": CRUMB_FIELD,
                },
            )
        if len(parts) == 5 and parts[:2] == ["queue", "item"] and parts[3:] == ["api", "json"]:
            item = j.queue.get(int(parts[2]))
            return self._send(200, j.queue_json(item)) if item else self._send(404, "")
        if len(parts) >= 4 and parts[0] == "job":
            build = j.builds.get((parts[1], int(parts[2]))) if parts[2].isdigit() else None
            if build is None:
                return self._send(404, "Not Found", ctype="text/plain")
            if parts[3:] == ["api", "json"]:
                return self._send(200, j.build_json(build))
            if parts[3:] == ["consoleText"]:
                return self._send(200, build.console.text(), ctype="text/plain")
        self._send(404, "Not Found", ctype="text/plain")

    def do_POST(self) -> None:  # noqa: N802
        self._read_body()
        if not self._authorised():
            return
        j = self.jenkins
        if self.headers.get(CRUMB_FIELD) != j.crumb:
            return self._send(403, "No valid crumb was included in the request", ctype="text/plain")
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.strip("/").split("/") if p]
        # (an empty parameter is given as empty, as Jenkins takes it: not left out)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        if len(parts) == 3 and parts[0] == "job" and parts[2] == "buildWithParameters":
            if parts[1] not in j.jobs:
                return self._send(404, "Not Found", ctype="text/plain")
            item = j.enqueue(parts[1], query)
            return self._send(201, b"", headers={"Location": f"{j.url}queue/item/{item.id}/"})
        if parts == ["queue", "cancelItem"]:
            item = j.queue.get(int(query.get("id", "0")))
            if item is None:
                return self._send(404, "")
            item.cancelled = True
            return self._send(204, b"")
        if len(parts) == 4 and parts[0] == "job" and parts[3] == "stop":
            build = j.builds.get((parts[1], int(parts[2])))
            if build is None:
                return self._send(404, "")
            build.console.abort.set()
            return self._send(200, b"")
        self._send(404, "Not Found", ctype="text/plain")
