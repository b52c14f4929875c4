"""The services the salt states start on the local site's hosts (nginx, dnsmasq, the registry,
PostgreSQL, ...), as daemons under each host's root, on 127.0.0.1.

The states start them (a real server's init system would); this module only finds them, by the
pid file the pillar names (`sites.LOCAL_PIDFILES`), reports where each listens, and on
`infra local down` stops them. A pid is only taken for ours when that process's command line names
the host's root, so nothing else on the machine is ever signalled.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from infra_assets.local_site.site import LocalSite
from infra_assets.sites import LOCAL_PIDFILES, ROLE_SERVICES, ProcessSite, SiteError

SCHEMES = {"http": "http", "registry": "https", "npm": "http", "jenkins": "http"}
# PostgreSQL's SIGTERM waits for its clients; SIGINT is its "fast" shutdown.
STOP_SIGNALS = {"postgres": signal.SIGINT}


def host_services(ps: ProcessSite, host: str) -> list[str]:
    return sorted({ROLE_SERVICES[r] for r in ps.topo.hosts[host].roles if r in ROLE_SERVICES})


def daemon_pid(ps: ProcessSite, host: str, service: str) -> int | None:
    """The pid of `service` on `host` if it runs (and is ours), else None."""
    return _pid_under(Path(ps.host_root(host)), service, ps.root)


def _pid_under(host_root: Path, service: str, site_root: Path) -> int | None:
    """The pid in `service`'s pid file under `host_root`, if that process runs and its command
    line names the host's folder (through the short link or not): only then is it ours."""
    try:
        pid = int((host_root / LOCAL_PIDFILES[service]).read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError, PermissionError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if stat[stat.rindex(")") + 2] in "ZX":
        return None
    name = host_root.name
    roots = {
        str(Path(site_root) / "hosts" / name),
        str(ProcessSite.link_dir(site_root) / name),
    }
    return pid if any(root + "/" in cmdline for root in roots) else None


def running_services(ps: ProcessSite) -> set[str]:
    """`host/service` for every state-started service that runs now."""
    return {
        f"{host}/{service}"
        for host in ps.topo.hosts
        for service in host_services(ps, host)
        if daemon_pid(ps, host, service)
    }


class HostServices:
    """`infra local status`: where each host's services listen; `down`: stop them."""

    name = "hosts"

    def up(self, site: LocalSite) -> None:
        # Nothing to start: the salt states start these (highstate/<role>).
        return None

    def down(self, site: LocalSite) -> None:
        # Every host folder, whatever the topology says now (a host removed from it, or a
        # broken file, leaves no service behind).
        hosts = site.root / "hosts"
        for host_root in sorted(hosts.iterdir()) if hosts.is_dir() else []:
            for service in LOCAL_PIDFILES:
                pid = _pid_under(host_root, service, site.root)
                if pid:
                    _stop(pid, STOP_SIGNALS.get(service, signal.SIGTERM))

    def status(self, site: LocalSite) -> dict[str, Any]:
        try:
            ps = ProcessSite(site.topology(), root=site.root)
        except Exception as err:  # noqa: BLE001 - status reports, it does not fail
            return {"error": str(err).splitlines()[0]}
        hosts: dict[str, Any] = {}
        for host, spec in ps.topo.hosts.items():
            services: dict[str, Any] = {}
            for service in host_services(ps, host):
                role = next(r for r in spec.roles if ROLE_SERVICES.get(r) == service)
                try:
                    port: int | None = ps.port(host, service)
                except SiteError:
                    port = None
                pid = daemon_pid(ps, host, service)
                entry: dict[str, Any] = {
                    "role": role,
                    "listen": ps.listen(host, role),
                    "port": port,
                    "running": pid is not None,
                    "pid": pid,
                }
                if service in SCHEMES and port:
                    entry["url"] = f"{SCHEMES[service]}://{ps.reach(host, role)}:{port}"
                if service == "http":  # where app releases put their nginx config
                    entry["nginx_prefix"] = f"{ps.host_root(host)}/etc/nginx/"
                    entry["conf_d"] = f"{ps.host_root(host)}/etc/nginx/conf.d"
                services[service] = entry
            hosts[host] = {
                "root": ps.host_root(host),
                "roles": list(spec.roles),
                "services": services,
            }
        return hosts


def _stop(pid: int, sig: int, timeout_s: float = 15) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"
