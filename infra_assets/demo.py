"""`infra demo` (`make demo`): run the main job on the site the topology names, then say what it
made and where to look. The local site needs no cloud account: everything runs on this machine.

On the local site, the demo then runs the push-to-live loop (infra_assets/demo_loop.py): the
sample app's git repo, the Dagster daemon and the delivery sensors, two commits pushed and each
followed until the staging URL answers with it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from infra_assets.model import TopologyError, address_plan, load_topology
from infra_assets.paths import dagster_home

# `dagster job execute` prints every engine event at DEBUG; a person wants the asset's own lines.
QUIET_RUN_CONFIG = "loggers:\n  console:\n    config:\n      log_level: INFO\n"


def run_demo(topology_file: Path, *, job: str = "main", loop: bool = True) -> int:
    say = click.echo
    try:
        topo = load_topology(topology_file)
    except TopologyError as err:
        click.echo(err.render(), err=True)
        return 2
    sites = sorted({loc.cloud for loc in topo.locations.values()})
    say(f"== topology {topology_file}: {len(topo.hosts)} hosts on {', '.join(sites)}")
    site_status, code = _local_site_up(topology_file, topo, say)
    if code:
        say("== the local site did not come up: nothing was run", err=True)
        return code

    say(f"== running the `{job}` job (dagster job execute -m infra_assets.definitions -j {job})")
    env = {
        **os.environ,
        "INFRA_TOPOLOGY": str(topology_file.absolute()),
        "DAGSTER_HOME": str(dagster_home()),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        config.write(QUIET_RUN_CONFIG)
    try:
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "dagster"),
                "job",
                "execute",
                "-m",
                "infra_assets.definitions",
                "-j",
                job,
                "-c",
                config.name,
            ],
            env=env,
            # dagster.yaml names its storage relative to the instance's folder.
            cwd=dagster_home(),
            check=False,
        )
    finally:
        os.unlink(config.name)
    if proc.returncode != 0:
        say(f"== the `{job}` job failed (exit {proc.returncode}); its log is above", err=True)
        return proc.returncode

    plan = address_plan(topo)
    say("")
    say("== the address plan (`infra ips`):")
    for a in plan.addresses:
        say(f"   {a.host:<18} {a.role:<16} {a.address:<14} {a.dns_name}")
    if site_status and topo.apps and loop:
        from infra_assets.demo_loop import run_loop

        status = run_loop(topology_file, topo, say)
        if status != 0:
            return status
    say("")
    say("== where to look")
    for what, where in [
        ("the Dagster UI: this run, the lineage", "make dev, then http://127.0.0.1:3000/assets"),
        ("the address plan again", f"infra ips {topology_file}"),
        ("Dagster's history of runs", str(dagster_home() / ".dagster")),
        *_local_site_places(topology_file, site_status),
    ]:
        say(f"   {what:<40} {where}")
    return 0


def _local_site_up(topology_file: Path, topo, say) -> tuple[dict, int]:
    """On the local site, bring up its services first (`infra local up`): the salt master and a
    minion per host. They stay up after the demo, until `infra local down`. (status, 0), or
    ({}, the exit code) when the site could not come up (said on stderr, as `infra local up`)."""
    if not all(loc.is_local for loc in topo.locations.values()):
        return {}, 0
    from infra_assets.local_site.cli import site_up
    from infra_assets.local_site.site import LocalSite

    site = LocalSite(topology_file)
    say(f"== infra local up (the local site's services; state in {site.root})")
    status, code = site_up(site, "infra demo")
    if status is None:
        return {}, code
    salt = status.get("salt", {})
    say(
        f"   salt master on 127.0.0.1:{salt.get('ret_port')} (publish {salt.get('publish_port')}),"
        f" minions: {', '.join(m['id'] for m in salt.get('minions', []))}"
    )
    return status, 0


def _local_site_places(topology_file: Path, before: dict) -> list[tuple[str, str]]:
    if not before:
        return []
    from infra_assets.local_site.site import LocalSite

    status = LocalSite(topology_file).status()
    places = [
        *_release_places(status),
        (
            "the local site: every service, as JSON",
            f"infra local status --json --topology {topology_file}",
        ),
        ("the salt master's config", status["salt"]["master_config"]),
        (
            "salt on the command line",
            f"{Path(sys.executable).parent / 'salt'} -c"
            f" {Path(status['salt']['master_config']).parent} '*' test.ping",
        ),
    ]
    for host, info in status.get("hosts", {}).items():
        for service, where in info.get("services", {}).items():
            if where.get("running"):
                places.append(
                    (f"{host}: {service}", where.get("url") or f"127.0.0.1:{where['port']}")
                )
    places.append(("stop the local site", f"infra local down --topology {topology_file}"))
    return places


def _release_places(status: dict) -> list[tuple[str, str]]:
    places = []
    for app, envs in sorted((status.get("releases") or {}).items()):
        for env, release in envs.items():
            if release.get("digest"):
                places.append(
                    (f"{app} on {env} ({(release.get('sha') or '')[:12]})", release["url"])
                )
    daemon = status.get("dagster") or {}
    if daemon.get("daemon_running"):
        places.append(("the Dagster daemon (sensors on)", f"pid {daemon['pid']}, {daemon['log']}"))
        work = Path(status["state_dir"]) / "git" / "work"
        for app in sorted(status.get("releases") or {}):
            if (work / app).is_dir():
                places.append(
                    (f"push a change of {app} yourself", f"cd {work / app}; git commit; git push")
                )
        places.append(("send staging to production", "dagster job execute ... -j promote"))
        places.append(("put back the previous release", "... -j rollback (or rollback_staging)"))
    return places
