"""`make demo` on the lab, end to end: `infra demo` on the tests' lab, in a subprocess. It runs
the `main` job on this machine's Dagster (the bootstrap: images, containers, keys, highstate,
among them the `dagster` role on support-1), then hands the lab over to the lab's own Dagster:
its delivery sensors turned on there, no daemon started here. It makes the sample app's repo,
pushes a commit and waits until web-staging-1 answers with it at its planned address (the repo's
post-receive hook -> the webhook endpoint -> deliver_hello in the lab's Dagster: the build on the
agent, then the release on web-staging-1, run on support-1), then pushes a second one. The runs
are read back through the lab's Dagster's GraphQL API, as its UI shows them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from lab_env import LAB_NUMBER, LabEnv

from lab.dagster_daemon import running_daemons
from lab.demo_loop import SENSORS
from lab.lab_dagster import lab_dagster
from lab.processes import Supervisor, free_port
from lab.site import app_site

pytestmark = [pytest.mark.slow, pytest.mark.lab]

INFRA = str(Path(sys.executable).parent / "infra")
RUN_KEY_TAG = "dagster/run_key"  # the tag Dagster gives a run a sensor asked for with a run_key

RUNS = """query Runs($filter: RunsFilter!) { runsOrError(filter: $filter, limit: 50) {
  ... on Runs { results { runId jobName status tags { key value } } } } }"""
RELEASE = """{ assetOrError(assetKey: {path: ["release", "staging", "hello"]}) {
  ... on Asset { assetMaterializations(limit: 1) { metadataEntries { label
    ... on TextMetadataEntry { text } ... on FloatMetadataEntry { floatValue }
    ... on MarkdownMetadataEntry { mdStr } } } } } }"""


def test_make_demo_pushes_two_commits_to_live_on_the_lab_s_staging(lab_env: LabEnv):
    from lab.demo_services import stop_daemon

    env = {
        **os.environ,
        "DAGSTER_HOME": str(lab_env.dagster_home),
        "INFRA_TOPOLOGY": str(lab_env.topology_file),
    }
    dagster = lab_dagster(lab_env.site)
    assert dagster is not None
    api = dagster.api()
    try:
        started, since = time.monotonic(), time.time()
        out = subprocess.run(
            [INFRA, "demo"],
            capture_output=True,
            text=True,
            env=env,
            cwd=lab_env.dagster_home,
            timeout=1200,
        )
        took = time.monotonic() - started
        log = out.stdout + out.stderr
        assert out.returncode == 0, log[-6000:]
        assert f"the lab's Dagster on support-1 (https://10.{LAB_NUMBER}.12.1) takes over" in log

        # Two commits on the app's branch, each announced live on staging.
        work = lab_env.site.root / "git" / "work" / "hello"
        head, first = _git(work, "rev-parse", "HEAD"), _git(work, "rev-parse", "HEAD~1")
        bare = Path(lab_env.topo.apps["hello"].repo)
        assert _git(bare, "rev-parse", "main") == head
        url = f"https://{lab_env.topo.apps['hello'].domains['staging']}/"
        assert f"== {url} answers {first} (" in log
        assert f"== {url} answers {head} (" in log
        # ... and staging answers with the second one now, over HTTPS with the certificate
        # checked against the lab's ACME root (sent after the route check).
        address = lab_env.address("web-staging-1", "web-staging")
        assert lab_env.lab().route_into_lab(address)["dev"] == f"coop{LAB_NUMBER}-m"
        health = app_site(lab_env.site, "web-staging-1", "hello", "staging").get("/health").json()
        assert health == {"status": "ok", "app": "hello", "version": head}

        # `infra lab status --json`: the live release, the previous one; the lab's Dagster, and
        # no daemon of this machine's (one Dagster drives the lab).
        status = _status(env)
        staging = status["releases"]["hello"]["staging"]
        assert staging["sha"] == head and staging["digest"].startswith("sha256:")
        assert staging["previous"]["sha"] == first
        assert status["dagster"]["daemon_running"] is False
        assert not running_daemons(lab_env.dagster_home)
        assert status["dagster_ui"][0]["url"] == f"https://10.{LAB_NUMBER}.12.1/"
        # on the lab's link, where the lab's registry sends its notifications
        assert status["dagster"]["webhooks"] == f"http://169.254.{LAB_NUMBER}.1:8700"
        assert status["dagster"]["dagster-webserver"] is None  # none of this machine's

        # What ran, in the lab's Dagster: one deliver_hello run per pushed commit, started by
        # the webhook endpoint under git_push_sensor's run key (<app>:<sha>), which released
        # it; no release by the registry sensor of a digest those runs released. The repo's
        # head before the demo may be delivered too, when the git sensor's first tick comes
        # before the first push.
        history = set(_git(work, "rev-list", "HEAD").split())
        # (the runs since the demo started: the lab's Dagster keeps its history in PostgreSQL,
        # a kept lab's earlier sessions' too)
        runs = api.query("the runs", RUNS, {"filter": {"createdAfter": since}})
        runs = runs["runsOrError"]["results"]
        done = [(r["jobName"], _tag(r, "coop/sha"), r["status"]) for r in runs]
        delivered = [r for r in runs if r["jobName"] == "deliver_hello" and _tag(r, RUN_KEY_TAG)]
        shas = [_tag(r, "coop/sha") for r in delivered]
        assert len(shas) == len(set(shas)) and set(shas) <= history, done
        for sha in (first, head):
            [run] = [r for r in delivered if _tag(r, "coop/sha") == sha]
            assert run["status"] == "SUCCESS", done
            assert _tag(run, RUN_KEY_TAG) == f"hello:{sha}"
            assert _tag(run, "dagster/sensor_name") == "git_push_sensor"
            assert _tag(run, "coop/started_by") == "webhook"
        by_sensor = [
            r
            for r in runs
            if r["jobName"] == "release_staging_hello" and _tag(r, "coop/sha") in (first, head)
        ]
        assert not by_sensor, done
        [release] = api.query("the release", RELEASE, {})["assetOrError"]["assetMaterializations"]
        meta = {e["label"]: e for e in release["metadataEntries"]}
        assert meta["sha"]["text"] == head and meta["digest"]["text"] == staging["digest"]
        # Each stage's seconds, from the push.
        assert 0 < meta["push_to_live_s"]["floatValue"] < 120
        assert "| build (app_image step) |" in meta["stages"]["mdStr"]

        # This machine's instance holds the bootstrap, and none of the deliveries.
        with lab_env.env(), dg.DagsterInstance.from_config(str(lab_env.dagster_home)) as instance:
            mine = [
                (r.job_name, r.tags.get("coop/sha"), r.status.value) for r in instance.get_runs()
            ]
            assert ("main", None, "SUCCESS") in mine, mine
            assert not [r for r in mine if r[1] in (first, head)], mine

        # `make dev` now starts the webserver only: the lab's Dagster drives the lab.
        _check_make_dev_starts_only_the_webserver(lab_env, env)
        print(f"infra demo on the lab took {took:.0f} s")
    finally:
        stopped = stop_daemon(lab_env.site)
        # The lab's sensors off again: the session's other tests release on their own.
        for name in SENSORS:
            api.stop_sensor(name)
    assert stopped and not running_daemons(lab_env.dagster_home)


def _tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


def _check_make_dev_starts_only_the_webserver(lab_env: LabEnv, env: dict) -> None:
    run = lab_env.dagster_home / "dev-run"
    sup = Supervisor(run)
    log = run / "dev.log"
    run.mkdir(exist_ok=True)

    def cmdline() -> str:
        record = sup.get("infra-dev")
        try:
            return Path(f"/proc/{record.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (AttributeError, OSError):
            return ""

    sup.start(
        "infra-dev",
        [INFRA, "dev", "--port", str(free_port())],
        log=log,
        cwd=lab_env.dagster_home,
        env=env,
        ready=lambda: "dagster-webserver" in cmdline(),
        ready_timeout_s=30,
    )
    try:
        assert "The lab's own Dagster drives the lab (https://10." in log.read_text()
        words = cmdline().split()  # `infra dev` became the webserver (exec), not `dagster dev`
        assert Path(words[1]).name == "dagster-webserver" and "dev" not in words
        assert not running_daemons(lab_env.dagster_home)  # no daemon here
    finally:
        sup.stop("infra-dev", sig=2, timeout_s=20)


def _status(env: dict) -> dict:
    out = subprocess.run(
        [INFRA, "lab", "status", "--json", "--topology", env["INFRA_TOPOLOGY"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()
