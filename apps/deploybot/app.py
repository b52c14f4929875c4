"""deploybot: the co-op's chat-ops bot. Slack's slash command `/deploy` (Mattermost's slash
commands send the same form), answered within Slack's 3 seconds, the result posted later:

    /deploy status <app>                        what staging and production run
    /deploy promote <app>                       staging's release to production
    /deploy rollback <app> [staging|production] the previous release back (production by default)

Every request is checked before anything is done, and refused otherwise:
- its signature: `X-Slack-Signature` must be `v0=` + HMAC-SHA256 of `v0:<timestamp>:<body>` with
  the signing secret (compared in constant time); a missing or wrong one: 401;
- its timestamp: at most 5 minutes from now, either way (an old request replayed later): 401;
  and a request already seen (the same signature within those 5 minutes): 401;
- the command `/deploy`, a user in ALLOWED_USERS (Slack user ids), an app in DEPLOY_APPS, one
  of the three subcommands: else an answer saying why, only to the one who asked, and nothing
  is started.

It talks to Dagster only through its GraphQL API (DAGSTER_URL, behind the dagster role's nginx:
DAGSTER_ACCOUNT and DAGSTER_PASSWORD, the certificate checked against DAGSTER_CA_FILE or the
PEM in DAGSTER_CA): `promote` and `rollback` launch the job on that app's release alone; the
answer says the run started, and when the run ends the bot posts its outcome to the command's
`response_url`, in the channel (through HTTPS_PROXY when one is set). Standard library only.

    GET  /health          -> 200 {"status": "ok", "app": "deploybot", "version": "<git sha>"}
    POST /slack/commands  -> the slash command
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import signal
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("APP_VERSION", "unknown")
NAME = os.environ.get("APP_NAME", "deploybot")
WINDOW_S = 300  # Slack's: a request older than 5 minutes is refused
MAX_BODY = 64 * 1024
LOCATION = os.environ.get("DAGSTER_LOCATION", "coop-infra")
REPOSITORY = "__repository__"
ENVIRONMENTS = ("staging", "production")
USAGE = "usage: /deploy status|promote <app>, /deploy rollback <app> [staging|production]"


def _setting(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _list(name: str) -> set[str]:
    return {v.strip() for v in _setting(name).replace(" ", ",").split(",") if v.strip()}


# --- the request's checks ------------------------------------------------------------------------


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """Slack's request signature (version v0)."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret, base, hashlib.sha256).hexdigest()


class Seen:
    """The signatures of the last 5 minutes' requests: one seen again is a replay."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}

    def first_time(self, sig: str, now: float) -> bool:
        with self._lock:
            for old, at in list(self._seen.items()):
                if now - at > 2 * WINDOW_S:
                    del self._seen[old]
            if sig in self._seen:
                return False
            self._seen[sig] = now
            return True


SEEN = Seen()


def check_request(headers, body: bytes, now: float) -> str | None:
    """Why the request is refused (401), or None: signed with the secret, recent, new."""
    secret = _setting("SLACK_SIGNING_SECRET").encode()
    if not secret:
        return "the bot has no signing secret (SLACK_SIGNING_SECRET)"
    timestamp = headers.get("X-Slack-Request-Timestamp") or ""
    given = headers.get("X-Slack-Signature") or ""
    if not timestamp.isdigit() or not given:
        return "not signed (X-Slack-Request-Timestamp, X-Slack-Signature)"
    if not hmac.compare_digest(given.encode(), signature(secret, timestamp, body).encode()):
        return "bad signature"
    if abs(now - int(timestamp)) > WINDOW_S:
        return "timestamp more than 5 minutes from now"
    if not SEEN.first_time(given, now):
        return "replayed (this request was seen already)"
    return None


def parse_command(form: dict[str, str]) -> tuple[str, str, str] | str:
    """(subcommand, app, environment) of an allowed user's `/deploy`, or why not."""
    if form.get("command") != "/deploy":
        return f"unknown command {form.get('command', '')[:40]!r}: {USAGE}"
    user = form.get("user_id", "")
    if user not in _list("ALLOWED_USERS"):
        return f"user {user[:40]!r} may not deploy: ask to be added to the bot's allowed users"
    words = form.get("text", "").split()
    if len(words) < 2 or words[0] not in ("status", "promote", "rollback"):
        return USAGE
    sub, app, rest = words[0], words[1], words[2:]
    if app not in _list("DEPLOY_APPS"):
        known = ", ".join(sorted(_list("DEPLOY_APPS"))) or "none"
        return f"unknown app {app[:40]!r} (the bot deploys {known})"
    environment = "production"
    if sub == "rollback" and rest:
        environment = rest[0]
    if environment not in ENVIRONMENTS or (sub != "rollback" and rest) or len(rest) > 1:
        return USAGE
    return sub, app, environment


