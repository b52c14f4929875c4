"""Backups: `backup/<host>`, one asset per postgres host, every night.

A materialisation dumps every database of the host (`pg_dump -Fc`), with the row count of
every table taken inside the dump's own snapshot (salt/_modules/coop_backup.py), and pushes
each dump to the salt master's host, the primary support server: the copy off the database's
host, at /var/cache/salt/master/minions/<host>/files/var/backups/coop/postgres/<db>/. Dagster
checks that copy's sha256 against the dump's. Both places keep KEEP_DAYS days.

Checks of `backup/<host>`:
- `restores` (after each backup): the latest dump of each database restored into a scratch
  database on the host, and every non-empty table's row count compared with the counts taken in
  the dump's snapshot;
- `recent` (with the health checks, every 5 minutes): the last backup is at most STALE_AFTER
  old.
A failed backup fails its run (run_failure_notice tells the chat); a restore that does not
match, or a stale backup, fails its check (check_notice tells the chat).
"""

import datetime
import time

import dagster as dg

from infra_assets.configuration.highstate import highstate_key
from infra_assets.configuration.salt_modules import call_synced
from infra_assets.topology.model import Topology
from infra_assets.topology.sites import SiteError, site_for
from resources.salt import SaltError, SaltResource

GROUP = "backups"
JOB = "backups"
SCHEDULE = "backups_nightly"
CRON = "30 1 * * *"  # 01:30 in the co-op's time zone
TIMEZONE = "Pacific/Auckland"
KEEP_DAYS = 14
STALE_AFTER = datetime.timedelta(hours=26)
MASTER_COPIES = "/var/cache/salt/master/minions/{host}/files"
# One salt job dumps every database of a host (each pg_dump may take an hour).
DUMP_TIMEOUT_S = 4 * 3600


def backup_key(host: str) -> dg.AssetKey:
    return dg.AssetKey(["backup", host])


def postgres_hosts(topo: Topology) -> list[str]:
    return sorted(h for h, host in topo.hosts.items() if any(r.startswith("postgres-")
                                                            for r in host.roles))  # fmt: skip


def call(salt: SaltResource, host: str, fun: str, log, **kwargs):
    """`fun` of the project's salt modules on `host` (its copy of them synced when it is not
    this one); its answer, or SaltError with the reason."""
    ret = call_synced(salt, [host], fun, kwargs, log, timeout_s=DUMP_TIMEOUT_S).get(host)
    if ret is None:
        raise SaltError(f"the minion did not answer {fun}")
    if isinstance(ret, dict) and "error" in ret:
        raise SaltError(f"{fun}: {ret['error']}")
    if isinstance(ret, str):  # salt's own report of an exception
        raise SaltError(f"{fun} failed: {ret.strip().splitlines()[-1][:500]}")
    return ret


def _copy_path(host: str, dump: str) -> str:
    return MASTER_COPIES.format(host=host) + dump


def backup(context: dg.AssetExecutionContext, salt: SaltResource, host: str, master: str):
    started = time.monotonic()
    try:
        done = call(salt, host, "coop_backup.dump", context.log.info, keep_days=KEEP_DAYS)
        rows = [
            "| database | tables | rows | size | sha256 | off-host copy |",
            "|---|---|---|---|---|---|",
        ]
        for name, db in sorted(done["databases"].items()):
            copy = _copy_path(host, db["dump"])
            hashed = salt.call(minions=[master], fun="file.get_hash", args=[copy],
                               kwargs={"form": "sha256"}).get(master)  # fmt: skip
            if not db.get("pushed") or hashed != db["sha256"]:
                raise dg.Failure(
                    f"backup/{host}: {name}'s dump was not copied to {master} intact (pushed:"
                    f" {db.get('pushed')}, its sha256 there: {hashed!r}, the dump's:"
                    f" {db['sha256']})"
                )
            rows.append(f"| {name} | {db['tables']} | {db['rows']} | {db['size']} |"
                        f" {db['sha256'][:12]} | {master}:{copy} |")  # fmt: skip
        pruned = call(salt, master, "coop_backup.prune", context.log.info,
                      root=MASTER_COPIES.format(host=host) + "/var/backups/coop/postgres",
                      keep_days=KEEP_DAYS)  # fmt: skip
    except SaltError as err:
        raise dg.Failure(f"backup/{host}: {err}") from None
    return dg.MaterializeResult(
        metadata={
            "stamp": done["stamp"],
            "databases": sorted(done["databases"]),
            "dumps": dg.MetadataValue.md("\n".join(rows)),
            "rows": sum(db["rows"] for db in done["databases"].values()),
            "bytes": sum(db["size"] for db in done["databases"].values()),
            "kept_days": KEEP_DAYS,
            "removed_here": len(done["pruned"]),
            "removed_on_master": len(pruned or []),
            "took_s": round(time.monotonic() - started, 2),
        }
    )


