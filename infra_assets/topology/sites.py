"""Sites: where the hosts of a topology live and how Dagster reaches them. THE seam for that
question.

A location's `cloud` picks its site (DESIGN.md, "Sites"). The hosts are servers either way (the
same states, the same planned addresses and standard ports); what differs is answered here, and
only here:

- how Dagster reaches the salt master (`salt_master_config`, or salt-api: `salt_api_url`),
- where a host's service listens and how other hosts reach it (`listen`, `reach`, `port`),
- where the secrets file and the salt key pairs are (`secrets_file`, `keys_dir`).

The pillar is rendered from these answers (`configuration/pillar.py`: each role's `listen` and
`port`); the states read only the pillar and never know which site they run on.

Implementations:
- `CloudSite` (an OpenStack cloud): hosts are servers on the location's private network; services
  listen on the host's planned addresses and standard ports; the master's config is
  `/etc/salt/master` on the primary support server, where Dagster runs.
- `LabSite` (`cloud: lab`): this machine as a cloud. Hosts are containers with systemd as PID 1
  at their planned addresses on a network inside a namespace of the project's own (`lab/`);
  everything a state sees is a server's (roots "", planned addresses, standard ports). Only how
  Dagster reaches the master (salt-api at the master's address, through the lab's link) and
  where the throwaway secrets and keys live differ from `CloudSite`.
"""

from __future__ import annotations

import os
import urllib.parse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import yaml

from infra_assets.topology.model import Topology, address_plan
from infra_assets.topology.roles import role_catalogue
from infra_assets.topology.secrets import SecretsError, chat_webhook_url
from resources.cli_runner import CliError
from resources.git import run_git
from resources.git_url import resolve_repo
from resources.lab import LabNetwork
from resources.lab_acme import LabAcme
from resources.lab_egress import LabEgressProxy
from resources.lab_git import LabGitDaemon
from resources.lab_link import WEBHOOKS_PORT
from resources.paths import REPO_ROOT, state_dir
from resources.salt import DEFAULT_MASTER_CONFIG

# Where a site's registry sends its notifications (the webhook endpoint); the lab's endpoint
# listens on the machine's side of the lab's link, at this port (`make demo` starts it).
WEBHOOKS_URL_ENV = "INFRA_WEBHOOKS_URL"
LAB_WEBHOOKS_PORT = WEBHOOKS_PORT

SECRETS_ENV = "INFRA_SECRETS_FILE"
# The dagster role's checkout of this repository: the name the lab's git daemon exports it under.
INFRA_REPO_EXPORT = "coop-infra"
DAGSTER_CHECKOUT = "/srv/coop-infra"  # where the dagster role checks it out (salt/dagster)
# Set by the dagster role (salt/dagster) for the Dagster it runs: the host it runs on. Such a
# Dagster is inside the site and reaches its services directly, as on a server (no lab link).
RUNS_ON_ENV = "INFRA_RUNS_ON"
KEYS_ENV = "INFRA_SALT_KEYS_DIR"

# A release runs in one of two slots (blue/green): the new one starts beside the live one.
APP_SLOTS: tuple[str, ...] = ("blue", "green")
# Where the `app` state records what is live on a web host (<app>.json).
RECORDS_DIR = "/var/lib/coop/releases"


class SiteError(RuntimeError):
    """The site cannot answer (not up, mixed clouds, ...). The message says what to do."""


