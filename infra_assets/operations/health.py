"""Health: `health/<host>`, one asset per host, whose checks are the host's services.

Every few minutes (`health_every_5_minutes`, on by default) the `health` job asks every host, in
one salt job, to check its own services (salt/_modules/coop_health.py): for each role of the
host, the checks the role catalogue lists (`health:` in salt/roles.yaml: its systemd unit
active, then its answer: an HTTP status, a connection, DNS answers for the plan's names,
pg_isready); on a web host, each app's health path on its live container; and on every host,
its minion answering. Each is an asset check of `health/<host>` (`<check>`), so a failure shows
on the host in the UI and reaches the chat through `check_notice` (sensors/notifications.py),
once when it starts and once when it mends. A minion that does not answer fails its host's
checks with that reason (nothing could be asked).

A health run that finds services down still succeeds: the checks carry the news. Each asset has
a freshness policy: health that was not checked for 15 minutes (the schedule stopped, its runs
failing) shows as stale in the UI. The daemon evaluates freshness too: with the daemon down,
nothing says so (watching the watcher is left to the co-op's own uptime check).
"""

import datetime
from dataclasses import dataclass
from typing import Any

import dagster as dg

from infra_assets.configuration.highstate import highstate_key
from infra_assets.configuration.salt_modules import call_synced
from infra_assets.delivery.releases import record_path
from infra_assets.operations import backups
from infra_assets.topology.model import Topology
from infra_assets.topology.roles import role_catalogue
from infra_assets.topology.sites import Site, SiteError, site_for
from resources.salt import SaltError, SaltResource

GROUP = "health"
JOB = "health"
SCHEDULE = "health_every_5_minutes"
CRON = "*/5 * * * *"
MINION_CHECK = "minion"
PROBE_FUN = "coop_health.probe"
FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=datetime.timedelta(minutes=15), warn_window=datetime.timedelta(minutes=10)
)
# The plan's names a DNS host is asked for, at most (one per host, in name order).
DNS_NAMES = 50


def health_key(host: str) -> dg.AssetKey:
    return dg.AssetKey(["health", host])


def app_check(app: str) -> str:
    return "app_" + app.replace("-", "_")


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    spec: dict[str, Any]  # what coop_health.check runs


def host_checks(site: Site, topo: Topology, host: str) -> list[Check]:
    """The checks of `host`: its roles' (the catalogue's `health`), each app's on a web host."""
    catalogue = role_catalogue()
    checks: list[Check] = []
    roles = topo.hosts[host].roles
    for role in roles:
        for check in catalogue.roles[role].health if role in catalogue.roles else ():
            if any(c.name == check.name for c in checks):
                continue  # one service of two roles (web-staging and web-production): once
            spec: dict[str, Any] = {"unit": check.unit} if check.unit else {}
            what = [f"unit {check.unit} active"] if check.unit else []
            if check.probe:
                address = site.reach(host, role)
                port = site.port(host, check.port or "")
                if check.probe in ("http", "https"):
                    spec["http"] = f"{check.probe}://{address}:{port}{check.path}"
                    spec["expect"] = list(check.expect)
                    said = " or ".join(map(str, check.expect)) or "any status"
                    what.append(f"{spec['http']} answers {said}")
                elif check.probe == "tcp":
                    spec["tcp"] = [address, port]
                    what.append(f"{address}:{port} takes connections")
                elif check.probe == "dns":
                    spec["dns"] = {"server": address, "names": _plan_names(site, topo)}
                    what.append(f"{address} answers the plan's names")
                elif check.probe == "postgres":
                    spec["postgres"] = [address, port]
                    what.append(f"{address}:{port} accepts connections (pg_isready)")
            checks.append(Check(check.name, f"{role}: " + ", ".join(what), spec))
    web_envs = [r.removeprefix("web-") for r in roles if r.startswith("web-")]
    for name, app in sorted(topo.apps.items()) if web_envs else ():
        if app.kind == "worker":
            what, spec = f"worker {name}: its live container runs", {"worker": record_path(name)}
        else:
            what = f"app {name}: its live container answers 200 at {app.health}"
            spec = {"app": {"record": record_path(name), "path": app.health}}
        checks.append(Check(app_check(name), what, spec))
    return checks


def _plan_names(site: Site, topo: Topology) -> dict[str, str]:
    names = {}
    for host in sorted(topo.hosts):
        primary = site.plan.primary(host)
        names[primary.names[0]] = primary.address
    return dict(sorted(names.items())[:DNS_NAMES])


def probe_all(
    salt: SaltResource, plan: dict[str, list[Check]], log
) -> dict[str, dict[str, dict] | str]:
    """Each host's results ({check: {ok, detail, ms}}), or why it has none (a string)."""
    hosts = sorted(plan)
    ping = salt.ping(minions=hosts)
    out: dict[str, dict[str, dict] | str] = {
        h: f"the minion did not answer test.ping within 5 s ({salt.where()})" for h in ping.silent
    }
    answering = list(ping.answered)
    if not answering:
        return out
    args = {h: {c.name: c.spec for c in plan[h] if c.name != MINION_CHECK} for h in answering}
    returns = call_synced(salt, answering, PROBE_FUN, {"plan": args}, log)
    for host in answering:
        ret = returns.get(host)
        out[host] = ret if isinstance(ret, dict) else f"the probe returned no results: {ret!r}"
    return out


