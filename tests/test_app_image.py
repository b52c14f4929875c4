"""app_image/<app> with the `local` builder, for real: a git push, the sensor's tick, the build
with podman FROM the project's base image, the push to the real registry, the digest the registry
serves, the registry sensor seeing it, and the image answering with its commit."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
from fixtures_delivery import HELLO, delivery_defs, write_local_topology

from infra_assets.app_images import asset_key
from infra_assets.local_site.processes import free_port
from infra_assets.model import load_topology
from sensors import git_push, registry_images

# The app is named apart from the delivery site's own `hello` (one registry for the session).
APP = "hello-build"
NODE = "app_image__hello_build"


@pytest.fixture
def hello(tmp_path, app_repos, monkeypatch, registry_site, podman, base_image):
    """The sample app in a git repo of its own, one commit pushed; the local site's topology
    naming it; the code location with the session's registry and podman."""
    repo = app_repos(APP, source=HELLO)
    topo_file = write_local_topology(tmp_path / "topology.yaml", {APP: f"git/{APP}.git"})
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    monkeypatch.setenv("INFRA_STATE_DIR", str(tmp_path / "state"))
    defs = delivery_defs(load_topology(topo_file), registry=registry_site.resource(), podman=podman)
    return repo, defs, dg.DagsterInstance.ephemeral()


def sensor_tick(defs, name: str, instance, cursor: str | None):
    sensor = defs.resolve_sensor_def(name)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        return sensor(context)


def run_requested(defs, instance, result, **kw) -> list[dg.ExecuteInProcessResult]:
    """What the daemon does with a tick's result: add the partitions, launch the runs."""
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    return [
        defs.resolve_job_def(r.job_name).execute_in_process(
            instance=instance, partition_key=r.partition_key, tags=r.tags, **kw
        )
        for r in result.run_requests
    ]


def materialization(result) -> dict:
    [mat] = result.asset_materializations_for_node(NODE)
    return {k: v.value for k, v in mat.metadata.items()}


def test_push_build_registry_and_the_registry_sensor(hello, registry_site, podman):
    repo, defs, instance = hello
    sha = repo.commit(message="hello 1")

    tick = sensor_tick(defs, git_push.SENSOR_NAME, instance, None)
    assert [r.run_key for r in tick.run_requests] == [f"{APP}:{sha}"]
    [run] = run_requested(defs, instance, tick)
    assert run.success
    meta = materialization(run)

    # The digest the build reports is the one the registry serves, for the sha and the branch.
    registry = registry_site.resource()
    digest = meta["digest"]
    assert registry.digest(repository=APP, reference=sha) == digest
    assert registry.digest(repository=APP, reference="main") == digest
    end = registry_site.endpoint
    served = requests.get(
        f"{end.url}/v2/{APP}/manifests/{sha}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        auth=(end.username, end.password),
        verify=end.ca_file,  # the registry's own certificate (TLS, as in production)
        timeout=5,
    )
    assert "sha256:" + hashlib.sha256(served.content).hexdigest() == digest
    assert meta["tags"] == f"{APP}:{sha}, {APP}:main"
    assert meta["built"] is True and meta["builder"] == "local"
    assert meta["sha"] == sha and meta["image"] == end.image(APP, digest)
    manifest = json.loads(served.content)
    assert (
        meta["size_bytes"]
        == sum(x["size"] for x in manifest["layers"]) + manifest["config"]["size"]
    )
    assert meta["size_bytes"] > 10_000_000  # the base's Debian and Python are in it
    assert meta["build_time_s"] > 0
    log = Path(meta["build_log"]).read_text()
    assert f"== podman build {end.image(APP, sha)}" in log and "COPY app.py" in log
    assert end.password not in log
    # The image's labels name the commit; its config carries the version.
    labels = registry.labels(repository=APP, manifest=registry.manifest(
        repository=APP, reference=digest))  # fmt: skip
    assert labels["org.opencontainers.image.revision"] == sha

    # The output handed downstream (to the releases) is the image by digest.
    image = run.output_for_node(NODE)
    assert (image.digest, image.sha, image.app) == (digest, sha, APP)

    # The registry sensor sees the new image at the branch tag: one run, run_key = the digest.
    seen = sensor_tick(defs, registry_images.SENSOR_NAME, instance, None)
    [request] = seen.run_requests
    assert request.run_key == digest
    assert request.tags["coop/sha"] == sha and request.tags["coop/app"] == APP
    replay = sensor_tick(defs, registry_images.SENSOR_NAME, instance, seen.cursor)
    assert isinstance(replay, dg.SkipReason) and replay.skip_message == "no new image"
    # ... and the git sensor, replayed, asks for nothing either.
    again = sensor_tick(defs, git_push.SENSOR_NAME, instance, tick.cursor)
    assert not again.run_requests

    # The image runs and answers /health with its commit (host network: no bridge, no iptables;
    # --init: Debian's catatonit as PID 1, as the releases run it).
    port = free_port()
    name = f"hello-test-{port}"
    podman.run(
        ["run", "-d", "--init", "--name", name, "--network", "host",
         "-e", f"PORT={port}", "-e", "HOST=127.0.0.1", end.image(APP, sha)],
        log=lambda _l: None,
    )  # fmt: skip
    try:
        health = _get_json(f"http://127.0.0.1:{port}/health")
        assert health == {"status": "ok", "app": "hello", "version": sha}
    finally:
        podman.run(["rm", "-f", "-t", "2", name], log=lambda _l: None)


