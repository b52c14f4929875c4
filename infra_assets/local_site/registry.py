"""The local site's private registry: where it is, and how Dagster talks to it.

There is one registry, configured as production's is: Docker Distribution (Debian
`docker-registry`) run by the salt `registry` state on the topology's docker-registry host
(support-1), with TLS (the certificate in the secrets) and htpasswd auth (accounts `ci`, which
pushes, and `deploy`, which pulls; their passwords in the secrets). The state starts it when the
host's role is applied, like nginx and dnsmasq, and `infra local down` stops it with them
(hosts.py).

`infra local up` applies that role the way the co-op's servers get it: after the salt master and
minions are up it materialises highstate/docker-registry and what that needs (the topology, the
minions' keys, the pillar) on the repo's Dagster instance (`apply_registry_role`;
`--no-registry` leaves it out). `make demo` and the `configure` job apply it with every role.

This service itself starts nothing: `up` writes the registry's certificate where this machine's
clients (RegistryResource, podman for the builds) read it, `<site>/registry/tls/ca.crt`, and
`status` reports where the registry is (`infra local status --json`: `registry.url`,
`ca_file`, the account Dagster uses and the secrets file that holds the passwords; never a
password), which `site.json` keeps for the Dagster resources.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from infra_assets.local_site.site import LocalSite

USERNAME = "ci"  # Dagster builds and pushes (the jenkins agents' account)
ACCOUNTS = {"ci": "push (image builds)", "deploy": "pull (web hosts)"}
ROLE = "docker-registry"


class RegistryService:
    name = "registry"

    @staticmethod
    def ca_file(site: LocalSite) -> Path:
        return site.path("registry", "tls", "ca.crt")

    def up(self, site: LocalSite) -> None:
        from infra_assets.local_site.salt import local_secrets
        from infra_assets.sites import ProcessSite

        topo = site.topology()
        if not topo.hosts_with_role(ROLE):
            return
        secrets = local_secrets(ProcessSite(topo, root=site.root))
        cert = secrets.get("registry", "tls", "cert")
        path = self.ca_file(site)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != cert:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(cert)
            os.replace(tmp, path)

    def down(self, site: LocalSite) -> None:
        # The registry is a service of the salt state: HostServices stops it with the others.
        return None

    def status(self, site: LocalSite) -> dict[str, Any]:
        from infra_assets.local_site.hosts import daemon_pid
        from infra_assets.sites import ProcessSite, SiteError

        try:
            topo = site.topology()
        except Exception as err:  # noqa: BLE001 - status reports, it does not fail
            return {"error": str(err).splitlines()[0]}
        hosts = sorted(topo.hosts_with_role(ROLE))
        if not hosts:
            return {"url": None, "note": "no host has the role docker-registry"}
        ps = ProcessSite(topo, root=site.root)
        host = hosts[0]
        try:
            port: int | None = ps.port(host, "registry")
        except SiteError:
            port = None
        pid = daemon_pid(ps, host, "registry")
        return {
            "url": f"https://{ps.reach(host, ROLE)}:{port}" if port else None,
            "host": host,
            "running": pid is not None,
            "pid": pid,
            "started_by": "the salt `registry` state (highstate/docker-registry)",
            "ca_file": str(self.ca_file(site)),
            "username": USERNAME,
            "accounts": ACCOUNTS,
            "secrets_file": str(ps.secrets_file()),
            "passwords": "registry.users.<account> in the secrets file",
            "storage": f"{ps.host_root(host)}/var/lib/docker-registry",
        }


def apply_registry_role(topology_file: Path) -> None:
    """The registry host's role, applied through Dagster: `dagster asset materialize --select
    '*highstate/docker-registry'` (the run and its materialisations are in the UI like any other).
    Raises ProcessError with the run's error lines when it fails."""
    from infra_assets.local_site.processes import ProcessError
    from infra_assets.paths import dagster_home

    home = dagster_home()
    argv = [
        str(Path(sys.executable).parent / "dagster"),
        "asset",
        "materialize",
        "-m",
        "infra_assets.definitions",
        "--select",
        f"*highstate/{ROLE}",
    ]
    env = {**os.environ, "INFRA_TOPOLOGY": str(topology_file.absolute()), "DAGSTER_HOME": str(home)}
    # dagster.yaml names its storage relative to the instance's folder.
    proc = subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).splitlines()
        errors = [line for line in lines if "ERROR" in line or "Failure" in line][-8:]
        raise ProcessError(
            f"applying the {ROLE} role failed (`{' '.join(argv[1:])}`, exit {proc.returncode}):\n"
            + "\n".join(errors or lines[-15:])
        )
