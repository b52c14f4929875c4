"""`infra lab up|down|status`: the lab, this machine as a cloud (README, "The lab")."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from infra_assets.topology.model import TopologyError
from infra_assets.topology.secrets import SecretsError
from resources.cli_runner import CliError


def topology_option(help: str = "The lab's topology ($INFRA_TOPOLOGY)."):
    """`--topology FILE` ($INFRA_TOPOLOGY), topology.lab.yaml unless given."""
    return click.option(
        "--topology",
        "topology_file",
        type=click.Path(path_type=Path),
        envvar="INFRA_TOPOLOGY",
        default="topology.lab.yaml",
        show_default=True,
        help=help,
    )


TOPOLOGY_OPT = topology_option()


@click.group()
def lab() -> None:
    """The lab: every host of the topology a container with systemd, at its planned address."""


def known_errors():
    # Here, not at the top (tests/test_imports.py): the sites and the lab's driver cost 1.2-1.4 s,
    # and `infra check` needs neither.
    from infra_assets.topology.sites import SiteError
    from lab.site import LabUpError
    from resources.lab import LabError

    return (SecretsError, SiteError, LabUpError, LabError, CliError)


@lab.command()
@TOPOLOGY_OPT
def up(topology_file: Path) -> None:
    """Bring the lab up (safe to run twice): images when missing, the network, the salt keys,
    the containers, the minions, every role's states; through Dagster's `main` job."""
    from lab import site

    try:
        click.echo(f"infra lab up: {topology_file} (the main job; every run is in the Dagster UI)")
        data = site.up(topology_file, echo=click.echo)
    except TopologyError as err:
        click.echo(err.render(), err=True)
        sys.exit(2)
    except SecretsError as err:  # bad input, found before anything starts
        click.echo(f"infra lab up: {err}", err=True)
        sys.exit(2)
    except known_errors() as err:
        click.echo(f"infra lab up: {err}", err=True)
        sys.exit(1)
    running = [h for h, v in data["hosts"].items() if v.get("running")]
    click.echo(f"lab up: {len(running)} of {len(data['hosts'])} hosts running")
    click.echo(f"salt-api: {data['salt']['api_url']}")


@lab.command()
@TOPOLOGY_OPT
def down(topology_file: Path) -> None:
    """Remove the lab's containers, network, namespace and link (the `unreachable` route for
    its addresses stays). Safe to run twice."""
    from lab import site

    try:
        removed = site.down(topology_file)
    except TopologyError as err:
        click.echo(err.render(), err=True)
        sys.exit(2)
    except known_errors() as err:
        click.echo(f"infra lab down: {err}", err=True)
        sys.exit(1)
    click.echo(f"lab down ({', '.join(removed) or 'nothing was up'})")


@lab.command()
@TOPOLOGY_OPT
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(topology_file: Path, as_json: bool) -> None:
    """Each host: its address, image, whether it runs, its services and how to reach them."""
    from lab import site

    try:
        data = site.status(topology_file)
    except TopologyError as err:
        click.echo(err.render(), err=True)
        sys.exit(2)
    except known_errors() as err:
        click.echo(f"infra lab status: {err}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"salt-api: {data['salt']['api_url']} (master {data['salt']['master']})")
    for host, info in data["hosts"].items():
        state = "running" if info.get("running") else "not running"
        image = (info.get("image_id") or "")[:12]
        click.echo(f"{host:18} {info['address']:14} {state:12} {image}")
    registry = data.get("registry") or {}
    if registry.get("url"):
        click.echo(f"registry: {registry['url']} (account {registry['username']})")
    for daemon in (data.get("git_daemon") or {}).values():
        if daemon.get("running"):
            click.echo(f"git daemon: {daemon['url']} ({', '.join(daemon['repos']) or 'no repo'})")
    for proxy in (data.get("egress") or {}).values():
        if proxy.get("running"):
            allowed = sorted({t for targets in proxy["allow"].values() for t in targets})
            clients = len(proxy["allow"])
            click.echo(
                f"egress proxy: {proxy['url']} ({', '.join(allowed) or 'nothing'} for"
                f" {clients} cache host address{'es' if clients != 1 else ''}; log {proxy['log']})"
            )
    for acme in (data.get("acme") or {}).values():
        if acme.get("running"):
            click.echo(f"ACME server (pebble): {acme['directory']} (its root: {acme['root']})")
    releases = data.get("releases") or {}
    for app, envs in sorted(releases.items()) if "error" not in releases else []:
        for env, release in envs.items():
            live = (release.get("sha") or "")[:12] or "nothing released"
            click.echo(f"{app} {env}: {live}  {release.get('curl', release.get('url'))}")
    for ui in data.get("dagster_ui") or []:
        click.echo(f"Dagster in the lab ({ui['host']}): {ui['url']} ({ui['login']}; its CA"
                   f" {ui['ca_file']})")  # fmt: skip
    daemon = data.get("dagster") or {}
    if daemon.get("daemon_running"):
        click.echo(f"dagster-daemon (make demo's): pid {daemon['pid']}, log {daemon['log']}")
