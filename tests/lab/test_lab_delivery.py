"""App delivery on the lab, for real: a commit pushed to the app's repo (a path on this machine,
served to the lab by the read-only git daemon on the lab's link), built by the `salt` builder on
the jenkins agent (support-2: the `jenkins.build` state runs the Jenkins job's script with the
agent's podman, crun, the registry's CA and its push account), pushed to the lab's registry
(TLS, htpasswd, reached through the link), released on web-staging-1 by the `app` state (podman
inside the guest pulls by digest, nginx switches), promoted to web-production-1; each answers at
its planned address with the commit, and `infra lab status` says so."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from fixtures_delivery import (
    HELLO,
    REPO_ROOT,
    git,
    make_app_repo,
    materialization_metadata,
    push_sensor_build,
    push_tick,
    sensor_tick,
    step_failures,
)
from lab_env import LAB_NUMBER, LabEnv

from infra_assets.delivery.app_images import asset_key, build_job_name
from infra_assets.delivery.releases import staging_job_name
from sensors import git_push, registry_images

pytestmark = [pytest.mark.slow, pytest.mark.lab]

APP = "hello"
NODE = "app_image__hello"


@pytest.fixture(scope="module")
def hello(lab_env: LabEnv):
    """The sample app's repo where the lab's topology names it (a bare repo on this machine)."""
    from pathlib import Path

    bare = Path(lab_env.topo.apps[APP].repo)
    return make_app_repo(bare.parent.parent, APP, source=HELLO)


def _answer(lab_env: LabEnv, host: str, environment: str) -> tuple[dict, dict]:
    """GET the app's health path on `environment` as a browser would: HTTPS to its domain, the
    certificate checked against the lab's ACME root, after checking the route into the lab."""
    from lab.site import app_site

    where = app_site(lab_env.site, host, APP, environment)
    assert lab_env.lab().route_into_lab(where.address)["dev"] == f"coop{LAB_NUMBER}-m"
    response = where.get(lab_env.topo.apps[APP].health, timeout_s=5)
    assert response.status_code == 200, response.text
    return response.json(), dict(response.headers)


