"""deploybot (apps/deploybot/app.py), the chat-ops bot: `python3 app.py` (its image's command) in
a process of its own on loopback, against a real dagster-webserver and dagster-daemon on an
instance of the test's own, loading the project's code location (workspace.yaml) on a cloud
topology with the app `hello`. The bot talks to Dagster through its GraphQL API alone, here over
plain HTTP to the webserver itself: the dagster role's nginx, its login and its certificate are
on the lab's path (tests/lab/test_lab_dagster.py tests them; the bot behind them: not yet).

Each refusal is tested (a bad or missing signature, an old, future or replayed request, an
unknown user, app or command), and then that none of them started anything: 0 runs by the bot.
A signed `/deploy promote hello` is answered within 3 s with its run's id; the run is the
`promote` job on hello's production release alone; it fails (there is no site to release to
here), and the bot posts that, with the step's own reason, to the command's response_url (a real
HTTP receiver of the test's). The success of a promotion needs a site: the lab's (next)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from chat_receiver import ChatReceiver
from dagster_services import running_dagster
from fixtures_delivery import write_app_topology

from lab.processes import free_port
from resources.dagster_api import DagsterApi
from resources.paths import REPO_ROOT

APP = REPO_ROOT / "apps" / "deploybot" / "app.py"
SECRET = "the-bot-s-signing-secret-for-tests"
USER = "U0COOP1"

# Slack's own worked example (docs.slack.dev, "Verifying requests from Slack").
DOC_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
DOC_TIMESTAMP = "1531420618"
DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
    b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
    b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
    b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
    b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def _bot_module():
    spec = importlib.util.spec_from_file_location("deploybot_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_signature_is_slack_s_documented_one():
    bot = _bot_module()
    assert bot.signature(DOC_SECRET, DOC_TIMESTAMP, DOC_BODY) == DOC_SIGNATURE
    assert bot.signature(b"another secret", DOC_TIMESTAMP, DOC_BODY) != DOC_SIGNATURE


class Bot:
    def __init__(self, url: str):
        self.url = url

    def post(self, text: str, *, user: str = USER, command: str = "/deploy",
             response_url: str = "", timestamp: float | None = None, secret: str = SECRET,
             signed: bool = True) -> requests.Response:  # fmt: skip
        body = urllib.parse.urlencode(
            {"command": command, "text": text, "user_id": user, "user_name": "someone",
             "team_id": "T0COOP", "channel_id": "C0DEPLOY", "response_url": response_url}
        ).encode()  # fmt: skip
        return self.send(body, timestamp=timestamp, secret=secret, signed=signed)

    def send(self, body: bytes, *, timestamp: float | None = None, secret: str = SECRET,
             signed: bool = True, signature: str | None = None) -> requests.Response:  # fmt: skip
        ts = str(int(time.time() if timestamp is None else timestamp))
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signed:
            sig = signature or _bot_module().signature(secret.encode(), ts, body)
            headers.update({"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig})
        return requests.post(f"{self.url}/slack/commands", data=body, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def dagster(tmp_path_factory):
    """A real webserver and daemon on an instance of the module's own, with the project's code
    location on a cloud topology whose app is hello (nothing to release to)."""
    tmp = tmp_path_factory.mktemp("deploybot")
    topology = write_app_topology(tmp / "topology.yaml", {"hello": "https://git.invalid/hello.git"},
                                  cloud="catalyst")  # fmt: skip
    env = {"INFRA_TOPOLOGY": str(topology), "INFRA_STATE_DIR": str(tmp / "state")}
    with running_dagster(tmp, env) as ui:
        yield ui


@pytest.fixture(scope="module")
def bot(dagster, tmp_path_factory):
    """The bot as its image runs it: `python3 app.py`, its settings in its environment."""
    tmp = tmp_path_factory.mktemp("bot")
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "APP_VERSION": "test",
        "SLACK_SIGNING_SECRET": SECRET,
        "ALLOWED_USERS": f"{USER},U0COOP2",
        "DEPLOY_APPS": "hello",
        "DAGSTER_URL": dagster,
        "RUN_TIMEOUT_S": "240",
    }
    log = (tmp / "bot.log").open("w")
    process = subprocess.Popen(["python3", str(APP)], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).json()["app"] == "deploybot":
                    break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield Bot(url)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _bot_runs(ui: str) -> list:
    return [r for r in DagsterApi(ui).runs({"coop/started_by": "deploybot"})]


@pytest.mark.slow  # a webserver, a daemon and the bot (about a minute)
def test_every_refusal_starts_nothing(bot: Bot, dagster: str):
    now = time.time()
    refused = {
        "no signature": bot.post("promote hello", signed=False),
        "another secret": bot.post("promote hello", secret="not-the-bot-s-secret"),
        "6 minutes old": bot.post("promote hello", timestamp=now - 360),
        "6 minutes ahead": bot.post("promote hello", timestamp=now + 360),
    }
    for why, answer in refused.items():
        assert answer.status_code == 401, (why, answer.text)
    assert refused["another secret"].json() == {"error": "bad signature"}
    assert refused["6 minutes old"].json() == {"error": "timestamp more than 5 minutes from now"}
    # A signed body changed on the way: its signature no longer holds.
    body = b"command=%2Fdeploy&text=status+hello&user_id=U0COOP1"
    good = _bot_module().signature(SECRET.encode(), str(int(now)), body)
    assert bot.send(body + b"x", signature=good).status_code == 401
    # A request sent twice: the first is answered, the same one again is a replay.
    assert bot.send(body, timestamp=now, signature=good).status_code == 200
    again = bot.send(body, timestamp=now, signature=good)
    assert again.status_code == 401 and again.json()["error"].startswith("replayed")

    answers = {
        "unknown user": bot.post("promote hello", user="U0STRANGER"),
        "unknown app": bot.post("promote nothello"),
        "unknown command": bot.post("promote hello", command="/shipit"),
        "unknown subcommand": bot.post("destroy hello"),
        "unknown environment": bot.post("rollback hello qa"),
    }
    for why, answer in answers.items():
        assert answer.status_code == 200, (why, answer.text)
        assert answer.json()["response_type"] == "ephemeral", why  # said to the asker only
    assert "may not deploy" in answers["unknown user"].json()["text"]
    assert "unknown app 'nothello' (the bot deploys hello)" in answers["unknown app"].json()["text"]
    # A body with no length, a negative one or too long a one is not read.
    for length in ("", "-1", str(64 * 1024 + 1)):
        raw = requests.Request("POST", f"{bot.url}/slack/commands", data=b"x").prepare()
        raw.headers["Content-Length"] = length
        if not length:
            del raw.headers["Content-Length"]
        with requests.Session() as s:
            status = s.send(raw, timeout=10).status_code
        assert status in (411, 413), (length, status)
    # 0 commands accepted from the refused set: nothing was started in Dagster.
    assert _bot_runs(dagster) == []


@pytest.mark.slow
def test_a_promote_answers_at_once_and_posts_the_run_s_failure_later(
    bot: Bot, dagster: str, chat_receiver: ChatReceiver
):
    started = time.monotonic()
    answer = bot.post("promote hello", response_url=chat_receiver.url)
    took = time.monotonic() - started
    assert answer.status_code == 200 and took < 3, (took, answer.text)
    text = answer.json()["text"]
    assert answer.json()["response_type"] == "in_channel"
    assert text.startswith(f"promote of hello started by <@{USER}>: run ")
    run_id = text.rsplit(" ", 1)[1]

    # The run is the promote job, on hello's production release alone, asked by the user.
    [run] = [r for r in _bot_runs(dagster) if r.run_id == run_id]
    assert run.job == "promote"
    data = DagsterApi(dagster).query(
        "the run",
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { assetSelection { path }"
        " tags { key value } } } }",
        {"id": run_id},
    )["runOrError"]
    assert sorted(k["path"] for k in data["assetSelection"]) == [
        ["release", "production", "hello"],
        ["topology"],
    ]
    assert {"key": "coop/asked_by", "value": USER} in data["tags"]

    # It fails here (no site to release to); the bot says so in the channel, with the reason.
    message = chat_receiver.wait_for(f"promote of hello: failure (run {run_id})", timeout_s=240)
    print(message.body["text"])
    assert message.body["response_type"] == "in_channel"
    assert "\nrelease__production__hello: release/production/hello: " in message.body["text"]

    # A rollback of staging: the rollback_staging job, on hello's staging release alone, with
    # its op's rollback config.
    answer = bot.post("rollback hello staging", response_url=chat_receiver.url)
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["text"].rsplit(" ", 1)[1]
    [run] = [r for r in _bot_runs(dagster) if r.run_id == run_id]
    assert run.job == "rollback_staging"
    chat_receiver.wait_for(f"rollback of hello on staging: failure (run {run_id})", timeout_s=240)

    # A status answers at once, from Dagster's records.
    status = bot.post("status hello")
    assert status.status_code == 200
    assert status.json()["text"] == (
        "hello: staging runs nothing released; production runs nothing released"
    )


def test_a_run_is_awaited_through_a_busy_dagster(monkeypatch):
    """While the bot awaits a run, Dagster may not answer (a restarting webserver, a busy host):
    it asks again until the run's deadline, and reports the outcome; a Dagster that never
    answers is reported, not a run's status made up."""
    answers = [502, 503, 200]
    then = [200]  # what Dagster answers once `answers` are used up

    class Dagster(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            status = answers.pop(0) if answers else then[0]
            body = json.dumps({"data": {"runOrError": {"status": "SUCCESS"}}}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Dagster)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("DAGSTER_URL", f"http://127.0.0.1:{server.server_port}")
        bot = _bot_module()
        monkeypatch.setattr(bot.time, "sleep", lambda s: None)
        assert bot.wait_run("run-1", timeout_s=30) == ("SUCCESS", "")
        assert answers == []
        then[0] = 503  # a Dagster that never answers again
        with pytest.raises(bot.DagsterUnreachable, match="HTTP 503"):
            bot.wait_run("run-2", timeout_s=0.5)
    finally:
        server.shutdown()
        server.server_close()
