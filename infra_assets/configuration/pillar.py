"""The salt pillar, generated from the topology: one document per minion, holding only its own.

`render_pillars(site, secrets)` gives every host of the topology a pillar with:

- `roles` (what `salt/top.sls` matches on) and `coop` (host, location, domain, addresses);
- `salt` (the master to talk to; the master's own settings on the salt-master host);
- one block per role it has (`dns`, `registry`, `web`, `postgres`, `jenkins`, `npm_cache`) with
  the service's `listen` address and `port` (the planned address and the standard port);
- the secrets its roles need, and no others: a web host gets the database passwords of its own
  environment and the registry's pull account; a postgres host those of its environments; the
  registry host only bcrypt hashes of the registry's passwords.

Plain Python, no Dagster: the `salt_pillar` asset and the lab's commands both call it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import bcrypt
import yaml

from infra_assets.configuration.salt_keys import MASTER, KeyStore
from infra_assets.topology.model import ENVIRONMENTS
from infra_assets.topology.roles import (
    DAGSTER_HOSTS_SOURCE,
    DAGSTER_SOURCE,
    HOSTS_SOURCE,
    RoleCatalogueError,
    role_catalogue,
)
from infra_assets.topology.secrets import (
    PULL_ACCOUNTS,
    PUSH_ACCOUNT,
    Secrets,
    dagster_names,
    postgres_environments,
    registry_notify_token,
)
from infra_assets.topology.sites import Site, SiteError

SALT_API_USER = "dagster"  # salt-api's eauth account for Dagster (salt/salt/api.sls)


def render_pillars(site: Site, secrets: Secrets | None) -> dict[str, dict[str, Any]]:
    """The pillar of every host in the site's topology, by minion id (the host's name)."""
    return {host: host_pillar(site, secrets, host) for host in site.topo.hosts}


def host_pillar(site: Site, secrets: Secrets | None, host: str) -> dict[str, Any]:
    """One host's pillar: `roles`, `coop`, `salt`, `firewall`, and the blocks its roles ask for
    in the role catalogue (salt/roles.yaml, each role's `pillar`), each built by its function
    below."""
    topo, plan = site.topo, site.plan
    spec = topo.hosts[host]
    location = topo.locations[spec.location]
    master = site.master_host()
    publish_port, ret_port = site.salt_ports()
    pillar: dict[str, Any] = {
        "roles": list(spec.roles),
        "coop": {
            "host": host,
            "location": spec.location,
            "domain": topo.domain,
            "fqdn": f"{host}.{spec.location}.{topo.domain}",
            "address": plan.primary(host).address,
            "addresses": {a.role: a.address for a in plan.for_host(host)},
            "network": f"10.{location.number}.0.0/16",
        },
        "salt": {
            "minion": {
                "id": host,
                "master": site.reach(master, "salt-master"),
                "publish_port": publish_port,
                "master_port": ret_port,
            }
        },
    }
    finger = _master_finger(site)
    if finger:
        # Minions pin the master's key (minion_keys made it): a stranger cannot pose as it.
        pillar["salt"]["minion"]["master_finger"] = finger
    catalogue = role_catalogue()
    blocks = {}  # each block once, in the order the host's roles ask for them
    for role in spec.roles:
        for block in catalogue.roles[role].pillar if role in catalogue.roles else ():
            if block not in BLOCKS:
                raise RoleCatalogueError(
                    f"{catalogue.path}: roles.{role}.pillar: no pillar block {block!r}"
                    f" (infra_assets/configuration/pillar.py builds {', '.join(sorted(BLOCKS))})"
                )
            blocks[block] = BLOCKS[block]
    for build in [_firewall, *blocks.values()]:  # every host's firewall (common.firewall)
        build(Block(site, secrets, host, pillar))
    return pillar


@dataclass(frozen=True)
class Block:
    """What a pillar block is built from; `pillar` is the host's, which the block adds to."""

    site: Site
    secrets: Secrets | None
    host: str
    pillar: dict[str, Any]

    def role(self, prefix: str, choices: Iterable[str]) -> str | None:
        """The first of `choices` for which the host has the role `<prefix>-<choice>`."""
        roles = self.site.topo.hosts[self.host].roles
        return next((c for c in choices if f"{prefix}-{c}" in roles), None)


def _salt_master(b: Block) -> None:
    site = b.site
    publish_port, ret_port = site.salt_ports()
    b.pillar["salt"]["master"] = {
        "interface": site.listen(b.host, "salt-master"),
        "publish_port": publish_port,
        "ret_port": ret_port,
        "file_roots": site.file_roots(),
        "pillar_roots": [str(site.pillar_root())],
        "worker_threads": 5,
    }
    # salt-api (salt/salt/api.sls): how Dagster reaches the master from outside its host.
    b.pillar["salt"]["api"] = {
        "listen": site.listen(b.host, "salt-master"),
        "port": role_catalogue().port("salt-api"),
        "user": SALT_API_USER,
        "password": _secret(b.secrets, "salt", "api", "password"),
        "tls": {
            "cert": _secret(b.secrets, "salt", "api", "tls", "cert"),
            "key": _secret(b.secrets, "salt", "api", "tls", "key"),
        },
    }


def _dns(b: Block) -> None:
    b.pillar["dns"] = {
        **_service(b.site, b.host, "dns", "dns"),
        "domain": b.site.topo.domain,
        "hosts": b.site.plan.dnsmasq_hosts() + app_domain_hosts(b.site),
    }


def app_domain_hosts(site: Site) -> str:
    """The apps' domains as dnsmasq `addn-hosts` lines: each domain answers with the addresses
    its environment's web hosts serve it on (round robin for several). On a cloud the public DNS
    says the same with the floating addresses; the co-op's own DNS answers its hosts (and, in
    the lab, the ACME server that validates the domain) with the private ones."""
    lines = ["# the apps' domains -> their environment's web hosts"]
    for _, app in sorted(site.topo.apps.items()):
        for env, domain in sorted(app.domains.items()):
            for host in sorted(site.topo.hosts_with_role(f"web-{env}")):
                lines.append(f"{site.reach(host, f'web-{env}')}\t{domain}")
    return "\n".join(lines) + "\n"


def _registry_block(b: Block) -> None:
    b.pillar["registry"] = _registry(b.site, b.secrets, b.host)


def _cache(b: Block, role: str, service: str, path: str) -> dict[str, Any]:
    """A package cache's block: where it listens, the registry the catalogue lets it reach
    (its first `uplinks`) as an HTTPS URL ending in `path`, and on the lab the egress proxy it
    reaches it through (its only way out: resources/lab_egress.py)."""
    host, _, port = role_catalogue().roles[role].uplinks[0].rpartition(":")
    block = {
        **_service(b.site, b.host, role, service),
        "uplink": f"https://{host}{'' if port == '443' else ':' + port}{path}",
    }
    proxy = b.site.egress_proxy(b.host)
    if proxy:
        block["https_proxy"] = proxy
    return block


def _npm_cache(b: Block) -> None:
    b.pillar["npm_cache"] = _cache(b, "npm-cache", "npm", "/")  # verdaccio's uplink


def _pypi_cache(b: Block) -> None:
    b.pillar["pypi_cache"] = _cache(b, "pypi-cache", "pypi", "/simple/")  # proxpi's index


def _jenkins(b: Block) -> None:
    b.pillar["jenkins"] = {
        **_service(b.site, b.host, "jenkins-master", "jenkins"),
        "admin_password": _secret(b.secrets, "jenkins", "admin_password"),
    }


def _jenkins_agent(b: Block) -> None:
    b.pillar["jenkins_agent"] = {
        "master_url": _url(b.site, "jenkins-master", "jenkins", "http"),
        **build_caches(b.site),
    }


def build_caches(site: Site) -> dict[str, str | None]:
    """The standard build's package registries: the co-op's caches (the builds' only network),
    as the agents' pillar (the salt builder) and the Jenkins job's parameters give them."""
    return {"npm_registry": _url(site, "npm-cache", "npm", "http"), "pip_index": _pip_index(site)}


def _pip_index(site: Site) -> str | None:
    """The PyPI cache's simple index (proxpi serves it under /index/)."""
    url = _url(site, "pypi-cache", "pypi", "http")
    return f"{url}/index/" if url else None


def _registry_push(b: Block) -> None:
    """The registry's push account (`ci`) at its push door, for the hosts that build and push
    images."""
    client = _registry_client(b.site, b.secrets, b.host, user=PUSH_ACCOUNT)
    if client:  # over a pull account a web role may have put there first
        b.pillar["registry_client"] = client


def _registry_pull(b: Block) -> None:
    """The registry's pull account (`deploy`) at its read-only door, for the hosts that run the
    images (a host that also builds keeps the push account, which pulls too)."""
    client = _registry_client(b.site, b.secrets, b.host, user=PULL_ACCOUNTS[0])
    if client and "registry_client" not in b.pillar:
        b.pillar["registry_client"] = client


def _web(b: Block) -> None:
    site, host = b.site, b.host
    env = b.role("web", ENVIRONMENTS)
    if env is None:
        return
    b.pillar["web"] = {
        **_service(site, host, f"web-{env}", "http"),
        "environment": env,
        "url": f"http://{site.reach(host, f'web-{env}')}:{site.port(host, 'http')}",
        "https_port": site.port(host, "https"),
        # certbot (salt/web, salt/app): where the sites' certificates come from
        "acme": site.acme(host),
    }
    b.pillar["apps"] = {
        name: _app(site, b.secrets, host, name, env) for name in sorted(site.topo.apps)
    }


def _postgres(b: Block) -> None:
    topo = b.site.topo
    roles = topo.hosts[b.host].roles
    envs = [env for env in postgres_environments(topo) if f"postgres-{env}" in roles]
    if not envs:
        return
    own = [a.address for a in b.site.plan.for_host(b.host)]
    b.pillar["postgres"] = {
        **_service(b.site, b.host, f"postgres-{envs[0]}", "postgres"),
        "network": b.pillar["coop"]["network"],
        "databases": {
            _db_name(app, env): {
                "owner": _db_name(app, env),
                "password": _secret(b.secrets, "postgres", app, env),
                "environment": env,
                # pg_hba: the environment's web hosts alone (where its apps run), and this
                # host itself (its own tools, over its planned address)
                "clients": own
                + [a for a in guarded_sources(b.site, [f"web-{env}"]) if a not in own],
            }
            for env in envs
            for app in sorted(topo.apps)
            if topo.apps[app].database
        },
    }
    for dagster in dagster_hosts_using(b.site, b.host):
        # Dagster's instance (salt/dagster): from the Dagster host alone (its primary address,
        # where its connections come from, as the firewall's `only_from` has it).
        clients = [b.site.plan.primary(dagster).address]
        b.pillar["postgres"]["databases"][DAGSTER_DB] = {
            "owner": DAGSTER_DB,
            "password": _secret(b.secrets, "dagster", "postgres_password"),
            "environment": "production",
            "clients": own + [a for a in clients if a not in own],
        }


# Dagster's instance: a database of its own, on the production postgres host of the Dagster
# host's location (else the first anywhere). That host is the one the co-op keeps best (the
# nightly backups, restored and checked, cover every database on it), and no host is added for
# it; what it costs is that Dagster's writes share that host with the production apps.
DAGSTER_DB = "dagster"


def dagster_database_host(site: Site, host: str) -> str:
    """The postgres host of the Dagster on `host`; `SiteError` when the topology has none."""
    db = _first_with_role(site, "postgres-production", site.topo.hosts[host].location)
    if db is None:
        raise SiteError(
            f"{host} has the role dagster, whose instance is a database on a postgres-production"
            " host, and no host has that role: add one to the topology"
        )
    return db


def dagster_hosts_using(site: Site, db_host: str) -> list[str]:
    """The Dagster hosts whose instance's database is on `db_host`."""
    return [
        host
        for host in sorted(site.topo.hosts_with_role("dagster"))
        if dagster_database_host(site, host) == db_host
    ]


def _dagster(b: Block) -> None:
    """Dagster on this host (salt/dagster): the checkout it runs, its instance's database, the
    UI's address, certificate and accounts (bcrypt hashes), and the code location's settings:
    salt-api and the registry's push door, reached directly from this host."""
    site, host, secrets = b.site, b.host, b.secrets
    db_host = dagster_database_host(site, host)
    password = urllib.parse.quote(_secret(secrets, "dagster", "postgres_password"), safe="")
    address = f"{site.reach(db_host, 'postgres-production')}:{site.port(db_host, 'postgres')}"
    # psycopg2, the driver dagster-postgres brings (dagster.postgres.yaml)
    database_url = (
        f"postgresql+psycopg2://{DAGSTER_DB}:{password}@{address}/{DAGSTER_DB}?sslmode=require"
    )
    topology_path, topology_text = site.dagster_topology()
    env = {
        "DAGSTER_PG_URL": database_url,
        "INFRA_TOPOLOGY": topology_path,
        "INFRA_RUNS_ON": host,
        "INFRA_SALT_API_URL": site.salt_api_url(),
        "INFRA_SALT_API_USER": SALT_API_USER,
        "INFRA_SALT_API_PASSWORD": _secret(secrets, "salt", "api", "password"),
        "INFRA_SALT_API_CA_FILE": "/etc/dagster/salt-api-ca.pem",
        # The whole secrets file: this Dagster renders every host's pillar, as the operators'
        # does (salt/dagster writes it, 0600, for the dagster user alone).
        "INFRA_SECRETS_FILE": "/etc/dagster/secrets.yaml",
    }
    client = _registry_client(site, secrets, host, user=PUSH_ACCOUNT)
    if client:  # the push door: the builds' base images, the releases' digests
        env.update(
            INFRA_REGISTRY_URL=client["url"],
            INFRA_REGISTRY_USER=client["user"],
            INFRA_REGISTRY_PASSWORD=client["password"],
            INFRA_REGISTRY_CA_FILE="/etc/dagster/registry-ca.pem",
        )
    repo, rev = site.infra_repo(host)
    salt_key = _secret(secrets, "dagster", "postgres_password")  # a secret of the site's own
    b.pillar["dagster"] = {
        **_service(site, host, "dagster", "dagster"),
        "names": dagster_names(site.topo, [host]),
        "repo": repo,
        "rev": rev,
        "topology": topology_text,
        "env": env,
        "salt_api_ca": _secret(secrets, "salt", "api", "tls", "cert"),
        "registry_ca": client["ca_cert"] if client else "",
        "secrets": yaml.safe_dump(secrets.data, sort_keys=True) if secrets is not None else "",
        "htpasswd": "".join(
            bcrypt_htpasswd_line(user, password, purpose="dagster", key=salt_key) + "\n"
            for user, password in sorted(dagster_accounts(site, secrets).items())
        ),
        "tls": {
            "cert": _secret(secrets, "dagster", "tls", "cert"),
            "key": _secret(secrets, "dagster", "tls", "key"),
        },
    }


APP_ACCOUNT_PREFIX = "app-"  # the account of an app with `dagster: true`: app-<app>


def dagster_accounts(site: Site, secrets: Secrets | None) -> dict[str, str]:
    """Who may log in to the Dagster UI: the co-op's accounts, and each app with `dagster:
    true` under an account of its own (app-<app>; a person's account of that name is refused
    by the secrets' check)."""
    if secrets is None:
        return {}
    accounts = dict(secrets.get("dagster", "accounts"))
    for name, app in sorted(site.topo.apps.items()):
        if app.dagster:
            accounts[APP_ACCOUNT_PREFIX + name] = secrets.get("dagster", "app_accounts", name)
    return accounts


def dagster_api(site: Site, secrets: Secrets | None, app: str) -> dict[str, str]:
    """What an app with `dagster: true` is given (as secrets): Dagster's URL, its account and
    the UI's certificate to check it against."""
    hosts = sorted(site.topo.hosts_with_role("dagster"))
    if not hosts:
        raise SiteError(
            f"app {app!r} has `dagster: true`, and no host has the role dagster: add the role"
            " to a support server, or remove the setting"
        )
    return {
        "DAGSTER_URL": f"https://{site.reach(hosts[0], 'dagster')}",
        "DAGSTER_ACCOUNT": APP_ACCOUNT_PREFIX + app,
        "DAGSTER_PASSWORD": _secret(secrets, "dagster", "app_accounts", app),
        "DAGSTER_CA": _secret(secrets, "dagster", "tls", "cert"),
    }


def _firewall(b: Block) -> None:
    b.pillar["firewall"] = firewall_rules(b.site, b.host)


def firewall_rules(site: Site, host: str) -> dict[str, Any]:
    """`host`'s guarded ports (the catalogue's `only_from`), each once: its port, and the
    addresses alone allowed to connect to it (the union over the host's roles that guard it:
    the primary addresses of the hosts with the listed roles, every host's for `hosts`, where
    Dagster runs for `dagster`); salt/common/firewall.sls refuses every other new connection.
    And the location's private network, which the host's containers may not connect into."""
    catalogue = role_catalogue()
    by_port: dict[int, dict[str, Any]] = {}
    for role in site.topo.hosts[host].roles:
        spec = catalogue.roles.get(role)
        for name, sources in (spec.only_from if spec else {}).items():
            port = site.port(host, name)
            rule = by_port.setdefault(
                port, {"name": name, "port": port, "from": set(), "sources": []}
            )
            rule["from"] |= set(guarded_sources(site, sources))
            rule["sources"] += [s for s in sources if s not in rule["sources"]]
    location = site.topo.locations[site.topo.hosts[host].location]
    return {
        "rules": [
            {**rule, "from": sorted(rule["from"], key=_address_key)}
            for _port, rule in sorted(by_port.items())
        ],
        # What the host's containers may not open TCP connections into (forwarded traffic).
        "private_network": f"10.{location.number}.0.0/16",
        # ... but for these services (`containers_reach`).
        "containers_reach": containers_reach(site, host),
        # Whether they may open connections beyond it (false: nothing but the above and DNS).
        "containers_internet": all(
            spec.containers_internet
            for role in site.topo.hosts[host].roles
            if (spec := catalogue.roles.get(role)) is not None
        ),
    }


def containers_reach(site: Site, host: str) -> list[dict[str, Any]]:
    """The services `host`'s containers alone may connect to (its roles' `containers_reach`,
    and on a web host Dagster's UI when an app has `dagster: true`): [{role, address, port}],
    each service of each host with a listed role."""
    catalogue = role_catalogue()
    reach: dict[tuple[str, int], dict[str, Any]] = {}
    roles = site.topo.hosts[host].roles
    targets = [t for r in roles if (spec := catalogue.roles.get(r)) for t in spec.containers_reach]
    if any(app.dagster for app in site.topo.apps.values()) and any(
        r.startswith("web-") for r in roles
    ):  # an app asks for Dagster's API (a chat-ops bot): the UI's port, behind its login
        targets.append("dagster")
    for target in targets:
        service = catalogue.roles[target].service
        for other in sorted(site.topo.hosts_with_role(target)):
            address, port = site.reach(other, target), site.port(other, service)
            reach[(address, port)] = {"role": target, "address": address, "port": port}
    return [reach[k] for k in sorted(reach, key=lambda k: (_address_key(k[0]), k[1]))]


def guarded_sources(site: Site, sources: Iterable[str]) -> list[str]:
    """The addresses `only_from`'s sources stand for on `site`."""
    addresses: list[str] = []
    for source in sources:
        if source == DAGSTER_SOURCE:
            addresses += site.dagster_sources()
        elif source == DAGSTER_HOSTS_SOURCE:
            addresses += [
                site.plan.primary(h).address for h in site.topo.hosts_with_role("dagster")
            ]
        elif source == HOSTS_SOURCE:
            addresses += [site.plan.primary(h).address for h in site.topo.hosts]
        else:
            addresses += [site.plan.primary(h).address for h in site.topo.hosts_with_role(source)]
    return sorted(set(addresses), key=_address_key)


def _address_key(address: str) -> tuple[int, ...]:
    return tuple(int(part) for part in address.split("."))


# The pillar blocks a role may ask for in the catalogue (salt/roles.yaml `pillar`), by name.
BLOCKS: dict[str, Callable[[Block], None]] = {
    "salt_master": _salt_master,
    "dns": _dns,
    "registry": _registry_block,
    "npm_cache": _npm_cache,
    "pypi_cache": _pypi_cache,
    "jenkins": _jenkins,
    "jenkins_agent": _jenkins_agent,
    "registry_push": _registry_push,
    "registry_pull": _registry_pull,
    "web": _web,
    "postgres": _postgres,
    "dagster": _dagster,
}


def secret_paths(pillar: Any, secrets: Secrets, prefix: str = "") -> list[str]:
    """The dotted paths in `pillar` whose value is (or holds) a secret: names, never values."""
    values = secrets.values()
    found: list[str] = []
    if isinstance(pillar, dict):
        for key, value in pillar.items():
            found += secret_paths(value, secrets, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(pillar, str) and any(v in pillar for v in values):
        found.append(prefix)
    return found


def bcrypt_htpasswd_line(
    user: str, password: str, *, purpose: str = "registry", key: str | None = None
) -> str:
    """`user:$2b$...` for Docker Distribution's htpasswd auth (bcrypt only), or nginx's.

    The salt is derived from the user and password, so the line is the same on every run (the
    state changes nothing until a password does) and the pillar never holds the password itself.
    With `key` (a secret), the salt is an HMAC with it: a salt derived from the password alone
    would let a guess be tested at HMAC's speed, not bcrypt's (the registry's passwords are
    random tokens; people choose the UI's).
    """
    if key:
        message = f"coop-infra {purpose} {user} {password}"
        raw = hmac.new(key.encode(), message.encode(), hashlib.sha256)
    else:
        raw = hmac.new(password.encode(), f"coop-infra {purpose} {user}".encode(), hashlib.sha256)
    salt = _bcrypt_b64(raw.digest()[:16])
    hashed = bcrypt.hashpw(password.encode(), b"$2b$10$" + salt)
    return f"{user}:{hashed.decode()}"


# --- helpers -------------------------------------------------------------------------------------


def _master_finger(site: Site) -> str | None:
    """The master key's fingerprint where `minion_keys` made the master's pair (lab, cloud)."""
    try:
        pair = KeyStore(site.keys_dir()).get(MASTER)
    except SiteError:
        return None
    return pair.finger if pair else None


def _service(site: Site, host: str, role: str, service: str) -> dict[str, Any]:
    return {"listen": site.listen(host, role), "port": site.port(host, service)}


def _secret(secrets: Secrets | None, *path: str) -> str:
    if secrets is None:
        return ""
    return secrets.get(*path)


def _first_with_role(site: Site, role: str, location: str | None = None) -> str | None:
    hosts = site.topo.hosts_with_role(role)
    same = [h for h, spec in hosts.items() if spec.location == location]
    return (same or list(hosts) or [None])[0]


def _url(site: Site, role: str, service: str, scheme: str) -> str | None:
    host = _first_with_role(site, role)
    if host is None:
        return None
    return f"{scheme}://{site.reach(host, role)}:{site.port(host, service)}"


def _registry(site: Site, secrets: Secrets | None, host: str) -> dict[str, Any]:
    """The registry's two doors on one storage: `port` read-only, whose htpasswd holds the pull
    accounts only; `push_port` read-write, whose htpasswd holds the push account only."""
    block = _service(site, host, "docker-registry", "registry")
    block["push_port"] = site.port(host, "registry-push")
    reach = site.reach(host, "docker-registry")
    block["address"] = f"{reach}:{block['port']}"
    block["url"] = f"https://{block['address']}"
    block["http_secret"] = _secret(secrets, "registry", "http_secret")
    block["htpasswd"] = _htpasswd(secrets, PULL_ACCOUNTS)
    block["htpasswd_push"] = _htpasswd(secrets, [PUSH_ACCOUNT])
    block["tls"] = {
        "cert": _secret(secrets, "registry", "tls", "cert"),
        "key": _secret(secrets, "registry", "tls", "key"),
    }
    # Its pushes wake registry_image_sensor through the webhook endpoint (webhooks/server.py).
    url = site.webhooks_url(host)
    key = secrets.webhook_key() if secrets is not None else None
    if url and key:
        block["notify"] = {"url": f"{url}/registry", "token": registry_notify_token(key)}
    return block


def _htpasswd(secrets: Secrets | None, users: Iterable[str]) -> str:
    if secrets is None:
        return ""
    return "".join(
        bcrypt_htpasswd_line(user, secrets.get("registry", "users", user)) + "\n" for user in users
    )


def registry_tls_names(site: Site) -> list[str]:
    """The names and addresses the registry's certificate must cover."""
    names: list[str] = []
    for host in site.topo.hosts_with_role("docker-registry"):
        names += _registry_names(site, host)
    return list(dict.fromkeys(names))


def _registry_names(site: Site, host: str) -> list[str]:
    """Every name and address the registry on `host` is reached by: its DNS names, its
    service address, and how this site reaches it."""
    names: list[str] = []
    for address in site.plan.for_host(host):
        if address.role == "docker-registry":
            names += [*address.names, address.address]
    names.append(site.reach(host, "docker-registry"))
    return list(dict.fromkeys(names))


def _registry_client(
    site: Site, secrets: Secrets | None, host: str, *, user: str
) -> dict[str, Any] | None:
    registry = _first_with_role(site, "docker-registry", site.topo.hosts[host].location)
    if registry is None:
        return None
    port = site.port(registry, "registry-push" if user == PUSH_ACCOUNT else "registry")
    address = f"{site.reach(registry, 'docker-registry')}:{port}"
    return {
        "address": address,
        # podman looks up the CA by the name an image is pushed or pulled by: trust it under
        # every name the certificate covers (a build may push by DNS name, a host pull by address).
        "trusted_as": [f"{name}:{port}" for name in _registry_names(site, registry)],
        "url": f"https://{address}",
        "user": user,
        "password": _secret(secrets, "registry", "users", user),
        "ca_cert": _secret(secrets, "registry", "tls", "cert"),
    }


def _app(site: Site, secrets: Secrets | None, host: str, name: str, env: str) -> dict[str, Any]:
    app = site.topo.apps[name]
    block: dict[str, Any] = {
        "kind": app.kind,
        # The app's environment: plain settings, and the secret ones (the release hands these
        # to the container as files it reads into its environment, never on a command line).
        "env": app.env_for(env),
        "secrets": {key: _secret(secrets, "apps", name, env, key) for key in app.secrets},
    }
    if app.kind == "worker":
        block["up_s"] = app.up_s  # a worker: no port, no site; it must stay up this long
    else:
        block.update(
            {
                "port": app.port,
                "health": app.health,
                "domain": app.domains.get(env, ""),
                # Releases (the `app` state): the two ports a release's container can listen on
                # (blue/green), and where a person opens it.
                "slots": site.app_slots(host, name),
                "url": site.app_url(host, name, env),
            }
        )
    db_host = _first_with_role(site, f"postgres-{env}", site.topo.hosts[host].location)
    if app.database and db_host is not None:
        database = {
            "host": site.reach(db_host, f"postgres-{env}"),
            "port": site.port(db_host, "postgres"),
            "name": _db_name(name, env),
            "user": _db_name(name, env),
            "password": _secret(secrets, "postgres", name, env),
        }
        block["database"] = database
        block["secrets"]["DATABASE_URL"] = database_url(database)
    if app.dagster and env == "production":
        # production's alone: the account can start any job, and staging runs what is not
        # yet trusted
        block["secrets"].update(dagster_api(site, secrets, name))
        proxy = site.chat_proxy(host)
        if proxy:  # the lab's way out to the chat, for the bot's later answers
            block["env"] = {**block["env"], "HTTPS_PROXY": proxy}
    return block


def database_url(db: dict[str, Any]) -> str:
    """The app's DATABASE_URL: its role, password and database on the environment's postgres
    host, TLS required (the server's own certificate: salt/postgres)."""
    password = urllib.parse.quote(db["password"], safe="")
    return (
        f"postgresql://{db['user']}:{password}@{db['host']}:{db['port']}/{db['name']}"
        "?sslmode=require"
    )


def _db_name(app: str, env: str) -> str:
    """A PostgreSQL identifier that needs no quoting: `hello_staging`."""
    return f"{app}_{env}".replace("-", "_")


def _bcrypt_b64(raw: bytes) -> bytes:
    std = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    alphabet = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return base64.b64encode(raw).rstrip(b"=").translate(bytes.maketrans(std, alphabet))
