"""Notices to the chat (sensors/notifications.py, resources/chat.py), posted to a real HTTP
receiver of the test's own (tests/chat_receiver.py): the chat's JSON, its refusals, the secret
URL kept out of errors, a failed release's notice from the real run's events, and the check
sensor's failures and recoveries from real check evaluations. The notice of a release that went
live, and the daemon's timing, are tested on the lab (tests/lab/test_lab_releases.py) and with the
real daemon (test_a_failed_release_is_in_the_chat_within_10_s_of_its_end, below)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
import yaml
from chat_receiver import ChatReceiver
from dagster_services import running_dagster
from fixtures_delivery import HELLO, delivery_defs, make_app_repo, write_app_topology

from infra_assets.topology.model import load_topology
from infra_assets.topology.secrets import SecretsError, chat_webhook_url
from resources.chat import ChatError, ChatResource
from resources.dagster_api import DagsterApi
from resources.topology import TopologyResource
from sensors import notifications

REPO_ROOT = Path(__file__).resolve().parents[2]
# A secret value of the test's own, given where a failure message quotes it.
SECRET_VALUE = "s3cr3t-value-of-the-tests-own"


def _secrets(path: Path, chat_url: str | None, **more) -> Path:
    data = {"apps": {"hello": {"staging": {"SESSION_KEY": SECRET_VALUE}}}, **more}
    if chat_url is not None:
        data["chat"] = {"webhook_url": chat_url}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(data, out)
    return path


# --- the chat's webhook -----------------------------------------------------------------------


def test_a_notice_is_slack_s_json_at_the_webhook(chat_receiver: ChatReceiver):
    ChatResource(webhook_url=chat_receiver.url).post("*hello* is live on *staging*")
    [message] = chat_receiver.messages
    assert message.path == f"/hooks/{chat_receiver.token}"
    assert message.content_type == "application/json"
    assert message.body == {"text": "*hello* is live on *staging*", "username": "coop-infra"}


def test_a_chat_that_refuses_or_cannot_be_reached_is_a_clear_error_without_its_url(
    chat_receiver: ChatReceiver,
):
    chat_receiver.status, chat_receiver.reply = 404, b"no_service"
    with pytest.raises(ChatError) as refused:
        ChatResource(webhook_url=chat_receiver.url).post("hello")
    assert str(refused.value) == "the chat's webhook answered 404 Not Found: no_service"
    closed = chat_receiver.url.replace(str(chat_receiver.server.server_address[1]), "9")
    with pytest.raises(ChatError) as away:
        ChatResource(webhook_url=closed, timeout_s=2).post("hello")
    assert str(away.value).startswith("the chat's webhook cannot be reached: ")
    with pytest.raises(ChatError, match="^the chat's webhook URL is not an http"):
        ChatResource(webhook_url=f"ftp://x/{chat_receiver.token}").post("hello")
    # a URL that http.client refuses (its message would quote the path), a port that is none
    folded = chat_receiver.url.replace("/hooks/", "/hooks/ ")
    with pytest.raises(ChatError) as invalid:
        ChatResource(webhook_url=folded).post("hello")
    assert str(invalid.value) == "the chat's webhook URL is not an http(s) URL"
    with pytest.raises(ChatError, match="^the chat's webhook URL is not an http"):
        ChatResource(webhook_url=f"http://127.0.0.1:99999/{chat_receiver.token}").post("hello")
    with pytest.raises(
        ChatError, match="^the chat's proxy is not an http URL with a host and a port"
    ):
        ChatResource(webhook_url=chat_receiver.url, proxy="http://127.0.0.1:x/").post("hello")
    for err in (refused.value, away.value, invalid.value):
        assert chat_receiver.token not in str(err)


def test_the_chat_s_url_is_a_secret_of_the_secrets_file(tmp_path):
    assert chat_webhook_url(tmp_path / "absent.yaml") is None
    assert chat_webhook_url(_secrets(tmp_path / "none.yaml", None)) is None
    url = "https://chat.example.coop/hooks/abc123"
    assert chat_webhook_url(_secrets(tmp_path / "ok.yaml", url)) == url
    with pytest.raises(SecretsError) as wrong:
        chat_webhook_url(_secrets(tmp_path / "bad.yaml", "chat.example.coop/hooks/abc123"))
    assert "chat.webhook_url: must be the chat's incoming webhook" in str(wrong.value)
    assert "abc123" not in str(wrong.value)
    for broken in ("https://chat.example.coop/hooks/ abc123", "https://chat.example.coop:x/a"):
        with pytest.raises(SecretsError, match="on one line, with no space in it") as folded:
            chat_webhook_url(_secrets(tmp_path / "folded.yaml", broken))
        assert "abc123" not in str(folded.value)
    shared = _secrets(tmp_path / "shared.yaml", url)
    shared.chmod(0o644)
    with pytest.raises(SecretsError, match="readable by others"):
        chat_webhook_url(shared)


# --- run failures -----------------------------------------------------------------------------


@pytest.fixture
def hello_site(tmp_path, monkeypatch, chat_receiver):
    """The lab's topology with the sample app, its secrets file naming the receiver."""
    repo = make_app_repo(tmp_path, "hello", source=HELLO)
    topo_file = write_app_topology(tmp_path / "topology.yaml", {"hello": str(repo.bare)})
    secrets = _secrets(tmp_path / "secrets.yaml", chat_receiver.url)
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    monkeypatch.setenv("INFRA_SECRETS_FILE", str(secrets))
    monkeypatch.setenv("INFRA_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv(notifications.UI_URL_ENV, raising=False)
    return delivery_defs(load_topology(topo_file))


def _run_event(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType):
    [entry] = instance.all_logs(run_id, of_type=kind)
    return entry.dagster_event


def test_a_failed_release_posts_its_step_s_message_with_secrets_cut(
    hello_site, chat_receiver: ChatReceiver
):
    """A release refused for a digest that is not one (which happens to be a secret's value,
    quoted by the failure): the notice names the job, the step and its message, with the
    secret cut out."""
    instance = dg.DagsterInstance.ephemeral()
    result = hello_site.resolve_job_def("release_staging_hello").execute_in_process(
        instance=instance,
        run_config={"ops": {"release__staging__hello": {"config": {"digest": SECRET_VALUE}}}},
        raise_on_error=False,
    )
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_notice",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=_run_event(instance, result.run_id, dg.DagsterEventType.RUN_FAILURE),
        resources={"topology_file": TopologyResource()},
    ).for_run_failure()
    assert notifications.run_failure_notice(context) is None
    [text] = chat_receiver.texts()
    assert text == (
        ":x: *release_staging_hello failed* (hello)\n"
        "- release__staging__hello: release/staging/hello: config digest '***' is not"
        " sha256:<64 hex digits> (a release is an image by digest, as the registry names it)\n"
        f"run {result.run_id}"
    )
    assert SECRET_VALUE not in text