class Site(ABC):
    """Where the hosts of one topology live and how to reach them."""

    kind: ClassVar[str]

    def __init__(self, topo: Topology):
        self.topo = topo
        self.plan = address_plan(topo)

    # --- salt -----------------------------------------------------------------------------------
    @abstractmethod
    def salt_master_config(self) -> Path:
        """The master's config FILE (what `salt.client.LocalClient(c_path=...)` takes)."""

    @abstractmethod
    def salt_ports(self) -> tuple[int, int]:
        """(publish_port, ret_port) of the master."""

    def master_host(self) -> str:
        return self.topo.salt_master()

    def file_roots(self) -> list[str]:
        """The state tree: this repository's `salt/` folder, where Dagster runs."""
        return [str(REPO_ROOT / "salt")]

    def pillar_root(self) -> Path:
        """The generated pillar (outside git), on the master host."""
        return Path("/srv/pillar")

    # --- hosts ----------------------------------------------------------------------------------
    @abstractmethod
    def listen(self, host: str, role: str) -> str:
        """The address `host`'s service for `role` binds to."""

    @abstractmethod
    def reach(self, host: str, role: str) -> str:
        """The address other hosts use to reach `host`'s service for `role`."""

    @abstractmethod
    def port(self, host: str, service: str) -> int:
        """The port of `service` (a role's service in the role catalogue) on `host`."""

    # --- app releases (the `app` state on web hosts) ---------------------------------------------
    @abstractmethod
    def app_slots(self, host: str, app: str) -> dict[str, int]:
        """The two loopback ports a release of `app` can run on, on web host `host`: `blue` and
        `green`. A new release starts in the slot the live one is not in (blue/green)."""

    @abstractmethod
    def app_url(self, host: str, app: str, environment: str) -> str:
        """Where a person opens `app` served by `host` in `environment`."""

    # --- secrets --------------------------------------------------------------------------------
    @abstractmethod
    def secrets_file(self) -> Path:
        """The secrets pillar's source: a YAML file outside git (`$INFRA_SECRETS_FILE`)."""

    def egress_proxy(self, host: str) -> str | None:
        """The HTTPS proxy `host`'s caches reach their registries through; None: directly (a
        cloud's servers go out through its router)."""
        return None

    def chat_proxy(self, host: str) -> str | None:
        """The proxy `host` reaches the co-op's chat through (a CONNECT tunnel: Dagster's
        notices, a chat-ops bot's answers); None: directly (a cloud's servers go out through its
        router)."""
        return None

    def acme(self, host: str) -> dict[str, str]:
        """Where web host `host` gets its sites' certificates: the ACME `directory`, the
        account's `email` ("" for none) and `ca_cert`, the CA its certbot checks the directory
        against ("": the host's own trust store, as for Let's Encrypt)."""
        return {
            "directory": self.topo.acme.directory,
            "email": self.topo.acme.email or "",
            "ca_cert": "",
        }

    def webhooks_url(self, host: str) -> str | None:
        """Where `host` (the registry) reaches the webhook endpoint (webhooks/), or None: it is
        not told (a cloud without `$INFRA_WEBHOOKS_URL`)."""
        return os.environ.get(WEBHOOKS_URL_ENV) or None

    def dagster_sources(self) -> list[str]:
        """The addresses Dagster's connections come from, as the hosts see them (a firewall's
        `only_from: [dagster]`): on a cloud, the hosts with the role dagster, else the primary
        support server (the salt master's host), where the operators' Dagster runs."""
        hosts = sorted(self.topo.hosts_with_role("dagster")) or [self.master_host()]
        return [self.plan.primary(h).address for h in hosts]

    def dagster_topology(self) -> tuple[str, str]:
        """The topology the dagster role's Dagster runs on, as (its path on the host, the text
        the host must write there or ""): the same file as this Dagster's. A file of this
        repository is read from the host's checkout; another (a lab's at another number, the
        tests') travels in the pillar to /etc/dagster/topology.yaml."""
        path, text = self.topo.source()
        try:
            return f"{DAGSTER_CHECKOUT}/{path.resolve().relative_to(REPO_ROOT.resolve())}", ""
        except ValueError:
            return "/etc/dagster/topology.yaml", text

    def infra_repo(self, host: str) -> tuple[str, str]:
        """Where the dagster role's `host` clones this repository from, and the revision it
        checks out: the topology's `infra_repo`, at the commit this Dagster runs (the one that
        applies it: never whatever `main` holds when the highstate runs, unreviewed)."""
        if not self.topo.infra_repo:
            raise SiteError(
                f"{host} has the role dagster, which runs from a checkout of this repository:"
                " set `infra_repo` in the topology to the git URL it clones"
            )
        return self.topo.infra_repo, _applying_commit()

    def address(self, host: str, role: str) -> str:
        """The planned address of `host` for `role` (its primary one for an untyped role)."""
        for a in self.plan.for_host(host):
            if a.role == role:
                return a.address
        return self.plan.primary(host).address


