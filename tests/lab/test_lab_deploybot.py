"""The chat-ops bot on the lab, end to end: the co-op adds `deploybot` (apps/deploybot) to its
topology as it adds any app, and the lab's own Dagster (the `dagster` role on support-1) does the
rest, as it would for the co-op.

The session's lab topology plus the bot (`dagster: true`: its own account of the UI) and the
lab's secrets plus a chat (a receiver of the test's own on this machine, through the lab's egress
proxy, the lab's only way out) are applied by this machine's Dagster as `infra lab up` would
(the network's allow-list and git exports, the pillar, the states of the roles the change
touches). Then, as pushes do (the webhook endpoint's own code, launching in the lab's Dagster):
a new commit of hello is built and released on staging there, the bot's repo is built and
released on staging there, and `promote` sends the bot to production. A signed
`/deploy promote hello` posted to the bot's public site is answered within Slack's 3 s; the
lab's Dagster promotes hello; the bot's later answer reaches the chat, and so does the lab's
Dagster's own notice of the promotion. A run that fails in the lab's Dagster is a notice in the
chat too, posted from support-1 through a tunnel of the egress proxy (the lab's only way out).
The session's topology and secrets are put back after, and the chat leaves the allow-list.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse
from pathlib import Path

import dagster as dg
import pytest
import yaml
from lab_env import LAB_NUMBER, LabEnv

from infra_assets.configuration.pillar import registry_tls_names
from infra_assets.definitions import build_definitions
from infra_assets.topology.model import load_topology
from infra_assets.topology.secrets import ensure_secrets
from lab.demo_loop import ensure_repo
from lab.lab_dagster import lab_dagster
from lab.site import app_site, environment, lab_site
from resources.dagster_api import DagsterApi
from webhooks.push import PushHandler

pytestmark = [pytest.mark.slow, pytest.mark.lab]

BOT = "deploybot"
USER = "U0LABOPS"
# What the change touches: the egress allow-list and the git daemon's exports (network), the
# pillar, the bot's names in DNS, its account in the UI's login and the Dagster's topology, the
# web hosts' sites and their containers' way to the UI.
APPLY = ("network/lab", "salt_pillar", "highstate/dns", "highstate/dagster",
         "highstate/web-staging", "highstate/web-production")  # fmt: skip

# A staging release of hello that fails at its first step (a digest that is none).
FAIL_AT_ONCE = {"release__staging__hello": {"config": {"digest": "sha256:not-a-digest"}}}

RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""


def _apply(lab_env: LabEnv, topology_file: Path) -> dg.ExecuteInProcessResult:
    """APPLY's assets for `topology_file`, by this machine's Dagster (the lab's bootstrap)."""
    defs = build_definitions(load_topology(topology_file))
    with lab_env.env(), environment(INFRA_TOPOLOGY=str(topology_file)):
        return defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=dg.DagsterInstance.get(),
            asset_selection=[dg.AssetKey.from_user_string(k) for k in ("topology", *APPLY)],
            raise_on_error=False,
        )