def test_with_no_chat_configured_the_notices_say_so_and_post_nothing(
    hello_site, chat_receiver: ChatReceiver, tmp_path, monkeypatch
):
    monkeypatch.setenv("INFRA_SECRETS_FILE", str(_secrets(tmp_path / "nochat.yaml", None)))
    skip = notifications.no_chat(TopologyResource())
    assert skip is not None and skip.skip_message.startswith("no notices: no chat configured")
    assert notifications.deliver(TopologyResource(), ["nobody hears this"]) is None
    assert chat_receiver.texts() == [] and notifications.Spool().read() == []


def test_a_notice_the_chat_does_not_take_is_kept_and_posted_first_next_time(
    hello_site, chat_receiver: ChatReceiver, tmp_path
):
    """The chat answers 503: the notice is kept (the tick says so), and posted before the next
    one once the chat takes posts again. A broken secrets file keeps notices too."""
    chat_receiver.status, chat_receiver.reply = 503, b"maintenance"
    problem = notifications.deliver(TopologyResource(), [f"first {SECRET_VALUE}"])
    assert problem == (
        "the chat did not take a notice (the chat's webhook answered 503 Service Unavailable:"
        " maintenance): 1 kept for later"
    )
    assert notifications.Spool().read() == ["first ***"]  # kept with its secrets cut
    spool = Path(os.environ["INFRA_STATE_DIR"]) / "notices" / "undelivered.jsonl"
    assert spool.stat().st_mode & 0o777 == 0o600
    chat_receiver.status = 200
    assert notifications.deliver(TopologyResource(), ["second"]) is None
    assert chat_receiver.texts()[-2:] == ["first ***", "second"]
    assert notifications.Spool().read() == [] and not spool.exists()
    # a secrets file others can read: nothing is posted, the notice is kept, the tick says why
    secrets = Path(os.environ["INFRA_SECRETS_FILE"])
    secrets.chmod(0o644)
    problem = notifications.deliver(TopologyResource(), [f"third {SECRET_VALUE}"])
    assert problem is not None and "1 notices kept for later" in problem
    assert "readable by others" in problem and SECRET_VALUE not in problem
    secrets.chmod(0o600)
    assert notifications.deliver(TopologyResource(), []) is None
    assert chat_receiver.texts()[-1] == "third ***"
    # a secrets file that cannot be read (broken by hand): the notice is kept as it is, and
    # cut as it is posted once the file is mended
    text = secrets.read_text()
    secrets.write_text(text + "registry: [\n")
    problem = notifications.deliver(TopologyResource(), [f"fourth {SECRET_VALUE}"])
    assert problem is not None and "not valid YAML" in problem and SECRET_VALUE not in problem
    secrets.write_text(text)
    assert notifications.deliver(TopologyResource(), []) is None
    assert chat_receiver.texts()[-1] == "fourth ***"


# --- asset checks -----------------------------------------------------------------------------


