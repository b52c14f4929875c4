"""The webhook endpoint (webhooks/), for real: `infra webhooks serve` in a process of its own,
starting runs through a real Dagster webserver's GraphQL API on an instance of the module's own,
called by the project's post-receive hook from a real `git push`; and the real Dagster daemon,
whose git_push_sensor (the fallback) must not start a commit the endpoint started.

Runs stay queued (the instance's queue takes none: `max_concurrent_runs: 0`): what is checked is
what the endpoint asked Dagster for, not a build (the lab's tests build and release).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
import yaml
from fixtures_delivery import HELLO, make_app_repo, write_app_topology

from lab.demo_services import DemoServices, install_hook
from lab.processes import Supervisor, free_port
from webhooks.server import signature

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SECRET = b"a-webhook-secret-of-the-tests-own"
REPO_ROOT = Path(__file__).resolve().parents[2]


class Endpoint:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "dagster"
        self.repo = make_app_repo(root, "hello", source=HELLO)
        self.topology = write_app_topology(root / "topology.yaml", {"hello": str(self.repo.bare)})
        secrets = root / "secrets.yaml"
        fd = os.open(secrets, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump({"webhooks": {"secret": SECRET.decode()}}, out)
        self.env = {
            "INFRA_TOPOLOGY": str(self.topology),
            "INFRA_SECRETS_FILE": str(secrets),
            "INFRA_STATE_DIR": str(root / "state"),
        }
        self.services = DemoServices(root / "run")
        self.url = ""
        self.ui = ""

    def start(self) -> None:
        self.home.mkdir()
        config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
        config["concurrency"]["runs"]["max_concurrent_runs"] = 0  # runs stay queued
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config))
        self.ui = self.services.start_webserver(dagster_home=self.home, env=self.env)
        self.url = self.services.start_webhooks(
            topology_file=self.topology, dagster_url=self.ui, env=self.env
        )

    def post(
        self,
        body: bytes,
        *,
        app: str = "hello",
        sign: bytes | None = SECRET,
        signed_as: str | None = None,
    ):
        """POST /push/<app>: `body` signed with `sign` (None: unsigned), or with the header
        `signed_as` as given."""
        headers = {"Content-Type": "application/json"}
        if sign is not None:
            headers["X-Hub-Signature-256"] = signature(sign, body)
        if signed_as is not None:
            headers["X-Hub-Signature-256"] = signed_as
        return requests.post(f"{self.url}/push/{app}", data=body, headers=headers, timeout=30)

    def instance(self) -> dg.DagsterInstance:
        os.chdir(self.home)  # dagster.yaml names its storage relative to the instance's folder
        return dg.DagsterInstance.from_config(str(self.home))

    def runs(self, **tags: str) -> list[dg.DagsterRun]:
        with self.instance() as instance:
            return list(instance.get_runs(dg.RunsFilter(tags=tags)))


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory):
    before = os.getcwd()
    here = Endpoint(tmp_path_factory.mktemp("webhooks"))
    try:
        here.start()
        yield here
    finally:
        here.services.stop()
        os.chdir(before)


def _push_body(*, ref: str = "refs/heads/main", new: str = "0" * 40) -> bytes:
    update = {"old": "0" * 40, "new": new, "ref": ref}
    return json.dumps({"pushed_at": time.time(), "updates": [update]}).encode()


def test_a_push_that_is_not_signed_with_the_secret_is_refused(endpoint: Endpoint):
    sha = endpoint.repo.commit(message="unsigned")
    body = _push_body()
    for answer in (
        endpoint.post(body, sign=None),
        endpoint.post(body, sign=b"another-secret-of-16-chars"),
    ):
        assert answer.status_code == 401, answer.text
        assert "X-Hub-Signature-256" in answer.json()["error"]
    # A signature of another body does not pass either.
    forged = endpoint.post(body, signed_as=signature(SECRET, b"{}"))
    assert forged.status_code == 401
    # A header that is not ASCII is a wrong signature too, not a crash.
    odd = endpoint.post(body, signed_as="sha256=\xe9t\xe9")
    assert odd.status_code == 401, odd.text
    assert endpoint.runs(**{"coop/sha": sha}) == []


def test_a_signed_body_that_is_no_push_is_a_clear_400(endpoint: Endpoint):
    for body in (b"[1, 2]", b'{"pushed_at": 1' + b"0" * 400 + b"}", b"{not json", b"[" * 100000):
        answer = endpoint.post(body)
        assert answer.status_code == 400, (body[:20], answer.text)
        assert answer.json()["error"].startswith("the body is not a push: ")


def test_an_unknown_app_or_another_branch_starts_nothing(endpoint: Endpoint):
    sha = endpoint.repo.commit(message="on main, but the hook says another branch moved")
    unknown = endpoint.post(_push_body(), app="nobody")
    assert unknown.status_code == 404 and "no app 'nobody'" in unknown.json()["error"]
    other = endpoint.post(_push_body(ref="refs/heads/feature"))
    assert other.status_code == 200, other.text
    assert other.json() == {
        "app": "hello",
        "started": False,
        "why": "refs/heads/feature moved, not refs/heads/main",
    }
    assert endpoint.runs(**{"coop/sha": sha}) == []


def test_a_signed_push_starts_the_deliver_run_of_the_head_the_endpoint_reads(endpoint: Endpoint):
    """The payload names a commit that is not the head: the run is for the head, read from the
    repository; it carries git_push_sensor's name and run key, its partition, and the push's
    time for the stages' seconds. A second call for the same head starts nothing."""
    sha = endpoint.repo.commit(message="a change")
    answer = endpoint.post(_push_body(new="f" * 40))
    assert answer.status_code == 202, answer.text
    result = answer.json()
    assert result["started"] is True and result["sha"] == sha
    assert result["why"] == f"deliver_hello started for {sha[:12]}"
    assert result["run_url"] == f"{endpoint.ui}/runs/{result['run_id']}"
    [run] = endpoint.runs(**{"coop/sha": sha})
    assert run.run_id == result["run_id"] and run.job_name == "deliver_hello"
    assert run.status == dg.DagsterRunStatus.QUEUED
    assert run.tags["dagster/partition"] == sha
    assert run.tags["dagster/sensor_name"] == "git_push_sensor"
    assert run.tags["dagster/run_key"] == f"hello:{sha}"
    assert run.tags["coop/started_by"] == "webhook"
    assert abs(float(run.tags["coop/pushed_at"]) - time.time()) < 60
    with endpoint.instance() as instance:
        assert sha in instance.get_dynamic_partitions("commits_hello")
    assert not [r for r in endpoint.runs(**{"coop/sha": "f" * 40})]

    again = endpoint.post(_push_body())
    assert again.status_code == 200, again.text
    assert again.json()["started"] is False
    assert again.json()["why"] == f"{sha[:12]} has a run already (QUEUED)"
    assert len(endpoint.runs(**{"coop/sha": sha})) == 1


