"""The local site as a whole: its services, brought up and down in order, and their status.

Each service (the salt master and minions, the registry, ...) is a `LocalService` registered in
`services.py`. `LocalSite.up()` starts them in order and writes the site's status to
`<state>/site.json`, which the Dagster resources of the local site read (where the salt master's
config is, the registry's URL, ...); `down()` stops them in reverse order. Both are safe twice and
stop only processes this project started (by pid, `processes.Supervisor`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from infra_assets.local_site.processes import Supervisor
from infra_assets.model import Topology, load_topology
from infra_assets.paths import state_dir


class LocalService(Protocol):
    """One part of the local site. `name` is its key in `infra local status --json`."""

    name: str

    def up(self, site: LocalSite) -> None: ...

    def down(self, site: LocalSite) -> None: ...

    def status(self, site: LocalSite) -> dict[str, Any]: ...


class LocalSite:
    def __init__(self, topology_file: Path, root: Path | None = None):
        self.topology_file = Path(topology_file).absolute()
        self.root = (root or state_dir() / "local").absolute()
        self.supervisor = Supervisor(self.root / "run")

    def topology(self) -> Topology:
        return load_topology(self.topology_file)

    def path(self, *parts: str) -> Path:
        """A path under the site's state folder (not created)."""
        return self.root.joinpath(*parts)

    @property
    def status_file(self) -> Path:
        return self.root / "site.json"

    def services(self) -> list[LocalService]:
        from infra_assets.local_site.services import services

        return services()

    def up(self) -> dict[str, Any]:
        self.topology()  # a broken topology stops here, before anything starts
        self.root.mkdir(parents=True, exist_ok=True)
        for service in self.services():
            service.up(self)
        return self.write_status()

    def down(self) -> list[str]:
        stopped = []
        for service in reversed(self.services()):
            service.down(self)
            stopped.append(service.name)
        # Anything still recorded was started by an earlier version of a service: stop it too.
        for record in self.supervisor.running():
            self.supervisor.stop(record.name)
            stopped.append(record.name)
        self.status_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "topology": str(self.topology_file),
            "state_dir": str(self.root),
        }
        for service in self.services():
            status[service.name] = service.status(self)
        return status

    def write_status(self) -> dict[str, Any]:
        status = self.status()
        self.status_file.write_text(json.dumps(status, indent=2) + "\n")
        return status

    def read_status(self) -> dict[str, Any]:
        """What the last `up` recorded (empty when the site is down)."""
        try:
            return json.loads(self.status_file.read_text())
        except FileNotFoundError:
            return {}


# Every setting that points the code at a site; `site_environment` clears the ones it is not given.
SITE_ENV_KEYS = (
    "INFRA_STATE_DIR",
    "INFRA_TOPOLOGY",
    "INFRA_PODMAN_ROOT",
    "INFRA_SECRETS_FILE",
    "INFRA_SALT_MASTER_CONFIG",
    "INFRA_REGISTRY_URL",
    "INFRA_REGISTRY_USER",
    "INFRA_REGISTRY_PASSWORD",
    "INFRA_REGISTRY_CA_FILE",
)


@contextmanager
def site_environment(env: Mapping[str, str]) -> Iterator[None]:
    """`env` in os.environ (and no stray INFRA_* site setting), every variable restored after:
    for code that works on a site in process (the delivery tests, the push-to-live benchmark)."""
    keys = [*SITE_ENV_KEYS, *(k for k in env if k not in SITE_ENV_KEYS)]
    saved = {k: os.environ.get(k) for k in keys}
    for key in SITE_ENV_KEYS:
        os.environ.pop(key, None)
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
