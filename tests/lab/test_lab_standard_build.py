"""The standard build on the lab, for real: an Express app as the co-op's Node apps come (a
package.json without a lockfile, no Dockerfile, a Procfile: tests/apps/express) is built on the
jenkins agent by convention (salt/jenkins/files/standard_build.py), FROM the project's Node base
image (Debian's nodejs and npm, debootstrapped here, pushed to the lab's registry), with Express
installed through the lab's npm cache (verdaccio on support-1, the build's only network), and
released on web-staging-1, where it answers with its commit."""

from __future__ import annotations

import contextlib
import time

import dagster as dg
import pytest
import yaml
from fixtures_delivery import (
    REPO_ROOT,
    make_app_repo,
    materialization_metadata,
    push_sensor_build,
    sensor_tick,
    step_failures,
)
from lab_env import LAB_NUMBER, LabEnv

from infra_assets.delivery.app_images import deliver_job_name
from resources.lab_egress import IDLE_S
from sensors import git_push

pytestmark = [pytest.mark.slow, pytest.mark.lab]

DJANGO = REPO_ROOT / "tests" / "apps" / "django"
DJANGO_APP = "django-sample"
UPSTREAM = {"registry.npmjs.org:443", "pypi.org:443", "files.pythonhosted.org:443"}
EXPRESS = REPO_ROOT / "tests" / "apps" / "express"
APP = "express-sample"
NODE = "app_image__express_sample"
NPM_STORAGE = "/var/lib/verdaccio/storage"


@contextlib.contextmanager
def _declared(lab_env: LabEnv, tmp_path, name: str, source, entry: dict, *configure: str):
    """The session's lab with app `name` declared (one topology entry; its repo a bare repo
    under tmp_path, from `source`): the lab's secrets with the app's, and the pillar (the web
    hosts release only the apps of theirs) with `configure`'s assets; the lab's own again after
    (for the tests after)."""
    from infra_assets.topology.model import load_topology
    from lab.site import lab_secrets

    repo = make_app_repo(tmp_path, name, source=source)
    data = yaml.safe_load(lab_env.topology_file.read_text())
    data["apps"][name] = {"repo": str(repo.bare), "branch": "main", **entry}
    path = tmp_path / "topology.lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = LabEnv(path, lab_env.dagster_home, load_topology(path))
    with env.env():
        lab_secrets(env.site)
        configured = env.run("salt_pillar", *configure)
        assert configured.success, step_failures(configured)
    try:
        with env.env():
            yield repo, env
    finally:
        assert lab_env.run("salt_pillar").success


@pytest.fixture
def express(lab_env: LabEnv, tmp_path):
    """The Express app declared (no domain: it is served over HTTP by its name)."""
    with _declared(lab_env, tmp_path, APP, EXPRESS, {"port": 8010, "health": "/"}) as declared:
        yield declared


def _push(
    env: LabEnv,
    repo,
    app: str,
    files: dict | None = None,
    message: str = "change",
    *,
    build_only: bool = False,
):
    """A commit pushed to `app`'s repo and run as the daemon would: the git sensor's tick
    before and after, then the run it asks for (`deliver_<app>`: the build, then the staging
    release; with `build_only`, its build step alone)."""
    instance = dg.DagsterInstance.get()
    defs = env.definitions()
    cursor = sensor_tick(defs, git_push.SENSOR_NAME, instance, None).cursor
    sha = repo.commit(files, message=message)
    run = push_sensor_build(
        defs, instance, cursor=cursor, app=app, build_only=build_only, raise_on_error=False
    )
    assert run.dagster_run.job_name == deliver_job_name(app)
    return sha, run


