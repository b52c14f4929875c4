"""The `jenkins` builder: JenkinsResource (python-jenkins) against a FAKE Jenkins REST API
(tests/fakes/jenkins.py; no Jenkins server can run here), and the job's own script
(jenkins/build-app-image.sh) run for real, as the fake's executor, with real git, podman and
the real registry. What app_image checks in a build's report (a digest named; the registry
serving that digest) against a registry of the test's own on loopback."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from fakes.jenkins import Console, FakeJenkins
from fixtures_delivery import (
    HELLO,
    delivery_defs,
    git,
    push_image,
    push_sensor_build,
    write_app_topology,
)

from infra_assets.configuration.pillar import build_caches
from infra_assets.delivery.app_images import builder_for
from infra_assets.topology.model import load_topology
from infra_assets.topology.sites import site_for
from resources.jenkins import JenkinsError, JenkinsResource

REPO_ROOT = Path(__file__).resolve().parents[2]
JENKINSFILE = REPO_ROOT / "jenkins" / "Jenkinsfile"
SCRIPT = REPO_ROOT / "jenkins" / "build-app-image.sh"


def resource(fake: FakeJenkins, **kw) -> JenkinsResource:
    fields = {
        "url": fake.url,
        "username": fake.username,
        "api_token": fake.api_token,
        "poll_interval_s": 0.05,
        **kw,
    }
    return JenkinsResource(**fields)


def slow_success(params: dict[str, str], console: Console):
    for i in range(5):
        console.line(f"step {i} for {params['APP']}")
        time.sleep(0.05)
    return "SUCCESS", "digest=sha256:" + "b" * 64


def test_build_triggers_follows_the_queue_and_streams_the_console():
    with FakeJenkins(jobs={"app-image": slow_success}) as fake:
        lines: list[str] = []
        build = resource(fake).build(parameters={"APP": "hello", "SHA": "a" * 40}, log=lines.append)
    assert build.ok and build.result == "SUCCESS" and build.number == 1
    assert build.description == "digest=sha256:" + "b" * 64
    assert build.url == f"{fake.url}job/app-image/1/"
    # Every console line reached the log, once each, in order.
    steps = [line for line in lines if line.startswith("step ")]
    assert steps == [f"step {i} for hello" for i in range(5)]
    assert lines[-1] == "Finished: SUCCESS"
    # The wire: a crumb first, the POST with it (201 + queue Location), then queue and build.
    calls = [(m, p, s) for m, p, s in fake.requests]
    assert ("GET", "/crumbIssuer/api/json", 200) in calls
    assert ("POST", "/job/app-image/buildWithParameters", 201) in calls
    assert any(p.startswith("/queue/item/") and s == 200 for _, p, s in calls)
    assert ("GET", "/job/app-image/1/consoleText", 200) in calls
    assert fake.builds[("app-image", 1)].params == {"APP": "hello", "SHA": "a" * 40}


def test_a_failed_build_is_returned_with_its_console():
    def fails(params, console):
        console.line("npm ERR! missing script: build")
        return "FAILURE", None

    with FakeJenkins(jobs={"app-image": fails}) as fake:
        build = resource(fake).build(parameters={"APP": "hello"}, log=lambda _l: None)
    assert not build.ok and build.result == "FAILURE"
    assert "npm ERR! missing script: build" in build.tail()


def test_wrong_token_missing_job_and_no_server_are_clear_errors():
    with FakeJenkins(jobs={"app-image": slow_success}) as fake:
        with pytest.raises(JenkinsError, match="401") as err:
            resource(fake, api_token="not-the-token").build(parameters={"APP": "x"})
        assert "not-the-token" not in str(err.value)
        with pytest.raises(JenkinsError, match="cannot trigger job 'other': not found"):
            resource(fake, job="other").build(parameters={"APP": "x"})
        url = fake.url
    with pytest.raises(JenkinsError, match="cannot trigger job 'app-image'"):
        JenkinsResource(url=url, username="u", api_token="t").build(parameters={"APP": "x"})
    with pytest.raises(JenkinsError, match="has no url: set INFRA_JENKINS_URL"):
        JenkinsResource().build(parameters={})


def test_a_queue_item_that_never_starts_times_out_and_is_cancelled():
    with FakeJenkins(jobs={"app-image": slow_success}, hold_in_queue=True) as fake:
        with pytest.raises(JenkinsError, match="waited 0.5 s in the queue .*Waiting for next"):
            resource(fake, queue_timeout_s=0.5).build(parameters={"APP": "x"})
        [item] = fake.queue.values()
        assert item.cancelled


def test_a_queue_item_cancelled_in_jenkins_is_an_error():
    with FakeJenkins(jobs={"app-image": slow_success}, hold_in_queue=True) as fake:
        res = resource(fake)

        def cancel_soon():
            while not fake.queue:
                time.sleep(0.02)
            next(iter(fake.queue.values())).cancelled = True

        threading.Thread(target=cancel_soon, daemon=True).start()
        with pytest.raises(JenkinsError, match="was cancelled in Jenkins"):
            res.build(parameters={"APP": "x"})


def test_a_build_that_runs_too_long_is_stopped():
    def hangs(params, console):
        console.line("waiting forever")
        console.abort.wait(30)
        return "SUCCESS", None

    with FakeJenkins(jobs={"app-image": hangs}) as fake:
        with pytest.raises(JenkinsError, match="still running after 0.5 s; stopped it"):
            resource(fake, build_timeout_s=0.5).build(parameters={"APP": "x"})
        deadline = time.monotonic() + 5
        while fake.builds[("app-image", 1)].result is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.builds[("app-image", 1)].result == "ABORTED"


# --- the Jenkinsfile and its script -----------------------------------------------------------


def test_the_jenkinsfile_declares_what_the_builder_sends():
    text = JENKINSFILE.read_text()
    declared = set(re.findall(r"string\(name: '([A-Z_]+)'", text))
    assert declared == {
        "APP", "REPO", "SHA", "BRANCH", "IMAGE",
        "BASE_IMAGE", "RUNTIME_IMAGES", "NPM_REGISTRY", "PIP_INDEX_URL",
    }  # fmt: skip
    assert "sh 'jenkins/build-app-image.sh'" in text
    assert "usernameVariable: 'REGISTRY_USER'" in text
    assert "passwordVariable: 'REGISTRY_PASSWORD'" in text
    assert "readFile('image-digest.txt')" in text


# Stand-ins for git and podman on the script's PATH: each writes its arguments (one per line,
# then a blank line) to $CALLS, podman login also what it read on stdin. A fetch of the commit
# itself fails, as on servers that serve a commit only through its branch, so both fetches run.
FAKE_GIT = """#!/bin/bash
printf '%s\\n' git "$@" >> "$CALLS"; echo >> "$CALLS"
if [[ " $* " == *" fetch "* && " $* " == *" --depth "* ]]; then exit 128; fi
# The checked-out tree (git -C <src> ... checkout): an app with a Dockerfile, or one the
# standard build builds ($TREE: python, node).
if [[ " $* " == *" checkout "* ]]; then
  case "${TREE:-dockerfile}" in
    dockerfile) touch "$2/Dockerfile" ;;
    python) echo "web: python3 app.py" > "$2/Procfile"; touch "$2/requirements.txt" ;;
    node) echo "web: node index.js" > "$2/Procfile"; echo "{}" > "$2/package.json" ;;
  esac
