"""`infra webhooks serve`: the webhook endpoint (webhooks/server.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from resources.lab_link import read_secret_file

DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HOST:PORT") from None
    if not host or not 0 < number < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    return host, number


def _dagster_auth(account_file: Path) -> tuple[str, str]:
    """The account the endpoint starts runs as: `<account>:<password>` in `account_file`."""
    try:
        account, _, password = read_secret_file(str(account_file)).partition(":")
    except OSError as err:  # its bytes are never shown
        click.echo(f"infra webhooks serve: {account_file}: {err.strerror}", err=True)
        sys.exit(2)
    if not account or not password:
        click.echo(
            f"infra webhooks serve: {account_file}: must hold <account>:<password>", err=True
        )
        sys.exit(2)
    return account, password


@click.group()
def webhooks() -> None:
    """The endpoint git servers and forges call on a push (README, "Push to live")."""


@webhooks.command()
@click.option(
    "--listen", default="127.0.0.1:8700", show_default=True, help="HOST:PORT to listen on."
)
@click.option(
    "--topology",
    "topology_file",
    type=click.Path(path_type=Path),
    envvar="INFRA_TOPOLOGY",
    default="topology.yaml",
    show_default=True,
    help="The topology whose apps it serves ($INFRA_TOPOLOGY).",
)
@click.option(
    "--dagster-url",
    envvar="INFRA_DAGSTER_URL",
    default=DEFAULT_DAGSTER_URL,
    show_default=True,
    help="The Dagster webserver whose GraphQL API starts the runs ($INFRA_DAGSTER_URL).",
)
@click.option(
    "--dagster-account-file",
    type=click.Path(path_type=Path),
    envvar="INFRA_DAGSTER_ACCOUNT_FILE",
    help="A file holding `<account>:<password>`: the login of a Dagster behind nginx (the"
    " dagster role's) ($INFRA_DAGSTER_ACCOUNT_FILE).",
)
@click.option(
    "--dagster-ca-file",
    envvar="INFRA_DAGSTER_CA_FILE",
    help="The certificate to check Dagster's against ($INFRA_DAGSTER_CA_FILE).",
)
@click.option(
    "--dagster-route-device",
    envvar="INFRA_DAGSTER_ROUTE_DEVICE",
    help="Dagster is in a lab: send nothing unless the route to it goes through this link.",
)
def serve(
    listen: str,
    topology_file: Path,
    dagster_url: str,
    dagster_account_file: Path | None,
    dagster_ca_file: str | None,
    dagster_route_device: str | None,
) -> None:
    """Serve POST /push/<app> until stopped. The signing key is `webhooks.secret` of the
    site's secrets file ($INFRA_SECRETS_FILE; the lab's own on a lab)."""
    from infra_assets.topology.model import TopologyError, load_topology
    from infra_assets.topology.secrets import SecretsError, webhook_secret
    from infra_assets.topology.sites import SiteError, site_for
    from resources.dagster_api import DagsterApi
    from webhooks.push import PushHandler
    from webhooks.server import WebhookServer

    address = _listen(listen)
    auth = _dagster_auth(dagster_account_file) if dagster_account_file else None
    try:
        topo = load_topology(topology_file)
        secrets_file = site_for(topo).secrets_file()
        secret = webhook_secret(secrets_file)
    except TopologyError as err:
        click.echo(err.render(), err=True)
        sys.exit(2)
    except (SecretsError, SiteError) as err:
        click.echo(f"infra webhooks serve: {err}", err=True)
        sys.exit(2)
    api = DagsterApi(
        dagster_url, auth=auth, ca_file=dagster_ca_file, route_device=dagster_route_device
    )
    pushes = PushHandler(topology_file.absolute(), api)
    try:
        server = WebhookServer(address, secret=secret, pushes=pushes)
    except OSError as err:
        click.echo(f"infra webhooks serve: cannot listen on {listen}: {err.strerror}", err=True)
        sys.exit(1)
    click.echo(
        f"webhooks: listening on http://{listen} (POST /push/<app>, POST /registry);"
        f" Dagster {dagster_url}"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