# --- Dagster, through its GraphQL API ------------------------------------------------------------


class DagsterError(RuntimeError):
    pass


class DagsterUnreachable(DagsterError):
    """Dagster did not answer, or answered 5xx: a busy or restarting webserver, worth asking
    again while a run is awaited."""


def _tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca_file, ca_pem = _setting("DAGSTER_CA_FILE"), os.environ.get("DAGSTER_CA", "")
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    elif ca_pem.strip():
        context.load_verify_locations(cadata=ca_pem)
    return context


def graphql(query: str, variables: dict) -> dict:
    """POST the query to Dagster's /graphql; its data, or DagsterError."""
    url = urllib.parse.urlsplit(_setting("DAGSTER_URL").rstrip("/") + "/graphql")
    body = json.dumps({"query": query, "variables": variables}).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    account, password = _setting("DAGSTER_ACCOUNT"), os.environ.get("DAGSTER_PASSWORD", "")
    if account:
        token = f"{account}:{password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
    if url.scheme == "https":
        conn = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=10,
                                           context=_tls())  # fmt: skip
    else:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
    try:
        conn.request("POST", url.path, body=body, headers=headers)
        answer = conn.getresponse()
        text = answer.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as err:
        raise DagsterUnreachable(f"Dagster cannot be reached: {err}") from None
    finally:
        conn.close()
    if answer.status >= 500:
        raise DagsterUnreachable(f"Dagster answered HTTP {answer.status}")
    if answer.status != 200:
        raise DagsterError(f"Dagster answered HTTP {answer.status}")
    data = json.loads(text)
    if data.get("errors"):
        raise DagsterError("; ".join(str(e.get("message")) for e in data["errors"])[:300])
    return data.get("data") or {}


LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } ... on Error { message } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status }
  ... on Error { message } } }"""
FAILURE = """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
  __typename ... on ExecutionStepFailureEvent { stepKey error { message } } } } } }"""
RELEASE = """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
  assetMaterializations(limit: 1) { timestamp metadataEntries { label
    ... on TextMetadataEntry { text } } } } } }"""


def _op(environment: str, app: str) -> str:
    return f"release__{environment}__{app}".replace("-", "_")


def launch(sub: str, app: str, environment: str, asked_by: str) -> str:
    """Start the job for `app` alone; the run's id."""
    job = {"promote": "promote", "rollback": "rollback"}[sub]
    if sub == "rollback" and environment == "staging":
        job = "rollback_staging"
    config = {}
    if sub == "rollback":
        config = {"ops": {_op(environment, app): {"config": {"rollback": True}}}}
    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "jobName": job,
            "assetSelection": [{"path": ["topology"]}, {"path": ["release", environment, app]}],
        },
        "runConfigData": config,
        "executionMetadata": {"tags": [{"key": "coop/asked_by", "value": asked_by},
                                       {"key": "coop/started_by", "value": "deploybot"}]},
    }  # fmt: skip
    result = graphql(LAUNCH, {"p": params}).get("launchRun") or {}
    if result.get("__typename") != "LaunchRunSuccess":
        why = result.get("message") or "; ".join(
            str(e.get("message")) for e in result.get("errors") or []
        )
        raise DagsterError(f"{job} was not started: {result.get('__typename')}: {why}"[:400])
    return result["run"]["runId"]


def wait_run(run_id: str, timeout_s: float) -> tuple[str, str]:
    """Until the run ends: (its status, what went wrong when it failed)."""
    deadline = time.monotonic() + timeout_s
    status, unreachable = "UNKNOWN", None
    while True:  # asked at least once, however short the deadline
        try:
            found = graphql(RUN, {"id": run_id}).get("runOrError") or {}
        except DagsterUnreachable as err:  # asked again until the deadline
            unreachable = err
        else:
            status, unreachable = found.get("status") or status, None
        if status in ("SUCCESS", "FAILURE", "CANCELED") or time.monotonic() >= deadline:
            break
        time.sleep(2)
    if unreachable is not None and status == "UNKNOWN":
        raise unreachable
    if status != "FAILURE":
        return status, ""
    events = (graphql(FAILURE, {"id": run_id}).get("logsForRun") or {}).get("events") or []
    lines = []
    for event in events:  # each failed step's own error (a Failure's description)
        if event.get("__typename") == "ExecutionStepFailureEvent":
            message = ((event.get("error") or {}).get("message") or "").strip()
            message = message.split("Failure: ", 1)[-1] if "Failure: " in message else message
            lines.append(f"{event.get('stepKey')}: {message}")
    return status, "\n".join(lines)[:1500]