fi
"""
FAKE_PODMAN = """#!/bin/bash
printf '%s\\n' podman "$@" >> "$CALLS"
if [ "$1" = login ]; then printf 'stdin=%s\\n' "$(cat)" >> "$CALLS"; fi
echo >> "$CALLS"
if [ "$1" = image ] && [ "$2" = exists ]; then exit 1; fi
if [ "$1" = push ]; then
  while [ $# -gt 0 ]; do
    if [ "$1" = --digestfile ]; then printf 'sha256:%064d' 7 > "$2"; fi
    shift
  done
fi
"""


@pytest.mark.parametrize("tree", ["dockerfile", "python", "node"])
def test_the_script_uses_each_parameter_of_the_job_where_it_belongs(tmp_path, tree):
    """Every parameter the Jenkinsfile declares, and the credential's two variables, given a
    value of its own, reaches the command that needs it, for an app with a Dockerfile and for
    the standard build's two runtimes (git and podman are stand-ins here that record their
    arguments; test_the_jenkins_builder_builds_... runs the real ones, on the lab)."""
    text = JENKINSFILE.read_text()
    declared = re.findall(r"string\(name: '([A-Z_]+)'", text)
    credential = re.findall(r"(?:username|password)Variable: '([A-Z_]+)'", text)
    assert credential == ["REGISTRY_USER", "REGISTRY_PASSWORD"]
    values = {
        "APP": "app-q1",
        "REPO": "https://git.example.coop/repo-q2.git",
        "SHA": "5" * 40,
        "BRANCH": "branch-q3",
        "IMAGE": "registry-q4.example.coop:5001/image-q5",
        "REGISTRY_USER": "user-q6",
        "REGISTRY_PASSWORD": "password-q7",
        "BASE_IMAGE": "base-q8",
        "RUNTIME_IMAGES": "node=18.19.0=registry-q4.example.coop:5001/node-q9"
        " python=3.11.2=registry-q4.example.coop:5001/python-q10",
        "NPM_REGISTRY": "http://npm-q11.example.coop:4873",
        "PIP_INDEX_URL": "http://pypi-q12.example.coop:3141/index/",
    }
    assert sorted(values) == sorted(declared + credential)  # a new parameter needs a value here
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("git", FAKE_GIT), ("podman", FAKE_PODMAN)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    out = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=workspace,
        capture_output=True,
        text=True,
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "CALLS": str(calls),
            "TREE": tree,
            **values,
        },
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    commands = [c.splitlines() for c in calls.read_text().split("\n\n") if c.strip()]
    v = values
    host = "registry-q4.example.coop:5001"
    src = str(workspace / "build-app-q1" / "src")
    image = f"{v['IMAGE']}:{v['SHA']}"

    def called(*words: str) -> list[str]:
        [command] = [c for c in commands if c[: len(words)] == list(words)]
        return command

    fetch_commit = called("git", "-C", src, "fetch", "-q", "--no-tags", "--depth", "1")
    assert fetch_commit[-2:] == [v["REPO"], v["SHA"]]
    fetch_branch = [c for c in commands if c[:4] == ["git", "-C", src, "fetch"]][-1]
    assert fetch_branch[-2:] == [v["REPO"], f"refs/heads/{v['BRANCH']}"]
    assert called("git", "-C", src, "-c", "advice.detachedHead=false", "checkout")[-1] == v["SHA"]
    login = called("podman", "login")
    assert login[login.index("--username") + 1] == v["REGISTRY_USER"]
    assert login[-2:] == [host, f"stdin={v['REGISTRY_PASSWORD']}"]
    build = called("podman", "build")
    assert build[build.index("-t") + 1] == image and build[-1] == src
    assert f"GIT_SHA={v['SHA']}" in build
    written = workspace / "build-app-q1" / "Dockerfile"  # the standard build's
    if tree == "dockerfile":
        assert "BASE_IMAGE=base-q8" in build and "-f" not in build
    else:
        # FROM the runtime's image, with the Dockerfile the standard build wrote, which
        # installs from the runtime's cache.
        runtime_image = {"node": "node-q9", "python": "python-q10"}[tree]
        assert f"BASE_IMAGE=registry-q4.example.coop:5001/{runtime_image}" in build
        assert build[build.index("-f") + 1] == str(written)
        dockerfile = written.read_text()
        if tree == "python":
            assert f"PIP_INDEX_URL={v['PIP_INDEX_URL']}" in dockerfile
        else:
            assert f"npm_config_registry={v['NPM_REGISTRY']}" in dockerfile
    pairs = list(zip(build, build[1:], strict=False))
    for label in (
        f"org.opencontainers.image.revision={v['SHA']}",
        f"org.opencontainers.image.source={v['REPO']}",
        f"org.coop-infra.app={v['APP']}",
    ):
        assert ("--label", label) in pairs
    assert called("podman", "push")[-2:] == [image, f"docker://{image}"]
    digest = "sha256:" + "0" * 63 + "7"
    assert out.stdout.splitlines()[-1] == f"PUSHED_DIGEST={digest}"
    assert (workspace / "image-digest.txt").read_text() == digest + "\n"
    assert v["REGISTRY_PASSWORD"] not in out.stdout + out.stderr


def test_the_script_refuses_missing_parameters(tmp_path):
    out = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2 and "APP is not set (a parameter of the app-image job)" in out.stderr


def script_runner(podman, registry_site, workspace: Path):
    """What a Jenkins agent does for the `app-image` job (jenkins/Jenkinsfile): the parameters
    and the `docker-registry` credential in the environment, `sh 'jenkins/build-app-image.sh'`
    in the workspace, and on success the description `digest=` + image-digest.txt."""

    def run(params: dict[str, str], console: Console):
        end = registry_site.endpoint
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            **podman.env(),
            **params,
            "REGISTRY_USER": end.username,
            "REGISTRY_PASSWORD": end.password,
            # The site's registry: TLS, verified against its certificate.
            "REGISTRY_TLS_VERIFY": "true",
            "REGISTRY_CERT_DIR": str(Path(end.ca_file).parent),
            "BUILD_NETWORK": "none",  # (the agents' firewall lets builds reach the caches only)
            "WORKSPACE": str(workspace),
        }
        workspace.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            ["bash", str(SCRIPT)],
            cwd=workspace,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            # Jenkins would mask the bound password in its console; this runner does not, so
            # the console holds what the script itself prints (it must never print it).
            console.line(line.rstrip("\n"))
        if proc.wait() != 0:
            return "FAILURE", None
        return "SUCCESS", "digest=" + (workspace / "image-digest.txt").read_text().strip()

    return run


def test_the_jenkins_builder_builds_through_the_job_and_checks_the_registry(
    tmp_path, app_repos, monkeypatch, podman, base_image, registry_site
):
    repo = app_repos("hello-ci", source=HELLO)
    sha = repo.commit(message="ci 1")
    # A topology on a cloud (not the lab): its apps are built by Jenkins.
    topo_file = write_app_topology(
        tmp_path / "topology.yaml", {"hello-ci": "git/hello-ci.git"}, cloud="catalyst"
    )
    topo = load_topology(topo_file)
    assert builder_for(topo) == "jenkins"
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    monkeypatch.setenv("INFRA_STATE_DIR", str(tmp_path / "state"))
    runner = script_runner(podman, registry_site, tmp_path / "workspace")
    with FakeJenkins(jobs={"app-image": runner}) as fake:
        defs = delivery_defs(
            topo,
            registry=registry_site.resource(),
            podman=podman,
            jenkins=resource(fake, poll_interval_s=0.2),
        )
        # the build step of the push's run (no cloud here to release on)
        result = push_sensor_build(defs, dg.DagsterInstance.ephemeral(), build_only=True)
    assert result.success
    [mat] = result.asset_materializations_for_node("app_image__hello_ci")
    meta = {k: v.value for k, v in mat.metadata.items()}
    registry = registry_site.resource()
    assert meta["builder"] == "jenkins" and meta["built"] is True
    assert meta["digest"] == registry.digest(repository="hello-ci", reference=sha)
    assert meta["digest"] == registry.digest(repository="hello-ci", reference="main")
    assert meta["jenkins_build"] == f"{fake.url}job/app-image/1/"
    assert meta["jenkins_result"] == "SUCCESS"
    build = fake.builds[("app-image", 1)]
    caches = build_caches(site_for(topo))
    assert build.params == {
        "APP": "hello-ci",
        "REPO": str(repo.bare),
        "SHA": sha,
        "BRANCH": "main",
        "IMAGE": registry_site.endpoint.image("hello-ci"),
        # the base image, pushed to the registry first, by digest; no runtime image (the app
        # has a Dockerfile); the caches are the topology's support-1 (10.127.1.x)
        "BASE_IMAGE": meta["base_image"],
        "RUNTIME_IMAGES": "",
        "NPM_REGISTRY": caches["npm_registry"],
        "PIP_INDEX_URL": caches["pip_index"],
    }
    assert meta["base_image"].startswith(registry_site.endpoint.image("coop-base") + "@sha256:")
    assert caches["npm_registry"].startswith("http://10.") and caches["pip_index"].endswith(
        ":3141/index/"
    )
    # The console went to the Dagster log and into the build log. The console is unmasked here
    # (see script_runner): the script printed the registry password nowhere.
    log = Path(meta["build_log"]).read_text()
    assert f"PUSHED_DIGEST={meta['digest']}" in log and "== build" in log
    assert "== push" in log and "Login Succeeded" in log
    assert registry_site.endpoint.password not in build.console.text()
    assert registry_site.endpoint.password not in log
    labels = registry.labels(
        repository="hello-ci", manifest=registry.manifest(repository="hello-ci", reference=sha)
    )
    assert labels["org.opencontainers.image.revision"] == sha


# A Python app with no Dockerfile and no dependencies: the standard build builds it with no
# network at all (its dependencies would come from the PyPI cache, which is the lab's).
PLAIN_PYTHON = {
    "app.py": "import http.server\n"
    "http.server.HTTPServer(('', 8000), http.server.SimpleHTTPRequestHandler).serve_forever()\n",
    "Procfile": "web: python3 app.py\n",
    "requirements.txt": "# no dependencies\n",
}


def test_a_repository_without_a_dockerfile_gets_the_standard_build_under_jenkins(
    tmp_path, app_repos, monkeypatch, podman, base_image, registry_site
):
    """The standard build is the same under Jenkins as under salt: the builder makes the
    runtime's base image, pushes it to the registry and names it to the job, with the caches
    the build installs from; the job's script builds the app by convention FROM it."""
    repo = app_repos("plain-py")
    for name, text in PLAIN_PYTHON.items():
        (repo.work / name).write_text(text)
    sha = repo.commit(message="no Dockerfile")
    topo_file = write_app_topology(
        tmp_path / "topology.yaml", {"plain-py": "git/plain-py.git"}, cloud="catalyst"
    )
    topo = load_topology(topo_file)
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    monkeypatch.setenv("INFRA_STATE_DIR", str(tmp_path / "state"))
    runner = script_runner(podman, registry_site, tmp_path / "workspace")
    with FakeJenkins(jobs={"app-image": runner}) as fake:
        defs = delivery_defs(
            topo, registry=registry_site.resource(), podman=podman, jenkins=resource(fake)
        )
        result = push_sensor_build(defs, dg.DagsterInstance.ephemeral(), app="plain-py",
                                   build_only=True)  # fmt: skip
    assert result.success
    params = fake.builds[("app-image", 1)].params
    runtime, version, image = params["RUNTIME_IMAGES"].split("=")
    assert runtime == "python" and version.startswith("3.11.")
    assert image.startswith(registry_site.endpoint.image("coop-python") + "@sha256:")
    assert params["PIP_INDEX_URL"] == build_caches(site_for(topo))["pip_index"]
    console = fake.builds[("app-image", 1)].console.text()
    assert "== standard build (no Dockerfile)" in console
    registry = registry_site.resource()
    labels = registry.labels(
        repository="plain-py", manifest=registry.manifest(repository="plain-py", reference=sha)
    )
    assert labels["org.coop-infra.build"] == f"standard python {version}"
    assert labels["org.opencontainers.image.revision"] == sha


