"""The local site's salt master and minions: real `salt-master` and `salt-minion` processes.

Each host of the topology is a minion whose id is the host's name and whose `root_dir` is the
host's folder `<state>/local/hosts/<host>/` (`sites.ProcessSite.host_root`): its salt config is
`etc/salt/minion` there, its keys `etc/salt/pki/minion`, and the states it applies write under the
same root. The master runs in the salt-master host's folder (`etc/salt/master`), on 127.0.0.1,
with ports of its own, `auto_accept: False` (the `minions` asset accepts exactly the declared
hosts), the repo's `salt/` as file_roots and the generated pillar as pillar_roots.

`up` writes the configs, the throwaway secrets (unless $INFRA_SECRETS_FILE names a file) and the
pillar, then starts what is not running (a process whose config changed is restarted); `down`
stops what `up` started, by pid. Both are safe twice.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from infra_assets.local_site.processes import port_open
from infra_assets.local_site.site import LocalSite
from infra_assets.pillar import registry_tls_names, render_pillars
from infra_assets.secrets import Secrets, ensure_secrets, load_secrets
from infra_assets.sites import SECRETS_ENV, ProcessSite, SiteError

MASTER = "salt-master"
MINION_PREFIX = "salt-minion-"
VENV_BIN = Path(sys.executable).parent  # the project's venv: salt is a PyPI dependency


def salt_binary(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        raise SiteError(f"{path} is missing: run `make setup` (salt comes from the locked venv)")
    return str(path)


def master_opts(site: ProcessSite) -> dict[str, Any]:
    host = site.master_host()
    publish, ret = site.salt_ports()
    return {
        "id": f"{host}_master",
        "root_dir": site.host_root(host),
        "user": "root",
        "interface": ProcessSite.LOOPBACK,
        "ipv6": False,
        "publish_port": publish,
        "ret_port": ret,
        "worker_threads": 2,  # about 70 MB each; the local site is small
        "auto_accept": False,
        "open_mode": False,
        "file_roots": {"base": site.file_roots()},
        "pillar_roots": {"base": [str(site.pillar_root())]},
        "fileserver_backend": ["roots"],
        "gather_job_timeout": 5,
        "keep_jobs_seconds": 3600,
        "log_level_logfile": "warning",
        "enable_gpu_grains": False,
        "hash_type": "sha256",
        # The salt.master state writes master.d/coop.conf under the host's root; the local master
        # does not read it (this file is its whole config), so no state can break the site.
        "default_include": "local-site.d/*.conf",
    }


def minion_opts(site: ProcessSite, host: str) -> dict[str, Any]:
    publish, ret = site.salt_ports()
    return {
        "id": host,
        "root_dir": site.host_root(host),
        "master": ProcessSite.LOOPBACK,
        "master_port": ret,
        "publish_port": publish,
        "ipv6": False,
        # Retry authentication every second, so a key accepted by the `minions` asset is used
        # at once (the default waits 10 s).
        "acceptance_wait_time": 1,
        "acceptance_wait_time_max": 5,
        "random_reauth_delay": 0,
        # No reverse DNS of this machine's addresses, no GPU probing: grains stay local.
        "enable_fqdns_grains": False,
        "enable_gpu_grains": False,
        "grains": {"coop_site": "local"},
        "log_level_logfile": "warning",
        "hash_type": "sha256",
        "default_include": "local-site.d/*.conf",  # see master_opts
    }


class SaltService:
    """`infra local up|down|status`: the salt master and one minion per host."""

    name = "salt"

    def up(self, site: LocalSite) -> None:
        topo = site.topology()
        ps = ProcessSite(topo, root=site.root)
        secrets = local_secrets(ps)  # a bad secrets file stops here, before anything changes
        ps.ensure_layout()
        sup = site.supervisor
        from infra_assets.local_site.hosts import running_services

        running = {MASTER} if sup.get(MASTER) else set()
        ps.allocate_ports(running=running | running_services(ps))
        write_pillar(ps, secrets)

        master_cfg = ps.salt_master_config()
        if _write_config(master_cfg, master_opts(ps)) and sup.get(MASTER):
            sup.stop(MASTER)
        publish, ret = ps.salt_ports()
        master_root = Path(ps.host_root(ps.master_host()))
        if not sup.get(MASTER):
            _clear_stale_pidfile(ps.host_root(ps.master_host()), "salt-master")
        sup.start(
            MASTER,
            [salt_binary("salt-master"), "-c", master_cfg.parent, "--log-level=warning"],
            log=master_root / "var" / "log" / "salt" / "master.out",
            ready=lambda: port_open(ret) and port_open(publish),
            ready_timeout_s=60,
        )
        # The minions start side by side (each spends about a second importing salt and making
        # its key); each is ready once its key exists.
        waiting: dict[str, Path] = {}
        for host in topo.hosts:
            name = MINION_PREFIX + host
            cfg = ps.minion_config(host)
            if _write_config(cfg, minion_opts(ps, host)) and sup.get(name):
                sup.stop(name, timeout_s=5)
            if not sup.get(name):
                _clear_stale_pidfile(ps.host_root(host), "salt-minion")
            sup.start(
                name,
                [salt_binary("salt-minion"), "-c", cfg.parent, "--log-level=warning"],
                log=Path(ps.host_root(host)) / "var" / "log" / "salt" / "minion.out",
            )
            waiting[name] = cfg.parent / "pki" / "minion" / "minion.pub"
        _wait_for_keys(site, waiting)
        # Minions of hosts that left the topology: this project started them, so it stops them.
        _stop_all(
            site,
            [
                r.name
                for r in sup.running()
                if r.name.startswith(MINION_PREFIX)
                and r.name[len(MINION_PREFIX) :] not in topo.hosts
            ],
        )

    def down(self, site: LocalSite) -> None:
        sup = site.supervisor
        minions = [r.name for r in sup.running() if r.name.startswith(MINION_PREFIX)]
        _stop_all(site, minions)
        sup.stop(MASTER)

    def status(self, site: LocalSite) -> dict[str, Any]:
        sup = site.supervisor
        try:
            topo = site.topology()
        except Exception as err:  # noqa: BLE001 - status reports, it does not fail
            return {"error": str(err).splitlines()[0]}
        ps = ProcessSite(topo, root=site.root)
        master = sup.get(MASTER)
        status: dict[str, Any] = {
            "master_config": str(ps.salt_master_config()),
            "master_host": ps.master_host(),
            "running": master is not None,
            "pid": master.pid if master else None,
        }
        try:
            publish, ret = ps.salt_ports()
            status.update(publish_port=publish, ret_port=ret)
        except SiteError:
            status.update(publish_port=None, ret_port=None)
        status["file_roots"] = ps.file_roots()
        status["pillar_root"] = str(ps.pillar_root())
        status["secrets_file"] = str(ps.secrets_file())
        minions = []
        for host in topo.hosts:
            record = sup.get(MINION_PREFIX + host)
            minions.append(
                {
                    "id": host,
                    "roles": list(topo.hosts[host].roles),
                    "running": record is not None,
                    "pid": record.pid if record else None,
                    "config": str(ps.minion_config(host)),
                    "root": ps.host_root(host),
                }
            )
        status["minions"] = minions
        return status


def local_secrets(ps: ProcessSite) -> Secrets:
    """The local site's secrets: the file $INFRA_SECRETS_FILE names (checked, never written), or
    throwaway ones generated under the state folder."""
    if os.environ.get(SECRETS_ENV):
        return load_secrets(ps.secrets_file(), ps.topo)
    return ensure_secrets(ps.secrets_file(), ps.topo, tls_names=registry_tls_names(ps))


def write_pillar(ps: ProcessSite, secrets: Secrets):
    from resources.salt import write_pillar_tree

    return write_pillar_tree(ps.pillar_root(), render_pillars(ps, secrets))


def _clear_stale_pidfile(root: str, daemon: str) -> None:
    """Remove the pid files a daemon of ours left when it was killed (SIGKILL after a slow
    SIGTERM). Salt refuses to start ("An instance is already running") while its
    `process_responsibility_<daemon>.pid` names a process that still exists, and the killed
    daemon's zombie does until something reaps it. Only called when the supervisor knows that no
    such daemon of ours runs."""
    for name in (f"{daemon}.pid", f"process_responsibility_{daemon}.pid"):
        Path(root, "var", "run", name).unlink(missing_ok=True)


def _write_config(path: Path, opts: dict[str, Any]) -> bool:
    """Write a salt config file; True if its content changed."""
    text = "# Written by `infra local up` (infra_assets/local_site/salt.py).\n" + yaml.safe_dump(
        opts, sort_keys=False, default_flow_style=False
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.write_text(text)
    return True


def _wait_for_keys(site: LocalSite, keys: dict[str, Path], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(keys)
    while pending:
        for name, key in list(pending.items()):
            if key.exists():
                del pending[name]
            elif site.supervisor.get(name) is None:
                log = key.parents[4] / "var" / "log" / "salt" / "minion.out"
                raise SiteError(f"{name} stopped while starting: see {log}")
        if pending and time.monotonic() > deadline:
            raise SiteError(f"{', '.join(pending)} did not start within {timeout_s:g} s")
        time.sleep(0.1)


def _stop_all(site: LocalSite, names: list[str]) -> None:
    """Stop minions, all at once. A salt-minion takes 6-10 s to leave after SIGTERM (measured) and
    keeps nothing worth waiting for: after 5 s it is killed."""
    threads = [
        threading.Thread(target=site.supervisor.stop, args=(n,), kwargs={"timeout_s": 5})
        for n in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