class CloudSite(Site):
    """An OpenStack cloud: hosts are servers on the location's private network 10.{location}.0.0/16.

    Dagster runs on the primary support server beside the salt master.
    """

    kind = "cloud"

    def salt_master_config(self) -> Path:
        return DEFAULT_MASTER_CONFIG

    def salt_ports(self) -> tuple[int, int]:
        return _port("salt-publish"), _port("salt-ret")

    def listen(self, host: str, role: str) -> str:
        return self.address(host, role)

    def reach(self, host: str, role: str) -> str:
        return self.address(host, role)

    def port(self, host: str, service: str) -> int:
        return _port(service)

    def app_slots(self, host: str, app: str) -> dict[str, int]:
        # On a server the app's containers listen on 127.0.0.1:<port> and <port>+1 (topology.yaml
        # apps.<app>.port), behind nginx: give apps ports at least two apart.
        port = self.topo.apps[app].port
        return {"blue": port, "green": port + 1}

    def app_url(self, host: str, app: str, environment: str) -> str:
        domain = self.topo.apps[app].domains.get(environment)
        return (
            f"https://{domain}/" if domain else f"http://{self.reach(host, f'web-{environment}')}/"
        )

    def salt_api_url(self) -> str:
        """salt-api on the master host's primary address (rest_cherrypy, TLS)."""
        master = self.master_host()
        return f"https://{self.reach(master, 'salt-master')}:{_port('salt-api')}"

    def keys_dir(self) -> Path:
        """The minions' and the master's key pairs (outside git): `$INFRA_SALT_KEYS_DIR`."""
        env = os.environ.get(KEYS_ENV)
        if not env:
            raise SiteError(
                f"${KEYS_ENV} is not set: point it at a folder outside git (mode 700) for the"
                " salt key pairs that `minion_keys` makes"
            )
        return Path(env).absolute()

    def secrets_file(self) -> Path:
        env = os.environ.get(SECRETS_ENV)
        if not env:
            raise SiteError(
                f"${SECRETS_ENV} is not set: point it at the secrets file (YAML, outside git;"
                " see README, 'Secrets')"
            )
        return Path(env).absolute()