def test_a_push_is_built_on_the_agent_released_on_staging_and_promoted(
    lab_env: LabEnv, hello, podman, tmp_path
):
    from lab import site

    times: dict[str, float] = {}
    sha = hello.commit(message="hello on the lab")
    with lab_env.env():
        instance = dg.DagsterInstance.get()
        defs = lab_env.definitions()
        # Someone with the push account got there first: an image of theirs as hello:<sha>,
        # labelled with that very commit. app_image never built it: it must not be adopted.
        endpoint = defs.resources["registry"].endpoint()
        (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY Dockerfile /not-hello\n")
        podman.build(
            context=tmp_path,
            tag="localhost/foreign:1",
            labels={registry_images.REVISION_LABEL: sha},
        )
        foreign = podman.push(
            image="localhost/foreign:1", destination=endpoint.image(APP, sha), registry=endpoint
        ).digest

        # The git sensor reads the path repo on this machine: one build, one partition.
        tick = push_tick(defs, instance, None)
        assert [r.run_key for r in tick.run_requests] == [f"{APP}:{sha}"]
        for request in tick.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)

        started = time.monotonic()
        build = defs.resolve_job_def(build_job_name(APP)).execute_in_process(
            instance=instance, partition_key=sha, raise_on_error=False
        )
        times["build"] = time.monotonic() - started
        assert build.success, step_failures(build)
        meta = materialization_metadata(build, NODE)

        # Built on the agent through salt, from the lab's git daemon, pushed to the registry.
        assert meta["builder"] == "salt" and meta["built"] is True
        assert meta["digest"] != foreign  # built again, over the foreign image's tag
        assert (
            f"{APP}:{sha} is in the registry as {foreign}, which app_image never built (pushed"
            " by someone else?): not adopted, built again"
        ) in open(meta["build_log"]).read()
        assert meta["build_host"] == "support-2"
        assert meta["repo_url"] == f"git://169.254.{LAB_NUMBER}.1/{APP}.git"
        log = open(meta["build_log"]).read()
        assert "== build on support-2 through salt (jenkins.build)" in log
        assert "[support-2] == checkout git://" in log and "[support-2] PUSHED_DIGEST=" in log
        registry = defs.resources["registry"]
        digest = meta["digest"]
        assert registry.digest(repository=APP, reference=sha) == digest
        assert registry.digest(repository=APP, reference="main") == digest
        assert meta["image"] == f"10.{LAB_NUMBER}.9.1:5001/{APP}@{digest}"  # the push door
        assert meta["base_image"].startswith(f"10.{LAB_NUMBER}.9.1:5001/coop-base@sha256:")
        # No secret reaches the log: the push account is the agent's own auth file.
        from infra_assets.topology.secrets import load_secrets

        secrets = load_secrets(lab_env.site.secrets_file(), lab_env.topo)
        assert secrets.get("registry", "users", "ci") not in log

        # The registry sensor sees the image at the branch tag: one staging release.
        seen = sensor_tick(defs, registry_images.SENSOR_NAME, instance, None)
        [request] = seen.run_requests
        assert request.run_key == digest and request.tags["coop/sha"] == sha
        started = time.monotonic()
        staging = defs.resolve_job_def(staging_job_name(APP)).execute_in_process(
            instance=instance, run_config=request.run_config, raise_on_error=False
        )
        times["staging"] = time.monotonic() - started
        assert staging.success, step_failures(staging)

        started = time.monotonic()
        promote = defs.resolve_job_def("promote").execute_in_process(
            instance=instance, raise_on_error=False
        )
        times["production"] = time.monotonic() - started
        assert promote.success, step_failures(promote)

        status = site.status(lab_env.topology_file)
    print(f"\nlab delivery: {', '.join(f'{k} {v:.1f} s' for k, v in times.items())}")

    releases = status["releases"][APP]
    for environment, host in (("staging", "web-staging-1"), ("production", "web-production-1")):
        release = releases[environment]
        assert release["digest"] == digest and release["sha"] == sha, release
        domain = lab_env.topo.apps[APP].domains[environment]
        assert release["url"] == f"https://{domain}/"
        assert release["address"] == lab_env.address(host, f"web-{environment}")
        body, headers = _answer(lab_env, host, environment)
        assert body == {"status": "ok", "app": APP, "version": sha}
        assert headers["X-Coop-Release"] == digest