def test_a_failed_jenkins_build_fails_the_asset_with_the_console_tail(
    tmp_path, app_repos, monkeypatch, registry_site, podman, base_image
):
    repo = app_repos("hello-ci", source=HELLO)
    sha = repo.commit(message="ci")
    topo_file = write_app_topology(
        tmp_path / "topology.yaml", {"hello-ci": "git/hello-ci.git"}, cloud="catalyst"
    )
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    monkeypatch.setenv("INFRA_STATE_DIR", str(tmp_path / "state"))

    def fails(params, console):  # as build-app-image.sh ends when the app's build fails
        console.line('Error: building at STEP "RUN make": exit status 2')
        console.line("BUILD_ERROR=the image's build failed (podman build exited 2)")
        return "FAILURE", None

    with FakeJenkins(jobs={"app-image": fails}) as fake:
        defs = delivery_defs(
            load_topology(topo_file),
            registry=registry_site.resource(),
            podman=podman,
            jenkins=resource(fake),
        )
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("commits_hello_ci", [sha])
        result = defs.resolve_job_def("build_hello_ci").execute_in_process(
            instance=instance, partition_key=sha, raise_on_error=False
        )
    assert not result.success
    failure = result.failure_data_for_node("app_image__hello_ci")
    assert (
        f"Jenkins app-image #1 ended FAILURE: {fake.url}job/app-image/1/console (the image's"
        " build failed (podman build exited 2))"
    ) in failure.error.message
    tail = failure.user_failure_data.metadata["console_tail"].value
    assert "exit status 2" in tail
    # The app's own failure: built once, not tried again.
    assert len(fake.builds) == 1
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]