class LabSite(CloudSite):
    """`cloud: lab`: this machine as a cloud (`infra lab up`). Hosts are containers booted from
    their role images at their planned addresses; the salt master runs inside its host and
    Dagster reaches it through salt-api over the lab's link (`lab/`)."""

    kind = "lab"
    # The state tree as the master in the lab sees it: the repo's salt/, bind-mounted read-only
    # (a checkout of the infra repository on a server).
    STATE_TREE = "/srv/coop/salt"

    def __init__(self, topo: Topology, root: Path | None = None):
        super().__init__(topo)
        # One folder per lab (keys, throwaway secrets, plans), named by the master's location
        # and its number: two labs of one topology at different numbers (a developer's and the
        # tests') never share a key.
        master = topo.hosts[topo.salt_master()].location
        name = f"{master}-{topo.locations[master].number}"
        self.root = Path(root or state_dir() / "lab" / name).absolute()

    def salt_master_config(self) -> Path:
        raise SiteError(
            f"the lab's salt master runs inside {self.master_host()}: Dagster reaches it through"
            f" salt-api at {self.salt_api_url()}, not through a master config on this machine"
        )

    def file_roots(self) -> list[str]:
        return [self.STATE_TREE]

    def pillar_root(self) -> Path:
        return Path("/srv/pillar")

    def secrets_file(self) -> Path:
        env = os.environ.get(SECRETS_ENV)
        return Path(env).absolute() if env else self.root / "secrets.yaml"

    def keys_dir(self) -> Path:
        return self.root / "keys"

    def salt_api_password_file(self) -> Path:
        """salt-api's password for Dagster, from the lab's secrets (mode 600; `infra lab up`)."""
        return self.root / "salt-api" / "password"

    def salt_api_ca_file(self) -> Path:
        """salt-api's self-signed certificate, the CA Dagster checks it against."""
        return self.root / "salt-api" / "ca.pem"

    def registry_ca_file(self) -> Path:
        """The registry's certificate (from the lab's secrets), what Dagster checks it against."""
        return self.root / "registry" / "ca.crt"  # podman --cert-dir reads *.crt

    def dagster_ui_ca_file(self) -> Path:
        """The lab's Dagster UI's certificate (from the lab's secrets), to check it against."""
        return self.root / "dagster" / "ca.pem"

    def registry_password_file(self) -> Path:
        """The registry's push account's password for Dagster (mode 600; `infra lab up`)."""
        return self.root / "registry" / "password"

    def egress(self, number: int) -> LabEgressProxy:
        """Lab `number`'s egress proxy: its allow-list, pid and log under the lab's folder."""
        return LabEgressProxy(number, self.root / "egress" / str(number))

    def egress_allow(self, number: int) -> dict[str, list[str]]:
        """Who on lab `number` may reach what through its egress proxy: every address of each
        cache host there -> the registries its cache roles fetch from; of each host that posts
        to the chat (`chat_clients`), when the lab's secrets name one -> the chat's host."""
        chat, chat_clients = self.chat_target(), self.chat_clients()
        allow: dict[str, list[str]] = {}
        for host in self.topo.hosts:
            targets = self._uplinks(host)
            if chat and host in chat_clients:
                targets = sorted({*targets, chat})
            if targets and self.number_of(host) == number:
                for address in self.plan.for_host(host):
                    allow[address.address] = targets
        return allow

    def chat_clients(self) -> list[str]:
        """The hosts that post to the chat: Dagster's (its notices) and, when an app has
        `dagster: true` (a chat-ops bot, in production alone), the production web hosts."""
        hosts = set(self.topo.hosts_with_role("dagster"))
        if any(app.dagster for app in self.topo.apps.values()):
            hosts |= set(self.topo.hosts_with_role("web-production"))
        return sorted(hosts)

    def chat_target(self) -> str | None:
        """`host:port` of the chat's webhook (`chat.webhook_url` in the lab's secrets), where
        the chat's clients may go through the egress proxy; None: no chat (or a secrets file
        that does not say one: the pillar's asset reports a broken one)."""
        try:
            url = chat_webhook_url(self.secrets_file())
        except SecretsError:
            return None
        if not url:
            return None
        parts = urllib.parse.urlsplit(url)  # checked by chat_webhook_url: a host, a port
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        return f"{host}:{port}"

    def chat_proxy(self, host: str) -> str | None:
        if host not in self.chat_clients() or self.chat_target() is None:
            return None
        return self.egress(self.number_of(host)).url

    def _uplinks(self, host: str) -> list[str]:
        """The registries `host`'s roles fetch from (the catalogue's `uplinks`): [] for a host
        that is no cache."""
        catalogue = role_catalogue().roles
        roles = [catalogue[r] for r in self.topo.hosts[host].roles if r in catalogue]
        return sorted({target for role in roles for target in role.uplinks})

    def egress_proxy(self, host: str) -> str | None:
        if not self._uplinks(host):
            return None
        return self.egress(self.number_of(host)).url

    def acme_server(self, number: int) -> LabAcme:
        """Lab `number`'s ACME server (pebble on its link): config, key pair, pid and log."""
        return LabAcme(number, self.root / "acme" / str(number))

    def acme(self, host: str) -> dict[str, str]:
        """The lab's own ACME server, whose API certificate the host trusts for it alone."""
        server = self.acme_server(self.number_of(host))
        return {
            "directory": server.directory,
            "email": self.topo.acme.email or "",
            "ca_cert": server.ca_cert(),
        }

    def dagster_sources(self) -> list[str]:
        """Dagster runs on this machine and reaches each lab through its link: from the link's
        machine side (routed into the lab, not masqueraded); and on the hosts with the role
        dagster, once they run it."""
        hosts = sorted(self.topo.hosts_with_role("dagster"))
        return [LabNetwork(n).machine_address for n in self.numbers()] + [
            self.plan.primary(h).address for h in hosts
        ]

    def dagster_topology(self) -> tuple[str, str]:
        """The lab's Dagster runs on this topology as the pillar writes it: the apps' repos
        that are paths on this machine named as the lab's hosts clone them, from the git daemon
        on the link (`git://169.254.N.1/<app>.git`)."""
        path, text = self.topo.source()
        path = path.resolve()
        data = yaml.safe_load(text)
        hosts = sorted(self.topo.hosts_with_role("dagster"))
        number = self.number_of(hosts[0]) if hosts else self.numbers()[0]
        exports = self.git_exports(path.parent)
        for name, app in (data.get("apps") or {}).items():
            if name in exports:
                app["repo"] = self.git_daemon(number).url(name)
        text = "# The lab's topology as its Dagster reads it (written by salt/dagster).\n"
        return "/etc/dagster/topology.yaml", text + yaml.safe_dump(data, sort_keys=False)

    def infra_repo(self, host: str) -> tuple[str, str]:
        """The lab's git daemon on `host`'s link serves this repository; the dagster host
        checks out the commit this checkout has checked out (HEAD: what you are trying)."""
        head = _applying_commit()
        address = LabNetwork(self.number_of(host)).machine_address
        return f"git://{address}/{INFRA_REPO_EXPORT}.git", head

    def webhooks_url(self, host: str) -> str:
        """The demo's webhook endpoint, on the machine's side of `host`'s lab link."""
        return f"http://{LabNetwork(self.number_of(host)).machine_address}:{LAB_WEBHOOKS_PORT}"

    def git_daemon_dir(self) -> Path:
        """The lab's git daemon: its export folder (links to the apps' repos), pid and log."""
        return self.root / "git-daemon"

    def git_daemon(self, number: int) -> LabGitDaemon:
        """The read-only git daemon on lab `number`'s link (resources/lab_git.py)."""
        return LabGitDaemon(number, self.git_daemon_dir() / str(number))

    def serve_git(self, number: int, base_dir: Path) -> LabGitDaemon | None:
        """The git daemon of lab `number` exporting `git_exports(base_dir)` and running
        (started when it is not); None when there is nothing to export."""
        repos = self.git_exports(base_dir)
        if not repos:
            return None
        daemon = self.git_daemon(number)
        daemon.export(repos)
        daemon.start()
        return daemon

    def git_exports(self, base_dir: Path) -> dict[str, str]:
        """What the lab's git daemon exports: the topology's apps whose repo is a path on this
        machine, {app: absolute path} (`base_dir`: the topology file's folder, which relative
        paths start from), and this repository when a host has the role dagster (its checkout:
        `infra_repo`)."""
        repos = {name: resolve_repo(app.repo, base_dir) for name, app in self.topo.apps.items()}
        exports = {name: path for name, path in repos.items() if Path(path).is_absolute()}
        if self.topo.hosts_with_role("dagster"):
            exports[INFRA_REPO_EXPORT] = str(REPO_ROOT)
        return exports

    def number_of(self, host: str) -> int:
        """The number of `host`'s location: the lab network it is on."""
        return self.topo.locations[self.topo.hosts[host].location].number

    def master_number(self) -> int:
        """The number of the master's location: its lab network carries salt-api."""
        return self.topo.locations[self.topo.hosts[self.master_host()].location].number

    def numbers(self) -> list[int]:
        """The lab's location numbers: one network (10.N.0.0/16) and namespace each."""
        return sorted(loc.number for loc in self.topo.locations.values())


