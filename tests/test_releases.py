"""Releases for real: `release/<environment>/hello` on the delivery site (tests/fixtures_delivery.py:
a real salt master and minions, the registry the salt state runs, nginx per web host), carried
out by the `app` salt state with podman on this machine.

The images are the sample app built with podman (FROM the project's base image) and pushed to the
site's registry under tags of their own (`hello:t-<sha>`), not the branch tag the registry sensor
watches; the release jobs are run in process with the digest in their config, as the sensor asks.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
from fixtures_delivery import HEALTH, HELLO

from infra_assets.definitions import build_definitions
from infra_assets.local_site.releases import app_containers, podman_env
from infra_assets.model import load_topology
from infra_assets.releases import Record, ReleaseConfig, _choose
from resources.cli_runner import run_cli
from resources.salt import SaltResource
from sensors.registry_images import REVISION_LABEL, poll

pytestmark = pytest.mark.slow

APP = "hello"


@pytest.fixture
def site(on_delivery_site, registry_site, podman, base_image, tmp_path):
    return Site(on_delivery_site, registry_site, podman, tmp_path)


class Site:
    """The delivery site, as these tests use it."""

    def __init__(self, delivery, registry_site, podman, tmp_path):
        self.delivery = delivery
        self.registry = registry_site
        self.podman = podman
        self.tmp = tmp_path
        self.ps = delivery.process_site()

    def url(self, env: str) -> str:
        host = sorted(self.ps.topo.hosts_with_role(f"web-{env}"))[0]
        return self.ps.app_url(host, APP, env)

    def host_root(self, env: str) -> Path:
        host = sorted(self.ps.topo.hosts_with_role(f"web-{env}"))[0]
        return Path(self.ps.host_root(host))

    def image(
        self, version: str, *, healthy: bool = True, label: str | None = None, to: str = ""
    ) -> str:
        """The sample app saying `version`, pushed as hello:t-<version> (or `to`): its digest.
        `label`: its revision label, if not `version`."""
        context = self.tmp / f"app-{version}"
        shutil.copytree(HELLO, context)
        if not healthy:
            app = context / "app.py"
            app.write_text(
                app.read_text().replace(
                    '        path = self.path.split("?", 1)[0]\n',
                    '        path = self.path.split("?", 1)[0]\n'
                    '        if path == "/health":\n'
                    '            return self._send(503, "text/plain", "unhealthy on purpose\\n")\n',
                )
            )
        end = self.registry.endpoint
        tag = to or end.image(APP, f"t-{version[:12]}")
        self.podman.build(
            context=context,
            tag=tag,
            build_args={"GIT_SHA": version},
            labels={REVISION_LABEL: version if label is None else label},
            log=_quiet,
        )
        return self.podman.push(image=tag, destination=tag, registry=end, log=_quiet).digest

    def run(self, job: str, **config) -> dg.ExecuteInProcessResult:
        defs = build_definitions(load_topology(self.delivery.topology))
        job_def = defs.resolve_job_def(job)
        run_config = {}
        if config:
            ops = [n for n in job_def.graph.node_dict if n.startswith("release__")]
            run_config = {"ops": {op: {"config": config} for op in ops}}
        return job_def.execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), run_config=run_config, raise_on_error=False
        )

    def release(self, digest: str, version: str, **config) -> dg.ExecuteInProcessResult:
        return self.run("release_staging_hello", digest=digest, sha=version, **config)

    def version(self, env: str) -> str | None:
        response = requests.get(self.url(env) + "health", timeout=5)
        return response.json()["version"] if response.status_code == 200 else None


def _meta(result: dg.ExecuteInProcessResult, env: str = "staging") -> dict:
    [mat] = result.asset_materializations_for_node(f"release__{env}__hello")
    return {k: v.value for k, v in mat.metadata.items()}


def _failure(result: dg.ExecuteInProcessResult, env: str = "staging"):
    return result.failure_data_for_node(f"release__{env}__hello")


def _version(n: int) -> str:
    return f"{time.time_ns():x}{n}".ljust(40, "0")[:40]


def _quiet(_line: str) -> None:
    pass


def _network_state() -> tuple[str, str]:
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    return rules, forward


def test_a_staging_release_serves_the_new_version_through_nginx(site):
    network_before = _network_state()
    v1, v2 = _version(1), _version(2)
    d1, d2 = site.image(v1), site.image(v2)

    first = site.release(d1, v1)
    assert first.success, _failure(first)
    assert site.version("staging") == v1
    meta = _meta(first)
    assert meta["digest"] == d1 and meta["sha"] == v1
    assert meta["url"] == site.url("staging")
    # The health path (with `?` and `&`: shell characters) reached the host's shell quoted.
    # (Its `=` are %3D in the comment: salt splits a stateful comment at every `=`.)
    assert meta["health"] == (
        f"healthy: http://127.0.0.1:{site.ps.app_slots('web-staging-1', APP)[_slot(site)]}"
        f"{HEALTH.replace('=', '%3D')} answers 200"
    )
    response = requests.get(site.url("staging"), timeout=5)
    assert response.text == f"hello from {v1}\n"
    assert response.headers["X-Coop-Release"] == d1  # nginx says which release served it

    # The next release, while four clients keep asking: every answer is a 200, from v1 or v2,
    # and once v2 answers, v1 never does again.
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def client():
        with requests.Session() as session:  # keep-alive, as a browser
            while not stop.is_set():
                try:
                    try:
                        r = session.get(site.url("staging"), timeout=5)
                    except requests.ConnectionError as exc:
                        if "RemoteDisconnected" not in str(exc):
                            raise
                        # An idle keep-alive connection that an old nginx worker closed as it
                        # exited after the reload, just as this request went out: nothing was
                        # answered, so a browser asks again on a new connection. So do we,
                        # once; a second failure counts.
                        r = session.get(site.url("staging"), timeout=5)
                except requests.RequestException as exc:  # counted: a failed request is one
                    answers.append((0, f"{type(exc).__name__}: {exc}"))
                    continue
                answers.append((r.status_code, r.headers.get("X-App-Version", "")))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for c in clients:
        c.start()
    try:
        time.sleep(0.3)
        second = site.release(d2, v2)
        time.sleep(0.3)
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert second.success, _failure(second)
    assert len(answers) > 50
    assert {status for status, _ in answers} == {200}, [a for a in answers if a[0] != 200][:5]
    versions = [v for _, v in answers]
    assert set(versions) == {v1, v2}
    assert site.version("staging") == v2
    meta = _meta(second)
    assert meta["previous_digest"] == d1 and meta["changed"] is True
    assert meta["container_start_s"] > 0
    # The old release is stopped but kept (with its image) for a rollback; the new one runs.
    root = site.host_root("staging")
    assert len(app_containers(root, running_only=True)) == 1
    assert len(app_containers(root)) == 2
    # The release's containers run on the host's network: no bridge, no iptables rule.
    assert _network_state() == network_before


def test_releasing_the_live_digest_again_changes_nothing(site):
    v = _version(3)
    digest = site.image(v)
    assert site.release(digest, v).success
    again = site.release(digest, v)
    assert again.success
    meta = _meta(again)
    assert meta["changed"] is False and meta["digest"] == digest
    assert "nothing to do: this release was live already" in meta["what_happened"]
    assert site.version("staging") == v


def test_a_failing_health_check_leaves_the_old_version_serving(site):
    good, bad = _version(4), _version(5)
    d_good, d_bad = site.image(good), site.image(bad, healthy=False)
    assert site.release(d_good, good).success
    record_before = (site.host_root("staging") / "var/lib/coop/releases/hello.json").read_text()

    result = site.release(d_bad, bad, health_timeout_s=3)
    assert not result.success
    failure = _failure(result)
    message = failure.error.message
    assert f"release/staging/hello: {d_bad} failed on web-staging-1" in message
    assert "health check failed: http://127.0.0.1:" in message and "-> 503 within 3 s" in message
    assert "The live release keeps serving; the new container was removed." in message
    # The health log: the last answer and the container's own lines.
    log = failure.user_failure_data.metadata["health_log"].value
    assert "unhealthy on purpose" in log and f'"GET {HEALTH} HTTP/1.1" 503' in log
    assert not result.asset_materializations_for_node("release__staging__hello")

    # The old version keeps serving; the new container is gone; nothing was recorded.
    assert site.version("staging") == good
    response = requests.get(site.url("staging"), timeout=5)
    assert response.headers["X-Coop-Release"] == d_good
    root = site.host_root("staging")
    out = run_cli(
        ["podman", "ps", "-a", "--format", "{{.Labels}}"], env=podman_env(root), log=_quiet
    )
    assert bad not in out.output and good in out.output
    record = (root / "var/lib/coop/releases/hello.json").read_text()
    assert record == record_before


def test_rollback_puts_back_the_previous_release(site):
    v1, v2 = _version(6), _version(7)
    d1, d2 = site.image(v1), site.image(v2)
    assert site.release(d1, v1).success
    assert site.release(d2, v2).success
    assert site.version("staging") == v2

    back = site.run("rollback_staging")
    assert back.success, _failure(back)
    assert site.version("staging") == v1
    meta = _meta(back)
    assert meta["digest"] == d1 and meta["previous_digest"] == d2
    assert meta["why"] == f"rollback to the previous release (was {d2})"
    # The previous image was still on the host: nothing was pulled.
    assert "pulled" not in meta["what_happened"]
    # Rolled back once more: the release that was rolled back is live again.
    assert site.run("rollback_staging").success
    assert site.version("staging") == v2


def test_promote_sends_the_staging_digest_to_production(site):
    registry = site.registry.resource()
    v1, v2 = _version(8), _version(9)
    d1, d2 = site.image(v1), site.image(v2)
    assert site.release(d1, v1).success
    first = site.run("promote")
    assert first.success, _failure(first, "production")
    assert site.version("production") == v1

    assert site.release(d2, v2).success
    assert site.version("production") == v1  # a staging release leaves production alone
    # A digest asked for by hand must be the one on staging: production never skips staging.
    bypass = site.run("promote", digest=d1)
    assert not bypass.success
    assert (
        f"release/production/hello: config digest {d1} is not the release live on staging ({d2})"
        ": production only takes what staging runs. Release it on staging first"
        " (release_staging_hello with that digest), then run `promote`"
    ) in _failure(bypass, "production").error.message
    tags = registry.tags(repository=APP)
    promoted = site.run("promote")
    assert promoted.success, _failure(promoted, "production")
    meta = _meta(promoted, "production")
    assert meta["digest"] == d2 and meta["sha"] == v2 and meta["previous_digest"] == d1
    assert meta["why"] == "promoted: the release on staging"
    assert meta["url"] == site.url("production")
    assert site.version("production") == v2
    response = requests.get(site.url("production"), timeout=5)
    assert response.headers["X-Coop-Release"] == d2  # the very image staging runs
    assert registry.tags(repository=APP) == tags  # nothing was built or pushed

    back = site.run("rollback")
    assert back.success, _failure(back, "production")
    assert site.version("production") == v1 and site.version("staging") == v2


def test_a_digest_that_is_not_one_is_refused_before_anything_changes(site):
    result = site.run("release_staging_hello", digest="latest")
    assert not result.success
    assert _failure(result).error.message.startswith(
        "dagster._core.definitions.events.Failure: release/staging/hello: config digest 'latest'"
        " is not sha256:<64 hex digits>"
    )


def test_a_sha_that_is_not_a_commit_is_refused_before_anything_changes(site):
    v = _version(10)
    digest = site.image(v)
    assert site.release(digest, v).success
    record = (site.host_root("staging") / "var/lib/coop/releases/hello.json").read_text()
    for bad in ["x; touch /tmp/pwned", v + "\n", v.upper()]:
        result = site.release(digest, bad)
        assert not result.success
        assert f"release/staging/hello: config sha {bad!r} is not a commit" in (
            _failure(result).error.message
        )

    # An image whose revision label is not a commit: the release refuses it, with nothing asked
    # in the run config...
    bad_label = "v1\nadd_header X-Pwned 1;"
    d_bad = site.image(_version(11), label=bad_label)
    result = site.run("release_staging_hello", digest=d_bad)
    assert not result.success
    message = _failure(result).error.message
    assert f"{REVISION_LABEL}), which is not a commit" in message and repr(bad_label) in message
    assert "nothing was released" in message
    assert (site.host_root("staging") / "var/lib/coop/releases/hello.json").read_text() == record

    # ...and the registry sensor asks for no release of it (its tick says why; the cursor moves
    # past it).
    end = site.registry.endpoint
    d_sensor = site.image(_version(12), label=bad_label, to=end.image("badlabel", "main"))
    topo = load_topology(site.delivery.topology)
    polled = poll(apps={"badlabel": topo.apps[APP]}, cursor={}, registry=site.registry.resource())
    assert polled.new == []
    assert polled.refused == [
        f"badlabel:main = {d_sensor} not released: its label {REVISION_LABEL}={bad_label!r} is"
        " not a commit (40 lowercase hex digits); build it from git (app_image)"
    ]
    assert polled.cursor == {"badlabel": {"main": d_sensor}}

    # The salt state checks the pillar too (a release applied by hand): nothing runs.
    host = sorted(site.ps.topo.hosts_with_role("web-staging"))[0]
    pillar = {"release": {"app": APP, "digest": digest, "sha": "x; touch /tmp/pwned"}}
    with SaltResource() as salt:
        applied = salt.apply(minions=[host], sls=["app"], pillar=pillar, log=_quiet)
    assert not applied.ok
    assert [s.state_id for s in applied.states()] == ["app-release-in-pillar"]
    assert site.version("staging") == v


def test_nothing_to_roll_back_to_is_a_clear_error():
    record = Record("web-production-1", {"digest": "sha256:" + "a" * 64}, None)
    with pytest.raises(dg.Failure) as err:
        _choose(ReleaseConfig(rollback=True), None, None, None, None, "production", APP, [record])
    assert err.value.description == (
        "release/production/hello: nothing to roll back to on web-production-1 (no previous"
        " release recorded there)"
    )


def _slot(site: Site) -> str:
    import json

    record = json.loads(
        (site.host_root("staging") / "var/lib/coop/releases/hello.json").read_text()
    )
    return record["current"]["slot"]