def test_an_express_app_without_a_dockerfile_builds_through_the_npm_cache_and_goes_live(
    lab_env: LabEnv, express
):
    from lab.site import app_site

    repo, env = express
    sha, build = _push(env, repo, APP, message="express, as its starter makes it")
    assert build.success, step_failures(build)
    meta = materialization_metadata(build, NODE)
    log = open(meta["build_log"]).read()

    # By convention: Node (package.json), npm install (no lockfile), the Procfile's command,
    # FROM the project's Node base image, which Debian's nodejs 18 makes.
    assert "[support-2] == standard build (no Dockerfile)" in log
    assert "[support-2] RUNTIME=node" in log
    assert "[support-2] AVAILABLE=node 18." in log
    assert "standard build (no Dockerfile): node 18." in meta["what_happened"]
    # Its own test ran in the build (npm test: Node's runner, test/app.test.js), and passed.
    assert "[support-2] # pass 1" in log and "[support-2] # fail 0" in log
    registry = env.definitions().resources["registry"]
    manifest = registry.manifest(repository=APP, reference=sha)
    labels = registry.labels(repository=APP, manifest=manifest)
    assert labels["org.coop-infra.build"].startswith("standard node 18.")
    assert labels["org.opencontainers.image.revision"] == sha

    # Express came through the lab's npm cache: verdaccio on support-1 has it stored now.
    lab = env.lab().lab()  # the container driver
    stored = lab.exec(LAB_NUMBER, "support-1", ["ls", NPM_STORAGE], check=False).output.split()
    assert "express" in stored, stored

    # Live on staging, released in the same run.
    assert materialization_metadata(build, "release__staging__express_sample")["sha"] == sha
    where = app_site(env.site, "web-staging-1", APP, "staging")
    assert lab.route_into_lab(where.address)["dev"] == f"coop{LAB_NUMBER}-m"
    response = where.get("/", timeout_s=5)
    assert response.status_code == 200, response.text
    assert response.json() == {"app": "express-sample", "version": sha}


def test_a_failing_test_fails_the_build_before_anything_is_pushed(lab_env: LabEnv, express):
    repo, env = express
    index = (EXPRESS / "index.js").read_text()
    broken = index.replace("app: 'express-sample'", "app: 'express-broken'")
    assert broken != index
    sha, build = _push(env, repo, APP, {"index.js": broken}, message="a change its test catches")
    assert not build.success
    failures = step_failures(build)
    assert "the app's tests failed (npm test exited 1): nothing was pushed" in failures
    # The test's own output is in the build's log: what it expected and what it got.
    [failed] = [e.step_failure_data for e in build.all_events if e.is_step_failure]
    log = open(failed.user_failure_data.metadata["build_log"].value).read()
    assert "express-broken" in log and "[support-2] # fail 1" in log
    registry = env.definitions().resources["registry"]
    assert registry.manifest(repository=APP, reference=sha) is None  # nothing was pushed
    # Built once, not retried: the app's own failure.
    assert not [e for e in build.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]


def test_a_build_reaches_the_caches_and_nothing_else(lab_env: LabEnv, express):
    """The build agent's containers (the builds' steps) reach the npm cache, and neither the
    registry, the salt master, the internet nor the lab's git daemon (which the agent itself
    reaches): a build script that tries each says so."""
    repo, env = express
    registry_address = env.address("support-1", "docker-registry")
    npm_address = env.address("support-1", "npm-cache")
    probe = f"""
const net = require('net')
const targets = [
  ['npm-cache', '{npm_address}', 4873], ['registry', '{registry_address}', 5001],
  ['salt', '{env.address("support-1", "salt-master")}', 4506],
  ['internet', '104.16.0.35', 443], ['git-daemon', '169.254.{LAB_NUMBER}.1', 9418],
]
let left = targets.length
for (const [name, host, port] of targets) {{
  const s = net.connect({{host, port, timeout: 3000}})
  const done = (what) => {{ console.log(`PROBE ${{name}} ${{what}}`); s.destroy(); if (!--left) process.exit(0) }}
  s.on('connect', () => done('open'))
  s.on('timeout', () => done('silent'))
  s.on('error', (e) => done(e.code))
}}
"""
    package = {
        "name": "probe",
        "version": "1.0.0",
        "scripts": {"build": "node probe.js", "start": "node -e 0"},
    }
    import json

    instance = dg.DagsterInstance.get()
    defs = env.definitions()
    cursor = sensor_tick(defs, git_push.SENSOR_NAME, instance, None).cursor
    repo.commit(
        {"package.json": json.dumps(package), "probe.js": probe, "Procfile": "web: node -e 0\n"},
        "probe the build's network",
    )
    build = push_sensor_build(  # the probe app does not serve: its build alone
        defs, instance, cursor=cursor, app=APP, build_only=True, raise_on_error=False
    )
    assert build.success, step_failures(build)
    log = open(materialization_metadata(build, NODE)["build_log"]).read()
    probes = dict(
        line.split("PROBE ", 1)[1].split(" ", 1) for line in log.splitlines() if "PROBE " in line
    )
    assert probes["npm-cache"] == "open", probes
    # The git daemon on the lab's link is one the agent itself reaches (it clones from it),
    # outside the private network: only the agent's rule for its containers refuses it.
    for refused in ("registry", "salt", "internet", "git-daemon"):
        assert probes[refused] != "open", probes