def release_of(environment: str, app: str) -> str:
    data = graphql(RELEASE, {"key": {"path": ["release", environment, app]}})
    mats = (data.get("assetOrError") or {}).get("assetMaterializations") or []
    if not mats:
        return "nothing released"
    meta = {e["label"]: e.get("text") for e in mats[0]["metadataEntries"]}
    return f"{(meta.get('sha') or '?')[:12]} ({(meta.get('digest') or '?')[:19]})"


# --- the answers ---------------------------------------------------------------------------------


def post_later(response_url: str, text: str) -> None:
    """The command's later answer, in the channel (Slack's response_url; through HTTPS_PROXY
    when one is set, as a CONNECT tunnel)."""
    url = urllib.parse.urlsplit(response_url)
    body = json.dumps({"response_type": "in_channel", "text": text}).encode()
    proxy = urllib.parse.urlsplit(_setting("HTTPS_PROXY") or _setting("https_proxy") or "")
    port = url.port or (443 if url.scheme == "https" else 80)
    if url.scheme == "https":
        conn = http.client.HTTPSConnection(
            proxy.hostname or url.hostname, proxy.port or port, timeout=10
        )
    else:
        conn = http.client.HTTPConnection(proxy.hostname or url.hostname, proxy.port or port,
                                          timeout=10)  # fmt: skip
    if proxy.hostname:
        conn.set_tunnel(url.hostname, port)
    path = url.path + (f"?{url.query}" if url.query else "")
    try:
        conn.request("POST", path or "/", body=body, headers={"Content-Type": "application/json"})
        conn.getresponse().read()
    except (OSError, http.client.HTTPException) as err:
        sys.stderr.write(f"deploybot: the answer could not be posted: {err}\n")
    finally:
        conn.close()


def follow(sub: str, app: str, environment: str, run_id: str, response_url: str) -> None:
    """Post the run's outcome when it ends."""
    what = f"{sub} of {app}" + (f" on {environment}" if sub == "rollback" else "")
    try:
        status, why = wait_run(run_id, float(_setting("RUN_TIMEOUT_S", "900")))
        if status == "SUCCESS":
            text = f"{what}: done (run {run_id}): {environment} runs {release_of(environment, app)}"
        else:
            text = f"{what}: {status.lower()} (run {run_id})" + (f"\n{why}" if why else "")
    except DagsterError as err:
        text = f"{what}: run {run_id}: {err}"
    post_later(response_url, text)


def handle(form: dict[str, str]) -> dict:
    """The immediate answer to a signed request (within Slack's 3 s)."""
    parsed = parse_command(form)
    if isinstance(parsed, str):
        return {"response_type": "ephemeral", "text": parsed}
    sub, app, environment = parsed
    try:
        if sub == "status":
            staging, production = (release_of(e, app) for e in ENVIRONMENTS)
            text = f"{app}: staging runs {staging}; production runs {production}"
            return {"response_type": "in_channel", "text": text}
        run_id = launch(sub, app, environment, form.get("user_id", ""))
    except DagsterError as err:
        return {"response_type": "ephemeral", "text": f"{sub} {app}: {err}"}
    response_url = form.get("response_url", "")
    threading.Thread(
        target=follow, args=(sub, app, environment, run_id, response_url), daemon=True
    ).start()
    where = f" on {environment}" if sub == "rollback" else ""
    text = f"{sub} of {app}{where} started by <@{form.get('user_id', '')}>: run {run_id}"
    return {"response_type": "in_channel", "text": text}


class Handler(BaseHTTPRequestHandler):
    server_version = f"{NAME}/{VERSION[:12]}"
    timeout = 10  # a client that sends slowly is let go

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path.split("?", 1)[0] == "/health":
            self._json(200, {"status": "ok", "app": NAME, "version": VERSION})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/slack/commands":
            return self._json(404, {"error": "not found"})
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            return self._json(411, {"error": "a Content-Length is needed"})
        if not 0 <= length <= MAX_BODY:
            return self._json(413, {"error": f"the body must be 0 to {MAX_BODY} bytes"})
        body = self.rfile.read(length)
        refused = check_request(self.headers, body, time.time())
        if refused:
            self.log_message("refused: %s", refused)
            return self._json(401, {"error": refused})
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}
        self._json(200, handle(form))

    def _json(self, status: int, data: dict) -> None:
        out = (json.dumps(data) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, fmt: str, *args) -> None:
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def _stop(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer((os.environ.get("HOST", "0.0.0.0"), port), Handler)
    signal.signal(signal.SIGTERM, _stop)
    sys.stderr.write(f"{NAME} {VERSION[:12]} listening on port {port}\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
