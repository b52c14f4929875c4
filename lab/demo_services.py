"""The demo's services beside its Dagster daemon (lab/dagster_daemon.py):

- `dagster-webserver` (on a loopback port): the UI, and the GraphQL API the webhook endpoint
  starts runs through;
- `webhooks`: the webhook endpoint (`infra webhooks serve`), which the sample app's bare repo
  calls from its post-receive hook (`install_hook`), so that a push starts its run at once, and
  the lab's registry with its notifications (so it listens on the machine's side of the lab's
  link, at the address the registry's config names: LabSite.webhooks_url).

Recorded under the lab's state folder like the daemon: `infra lab down` stops them.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import requests

from infra_assets.topology.sites import LabSite
from lab.dagster_daemon import DagsterDaemon
from lab.processes import Supervisor, free_port
from resources.git import run_git
from resources.paths import REPO_ROOT

BIN = Path(sys.executable).parent
WEBSERVER = "dagster-webserver"
WEBHOOKS = "webhooks"
HOOK = REPO_ROOT / "webhooks" / "post-receive"
LOCATION_LOADED = """{ workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename } } } } }"""


class DemoServices:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.supervisor = Supervisor(self.run_dir)

    def _url_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.url"

    def url(self, name: str) -> str | None:
        """The URL of `name` while it runs (None: it does not)."""
        if self.supervisor.get(name) is None:
            return None
        try:
            return self._url_file(name).read_text().strip()
        except FileNotFoundError:
            return None

    def start_webserver(self, *, dagster_home: Path, env: dict[str, str]) -> str:
        """`dagster-webserver` on the instance at `dagster_home` (no daemon of its own), ready
        once the code location has loaded; its URL."""
        running = self.url(WEBSERVER)
        if running:
            return running
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [BIN / "dagster-webserver", "-w", REPO_ROOT / "workspace.yaml"]
        argv += ["-h", "127.0.0.1", "-p", str(port)]
        self.supervisor.start(
            WEBSERVER,
            argv,
            log=self.run_dir / f"{WEBSERVER}.log",
            cwd=dagster_home,
            env={**env, "DAGSTER_HOME": str(dagster_home)},
            ready=lambda: _location_loaded(url),
            ready_timeout_s=180,
        )
        self._url_file(WEBSERVER).write_text(url + "\n")
        return url

    def start_webhooks(
        self,
        *,
        topology_file: Path,
        dagster_url: str,
        env: dict[str, str],
        listen: str | None = None,
        dagster_login: list[str] = (),
    ) -> str:
        """The webhook endpoint, starting runs through `dagster_url`, on `listen` (HOST:PORT;
        a free loopback port when None); its URL. `dagster_login`: the endpoint's options for
        a Dagster behind a login (the lab's own: `LabDagster.webhook_options`)."""
        running = self.url(WEBHOOKS)
        if running:
            return running
        listen = listen or f"127.0.0.1:{free_port()}"
        url = f"http://{listen}"
        argv = [BIN / "infra", "webhooks", "serve", "--listen", listen]
        argv += ["--topology", topology_file, "--dagster-url", dagster_url, *dagster_login]
        self.supervisor.start(
            WEBHOOKS,
            argv,
            log=self.run_dir / f"{WEBHOOKS}.log",
            env=env,
            ready=lambda: _answers(f"{url}/health"),
            ready_timeout_s=60,
        )
        self._url_file(WEBHOOKS).write_text(url + "\n")
        return url

    def stop(self) -> list[str]:
        stopped = []
        for name in (WEBHOOKS, WEBSERVER):
            record = self.supervisor.get(name)
            if self.supervisor.stop(name, timeout_s=30) and record is not None:
                stopped.append(f"{name} (pid {record.pid})")
            self._url_file(name).unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, Any]:
        return {name: self.url(name) for name in (WEBSERVER, WEBHOOKS)}


def install_hook(bare: Path, *, url: str, secret: bytes, secret_file: Path) -> None:
    """The post-receive hook in bare repo `bare`, calling `url` with pushes signed by `secret`
    (kept in `secret_file`, mode 600, as a git server keeps it)."""
    secret_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secret + b"\n")
    os.chmod(secret_file, 0o600)
    hook = bare / "hooks" / "post-receive"
    hook.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HOOK, hook)
    hook.chmod(0o755)
    for key, value in (("coop.webhookUrl", url), ("coop.webhookSecretFile", str(secret_file))):
        run_git(None, "config", "--file", str(bare / "config"), key, value)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _location_loaded(url: str) -> bool:
    try:
        answer = requests.post(f"{url}/graphql", json={"query": LOCATION_LOADED}, timeout=2)
        entries = answer.json()["data"]["workspaceOrError"]["locationEntries"]
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return False
    return any(
        e["loadStatus"] == "LOADED"
        and (e.get("locationOrLoadError") or {}).get("__typename") == "RepositoryLocation"
        for e in entries
    )


def demo_daemon(site: LabSite) -> DagsterDaemon:
    """The demo's Dagster daemon of this lab, recorded under the lab's state folder."""
    return DagsterDaemon(site.root / "run")


def demo_services(site: LabSite) -> DemoServices:
    """The demo's webserver and webhook endpoint of this lab (lab/demo_services.py)."""
    return DemoServices(site.root / "run")


def stop_daemon(site: LabSite) -> list[str]:
    """Stop the demo's webhook endpoint, webserver and daemon."""
    stopped = demo_services(site).stop()
    pid = demo_daemon(site).stop()
    return stopped + ([f"dagster-daemon (pid {pid})"] if pid else [])
