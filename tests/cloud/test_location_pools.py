"""One writer per location, for real: the Dagster daemon (dagster-daemon run) dequeues runs
launched with `dagster job launch` through the queue; dagster.yaml gives each pool a limit of 1
at run granularity, and every asset of a location is in its pool `location/<name>`. Three
apply runs of one location are launched together: each runs alone (the stand-in's slow apply
writes its start and end times), a failed run frees the location for the next, and so does a
cancelled one. Terraform: 1.0.3 with the null provider; OpenStack: the FAKE API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml
from cloud_env import STANDIN_PROTECTED, cli_config, standin_tree, terraform_binary, write_location
from fakes.openstack import FakeOpenStack

from infra_assets.cloud.jobs import ensure_location_pools
from lab.processes import Supervisor
from resources.openstack import GROUP_PROPERTY

pytestmark = pytest.mark.slow  # the real dagster-daemon

BIN = Path(sys.executable).parent
TOPOLOGY = """
locations:
  test-1: {number: 42, cloud: fake}
types: {salt-master: 1, web-staging: 5}
hosts:
  support-1: {location: test-1, instance: 1, roles: [salt-master]}
  web-staging-1: {location: test-1, instance: 1, roles: [web-staging]}
"""
APPLY_SECONDS = 2


@pytest.fixture
def fake():
    cloud = FakeOpenStack()
    cloud.start()
    cloud.add_image("coop-support-1", properties={GROUP_PROPERTY: "support"})
    cloud.add_image("coop-web-1", properties={GROUP_PROPERTY: "web"})
    yield cloud
    cloud.stop()


@pytest.fixture
def daemon(dagster_home, repo_root, tmp_path):
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    env = {
        "DAGSTER_HOME": str(dagster_home),
        "INFRA_TOPOLOGY": str(topology),
        # the apply job makes the servers' salt key pairs first (minion_keys)
        "INFRA_SALT_KEYS_DIR": str(tmp_path / "salt-keys"),
    }
    sup = Supervisor(tmp_path / "run")
    log = tmp_path / "daemon.log"
    sup.start(
        "dagster-daemon",
        [BIN / "dagster-daemon", "run", "-w", repo_root / "workspace.yaml"],
        log=log,
        cwd=dagster_home,
        env=env,
        ready=lambda: "Instance is configured" in log.read_text() or "started" in log.read_text(),
        ready_timeout_s=90,
    )
    yield env, log
    sup.stop("dagster-daemon", timeout_s=30)


def run_config(tmp_path: Path, fake: FakeOpenStack, name: str, *, fails: bool) -> dict:
    """Each run reads its own copy of the stand-in (the failing one's apply exits 1 after its
    sleep), and all share one working folder: one location, one state."""
    config = standin_tree(tmp_path / name)
    write_location(
        config,
        "test-1",
        apply_seconds=APPLY_SECONDS,
        trace_file=str(tmp_path / "trace.log"),
    )
    if fails:
        slow = config / "network" / "standin.tf"
        slow.write_text(
            slow.read_text().replace(
                "sleep ${var.apply_seconds}; echo end $(date +%s.%N) >> ${var.trace_file}",
                "sleep ${var.apply_seconds}; echo end $(date +%s.%N) >> ${var.trace_file}; exit 1",
            )
        )
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump(fake.clouds_yaml("fake")))
    return {
        "resources": {
            "terraform": {
                "config": {
                    "binary": str(terraform_binary()),
                    "config_dir": str(config),
                    "data_dir": str(tmp_path / "data"),
                    "backend": "local",
                    "cli_config_file": str(cli_config(tmp_path)),
                    "protected": STANDIN_PROTECTED,
                }
            },
            "openstack": {
                "config": {"clouds_yaml": str(clouds), "password": fake.credentials.password}
            },
        }
    }


def launch(env: dict, repo_root: Path, config: dict, name: str) -> str:
    run_id = str(uuid.uuid4())
    out = subprocess.run(
        [
            str(BIN / "dagster"),
            "job",
            "launch",
            "-w",
            str(repo_root / "workspace.yaml"),
            "-j",
            "apply",
            "--config-json",
            json.dumps(config),
            "--run-id",
            run_id,
            "--tags",
            json.dumps({"test/name": name}),
        ],
        env={**os.environ, **env},
        cwd=env["DAGSTER_HOME"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return run_id


def wait_for(instance: dg.DagsterInstance, run_ids: list[str], timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = {r: instance.get_run_by_id(r) for r in run_ids}
        if all(run is not None and run.is_finished for run in runs.values()):
            return {r: run.status for r, run in runs.items()}
        time.sleep(1)
    raise AssertionError(
        "runs did not finish: " + str({r: instance.get_run_by_id(r).status for r in run_ids})
    )


def intervals(trace: Path) -> list[tuple[float, float]]:
    starts, ends = [], []
    for line in trace.read_text().split("\n"):
        if line.startswith("start "):
            starts.append(float(line.split()[1]))
        elif line.startswith("end "):
            ends.append(float(line.split()[1]))
    return sorted(zip(sorted(starts), sorted(ends), strict=True))


def test_runs_on_one_location_go_one_at_a_time_and_failure_or_cancel_frees_it(
    daemon, dagster_home, repo_root, tmp_path, fake
):
    env, log = daemon
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        # what the sensor and the schedules do before they ask for runs
        assert ensure_location_pools(instance, ["test-1"]) == ["location/test-1"]

        configs = {
            "first": run_config(tmp_path, fake, "first", fails=False),
            "failing": run_config(tmp_path, fake, "failing", fails=True),
            "cancelled": run_config(tmp_path, fake, "cancelled", fails=False),
            "last": run_config(tmp_path, fake, "last", fails=False),
        }
        ids: dict[str, str] = {}
        threads = [
            threading.Thread(
                target=lambda n=name: ids.__setitem__(n, launch(env, repo_root, configs[n], n))
            )
            for name in configs
        ]
        for thread in threads:  # launched together: all four are queued at once
            thread.start()
            time.sleep(0.3)
        for thread in threads:
            thread.join()
        assert len(ids) == 4

        # cancel a run while it holds the location (it is applying, or queued behind the others)
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            run = instance.get_run_by_id(ids["cancelled"])
            if run.status == dg.DagsterRunStatus.STARTED:
                time.sleep(3)
                assert instance.run_launcher.terminate(ids["cancelled"])
                break
            time.sleep(0.5)
        statuses = wait_for(instance, list(ids.values()))

        by_name = {name: statuses[run_id] for name, run_id in ids.items()}
        assert by_name["first"] == dg.DagsterRunStatus.SUCCESS, log.read_text()[-3000:]
        assert by_name["failing"] == dg.DagsterRunStatus.FAILURE
        assert by_name["cancelled"] == dg.DagsterRunStatus.CANCELED
        assert by_name["last"] == dg.DagsterRunStatus.SUCCESS

        # never two at once: the runs' times in the location do not overlap...
        records = {name: instance.get_run_record_by_id(run_id) for name, run_id in ids.items()}
        spans = sorted((r.start_time, r.end_time, name) for name, r in records.items())
        for (_s1, end1, a), (start2, _e2, b) in zip(spans, spans[1:], strict=False):
            assert start2 >= end1 - 0.5, f"{a} and {b} overlapped: {spans}"
        # ... and nor did the applies themselves (the stand-in's trace, one per apply)
        applies = intervals(tmp_path / "trace.log")
        assert len(applies) >= 3
        print("runs:", spans, "applies:", applies)
        for (_s1, end1), (start2, _e2) in zip(applies, applies[1:], strict=False):
            assert start2 >= end1, applies
        # the four were queued together, so without the pool they would have overlapped
        # (dagster.yaml allows 4 concurrent runs)
        assert max(r.create_timestamp.timestamp() for r in records.values()) < spans[0][1]
