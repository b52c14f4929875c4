"""Backups on the lab: the `backups` job dumps every database of each postgres host for real
(salt/_modules/coop_backup.py through salt-api), copies each dump to the salt master's host,
restores the latest into a scratch database and compares the row counts taken in the dump's
snapshot; a dump that no longer restores fails the check; a host never backed up, or backed up
too long ago, fails `recent`."""

from __future__ import annotations

import dagster as dg
from lab_env import LAB_NUMBER, LabEnv

from infra_assets.operations.backups import JOB, MASTER_COPIES, backup_key, recent

HOST = "pg-staging-1"
DATABASE = "hello_staging"


def _psql(driver, sql: str) -> str:
    return driver.exec(
        LAB_NUMBER, HOST, ["runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t",
                           "-v", "ON_ERROR_STOP=1", "-d", DATABASE, "-c", sql],
    ).output  # fmt: skip


def test_a_nightly_backup_is_copied_off_the_host_and_restores_with_equal_row_counts(
    lab_env: LabEnv,
):
    driver = lab_env.lab().lab()
    defs = lab_env.definitions()
    _psql(driver, "DROP TABLE IF EXISTS notes, empty; CREATE TABLE notes (n int, said text);"
                  " CREATE TABLE empty (n int);"
                  " INSERT INTO notes SELECT g, 'row ' || g FROM generate_series(1, 250) g;")  # fmt: skip
    instance = dg.DagsterInstance.ephemeral()
    assert not recent(instance, HOST).passed  # never backed up
    with lab_env.env():
        result = defs.resolve_job_def(JOB).execute_in_process(instance=instance)
    assert result.success
    [mat] = [m for m in result.get_asset_materialization_events()
             if m.asset_key == backup_key(HOST)]  # fmt: skip
    meta = {k: v.value for k, v in mat.materialization.metadata.items()}
    assert DATABASE in meta["databases"] and meta["kept_days"] == 14
    assert meta["rows"] >= 250
    checks = {(e.asset_key.path[1], e.check_name): e for e in result.get_asset_check_evaluations()}
    restored = checks[(HOST, "restores")]
    assert restored.passed, restored.description
    assert restored.metadata["rows_compared"].value >= 250
    assert "| hello_staging |" in restored.metadata["restored"].value
    assert "| 1 of 2 |" in restored.metadata["restored"].value  # `empty` is not compared
    assert recent(instance, HOST).passed

    # The copy on the master's host is the dump, byte for byte (Dagster checked its sha256).
    master = lab_env.site.master_host()
    [line] = [r for r in meta["dumps"].splitlines() if r.startswith(f"| {DATABASE} |")]
    copy = line.split(f"{master}:")[1].split(" |")[0]
    assert copy.startswith(MASTER_COPIES.format(host=HOST))
    here = driver.exec(LAB_NUMBER, HOST, ["sha256sum", copy.removeprefix(
        MASTER_COPIES.format(host=HOST))]).output.split()[0]  # fmt: skip
    there = driver.exec(LAB_NUMBER, master, ["sha256sum", copy]).output.split()[0]
    assert here == there
    # Both root's or postgres's alone: the dump 0600, the master's minion files 0700.
    mode = driver.exec(LAB_NUMBER, HOST, ["stat", "-c", "%a %U", copy.removeprefix(
        MASTER_COPIES.format(host=HOST))]).output.split()  # fmt: skip
    assert mode == ["600", "postgres"]
    cache = driver.exec(LAB_NUMBER, master, ["stat", "-c", "%a", "/var/cache/salt/master/minions"])
    assert cache.output.strip() == "700"

    # A dump that no longer restores (cut short on the host) fails the check, with the reason.
    dump = copy.removeprefix(MASTER_COPIES.format(host=HOST))
    driver.exec(LAB_NUMBER, HOST, ["truncate", "--size=100", dump])
    only = dg.define_asset_job(
        "restores_only",
        selection=dg.AssetSelection.checks(dg.AssetCheckKey(backup_key(HOST), "restores")),
    )
    with lab_env.env():
        again = (
            dg.Definitions.merge(defs, dg.Definitions(jobs=[only]))
            .resolve_job_def("restores_only")
            .execute_in_process(instance=instance)
        )
    [failed] = [e for e in again.get_asset_check_evaluations() if e.check_name == "restores"]
    assert not failed.passed
    assert failed.description.startswith(f"{HOST}: ")
    assert "pg_restore exited 1" in failed.description
    # the scratch database is gone, whatever happened
    left = _psql(driver, "SELECT count(*) FROM pg_database WHERE datname LIKE 'coop_restore%'")
    assert left.strip() == "0"
