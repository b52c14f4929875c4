"""`infra`: the command line of coop-infra.

    infra check [FILE] [--json]    validate a topology, print a one-line summary
    infra ips [FILE] [--json]      print the address plan: host, role, address, DNS name
    infra demo                     the lab up, then push to live twice (`make demo`)
    infra dev [--port N]           the Dagster UI (`make dev`)
    infra lab up|down|status       the lab: this machine as a cloud (lab/)
    infra webhooks serve           the endpoint a push calls (webhooks/)

A bad topology prints every problem (file:line: key.path: what is wrong) and exits with 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from infra_assets.topology.model import (
    AddressPlan,
    Topology,
    TopologyError,
    address_plan,
    load_topology,
)
from lab.cli import lab, topology_option
from lab.dagster_daemon import running_daemons
from resources.paths import REPO_ROOT, dagster_home, default_topology
from webhooks.cli import webhooks

EXIT_BAD_INPUT = 2

FILE_ARG = click.argument("file", default="topology.yaml", type=click.Path(path_type=Path))
JSON_OPT = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """coop-infra: the co-op's infrastructure as files in git, run by Dagster."""


def _load(file: Path, as_json: bool) -> Topology:
    try:
        return load_topology(file)
    except TopologyError as err:
        if as_json:
            click.echo(json.dumps(err.as_json(), indent=2))
        else:
            click.echo(err.render(), err=True)
        sys.exit(EXIT_BAD_INPUT)


@cli.command()
@FILE_ARG
@JSON_OPT
def check(file: Path, as_json: bool) -> None:
    """Validate FILE (default: topology.yaml) and print a one-line summary."""
    topo = _load(file, as_json)
    plan = address_plan(topo)
    summary = {
        "file": str(file),
        "ok": True,
        "locations": len(topo.locations),
        "types": len(topo.types),
        "hosts": len(topo.hosts),
        "addresses": len(plan.addresses),
        "apps": len(topo.apps),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"{file}: ok: {_n(len(topo.locations), 'location')}, {_n(len(topo.hosts), 'host')}"
        f" with {_n(len(plan.addresses), 'address', 'addresses')}, {_n(len(topo.apps), 'app')}"
    )


@cli.command()
@FILE_ARG
@JSON_OPT
def ips(file: Path, as_json: bool) -> None:
    """Print the address plan of FILE (default: topology.yaml)."""
    plan = address_plan(_load(file, as_json))
    if as_json:
        click.echo(json.dumps(plan.as_json(), indent=2))
        return
    click.echo(_table(plan))


@cli.command()
@topology_option("The lab topology to run the demo on ($INFRA_TOPOLOGY).")
def demo(topology_file: Path) -> None:
    """Bring the lab up and push to live twice (`make demo`)."""
    from lab.demo import run_demo

    topo = _load(topology_file, as_json=False)
    others = sorted(name for name, loc in topo.locations.items() if loc.cloud != "lab")
    if others:
        click.echo(
            f"{topology_file}: location(s) {', '.join(others)} are not `cloud: lab`: `infra demo`"
            " runs on the lab only (topology.lab.yaml). On a cloud, run the main job:"
            " `dagster job execute -m infra_assets.definitions -j main` (README, 'Pointing it"
            " at a real cloud')",
            err=True,
        )
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(run_demo(topology_file, click.echo))


@cli.command()
@click.option("--port", default=3000, show_default=True, help="The UI's port on 127.0.0.1.")
def dev(port: int) -> None:
    """The Dagster UI on 127.0.0.1 (`make dev`): `dagster dev`, or only `dagster-webserver` when
    a Dagster daemon already runs on this instance (started by `make demo`):
    one instance never gets two daemons."""
    home = dagster_home()
    if not home.is_dir():
        click.echo(
            f"infra dev: DAGSTER_HOME {home} is not a folder: point it at one that holds"
            " dagster.yaml (the repo's own, as `make dev` does)",
            err=True,
        )
        sys.exit(EXIT_BAD_INPUT)
    bin_dir = Path(sys.executable).parent
    workspace = str(REPO_ROOT / "workspace.yaml")
    daemons = running_daemons(home)
    lab_ui = _lab_dagster_ui()
    if daemons:
        click.echo(
            f"A Dagster daemon already runs on this instance (pid {daemons[0].pid}, started by"
            " `make demo`; `infra lab down` stops it): starting the webserver only."
        )
        argv = [str(bin_dir / "dagster-webserver"), "-w", workspace]
    elif lab_ui:
        click.echo(
            f"The lab's own Dagster drives the lab ({lab_ui}): this machine's only bootstraps"
            " it (`infra lab up`), so no daemon starts here; starting the webserver only, for"
            " this machine's runs."
        )
        argv = [str(bin_dir / "dagster-webserver"), "-w", workspace]
    else:
        argv = [str(bin_dir / "dagster"), "dev", "-w", workspace]
    argv += ["-h", "127.0.0.1", "-p", str(port)]
    os.chdir(home)  # dagster.yaml names its storage relative to the instance's folder
    os.execve(argv[0], argv, {**os.environ, "DAGSTER_HOME": str(home)})


def _lab_dagster_ui() -> str | None:
    """The UI of the lab's own Dagster when the topology ($INFRA_TOPOLOGY) is a lab's with a
    host of the role dagster; else None."""
    from infra_assets.topology.sites import LabSite, SiteError, site_for  # 1.35 s

    try:
        site = site_for(load_topology(default_topology()))
    except (TopologyError, SiteError, OSError):
        return None
    hosts = sorted(site.topo.hosts_with_role("dagster"))
    if not isinstance(site, LabSite) or not hosts:
        return None
    return f"https://{site.reach(hosts[0], 'dagster')}/ on {hosts[0]}"


def _table(plan: AddressPlan) -> str:
    rows = [("HOST", "ROLE", "ADDRESS", "DNS NAME")]
    rows += [
        (a.host, a.role + ("" if a.primary else " (service)"), a.address, a.dns_name)
        for a in plan.addresses
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3]
        for row in rows
    )


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


cli.add_command(lab)
cli.add_command(webhooks)


def main() -> None:
    cli(prog_name="infra")


if __name__ == "__main__":
    main()
