"""The Dagster instance on a real PostgreSQL (dagster.postgres.yaml, dagster-postgres): the CI
path, `dagster job execute`, run against a PostgreSQL 15 of the test's own on loopback; the
run, its event log and the asset's materialisation are rows of that database, and nothing is
written to SQLite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cloud_env import ThrowawayPostgres

pytestmark = pytest.mark.slow  # a PostgreSQL of its own

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def postgres():
    pg = ThrowawayPostgres()
    pg.start()
    pg._psql("CREATE DATABASE dagster")
    try:
        yield pg
    finally:
        pg.stop()


def test_a_ci_job_s_run_and_event_log_are_rows_of_postgresql(postgres, tmp_path):
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.postgres.yaml", home / "dagster.yaml")
    url = (
        f"postgresql+psycopg2://{postgres.user}:{postgres.password}@127.0.0.1:{postgres.port}/dagster"
        "?sslmode=disable"  # loopback; a server's URL says verify-full
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": url,
        "INFRA_TOPOLOGY": str(REPO_ROOT / "topology.yaml"),
        "INFRA_STATE_DIR": str(tmp_path / "state"),
    }
    out = subprocess.run(
        [str(BIN / "dagster"), "job", "execute", "-m", "infra_assets.definitions", "-j", "topology"],
        cwd=home, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    def query(sql: str) -> list[list[str]]:
        rows = postgres._psql(sql, db="dagster").strip().splitlines()
        return [row.split("|") for row in rows]

    [[run_id, job, status]] = query("SELECT run_id, pipeline_name, status FROM runs")
    assert (job, status) == ("topology", "SUCCESS")
    [[events]] = query(f"SELECT count(*) FROM event_logs WHERE run_id = '{run_id}'")
    assert int(events) > 10
    kinds = {row[0] for row in query(
        f"SELECT DISTINCT dagster_event_type FROM event_logs WHERE run_id = '{run_id}'")}  # fmt: skip
    # (the run's start and success keep their historical names in the event log)
    assert {"PIPELINE_START", "ASSET_MATERIALIZATION", "PIPELINE_SUCCESS"} <= kinds
    assets = {row[0] for row in query("SELECT asset_key FROM asset_keys")}
    assert '["topology"]' in assets and '["ip_plan"]' in assets
    # nothing in SQLite: no database file anywhere under the instance's folder
    assert not [p for p in home.rglob("*.db")], sorted(home.rglob("*"))
    assert postgres.password not in out.stdout + out.stderr