@pytest.fixture
def build_hello_ci(tmp_path, app_repos, monkeypatch, loopback_registry, podman, base_image):
    """app_image/hello-ci at a new commit (`commit(repo)` makes it; by default one on main),
    built by the fake Jenkins running `job`, against a registry on loopback (the base image
    pushed there first): (the run's result, the sha, the fake)."""

    def build(job, *, commit=None):
        return _build_hello_ci(
            tmp_path, app_repos, monkeypatch, loopback_registry, podman, job, commit=commit
        )

    return build


def _build_hello_ci(tmp_path, app_repos, monkeypatch, registry, podman, job, *, commit=None):
    repo = app_repos("hello-ci", source=HELLO)
    sha = commit(repo) if commit else repo.commit(message="ci")
    topo_file = write_app_topology(
        tmp_path / "topology.yaml", {"hello-ci": "git/hello-ci.git"}, cloud="catalyst"
    )
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    monkeypatch.setenv("INFRA_STATE_DIR", str(tmp_path / "state"))
    with FakeJenkins(jobs={"app-image": job}) as fake:
        defs = delivery_defs(
            load_topology(topo_file), registry=registry, podman=podman, jenkins=resource(fake)
        )
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("commits_hello_ci", [sha])
        result = defs.resolve_job_def("build_hello_ci").execute_in_process(
            instance=instance, partition_key=sha, raise_on_error=False
        )
    return result, sha, fake


