"""`infra demo` (`make demo`): run the main job on the site the topology names, then say what it
made and where to look. The local site needs no cloud account: everything runs on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from infra_assets.model import TopologyError, address_plan, load_topology
from infra_assets.paths import REPO_ROOT, dagster_home

# `dagster job execute` prints every engine event at DEBUG; a person wants the asset's own lines.
QUIET_RUN_CONFIG = "loggers:\n  console:\n    config:\n      log_level: INFO\n"


def run_demo(topology_file: Path, *, job: str = "main") -> int:
    say = click.echo
    try:
        topo = load_topology(topology_file)
    except TopologyError as err:
        click.echo(err.render(), err=True)
        return 2
    sites = sorted({loc.cloud for loc in topo.locations.values()})
    say(f"== topology {topology_file}: {len(topo.hosts)} hosts on {', '.join(sites)}")

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
            cwd=REPO_ROOT,
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
    say("")
    say("== where to look")
    for what, where in [
        ("the Dagster UI: this run, the lineage", "make dev, then http://127.0.0.1:3000/assets"),
        ("the address plan again", f"infra ips {topology_file}"),
        ("Dagster's history of runs", str(dagster_home() / ".dagster")),
    ]:
        say(f"   {what:<40} {where}")
    return 0
