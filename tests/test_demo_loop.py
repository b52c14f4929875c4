"""The whole loop, end to end, as `make demo` runs it: `infra demo` on the local site with its
services up (tests/fixtures_delivery.py), in a subprocess, with a Dagster instance of the test's
own. It runs the `main` job (the salt states on every host), starts the real `dagster-daemon` and
the two sensors, creates the sample app's git repo, pushes a commit and waits until the staging
URL answers with it (git_push_sensor -> build_hello -> registry_image_sensor ->
release_staging_hello), then pushes a second one. Nothing else runs the `main` job on the local
site with its services up, or the sensors under the real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import requests

from infra_assets.local_site.dagster import DagsterDaemonService, running_daemons
from infra_assets.local_site.processes import Supervisor, free_port

pytestmark = pytest.mark.slow

INFRA = str(Path(sys.executable).parent / "infra")
RUN_KEY_TAG = "dagster/run_key"  # the tag Dagster gives a run a sensor asked for with a run_key


def test_make_demo_pushes_two_commits_to_live_on_staging(delivery_site, dagster_home, tmp_path):
    env = {
        **os.environ,
        **delivery_site.env,
        "DAGSTER_HOME": str(dagster_home),
    }
    for key in ("INFRA_SECRETS_FILE", "INFRA_SALT_MASTER_CONFIG", "INFRA_REGISTRY_URL"):
        env.pop(key, None)
    try:
        started = time.monotonic()
        out = subprocess.run(
            [INFRA, "demo", "--topology", str(delivery_site.topology)],
            capture_output=True,
            text=True,
            env=env,
            cwd=dagster_home,
            timeout=900,
        )
        took = time.monotonic() - started
        log = out.stdout + out.stderr
        assert out.returncode == 0, log[-6000:]

        # Two commits on the app's branch, each announced live on staging.
        work = delivery_site.site.root / "git" / "work" / "hello"
        head = _git(work, "rev-parse", "HEAD")
        first = _git(work, "rev-parse", "HEAD~1")
        assert _git(delivery_site.repo, "rev-parse", "main") == head
        status = _status(env)
        url = status["releases"]["hello"]["staging"]["url"]
        assert url == delivery_site.process_site().app_url("web-staging-1", "hello", "staging")
        assert f"== {url} answers {first} (" in log
        assert f"== {url} answers {head} (" in log
        # ... and the staging URL answers with the second one now.
        health = requests.get(url + "health", timeout=5).json()
        assert health == {"status": "ok", "app": "hello", "version": head}

        # `infra local status --json`: the registry, the live release, the daemon.
        staging = status["releases"]["hello"]["staging"]
        assert staging["sha"] == head and staging["digest"].startswith("sha256:")
        assert staging["previous"]["sha"] == first
        assert status["registry"]["url"].startswith("https://127.0.0.1:")
        assert status["dagster"]["daemon_running"] is True
        assert status["dagster"]["dagster_home"] == str(dagster_home)

        # What the daemon ran, in the instance: the main job, exactly one build and one staging
        # release of each pushed commit, under the sensors' run keys (<app>:<sha>; the digest).
        # The repo's first commit (the sample app, made before the sensors started) may be built
        # too, when the git sensor's first tick comes before the first push: the sensor builds
        # the branch head it finds. Nothing else is built, and nothing twice.
        history = set(_git(work, "rev-list", "HEAD").split())
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            runs = instance.get_runs()
            done = [(r.job_name, r.tags.get("coop/sha"), r.status.value) for r in runs]
            assert ("main", None, "SUCCESS") in done, done
            builds = [r for r in runs if r.job_name == "build_hello"]
            releases = [r for r in runs if r.job_name == "release_staging_hello"]
            built = [r.tags["coop/sha"] for r in builds]
            assert len(built) == len(set(built)) and set(built) <= history, done
            released = [r.tags["coop/digest"] for r in releases]
            assert len(released) == len(set(released)), done
            digests = set()
            for sha in (first, head):
                [build] = [r for r in builds if r.tags.get("coop/sha") == sha]
                assert build.status == dg.DagsterRunStatus.SUCCESS, done
                assert build.tags[RUN_KEY_TAG] == f"hello:{sha}"
                [release] = [r for r in releases if r.tags.get("coop/sha") == sha]
                assert release.status == dg.DagsterRunStatus.SUCCESS, done
                assert release.tags[RUN_KEY_TAG] == release.tags["coop/digest"]
                assert release.tags["coop/digest"].startswith("sha256:")
                digests.add(release.tags["coop/digest"])
            assert len(digests) == 2  # one staging release per digest
            assert staging["digest"] in digests
            release = instance.get_latest_materialization_event(
                dg.AssetKey(["release", "staging", "hello"])
            )
            meta = release.asset_materialization.metadata
            assert meta["sha"].value == head and meta["url"].value == url
            assert meta["digest"].value == staging["digest"]

        # `make dev` now starts the webserver only: one instance, one daemon.
        _check_make_dev_starts_only_the_webserver(dagster_home, env, tmp_path)
        print(f"infra demo took {took:.0f} s")
    finally:
        DagsterDaemonService().down(delivery_site.site)
    assert not running_daemons(dagster_home)


def _check_make_dev_starts_only_the_webserver(dagster_home: Path, env: dict, tmp_path: Path):
    [daemon] = running_daemons(dagster_home)
    sup = Supervisor(tmp_path / "run")
    log = tmp_path / "dev.log"
    record = sup.start(
        "infra-dev",
        [INFRA, "dev", "--port", str(free_port())],
        log=log,
        cwd=dagster_home,
        env=env,
        ready=lambda: "dagster-webserver" in _cmdline(sup),
        ready_timeout_s=30,
    )
    try:
        assert (
            f"A Dagster daemon already runs on this instance (pid {daemon.pid}" in log.read_text()
        )
        # `infra dev` became the webserver (exec), not `dagster dev`.
        words = _cmdline(sup).split()
        assert Path(words[1]).name == "dagster-webserver" and "dev" not in words
        assert running_daemons(dagster_home) == [daemon]  # no second daemon
    finally:
        sup.stop("infra-dev", sig=2, timeout_s=20)
    assert record.pid


def _cmdline(sup: Supervisor) -> str:
    record = sup.get("infra-dev")
    if record is None:
        return ""
    try:
        return Path(f"/proc/{record.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _status(env: dict) -> dict:
    out = subprocess.run(
        [INFRA, "local", "status", "--json", "--topology", env["INFRA_TOPOLOGY"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()