@pytest.mark.slow  # a registry on loopback, and the retry's 5 s (with jitter)
def test_a_build_that_fails_for_a_passing_reason_is_tried_again_and_delivered(
    build_hello_ci, loopback_registry
):
    """The registry refuses the first build's push (down for a moment): the build is tried
    again with backoff (BUILD_RETRY_POLICY), in the same run, and the commit is delivered
    without another push to the app's repo."""
    url = loopback_registry.url

    def flaky(params, console):
        if len(fake_builds) == 0:
            fake_builds.append("refused")
            console.line("Error: writing blob: dial tcp 10.1.9.1:5001: connect: connection refused")
            return "FAILURE", None
        digest = push_image(url, params["APP"], params["SHA"],
                            {"org.opencontainers.image.revision": params["SHA"]})  # fmt: skip
        console.line(f"PUSHED_DIGEST={digest}")
        return "SUCCESS", f"digest={digest}"

    fake_builds: list[str] = []
    result, sha, fake = build_hello_ci(flaky)
    assert result.success
    assert len(fake.builds) == 2  # the job ran twice: once refused, once delivered
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 1
    [mat] = result.asset_materializations_for_node("app_image__hello_ci")
    assert mat.metadata["sha"].value == sha


@pytest.mark.slow  # a registry on loopback
def test_a_jenkins_build_that_names_no_digest_fails_the_asset(build_hello_ci):
    """A job that is not jenkins/Jenkinsfile (its build succeeds, its console and description
    name no digest): nothing to check against the registry, so nothing is recorded."""

    def names_no_digest(params, console):
        console.line(f"built {params['IMAGE']}:{params['SHA']}")
        return "SUCCESS", None

    result, _, fake = build_hello_ci(names_no_digest)
    assert not result.success
    message = result.failure_data_for_node("app_image__hello_ci").user_failure_data.description
    assert message == (
        "Jenkins app-image #1 succeeded but printed no PUSHED_DIGEST=sha256:... line (is the"
        f" job running jenkins/Jenkinsfile?): {fake.url}job/app-image/1/console"
    )
    assert result.asset_materializations_for_node("app_image__hello_ci") == []