def site_for(topo: Topology, *, root: Path | None = None) -> Site:
    """The site that the topology's locations name (one site per topology)."""
    kinds = {loc.site_kind for loc in topo.locations.values()}
    if len(kinds) > 1:
        clouds = sorted({loc.cloud for loc in topo.locations.values()})
        raise SiteError(
            f"the topology mixes this machine with clouds ({', '.join(clouds)}): keep"
            " `cloud: lab` locations in a topology of their own (topology.lab.yaml)"
        )
    if kinds == {"lab"}:
        return LabSite(topo, root=root)
    return CloudSite(topo)


def _port(name: str) -> int:
    """A service's (or the salt master's named ports') standard port, from the role catalogue."""
    return role_catalogue().port(name)


def checkout_head() -> str:
    """The commit this checkout has checked out, "" outside git (or with none)."""
    return _git("rev-parse", "HEAD") or ""


def _applying_commit() -> str:
    """The commit this checkout has checked out: what the dagster role's host runs."""
    head = _git("rev-parse", "--verify", "HEAD^{commit}")
    if not head:
        raise SiteError(f"{REPO_ROOT}: no commit checked out, for the dagster role to run")
    return head


def _git(*args: str) -> str | None:
    """What git prints about this checkout (stdout, one line), or None (not a repo, no such
    thing, no git)."""
    try:
        out = run_git(REPO_ROOT, *args, env=None, check=False, timeout_s=10)
    except (CliError, OSError):
        return None
    return (out.output.strip() or None) if out.returncode == 0 else None