def restores(context: dg.AssetCheckExecutionContext, salt: SaltResource, host: str):
    try:
        latest = call(salt, host, "coop_backup.latest", context.log.info)
        results = {
            name: call(salt, host, "coop_backup.restore_check", context.log.info, dump=path)
            for name, path in sorted(latest.items())
        }
    except SaltError as err:
        return dg.AssetCheckResult(passed=False, description=f"{host}: {err}")
    wrong = {n: r["mismatches"] for n, r in results.items() if r["mismatches"]}
    rows = ["| database | dump | tables compared | rows | restore s |", "|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['dump']} | {r['compared']} of {r['tables']} | {r['rows']} |"
                    f" {r['took_s']} |")  # fmt: skip
    return dg.AssetCheckResult(
        passed=bool(results) and not wrong,
        description=(
            f"{host}: no backup to restore"
            if not results
            else f"{host}: restored counts differ: {wrong}"
            if wrong
            else None
        ),  # fmt: skip
        metadata={
            "restored": dg.MetadataValue.md("\n".join(rows)),
            "databases": len(results),
            "rows_compared": sum(r["rows"] for r in results.values()),
        },
    )


def recent(instance: dg.DagsterInstance, host: str) -> dg.AssetCheckResult:
    event = instance.get_latest_materialization_event(backup_key(host))
    if event is None:
        return dg.AssetCheckResult(passed=False, description=f"{host}: never backed up")
    age = datetime.timedelta(seconds=time.time() - event.timestamp)
    hours = age.total_seconds() / 3600
    return dg.AssetCheckResult(
        passed=age <= STALE_AFTER,
        description=None if age <= STALE_AFTER else f"{host}: the last backup is {hours:.0f} h old",
        metadata={"age_h": round(hours, 2)},
    )


def _host_definitions(host: str, topo: Topology, master: str):
    roles = [r for r in topo.hosts[host].roles if r.startswith("postgres-")]

    @dg.asset(
        key=backup_key(host),
        group_name=GROUP,
        deps=[highstate_key(r) for r in roles],
        kinds={"postgres", "salt"},
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=STALE_AFTER),
        description=f"Every database of {host}, dumped (pg_dump -Fc) with its tables' row counts,"
        f" copied to {master}; {KEEP_DAYS} days kept in both places.",
    )
    def _backup(context: dg.AssetExecutionContext, salt: SaltResource):
        return backup(context, salt, host, master)

    @dg.asset_check(
        asset=backup_key(host),
        name="restores",
        description="The latest dump of each database restores into a scratch database, with"
        " every non-empty table's row count as counted in the dump's snapshot.",
    )
    def _restores(context: dg.AssetCheckExecutionContext, salt: SaltResource):
        return restores(context, salt, host)

    @dg.asset_check(
        asset=backup_key(host),
        name="recent",
        description=f"The last backup is at most {STALE_AFTER.total_seconds() / 3600:.0f} h old"
        " (checked with the health checks).",
    )
    def _recent(context: dg.AssetCheckExecutionContext):
        return recent(context.instance, host)

    return _backup, [_restores, _recent]


def recent_check_keys(topo: Topology) -> list[dg.AssetCheckKey]:
    return [dg.AssetCheckKey(backup_key(h), "recent") for h in postgres_hosts(topo)]


def definitions(topo: Topology) -> dg.Definitions:
    hosts = postgres_hosts(topo)
    if not hosts:
        return dg.Definitions()
    try:
        master = site_for(topo).master_host()
    except SiteError:
        return dg.Definitions()
    assets, checks = [], []
    for host in hosts:
        asset, host_checks = _host_definitions(host, topo, master)
        assets.append(asset)
        checks.extend(host_checks)
    job = dg.define_asset_job(
        JOB,
        selection=dg.AssetSelection.groups(GROUP)
        - dg.AssetSelection.checks(*recent_check_keys(topo)),
        description="Every postgres host's databases dumped, copied off the host and restored"
        " into a scratch database to compare row counts.",
    )
    schedule = dg.ScheduleDefinition(
        name=SCHEDULE,
        job=job,
        cron_schedule=CRON,
        execution_timezone=TIMEZONE,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="The nightly backups (01:30 in the co-op's time zone).",
    )
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=[job], schedules=[schedule])