@pytest.fixture
def django_app(lab_env: LabEnv, tmp_path):
    """The Django app declared as the co-op would: a database, its settings and a secret; its
    database made by the postgres state (highstate/postgres-staging with the new pillar)."""
    entry = {
        "port": 8020,
        "health": "/health",
        "database": True,
        "env": {"DJANGO_ALLOWED_HOSTS": "*"},
        "secrets": ["DJANGO_SECRET_KEY"],
    }
    with _declared(
        lab_env, tmp_path, DJANGO_APP, DJANGO, entry, "highstate/postgres-staging"
    ) as declared:
        yield declared


def _upstream(lab_env: LabEnv, since: float) -> list[dict]:
    """The tunnels the lab opened to the package registries since `since` (epoch seconds).
    A tunnel is logged when it closes, at the latest IDLE_S after its last byte: so they are
    read once that has passed, and none from before `since` was still open (the caller waited
    as long before it)."""
    time.sleep(IDLE_S + 1)
    tunnels = lab_env.site.egress(LAB_NUMBER).tunnels_since(since)
    return [e for e in tunnels if e["target"] in UPSTREAM]


def test_a_django_app_builds_through_the_pypi_cache_runs_its_tests_migrates_and_goes_live(
    lab_env: LabEnv, django_app
):
    """requirements.txt, a Procfile with `release: ./manage.py migrate`, tests for pytest,
    no Dockerfile: built by convention through the PyPI cache (proxpi on support-1), its tests
    run in the build, its release phase migrates its database on pg-staging-1 over TLS, and it
    answers from that database. A second build of the same requirements fetches nothing
    upstream: every package comes from the cache."""
    from lab.site import app_site

    repo, env = django_app
    sha, build = _push(env, repo, DJANGO_APP, message="a Django app, as the co-op's come")
    assert build.success, step_failures(build)
    meta = materialization_metadata(build, "app_image__django_sample")
    log = open(meta["build_log"]).read()
    assert "[support-2] RUNTIME=python" in log and "[support-2] AVAILABLE=python 3.11." in log
    pypi = env.address("support-1", "pypi-cache")
    assert f"PIP_INDEX_URL=http://{pypi}:3141/index/" in log  # the build's only index
    assert "Successfully installed" in log and "Django-5.2." in log
    assert "2 passed" in log  # its own tests (tests/test_notes.py), in the build

    released = materialization_metadata(build, "release__staging__django_sample")
    assert released["release_phase"].startswith(
        "ran the release command './manage.py migrate --no-input'"
    )
    assert "Applying notes.0001_initial... OK" in released["release_phase_output"]
    lab = env.lab().lab()
    where = app_site(env.site, "web-staging-1", DJANGO_APP, "staging")
    assert lab.route_into_lab(where.address)["dev"] == f"coop{LAB_NUMBER}-m"
    response = where.get("/health", timeout_s=5)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "app": "django-sample",
        "version": sha,
        "database": "postgresql",
        "tls": True,
        "notes": 0,
    }
    # A page that writes and reads its database: a note posted, then listed.
    with where.session() as http:
        posted = http.post("/", "written on staging")
        assert posted.status_code == 200, posted.text
        assert http.get("/").json() == {"notes": ["written on staging"]}
        assert http.get("/health").json()["notes"] == 1

    # The same requirements again (a change elsewhere): everything from the cache. (No tunnel
    # of the first build's is open any more: each closes IDLE_S after its last byte.)
    time.sleep(IDLE_S + 1)
    before = time.time()
    _, again = _push(
        env, repo, DJANGO_APP, {"README.md": "Not a dependency.\n"}, "docs", build_only=True
    )
    assert again.success, step_failures(again)
    assert _upstream(lab_env, before) == []