def _wait(api: DagsterApi, run_id: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = api.query("a run's status", RUN, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS", f"run {run_id}: {status}\n{api.failure(run_id)}"


def _signed(secret: str, body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
    }


def test_a_signed_deploy_promote_hello_promotes_on_the_lab_and_answers_in_the_channel(
    lab_env: LabEnv, chat_receiver, tmp_path: Path
):
    site = lab_env.site
    egress = site.egress(LAB_NUMBER)
    target = chat_receiver.url.split("/")[2]  # host:port
    support_1 = {a.address for a in site.plan.for_host("support-1")}
    dagster = lab_dagster(site)
    assert dagster is not None, "the lab's topology runs the dagster role"
    api = dagster.api()
    dagster.wait_ready()

    # The co-op's change: the bot in the topology (its repo beside hello's), a chat.
    data = yaml.safe_load(lab_env.topology_file.read_text())
    data["apps"][BOT] = {
        "repo": str(lab_env.topology_file.parent / "git" / f"{BOT}.git"),
        "branch": "main",
        # a port of its own: its containers outlive the test (no state removes an app from a
        # web host yet), and the session's other apps listen on 8000-8020
        "port": 8090,
        "health": "/health",
        "dagster": True,
        "env": {"ALLOWED_USERS": USER, "DEPLOY_APPS": "hello"},
        "secrets": ["SLACK_SIGNING_SECRET"],
        "domains": {"staging": "deploybot.staging.lab.coop.internal",
                    "production": "deploybot.lab.coop.internal"},
    }  # fmt: skip
    with_bot = tmp_path / "topology.lab.yaml"
    with_bot.write_text(yaml.safe_dump(data, sort_keys=False))
    topo = load_topology(with_bot)
    secrets_file = site.secrets_file()
    original = secrets_file.read_text()
    try:
        ensure_secrets(secrets_file, topo, tls_names=registry_tls_names(site))
        secrets = yaml.safe_load(secrets_file.read_text())
        secrets["chat"] = {"webhook_url": chat_receiver.url}
        secrets_file.write_text(yaml.safe_dump(secrets))
        applied = _apply(lab_env, with_bot)
        assert applied.success, [e.message for e in applied.all_events if e.is_failure]
        dagster.wait_ready()  # restarted by its new topology and secrets
        # The chat is on the egress proxy's allow-list for the Dagster host's addresses.
        allow = egress.status()["allow"]
        assert all(target in allow[address] for address in support_1), allow

        # Pushes, as the webhook endpoint starts them: a new commit of hello, and the bot.
        pushes = PushHandler(with_bot, api)
        hello = ensure_repo(with_bot, topo, "hello", tmp_path)
        sha = hello.commit("the bot promotes this one", {"BOT.md": f"{time.time()}\n"})
        hello.push()
        bot_repo = ensure_repo(with_bot, topo, BOT, tmp_path)
        bot_sha = bot_repo.commit("the bot, on the lab", {"LAB.md": f"{time.time()}\n"})
        bot_repo.push()
        for app in ("hello", BOT):
            outcome = pushes.push(app, refs=None, pushed_at=None)
            assert outcome.started, outcome
            _wait(api, outcome.run_id)
        promoted = api.launch(
            "promote", tags={}, assets=[["topology"], ["release", "production", BOT]]
        )
        _wait(api, promoted)
        bot = app_site(lab_site(with_bot), "web-production-1", BOT, "production")
        health = bot.get("/health").json()
        assert health == {"status": "ok", "app": BOT, "version": bot_sha}

        # The command, signed with the bot's secret, as the chat posts it.
        secret = secrets["apps"][BOT]["production"]["SLACK_SIGNING_SECRET"]
        response_url = chat_receiver.url + "/commands/1"
        body = urllib.parse.urlencode({
            "command": "/deploy", "text": "promote hello", "user_id": USER,
            "user_name": "someone", "response_url": response_url,
        })  # fmt: skip
        with bot.session() as http:
            asked = time.monotonic()
            answer = http.post("/slack/commands", body, headers=_signed(secret, body.encode()))
            took = time.monotonic() - asked
        assert answer.status_code == 200, answer.text
        assert took < 3, took
        text = answer.json()["text"]
        assert text.startswith(f"promote of hello started by <@{USER}>: run "), text

        # Its later answer in the channel, through the egress proxy; hello is on production.
        done = chat_receiver.wait_for("promote of hello: done", timeout_s=300)
        print(f"/deploy promote hello: answered in {took:.2f} s; the outcome in the channel"
              f" {done.received - (time.time() - (time.monotonic() - asked)):.1f} s after")  # fmt: skip
        assert done.path == urllib.parse.urlsplit(response_url).path
        assert done.body["response_type"] == "in_channel"
        assert f"production runs {sha[:12]}" in done.body["text"]
        production = app_site(site, "web-production-1", "hello", "production")
        assert production.get("/health").json()["version"] == sha
        # ... and the lab's Dagster's own notice of it
        chat_receiver.wait_for("*hello* promoted to *production*", timeout_s=60)

        # A run that fails in the lab's Dagster: its notice, posted from support-1 through a
        # tunnel of the egress proxy.
        since = time.time()
        failed = api.launch("release_staging_hello", tags={}, run_config={"ops": FAIL_AT_ONCE})
        notice = chat_receiver.wait_for(failed, timeout_s=240)
        assert notice.body["text"].startswith(":x: *release_staging_hello failed* (hello)\n")
        assert "is not sha256:<64 hex digits>" in notice.body["text"]
        deadline = time.monotonic() + 15  # a tunnel's line is written when it closes
        while True:
            tunnels = [t for t in egress.tunnels_since(since) if t["target"] == target]
            if tunnels or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert tunnels and {t["client"] for t in tunnels} <= support_1, egress.log()[-5:]
    finally:
        secrets_file.write_text(original)
        restored = _apply(lab_env, lab_env.topology_file)
        assert restored.success, [e.message for e in restored.all_events if e.is_failure]
    allow = egress.status()["allow"]
    assert not any(target in targets for targets in allow.values()), allow