@pytest.mark.slow  # a registry on loopback
def test_an_image_that_is_not_the_one_the_build_pushed_fails_the_asset(
    build_hello_ci, loopback_registry
):
    """The build pushes its image and names its digest; before Dagster reads the tag back,
    another push puts a different image under it. The digest the registry serves is not the
    build's: the asset fails, naming both, and records nothing."""
    url = loopback_registry.url
    pushed = {}

    def raced(params, console):
        repository, sha = params["APP"], params["SHA"]
        revision = {"org.opencontainers.image.revision": sha}
        pushed["ours"] = push_image(url, repository, sha, revision)
        console.line(f"PUSHED_DIGEST={pushed['ours']}")
        pushed["theirs"] = push_image(url, repository, sha, {**revision, "who": "someone else"})
        return "SUCCESS", f"digest={pushed['ours']}"

    result, sha, _ = build_hello_ci(raced)
    assert pushed["ours"] != pushed["theirs"]
    assert not result.success
    message = result.failure_data_for_node("app_image__hello_ci").user_failure_data.description
    host = url.removeprefix("http://")
    assert message == (
        f"the build pushed {pushed['ours']}, but the registry serves"
        f" {host}/hello-ci:{sha} as {pushed['theirs']}"
    )
    assert result.asset_materializations_for_node("app_image__hello_ci") == []
    assert loopback_registry.tags(repository="hello-ci") == [sha]  # the branch tag not moved