def test_git_push_runs_the_hook_which_starts_the_run(endpoint: Endpoint, tmp_path: Path):
    install_hook(
        endpoint.repo.bare,
        url=f"{endpoint.url}/push/hello",
        secret=SECRET,
        secret_file=tmp_path / "hook-secret",
    )
    assert (tmp_path / "hook-secret").stat().st_mode & 0o777 == 0o600
    work = endpoint.repo.work
    (work / "CHANGES").write_text("pushed with the hook\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.coop"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.coop"}
    subprocess.run(["git", "commit", "-qam", "hooked"], cwd=work, env=env, check=True)
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True, check=True
    ).stdout.strip()
    pushed = subprocess.run(
        ["git", "push", "origin", "HEAD:refs/heads/main"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pushed.returncode == 0, pushed.stderr
    [run] = endpoint.runs(**{"coop/sha": sha})
    assert (
        f"remote: coop-infra: hello: deliver_hello started for {sha[:12]}:"
        f" {endpoint.ui}/runs/{run.run_id}"
    ) in pushed.stderr


def test_the_fallback_sensor_does_not_start_a_commit_the_endpoint_started(endpoint: Endpoint):
    """The real daemon, git_push_sensor on: its first tick sees the new head, asks for its run
    key, and Dagster skips it (a run of that key, by that sensor's name, exists)."""
    sha = endpoint.repo.commit(message="the sensor comes second")
    # 202: started now; 200: the repo's hook (when an earlier test installed it) did already.
    assert endpoint.post(_push_body()).status_code in (200, 202)
    assert len(endpoint.runs(**{"coop/sha": sha})) == 1
    env = {**os.environ, **endpoint.env, "DAGSTER_HOME": str(endpoint.home)}
    workspace = ["-w", str(REPO_ROOT / "workspace.yaml")]
    started = subprocess.run(
        [BIN / "dagster", "sensor", "start", "git_push_sensor", *workspace],
        env=env,
        cwd=endpoint.home,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    daemon = Supervisor(endpoint.root / "run")
    log = endpoint.root / "run" / "daemon.log"
    daemon.start(
        "dagster-daemon",
        [BIN / "dagster-daemon", "run", *workspace],
        log=log,
        env=env,
        cwd=endpoint.home,
        ready=lambda: "Skipping 1 run for sensor git_push_sensor" in log.read_text(),
        ready_timeout_s=120,
    )
    try:
        assert f'already completed with run keys: ["hello:{sha}"]' in log.read_text()
        assert len(endpoint.runs(**{"coop/sha": sha})) == 1
    finally:
        daemon.stop("dagster-daemon", timeout_s=30)


def test_with_dagster_unreachable_the_push_is_answered_and_the_hook_says_so(
    endpoint: Endpoint, tmp_path: Path
):
    """The endpoint cannot reach Dagster: it answers 502 with why, and the hook (which never
    fails a push) says the sensor picks the commit up."""
    port = free_port()
    down = DemoServices(tmp_path / "run")
    url = down.start_webhooks(
        topology_file=endpoint.topology, dagster_url=f"http://127.0.0.1:{port}", env=endpoint.env
    )
    try:
        endpoint.repo.commit(message="Dagster is down")
        body = _push_body()
        answer = requests.post(
            f"{url}/push/hello",
            data=body,
            headers={"X-Hub-Signature-256": signature(SECRET, body)},
            timeout=30,
        )
        assert answer.status_code == 502
        assert f"Dagster at http://127.0.0.1:{port} cannot be reached" in answer.json()["error"]
        hook_repo = make_app_repo(tmp_path, "other", source=HELLO)
        install_hook(
            hook_repo.bare, url=f"{url}/push/hello", secret=SECRET, secret_file=tmp_path / "s"
        )
        (hook_repo.work / "x").write_text("x")
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.coop"}
        env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.coop"}
        subprocess.run(["git", "add", "-A"], cwd=hook_repo.work, check=True)
        subprocess.run(["git", "commit", "-qm", "x"], cwd=hook_repo.work, env=env, check=True)
        pushed = subprocess.run(
            ["git", "push", "origin", "HEAD:refs/heads/main"],
            cwd=hook_repo.work,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pushed.returncode == 0  # the push itself never fails
        assert "remote: coop-infra: the webhook endpoint refused the push (HTTP 502)" in (
            pushed.stderr
        )
    finally:
        down.stop()
        shutil.rmtree(tmp_path / "run", ignore_errors=True)


def test_a_registry_notification_needs_its_token_and_wakes_only_for_an_app_s_branch_tag(
    endpoint: Endpoint,
):
    """The registry's notifications carry a bearer token derived from the secret; only a push
    of an app's branch tag wakes registry_image_sensor, and a sensor that is off stays off."""
    from infra_assets.topology.secrets import registry_notify_token

    def notify(events: list, token: str):
        return requests.post(
            f"{endpoint.url}/registry",
            data=json.dumps({"events": events}).encode(),
            headers={
                "Content-Type": "application/vnd.docker.distribution.events.v1+json",
                "Authorization": f"Bearer {token}",
            },
            timeout=30,
        )

    pushed = {"action": "push", "target": {"repository": "hello", "tag": "main"}}
    refused = notify([pushed], "not-the-token")
    assert refused.status_code == 401
    assert registry_notify_token(SECRET) != SECRET.decode()  # the secret itself is never sent
    others = [
        {"action": "push", "target": {"repository": "hello", "tag": "f" * 40}},  # a sha tag
        {"action": "pull", "target": {"repository": "hello", "tag": "main"}},
        {"action": "push", "target": {"repository": "coop-base", "tag": "main"}},  # no app
    ]
    quiet = notify(others, registry_notify_token(SECRET))
    assert quiet.status_code == 200 and quiet.json() == {"apps": [], "woken": False}
    woken = notify([*others, pushed], registry_notify_token(SECRET))
    assert woken.status_code == 202 and woken.json() == {"apps": ["hello"], "woken": True}
    log = endpoint.root / "run" / "webhooks.log"
    deadline = time.monotonic() + 20
    while "registry_image_sensor is stopped: not woken" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