def test_a_rebuild_is_skipped_and_an_old_commit_leaves_the_branch_tag_alone(hello, registry_site):
    repo, defs, instance = hello
    first = repo.commit(message="v1")
    tick1 = sensor_tick(defs, git_push.SENSOR_NAME, instance, None)
    [run1] = run_requested(defs, instance, tick1)
    digest1 = materialization(run1)["digest"]

    second = repo.commit({"app.py": (HELLO / "app.py").read_text() + "# v2\n"}, "v2")
    tick2 = sensor_tick(defs, git_push.SENSOR_NAME, instance, tick1.cursor)
    assert [r.partition_key for r in tick2.run_requests] == [second]
    [run2] = run_requested(defs, instance, tick2)
    meta2 = materialization(run2)
    assert meta2["digest"] != digest1
    registry = registry_site.resource()
    assert registry.digest(repository=APP, reference="main") == meta2["digest"]

    # The first commit again: already in the registry, not built; main stays on the second.
    job = defs.resolve_job_def("build_hello_build")
    again = job.execute_in_process(instance=instance, partition_key=first)
    meta = materialization(again)
    assert meta["built"] is False and meta["digest"] == digest1
    assert "already in the registry: not built again" in meta["what_happened"]
    assert f"main has moved on to {second[:12]}" in meta["what_happened"]
    assert meta["tags"] == f"{APP}:{first}"
    assert registry.digest(repository=APP, reference="main") == meta2["digest"]
    # Both commits are partitions of app_image/hello now.
    partitions = instance.get_dynamic_partitions("commits_hello_build")
    assert set(partitions) == {first, second}
    assert instance.get_latest_materialization_event(asset_key(APP)) is not None


def test_a_failing_build_fails_the_run_with_its_log_and_pushes_nothing(hello, registry_site):
    repo, defs, instance = hello
    broken = (HELLO / "Dockerfile").read_text() + 'RUN echo "tests fail here" && exit 3\n'
    sha = repo.commit({"Dockerfile": broken}, "broken")
    tick = sensor_tick(defs, git_push.SENSOR_NAME, instance, None)
    [run] = run_requested(defs, instance, tick, raise_on_error=False)
    assert not run.success
    failure = run.failure_data_for_node(NODE)
    assert f"app_image/{APP} at {sha[:12]}: podman build of" in failure.error.message
    assert "exited with status" in failure.error.message
    tail = failure.user_failure_data.metadata["log_tail"].value
    assert "tests fail here" in tail
    assert registry_site.resource().digest(repository=APP, reference=sha) is None


def test_a_partition_that_is_not_a_sha_is_refused(hello):
    _, defs, instance = hello
    instance.add_dynamic_partitions("commits_hello_build", ["latest"])
    result = defs.resolve_job_def("build_hello_build").execute_in_process(
        instance=instance, partition_key="latest", raise_on_error=False
    )
    assert not result.success
    message = result.failure_data_for_node(NODE).error.message
    assert f"partition 'latest' of app_image/{APP} is not a commit sha" in message


def _get_json(url: str, timeout_s: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return requests.get(url, timeout=2).json()
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_sample_app_answers_its_version_without_a_container(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        ["python3", str(HELLO / "app.py")],
        env={"PORT": str(port), "HOST": "127.0.0.1", "APP_VERSION": "abc123"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert _get_json(f"http://127.0.0.1:{port}/health") == {
            "status": "ok",
            "app": "hello",
            "version": "abc123",
        }
        root = requests.get(f"http://127.0.0.1:{port}/", timeout=2)
        assert root.text == "hello from abc123\n" and root.headers["X-App-Version"] == "abc123"
        assert requests.get(f"http://127.0.0.1:{port}/nope", timeout=2).status_code == 404
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0  # SIGTERM: a clean stop
