"""The apps released on the local site's web hosts: where each is live, and their containers.

The `app` salt state runs each release as a podman container on its web host (this machine's
podman, with the host's own storage under its root) and records what is live on the host
(`<host root>/var/lib/coop/releases/<app>.json`). This service only reads those records for
`infra local status` (`releases.<app>.<environment>`: url, digest, sha, previous) and, on
`infra local down`, removes the app containers of every web host (the records stay: the next
release knows what was live, and a rollback what was before).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from infra_assets.local_site.site import LocalSite
from infra_assets.sites import RECORDS_DIR

APP_LABEL = "coop.app"  # every container the `app` state starts carries it


def podman_env(host_root: Path) -> dict[str, str] | None:
    """The environment podman needs to act on a web host's own storage (None: not a web host
    the `web` state has configured)."""
    conf = host_root / "etc" / "containers"
    if not (conf / "containers.conf").is_file() or not (conf / "storage.conf").is_file():
        return None
    return {
        "CONTAINERS_CONF": str(conf / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
    }


def app_containers(host_root: Path, *, running_only: bool = False) -> list[str]:
    """The names of the app containers on a web host."""
    from resources.cli_runner import run_cli

    env = podman_env(host_root)
    if env is None:
        return []
    args = ["podman", "ps", "--format", "{{.Names}}", "--filter", f"label={APP_LABEL}"]
    if not running_only:
        args.insert(2, "-a")
    result = run_cli(args, env=env, log=_quiet, check=False, timeout_s=60)
    return [line.strip() for line in result.lines if line.strip()] if result.returncode == 0 else []


class ReleasesService:
    name = "releases"

    def up(self, site: LocalSite) -> None:
        # Releases are made by Dagster (release/<environment>/<app>), not by `up`.
        return None

    def down(self, site: LocalSite) -> None:
        from resources.cli_runner import run_cli

        hosts = site.root / "hosts"
        for host_root in sorted(hosts.iterdir()) if hosts.is_dir() else []:
            names = app_containers(host_root)
            if names:
                run_cli(
                    ["podman", "rm", "-f", "-t", "5", *names],
                    env=podman_env(host_root),
                    log=_quiet,
                    check=False,
                    timeout_s=120,
                )

    def status(self, site: LocalSite) -> dict[str, Any]:
        from infra_assets.model import ENVIRONMENTS
        from infra_assets.sites import ProcessSite, SiteError

        try:
            ps = ProcessSite(site.topology(), root=site.root)
        except Exception as err:  # noqa: BLE001 - status reports, it does not fail
            return {"error": str(err).splitlines()[0]}
        releases: dict[str, Any] = {}
        for app in sorted(ps.topo.apps):
            for env in ENVIRONMENTS:
                hosts = sorted(ps.topo.hosts_with_role(f"web-{env}"))
                if not hosts:
                    continue
                record = _record(Path(ps.host_root(hosts[0])) / RECORDS_DIR / f"{app}.json")
                current, previous = record.get("current") or {}, record.get("previous") or {}
                try:
                    url: str | None = ps.app_url(hosts[0], app, env)
                except SiteError:
                    url = None
                releases.setdefault(app, {})[env] = {
                    "url": url,
                    "digest": current.get("digest"),
                    "sha": current.get("sha"),
                    "previous": {"digest": previous.get("digest"), "sha": previous.get("sha")},
                    "hosts": hosts,
                }
        return releases


def _record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _quiet(_line: str) -> None:
    pass
