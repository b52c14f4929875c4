"""The lab's own Dagster (the `dagster` role, salt/dagster), as this machine reaches it: its UI
and GraphQL API behind nginx on the role's address, over the lab's link (the route checked before
any packet), the certificate checked against the lab's copy of it, logged in with the first of
the lab's `dagster.accounts`.

Once it runs it is the only Dagster that drives the lab: `make demo` hands over to it (its
sensors are turned on there, the webhook endpoint starts its runs there, the push-to-live loop
follows its runs there) and starts no daemon or webserver of this machine's; this machine's
Dagster only bootstraps the lab (`infra lab up`: images, network, containers, keys, highstate),
which the lab cannot do for itself.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from infra_assets.topology.sites import LabSite
from resources.dagster_api import DagsterApi, DagsterApiError
from resources.lab import LabNetwork

READY = """{
  workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename } } } }
  instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } }
}"""


class LabDagsterError(RuntimeError):
    """The lab's Dagster cannot be used (not ready in time, no account)."""


@dataclass(frozen=True)
class LabDagster:
    host: str
    url: str  # https://<the dagster address>
    account: tuple[str, str]
    ca_file: Path
    route_device: str
    run_dir: Path  # where this machine keeps what it needs to reach it (the account file)

    def api(self) -> DagsterApi:
        return DagsterApi(
            self.url, auth=self.account, ca_file=str(self.ca_file), route_device=self.route_device
        )

    def account_file(self) -> Path:
        """The account as `<name>:<password>` in a file only root reads (the webhook
        endpoint's `--dagster-account-file`)."""
        path = self.run_dir / "dagster-account"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"{self.account[0]}:{self.account[1]}\n")
        return path

    def webhook_options(self) -> list[str]:
        """The webhook endpoint's options to start runs here."""
        return [
            "--dagster-account-file", str(self.account_file()),
            "--dagster-ca-file", str(self.ca_file),
            "--dagster-route-device", self.route_device,
        ]  # fmt: skip

    def wait_ready(self, *, timeout_s: float = 300) -> None:
        """Until its code location has loaded and its daemon's required parts are healthy."""
        api = self.api()
        deadline = time.monotonic() + timeout_s
        why = "not asked yet"
        while time.monotonic() < deadline:
            try:
                data = api.query("is the lab's Dagster ready", READY, {})
            except DagsterApiError as err:
                why = str(err)
            else:
                entries = (data.get("workspaceOrError") or {}).get("locationEntries") or []
                loaded = [
                    e for e in entries
                    if e.get("loadStatus") == "LOADED"
                    and (e.get("locationOrLoadError") or {}).get("__typename")
                    == "RepositoryLocation"
                ]  # fmt: skip
                health = (data.get("instance") or {}).get("daemonHealth") or {}
                sick = [
                    s["daemonType"]
                    for s in health.get("allDaemonStatuses") or []
                    if s.get("required") and not s.get("healthy")
                ]
                if loaded and not sick:
                    return
                why = "its code location is not loaded" if not loaded else f"daemons {sick}"
            time.sleep(2)
        raise LabDagsterError(f"the lab's Dagster at {self.url} is not ready: {why}")


def lab_dagster(site: LabSite) -> LabDagster | None:
    """The lab's Dagster, or None when no host has the role dagster."""
    hosts = sorted(site.topo.hosts_with_role("dagster"))
    if not hosts:
        return None
    host = hosts[0]
    data = yaml.safe_load(site.secrets_file().read_text())
    accounts = ((data or {}).get("dagster") or {}).get("accounts") or {}
    if not accounts:
        raise LabDagsterError(f"{site.secrets_file()}: no dagster.accounts to log in with")
    name = sorted(accounts)[0]
    return LabDagster(
        host=host,
        url=f"https://{site.reach(host, 'dagster')}",
        account=(name, str(accounts[name])),
        ca_file=site.dagster_ui_ca_file(),
        route_device=LabNetwork(site.number_of(host)).machine_link,
        run_dir=site.root / "run",
    )
