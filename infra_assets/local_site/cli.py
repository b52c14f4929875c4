"""`infra local up|down|status`: the local site's services on this machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from infra_assets.model import TopologyError

TOPOLOGY_OPT = click.option(
    "--topology",
    "topology_file",
    type=click.Path(path_type=Path),
    envvar="INFRA_TOPOLOGY",
    default="topology.local.yaml",
    show_default=True,
    help="The local site's topology ($INFRA_TOPOLOGY).",
)


def _site(topology_file: Path):
    from infra_assets.local_site.site import LocalSite

    return LocalSite(topology_file)


@click.group()
def local() -> None:
    """The local site: services on this machine, on 127.0.0.1."""


def site_up(
    site, command: str = "infra local up", *, with_registry: bool = False
) -> tuple[dict | None, int]:
    """`site.up()` (and with `with_registry`, the registry host's role applied through Dagster),
    its known failures said on stderr without a traceback: (status, 0), or (None, exit code): 2
    for bad input (the topology, the secrets file), 1 when a service could not be started.
    `infra local up` and `infra demo` both bring the site up through here."""
    from infra_assets.local_site.processes import ProcessError
    from infra_assets.local_site.registry import ROLE, apply_registry_role
    from infra_assets.secrets import SecretsError
    from infra_assets.sites import SiteError

    try:
        status = site.up()
        if with_registry and site.topology().hosts_with_role(ROLE):
            apply_registry_role(site.topology_file)
            status = site.write_status()
        return status, 0
    except TopologyError as err:
        click.echo(err.render(), err=True)
        return None, 2
    except SecretsError as err:
        click.echo(str(err), err=True)
        return None, 2
    except (SiteError, ProcessError) as err:
        click.echo(f"{command}: {err}", err=True)
        return None, 1


@local.command()
@TOPOLOGY_OPT
@click.option(
    "--no-registry",
    is_flag=True,
    help="Only the salt master and minions: leave the registry host's role unapplied.",
)
def up(topology_file: Path, no_registry: bool) -> None:
    """Start the local site's services (safe to run twice): the salt master, a minion per host,
    then the registry (its host's role, highstate/docker-registry, materialised by Dagster)."""
    site = _site(topology_file)
    status, code = site_up(site, with_registry=not no_registry)
    if status is None:
        sys.exit(code)
    names = [k for k in status if k not in ("topology", "state_dir")]
    click.echo(f"local site up ({', '.join(names) or 'no services yet'}); state in {site.root}")
    registry = status.get("registry") or {}
    if registry.get("running"):
        click.echo(f"registry: {registry['url']} (CA {registry['ca_file']})")


@local.command()
@TOPOLOGY_OPT
def down(topology_file: Path) -> None:
    """Stop what `infra local up` started, and only that (safe to run twice)."""
    stopped = _site(topology_file).down()
    click.echo(f"local site down ({', '.join(stopped) or 'nothing was running'})")


@local.command()
@TOPOLOGY_OPT
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(topology_file: Path, as_json: bool) -> None:
    """Where each service of the local site is, and whether it runs."""
    data = _site(topology_file).status()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        click.echo(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")