def test_a_commit_pushed_while_the_registry_is_down_is_live_once_it_is_back(lab_env: LabEnv, hello):
    """The registry is down (both doors stopped on support-1) when a commit is pushed: the
    build fails for a passing reason and is tried again with backoff; the registry comes back
    some 20 s later, the build goes through in the same run, and the commit is live on staging,
    with no further push."""
    import threading

    lab = lab_env.lab().lab()
    doors = ["docker-registry", "docker-registry-push"]
    lab.exec(LAB_NUMBER, "support-1", ["systemctl", "stop", *doors])
    back = threading.Timer(
        20, lambda: lab.exec(LAB_NUMBER, "support-1", ["systemctl", "start", *doors])
    )
    try:
        with lab_env.env():
            instance = dg.DagsterInstance.get()
            defs = lab_env.definitions()
            cursor = sensor_tick(defs, git_push.SENSOR_NAME, instance, None).cursor
            sha = hello.commit(message="pushed while the registry is down")
            back.start()
            run = push_sensor_build(defs, instance, cursor=cursor, app=APP, raise_on_error=False)
            assert run.success, step_failures(run)
            retried = [e for e in run.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
            assert retried, "the registry was down: the first attempt cannot have passed"
            # The same run released it: the registry sensor has nothing left to release.
            released = materialization_metadata(run, "release__staging__hello")
            assert released["sha"] == sha
            seen = sensor_tick(defs, registry_images.SENSOR_NAME, instance, None)
            assert not seen.run_requests
    finally:
        back.cancel()
        lab.exec(LAB_NUMBER, "support-1", ["systemctl", "start", *doors])
    body, _ = _answer(lab_env, "web-staging-1", "staging")
    assert body["version"] == sha


def test_a_deliver_run_of_a_commit_no_longer_the_head_builds_it_and_releases_nothing(
    lab_env: LabEnv, hello
):
    """Two pushes in a row, their runs in the other order: the older commit's run builds it, then
    reads the branch head from the repository, finds the newer commit there and releases nothing
    (its step succeeds): staging is not sent back to an older commit."""
    from infra_assets.delivery.app_images import deliver_job_name

    older = hello.commit(message="pushed first")
    hello.commit(message="pushed second")
    with lab_env.env():
        instance = dg.DagsterInstance.get()
        before, _ = _answer(lab_env, "web-staging-1", "staging")
        instance.add_dynamic_partitions("commits_hello", [older])
        job = lab_env.definitions().resolve_job_def(deliver_job_name(APP))
        run = job.execute_in_process(instance=instance, partition_key=older, raise_on_error=False)
        assert run.success, step_failures(run)
        assert materialization_metadata(run, NODE)["sha"] == older  # built
        assert not run.asset_materializations_for_node("release__staging__hello")  # not released
        logs = [e.message for e in instance.all_logs(run.run_id) if e.step_key]
        assert any(f"{older} is no longer the head of main" in m for m in logs), logs
    after, _ = _answer(lab_env, "web-staging-1", "staging")
    assert after["version"] == before["version"]


def test_the_registry_s_notification_wakes_the_registry_sensor(lab_env: LabEnv, hello, tmp_path):
    """A build alone (build_hello: no release in its run) pushes an image and moves the branch
    tag; the lab's registry notifies the webhook endpoint (its config names it: the pillar's
    `registry.notify`), which has Dagster evaluate registry_image_sensor now: the staging release
    of that digest is launched within seconds, under the sensor's name and run key, with no
    daemon running (nothing polls) and long before the sensor's 30 s."""
    import os

    from lab.demo_services import DemoServices

    services = DemoServices(tmp_path / "run")
    env = {"INFRA_TOPOLOGY": str(lab_env.topology_file), "DAGSTER_HOME": str(lab_env.dagster_home)}
    dagster = [str(Path(sys.executable).parent / "dagster"), "sensor"]
    workspace = ["-w", str(REPO_ROOT / "workspace.yaml")]
    launched = None
    try:
        ui = services.start_webserver(dagster_home=lab_env.dagster_home, env=env)
        where = lab_env.site.webhooks_url("support-1")
        assert where == f"http://169.254.{LAB_NUMBER}.1:8700"
        services.start_webhooks(
            topology_file=lab_env.topology_file,
            dagster_url=ui,
            env=env,
            listen=where.removeprefix("http://"),
        )
        started = subprocess.run(
            [*dagster, "start", registry_images.SENSOR_NAME, *workspace],
            env={**os.environ, **env},
            cwd=lab_env.dagster_home,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        sha = hello.commit(message="a build alone, released on the registry's word")
        with lab_env.env():
            instance = dg.DagsterInstance.get()
            defs = lab_env.definitions()
            instance.add_dynamic_partitions("commits_hello", [sha])
            build = defs.resolve_job_def(build_job_name(APP)).execute_in_process(
                instance=instance, partition_key=sha, raise_on_error=False
            )
            assert build.success, step_failures(build)
            digest = materialization_metadata(build, NODE)["digest"]
            built = time.monotonic()
            while launched is None and time.monotonic() - built < 25:
                runs = instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": digest}))
                launched = runs[0] if runs else None
                time.sleep(0.5)
            assert launched is not None, (tmp_path / "run" / "webhooks.log").read_text()
            took = time.monotonic() - built
            assert launched.job_name == staging_job_name(APP)
            assert launched.tags["dagster/sensor_name"] == registry_images.SENSOR_NAME
            assert launched.tags["coop/started_by"] == "registry-notification"
            assert launched.tags["coop/sha"] == sha and launched.tags["coop/digest"] == digest
            print(
                f"\nthe registry's notification launched the release {took:.1f} s after the build"
            )
    finally:
        subprocess.run(
            [*dagster, "stop", registry_images.SENSOR_NAME, *workspace],
            env={**os.environ, **env},
            cwd=lab_env.dagster_home,
            capture_output=True,
            timeout=180,
        )
        services.stop()
        if launched is not None:  # queued (no daemon): not for a later test's daemon to run
            with lab_env.env():
                dg.DagsterInstance.get().delete_run(launched.run_id)


def test_the_git_daemon_serves_the_lab_read_only(lab_env: LabEnv, hello):
    from lab import site

    with lab_env.env():
        status = site.status(lab_env.topology_file)
    daemon = status["git_daemon"][str(LAB_NUMBER)]
    # the app's repo, and this repository (the dagster role's checkout on support-1)
    assert daemon["running"] and daemon["repos"] == sorted([f"{APP}.git", "coop-infra.git"])
    url = f"git://169.254.{LAB_NUMBER}.1/{APP}.git"
    heads = git("ls-remote", url, "refs/heads/main")
    assert heads.split()[0] == git("rev-parse", "HEAD", cwd=hello.work)
    # No push: receive-pack is off, and no repo may turn it on.
    pushed = subprocess.run(
        ["git", "-C", str(hello.work), "push", url, "HEAD:refs/heads/intruder"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert pushed.returncode != 0
    assert "service not enabled" in pushed.stderr or "access denied" in pushed.stderr, pushed.stderr
    assert "intruder" not in git("ls-remote", str(hello.bare))
    # It listens on the lab's link only (other labs' daemons are on their own links).
    listening = subprocess.run(["ss", "-Hltn", "sport = :9418"], capture_output=True, text=True)
    local = {line.split()[3] for line in listening.stdout.splitlines()}
    assert f"169.254.{LAB_NUMBER}.1:9418" in local
    assert all(address.startswith("169.254.") for address in local), local


def test_the_image_comes_after_the_registry_and_the_agent(lab_env: LabEnv):
    graph = lab_env.definitions().resolve_asset_graph()
    parents = graph.get(asset_key(APP)).parent_keys
    assert {
        dg.AssetKey(["highstate", "docker-registry"]),
        dg.AssetKey(["highstate", "jenkins-agent"]),
        dg.AssetKey(["topology"]),
    } == parents


# --- builds of an app of its own: idempotence, an old commit, a failing build -------------------

BUILD_APP = "hello-build"  # named apart from the lab's `hello` (one registry for the session)
BUILD_NODE = "app_image__hello_build"


@pytest.fixture
def hello_build(lab_env: LabEnv, tmp_path):
    """The session's lab with an app of its own declared (its repo a bare repo under tmp_path,
    served by the lab's git daemon): the same lab, registry and agent."""
    import yaml

    from infra_assets.topology.model import load_topology
    from lab.site import lab_secrets

    repo = make_app_repo(tmp_path, BUILD_APP, source=HELLO)
    data = yaml.safe_load(lab_env.topology_file.read_text())
    data["apps"][BUILD_APP] = {**data["apps"][APP], "repo": str(repo.bare)}
    data["apps"][BUILD_APP]["port"] = data["apps"][APP]["port"] + 2  # its own release ports
    data["apps"][BUILD_APP].pop("domains", None)  # a build only: never released
    path = tmp_path / "topology.lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = LabEnv(path, lab_env.dagster_home, load_topology(path))
    with env.env():
        # A new app needs its secrets (its databases' passwords), as `infra lab up` makes them.
        lab_secrets(env.site)
        yield repo, env.definitions(), dg.DagsterInstance.get()


def _build_requested(defs, instance, tick, **kw) -> list[dg.ExecuteInProcessResult]:
    """What the daemon does with the git sensor's tick: add the partitions, launch the runs
    (their build step alone: this app is never released)."""
    for request in tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    build = [dg.AssetKey("topology"), asset_key(BUILD_APP)]
    return [
        defs.resolve_job_def(r.job_name).execute_in_process(
            instance=instance,
            partition_key=r.partition_key,
            tags=r.tags,
            asset_selection=build,
            **kw,
        )
        for r in tick.run_requests
        if r.partition_key is not None and r.tags["coop/app"] == BUILD_APP
    ]


def _cursor_at_heads(defs, instance) -> str:
    """A git sensor cursor that has asked for every app's head already (the lab's `hello` included):
    the next tick asks only for what is pushed after."""
    return push_tick(defs, instance, None).cursor


def test_a_rebuild_is_skipped_and_an_old_commit_leaves_the_branch_tag_alone(hello_build):
    repo, defs, instance = hello_build
    cursor = _cursor_at_heads(defs, instance)
    first = repo.commit(message="v1")
    tick1 = push_tick(defs, instance, cursor)
    [run1] = _build_requested(defs, instance, tick1)
    assert run1.success, step_failures(run1)
    digest1 = materialization_metadata(run1, BUILD_NODE)["digest"]

    second = repo.commit({"app.py": (HELLO / "app.py").read_text() + "# v2\n"}, "v2")
    tick2 = push_tick(defs, instance, tick1.cursor)
    assert [r.partition_key for r in tick2.run_requests] == [second]
    [run2] = _build_requested(defs, instance, tick2)
    meta2 = materialization_metadata(run2, BUILD_NODE)
    assert meta2["digest"] != digest1
    registry = defs.resources["registry"]
    assert registry.digest(repository=BUILD_APP, reference="main") == meta2["digest"]

    # The first commit again: already in the registry, not built; main stays on the second.
    again = defs.resolve_job_def(build_job_name(BUILD_APP)).execute_in_process(
        instance=instance, partition_key=first
    )
    meta = materialization_metadata(again, BUILD_NODE)
    assert meta["built"] is False and meta["digest"] == digest1
    assert "already in the registry, built by app_image: not built again" in meta["what_happened"]
    assert f"main has moved on to {second[:12]}" in meta["what_happened"]
    assert meta["tags"] == f"{BUILD_APP}:{first}"
    assert registry.digest(repository=BUILD_APP, reference="main") == meta2["digest"]
    assert {first, second} <= set(instance.get_dynamic_partitions("commits_hello_build"))


def test_a_failing_build_fails_the_run_with_its_log_and_pushes_nothing(hello_build):
    repo, defs, instance = hello_build
    cursor = _cursor_at_heads(defs, instance)
    broken = (HELLO / "Dockerfile").read_text() + 'RUN echo "tests fail here" && exit 3\n'
    sha = repo.commit({"Dockerfile": broken}, "broken")
    tick = push_tick(defs, instance, cursor)
    [run] = _build_requested(defs, instance, tick, raise_on_error=False)
    assert not run.success
    failure = run.failure_data_for_node(BUILD_NODE)
    text = step_failures(run)
    assert f"app_image/{BUILD_APP} at {sha[:12]}" in text, text
    tail = failure.user_failure_data.metadata["log_tail"].value
    assert "tests fail here" in tail
    assert defs.resources["registry"].digest(repository=BUILD_APP, reference=sha) is None


def test_a_partition_that_is_not_a_sha_is_refused(hello_build):
    _, defs, instance = hello_build
    instance.add_dynamic_partitions("commits_hello_build", ["latest"])
    result = defs.resolve_job_def(build_job_name(BUILD_APP)).execute_in_process(
        instance=instance, partition_key="latest", raise_on_error=False
    )
    assert not result.success
    assert f"partition 'latest' of app_image/{BUILD_APP} is not a commit sha" in step_failures(
        result
    )