def _results(host: str, checks: list[Check], got: dict[str, dict] | str):
    """The host's check results and its materialisation's metadata."""
    results = []
    rows = ["| check | passed | what it said | ms |", "|---|---|---|---|"]
    for check in checks:
        if check.name == MINION_CHECK:
            passed, ms = not isinstance(got, str), None
            detail = got if isinstance(got, str) else "the minion answers"
        elif isinstance(got, str):
            passed, detail, ms = False, f"not checked: {got}", None
        else:
            one = got.get(check.name) or {"ok": False, "detail": "no result", "ms": None}
            passed, detail, ms = bool(one.get("ok")), str(one.get("detail", "")), one.get("ms")
        results.append(
            dg.AssetCheckResult(
                asset_key=health_key(host),
                check_name=check.name,
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=None if passed else f"{host}: {detail}",
                metadata={"detail": detail, **({"ms": ms} if ms is not None else {})},
            )
        )
        rows.append(f"| {check.name} | {'yes' if passed else '**no**'} | {detail} | {ms or ''} |")
    failing = [r.check_name for r in results if not r.passed]
    metadata = {
        "checks": len(results),
        "failing": failing,
        "results": dg.MetadataValue.md("\n".join(rows)),
    }
    return results, metadata


def definitions(topo: Topology) -> dg.Definitions:
    """`health/<host>` for every host, the `health` job and its schedule."""
    if not topo.hosts:
        return dg.Definitions()
    try:
        site = site_for(topo)
    except SiteError:
        return dg.Definitions()
    plan = _health_plan(site, topo)
    specs, check_specs = _health_specs(topo, plan)

    @dg.multi_asset(
        name="check_health",
        specs=specs,
        check_specs=check_specs,
        can_subset=True,
        description="Every host checks its own services (one salt job).",
    )
    def health(context: dg.AssetExecutionContext, salt: SaltResource):
        yield from _check_health(context, salt, plan)

    job = dg.define_asset_job(
        JOB,
        # with each backup's `recent` check: a stale backup is found within minutes
        selection=dg.AssetSelection.groups(GROUP)
        | dg.AssetSelection.checks(*backups.recent_check_keys(topo)),
        description="Every host's services checked (health/<host> and its checks), and whether"
        " each postgres host's last backup is recent.",
    )
    schedule = dg.ScheduleDefinition(
        name=SCHEDULE,
        job=job,
        cron_schedule=CRON,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="The health checks every 5 minutes: failures and recoveries reach the chat"
        " (check_notice).",
    )
    return dg.Definitions(assets=[health], jobs=[job], schedules=[schedule])


def _health_plan(site: Site, topo: Topology) -> dict[str, list[Check]]:
    """Every host's checks: its minion answering, then its services'."""
    return {
        host: [Check(MINION_CHECK, "its salt minion answers test.ping", {}),
               *host_checks(site, topo, host)]
        for host in sorted(topo.hosts)
    }  # fmt: skip


def _health_specs(
    topo: Topology, plan: dict[str, list[Check]]
) -> tuple[list[dg.AssetSpec], list[dg.AssetCheckSpec]]:
    """`health/<host>` for every host of the plan, and one check spec per check."""
    specs = [
        dg.AssetSpec(
            health_key(host),
            group_name=GROUP,
            deps=[highstate_key(r) for r in topo.hosts[host].roles],
            freshness_policy=FRESHNESS,
            kinds={"salt"},
            description=f"What {host}'s services answered at the last check: "
            + ", ".join(c.name for c in checks),
        )
        for host, checks in plan.items()
    ]
    check_specs = [
        dg.AssetCheckSpec(check.name, asset=health_key(host), description=check.description)
        for host, checks in plan.items()
        for check in checks
    ]
    return specs, check_specs


def _check_health(
    context: dg.AssetExecutionContext, salt: SaltResource, plan: dict[str, list[Check]]
):
    """The selected hosts probed in one salt job: their materialisations and selected checks."""
    selected = context.selected_asset_check_keys
    # the hosts whose asset or one of whose checks is asked for (a check alone from the UI)
    hosts = sorted(
        {key.path[1] for key in context.selected_asset_keys}
        | {key.asset_key.path[1] for key in selected}
    )
    try:
        got = probe_all(salt, {h: plan[h] for h in hosts}, context.log.info)
    except SaltError as err:
        got = {h: f"salt cannot be asked: {err}" for h in hosts}
    for host in hosts:
        results, metadata = _results(host, plan[host], got[host])
        if health_key(host) in context.selected_asset_keys:
            yield dg.MaterializeResult(asset_key=health_key(host), metadata=metadata)
        yield from (
            r for r in results if dg.AssetCheckKey(health_key(host), r.check_name) in selected
        )
