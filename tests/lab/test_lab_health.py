"""Health on the lab: the `health` job asks every host of the session's lab to check its own
services (salt/_modules/coop_health.py, through salt-api), for real; a service stopped on its
host fails its check with the reason, `check_notice` posts that to a chat receiver of the test's
own, and once the service is back, the recovery."""

from __future__ import annotations

import os

import dagster as dg
import pytest
import yaml
from chat_receiver import ChatReceiver
from lab_env import LAB_NUMBER, LabEnv

from infra_assets.operations.health import JOB, SCHEDULE, health_key
from resources.topology import TopologyResource
from sensors import notifications

HOST = "web-staging-1"


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        f"{e.asset_key.path[1]}:{e.check_name}": e for e in result.get_asset_check_evaluations()
    }


@pytest.fixture
def chat(lab_env: LabEnv, chat_receiver: ChatReceiver, tmp_path, monkeypatch):
    """The lab's secrets with a chat: the receiver."""
    data = yaml.safe_load(lab_env.site.secrets_file().read_text())
    path = tmp_path / "secrets.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump({**data, "chat": {"webhook_url": chat_receiver.url}}, out)
    monkeypatch.setenv("INFRA_SECRETS_FILE", str(path))
    monkeypatch.setattr(notifications, "spool_dir", lambda: tmp_path / "notices")  # its own
    return chat_receiver


def test_every_service_answers_and_a_stopped_one_is_reported_then_its_recovery(
    lab_env: LabEnv, chat: ChatReceiver
):
    defs = lab_env.definitions()
    assert defs.resolve_schedule_def(SCHEDULE).cron_schedule == "*/5 * * * *"
    instance = dg.DagsterInstance.ephemeral()
    driver = lab_env.lab().lab()
    cursor: list[str | None] = [None]

    def check() -> dict[str, dg.AssetCheckEvaluation]:
        with lab_env.env():
            result = defs.resolve_job_def(JOB).execute_in_process(instance=instance)
        assert result.success  # services down or not, the run itself succeeds
        return _evaluations(result)

    def notices() -> list[str]:
        before = len(chat.texts())
        with dg.build_sensor_context(
            instance=instance,
            cursor=cursor[0],
            definitions=defs,
            resources={"topology_file": TopologyResource(path=str(lab_env.topology_file))},
        ) as context:
            notifications.check_notice(context)
            cursor[0] = context.cursor
        return chat.texts()[before:]

    first = check()
    failing = {k: e.description for k, e in first.items() if not e.passed}
    # This instance has no backup yet: each postgres host's `recent` says so (tests/
    # test_lab_backups.py backs up); everything else answers.
    assert failing == {
        f"{h}:recent": f"{h}: never backed up" for h in ("pg-production-1", "pg-staging-1")
    }
    # Every host, and on each the services of its roles.
    assert {k.split(":")[0] for k in first} == set(lab_env.topo.hosts)
    for key in ("support-1:dns", "support-1:registry", "support-1:registry_push",
                "support-1:npm_cache", "support-1:pypi_cache", "support-1:salt_api",
                "pg-staging-1:postgres", f"{HOST}:nginx", f"{HOST}:app_hello",
                "support-2:minion"):  # fmt: skip
        assert key in first, sorted(first)
    dns = first["support-1:dns"].metadata["detail"].value
    assert dns.endswith(f"answers the plan's {len(lab_env.topo.hosts)} names"), dns
    [backups] = notices()  # the first tick: what fails then (no backup yet)
    assert backups.count("*check failed*") == 2 and "never backed up" in backups

    driver.exec(LAB_NUMBER, HOST, ["systemctl", "stop", "nginx"])
    try:
        down = check()
        nginx = down[f"{HOST}:nginx"]
        assert not nginx.passed
        assert nginx.description == f"{HOST}: unit nginx is inactive"
        others = {k for k, e in down.items() if not e.passed and not k.endswith(":recent")}
        assert others == {f"{HOST}:nginx"}  # the rest of the lab is fine
        [said] = notices()
        assert said.startswith(
            f":warning: *check failed* (error): *nginx* on {health_key(HOST).to_user_string()}\n"
            f"{HOST}: unit nginx is inactive\n"
        )
        check()
        assert notices() == []  # still down: said once
    finally:
        driver.exec(LAB_NUMBER, HOST, ["systemctl", "start", "nginx"])
    assert check()[f"{HOST}:nginx"].passed
    assert notices() == [f":white_check_mark: *check passes again*: *nginx* on health/{HOST}"]