@pytest.mark.slow  # a registry on loopback
def test_a_commit_that_only_another_branch_holds_is_not_built(build_hello_ci, loopback_registry):
    """A partition added by hand for a commit pushed to a feature branch only: app_image
    refuses it before any build starts (its record would say it is a commit of main, which a
    release trusts), and records nothing."""

    def on_a_feature_branch(repo) -> str:
        tip = repo.commit(message="on main")
        sha = repo.commit(message="not reviewed")
        git("push", "-q", "origin", f"{sha}:refs/heads/feature", cwd=repo.work)
        git("push", "-q", "-f", "origin", f"{tip}:refs/heads/main", cwd=repo.work)
        return sha

    def builds(params, console):
        raise AssertionError(f"a build started for {params['SHA']}")

    result, sha, fake = build_hello_ci(builds, commit=on_a_feature_branch)
    assert not result.success
    message = result.failure_data_for_node("app_image__hello_ci").user_failure_data.description
    assert message.startswith(f"app_image/hello-ci: {sha[:12]} is not a commit of branch 'main' of")
    assert message.endswith("(a release takes only what app_image recorded for the branch)")
    assert fake.builds == {}
    assert result.asset_materializations_for_node("app_image__hello_ci") == []
    assert loopback_registry.tags(repository="hello-ci") == []