def test_a_check_that_starts_failing_is_posted_once_and_its_recovery_too(
    tmp_path, monkeypatch, chat_receiver: ChatReceiver
):
    """Real check evaluations (an asset of the test's own and its check, whose outcome the test
    sets), read by the real sensor from the instance: a failure is posted when it starts, not
    at every evaluation, and the recovery once."""
    topo_file = write_app_topology(tmp_path / "topology.yaml", {})
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    monkeypatch.setenv("INFRA_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("INFRA_SECRETS_FILE", str(_secrets(tmp_path / "s.yaml", chat_receiver.url)))
    outcome = {"passed": True, "up": True}

    @dg.asset(key=["service", "nginx"])
    def nginx() -> None:
        if not outcome["up"]:
            raise RuntimeError("the asset failed before its check ran")

    @dg.asset_check(asset=nginx, name="answers")
    def answers() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=outcome["passed"],
            severity=dg.AssetCheckSeverity.WARN,
            description=None if outcome["passed"] else "web-staging-1: connection refused",
        )

    defs = dg.Definitions(assets=[nginx], asset_checks=[answers], sensors=notifications.SENSORS)
    instance = dg.DagsterInstance.ephemeral()
    cursor = None

    def evaluate(passed: bool, up: bool = True) -> list[str]:
        nonlocal cursor
        outcome["passed"], outcome["up"] = passed, up
        ran = dg.materialize([nginx, answers], instance=instance, raise_on_error=False)
        assert ran.success == up
        before = len(chat_receiver.texts())
        with dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            definitions=defs,
            resources={"topology_file": TopologyResource()},
        ) as context:
            notifications.check_notice(context)
            cursor = context.cursor
        return chat_receiver.texts()[before:]

    assert evaluate(True) == []
    [failed] = evaluate(False)
    assert failed.startswith(
        ":warning: *check failed* (warn): *answers* on service/nginx\n"
        "web-staging-1: connection refused\nrun "
    )
    assert evaluate(False) == []  # still failing: said once
    # A run whose asset fails before the check runs leaves the check planned, for good: no
    # change to post, and the sensor's ticks go on (they failed on it before).
    assert evaluate(False, up=False) == []
    assert evaluate(True) == [":white_check_mark: *check passes again*: *answers* on service/nginx"]
    assert evaluate(True) == []


# --- the real daemon --------------------------------------------------------------------------


@pytest.mark.slow  # a webserver and a daemon of the test's own (about a minute)
def test_a_failed_release_is_in_the_chat_within_10_s_of_its_end(tmp_path, chat_receiver):
    """The real dagster-daemon runs the notices (on by default) and a release launched through
    the webserver's GraphQL API; the release fails; its notice reaches the receiver within
    10 s of the run's end (the figure the README gives)."""
    repo = make_app_repo(tmp_path, "hello", source=HELLO)
    topo_file = write_app_topology(tmp_path / "topology.yaml", {"hello": str(repo.bare)})
    env = {
        "INFRA_TOPOLOGY": str(topo_file),
        "INFRA_SECRETS_FILE": str(_secrets(tmp_path / "secrets.yaml", chat_receiver.url)),
        "INFRA_STATE_DIR": str(tmp_path / "state"),
    }
    home = tmp_path / "dagster"
    try:
        with running_dagster(tmp_path, env, ui_url_env=notifications.UI_URL_ENV) as ui:
            api = DagsterApi(ui)
            run_id = api.launch(
                "release_staging_hello",
                run_config={"ops": {"release__staging__hello": {"config": {"digest": "latest"}}}},
                tags={"coop/app": "hello"},
            )
            message = chat_receiver.wait_for("*release_staging_hello failed*", timeout_s=180)
            os.chdir(home)
            with dg.DagsterInstance.from_config(str(home)) as instance:
                record = instance.get_run_record_by_id(run_id)
                assert (
                    record is not None and record.dagster_run.status == dg.DagsterRunStatus.FAILURE
                )
                ended = record.end_time
            assert ended is not None
            delay = message.received - ended
            print(f"notice {delay:.1f} s after the run's end")
            assert 0 <= delay <= 10, delay
            assert f"{ui}/runs/{run_id}" in message.body["text"]
            assert "config digest 'latest' is not sha256:" in message.body["text"]
    finally:
        os.chdir(REPO_ROOT)


def test_the_notices_are_in_the_code_location_and_on_by_default(hello_site):
    sensors = {s.name: s for s in hello_site.sensors}
    for name in ("run_failure_notice", "release_notice", "check_notice"):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors["run_failure_notice"].minimum_interval_seconds == 5


def test_a_site_that_names_no_secrets_file_has_no_chat_and_keeps_nothing(tmp_path, monkeypatch):
    """A cloud's topology with no $INFRA_SECRETS_FILE (CI's runs, a developer's plan): no chat
    configured; nothing is kept to be posted some day."""
    topo_file = write_app_topology(tmp_path / "topology.yaml", {}, cloud="catalyst")
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    monkeypatch.delenv("INFRA_SECRETS_FILE", raising=False)
    monkeypatch.setenv("INFRA_STATE_DIR", str(tmp_path / "state"))
    assert notifications.no_chat(TopologyResource()) is not None
    assert notifications.deliver(TopologyResource(), ["drift found"]) is None
    assert notifications.Spool().read() == []
