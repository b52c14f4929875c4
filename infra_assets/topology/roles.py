"""The role catalogue (`salt/roles.yaml`): every role's states, image group, service and port,
other ports, whether its hosts run containers, the registries a cache role fetches from, and the
pillar blocks its hosts get. The one place these facts live; salt/top.sls reads the same file.

    catalogue = role_catalogue()
    catalogue.roles["web-staging"].states      # ("web",)
    catalogue.group_roles("support")           # ("salt-master", "jenkins-master", ...)
    catalogue.port("registry")                 # 5000
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from resources.paths import REPO_ROOT

CATALOGUE_FILE = REPO_ROOT / "salt" / "roles.yaml"
ROLE_KEYS = frozenset(
    {
        "states", "image", "service", "ports", "only_from", "privileged", "uplinks",
        "containers_reach", "containers_internet", "pillar", "health", "after",
    }
)  # fmt: skip
# How a health check asks a service (salt/_modules/coop_health.py runs them on the host).
PROBES = frozenset({"http", "https", "tcp", "dns", "postgres"})
CHECK_NAME = re.compile(r"\A[a-z][a-z0-9_]{0,40}\Z")
# Who may reach a port that `only_from` guards, besides hosts of the listed roles: where Dagster
# runs (the site says where that is: infra_assets/topology/sites.py).
DAGSTER_SOURCE = "dagster"
# ... and every host of the topology (the salt master's ports: every minion).
HOSTS_SOURCE = "hosts"
# ... and the hosts with the role dagster alone (its instance's database): not this machine's
# Dagster in a lab, nor the master's host where no host has the role.
DAGSTER_HOSTS_SOURCE = "dagster-hosts"


class RoleCatalogueError(ValueError):
    """salt/roles.yaml is missing or wrong: the message names the file, the key and what to do."""


@dataclass(frozen=True)
class HealthCheck:
    """One check of a role's hosts (`health/<host>`): its unit active, then its answer."""

    name: str
    unit: str | None = None
    probe: str | None = None  # PROBES
    port: str | None = None  # the role's service or one of its ports
    path: str = "/"
    expect: tuple[int, ...] = ()  # the HTTP statuses that pass (empty: any)


@dataclass(frozen=True)
class Role:
    name: str
    states: tuple[str, ...]
    image: str
    service: str | None = None  # the service's name (the pillar's, the lab status')
    port: int | None = None  # the service's standard port
    ports: dict[str, int] = field(default_factory=dict)
    # port name -> the roles whose hosts (and `dagster`) alone may connect to it
    only_from: dict[str, tuple[str, ...]] = field(default_factory=dict)
    privileged: bool = False
    uplinks: tuple[str, ...] = ()
    # the roles whose service its hosts' containers may connect to in the private network, where
    # they start nothing else but DNS
    containers_reach: tuple[str, ...] = ()
    # whether its hosts' containers may open connections beyond the private network (false:
    # nothing but `containers_reach` and DNS at all: the build agents)
    containers_internet: bool = True
    pillar: tuple[str, ...] = ()
    health: tuple[HealthCheck, ...] = ()
    # the roles whose highstate comes first where the topology has them (what its services need
    # running: the dagster role's database)
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageGroup:
    name: str
    roles: tuple[str, ...]  # in catalogue order
    description: str = ""


@dataclass(frozen=True)
class RoleCatalogue:
    path: Path
    roles: dict[str, Role]
    images: dict[str, ImageGroup]

    def states(self) -> dict[str, list[str]]:
        """role -> the states it applies (what top.sls matches on)."""
        return {name: list(role.states) for name, role in self.roles.items()}

    def group_roles(self, group: str) -> tuple[str, ...]:
        return self.images[group].roles

    def group_of_role(self, role: str) -> str | None:
        spec = self.roles.get(role)
        return spec.image if spec else None

    def services(self) -> dict[str, str]:
        """role -> the service it runs (roles that run none are left out)."""
        return {name: role.service for name, role in self.roles.items() if role.service}

    def port(self, name: str) -> int:
        """A service's or another named port's standard port (KeyError when none has it)."""
        for role in self.roles.values():
            if role.service == name and role.port is not None:
                return role.port
            if name in role.ports:
                return role.ports[name]
        raise KeyError(f"no role of {self.path} has a service or port named {name!r}")


def role_catalogue(path: Path = CATALOGUE_FILE) -> RoleCatalogue:
    """The catalogue at `path` (read again when the file changes)."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        raise RoleCatalogueError(
            f"{path}: missing: it is the role catalogue (each role's states, image, service)"
        ) from None
    return _load(path, mtime)


@cache
def _load(path: Path, _mtime: float) -> RoleCatalogue:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RoleCatalogueError(f"{path}: cannot read the role catalogue: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("roles"), dict):
        raise RoleCatalogueError(f"{path}: must have `images:` and `roles:` mappings")
    images_data = data.get("images")
    if not isinstance(images_data, dict) or not images_data:
        raise RoleCatalogueError(f"{path}: `images` must map each image group to {{description}}")
    problems: list[str] = []
    roles = {}
    for name, spec in data["roles"].items():
        role = _role(str(name), spec, set(images_data), problems)
        if role is not None:
            roles[role.name] = role
    _check_sources(roles, problems)
    if problems:
        raise RoleCatalogueError(f"{path}: " + "; ".join(problems))
    images = {}
    for group, spec in images_data.items():
        members = tuple(r.name for r in roles.values() if r.image == group)
        if not members:
            problems.append(f"images.{group}: no role has `image: {group}`")
        description = spec.get("description", "") if isinstance(spec, dict) else ""
        images[str(group)] = ImageGroup(str(group), members, str(description))
    if problems:
        raise RoleCatalogueError(f"{path}: " + "; ".join(problems))
    return RoleCatalogue(path, roles, images)


def _role(name: str, spec: Any, groups: set[str], problems: list[str]) -> Role | None:
    where = f"roles.{name}"
    if not isinstance(spec, dict):
        problems.append(f"{where}: must be a mapping with at least `states` and `image`")
        return None
    unknown = sorted(set(spec) - ROLE_KEYS)
    if unknown:
        problems.append(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {sorted(ROLE_KEYS)})"
        )
    states = spec.get("states")
    if not isinstance(states, list) or not states or not all(isinstance(s, str) for s in states):
        problems.append(f"{where}.states: must be a non-empty list of state names")
        states = []
    image = spec.get("image")
    if image not in groups:
        problems.append(
            f"{where}.image: {image!r} is not an image group ({', '.join(sorted(groups))})"
        )
    service_name, port = _role_service(where, spec.get("service"), problems)
    ports = _role_ports(where, spec, problems)
    pillar = _role_names(where, spec, "pillar", "pillar block names", problems)
    uplinks = _role_uplinks(where, spec, problems)
    after = _role_names(where, spec, "after", "roles", problems)
    reach = _role_names(where, spec, "containers_reach", "roles", problems)
    privileged = _role_flag(where, spec, "privileged", False, problems)
    internet = _role_flag(where, spec, "containers_internet", True, problems)
    only_from = _only_from(where, spec.get("only_from") or {}, service_name, ports, problems)
    health = _health(where, spec.get("health") or {}, service_name, ports, problems)
    return Role(
        name=name,
        states=tuple(states),
        image=str(image),
        service=service_name,
        port=port,
        ports={str(k): v for k, v in ports.items()},
        only_from=only_from,
        privileged=privileged is True,
        uplinks=tuple(uplinks),
        containers_reach=tuple(reach),
        containers_internet=internet is not False,
        pillar=tuple(pillar),
        health=health,
        after=tuple(after),
    )


def _role_service(where: str, service: Any, problems: list[str]) -> tuple[str | None, Any]:
    """`service`: {name, port}; (None, None) when the role runs none."""
    service_name, port = None, None
    if service is not None:
        if not isinstance(service, dict) or not isinstance(service.get("name"), str):
            problems.append(f"{where}.service: must be {{name: ..., port: ...}}")
        else:
            service_name, port = service["name"], service.get("port")
            if not isinstance(port, int) or not 0 < port < 65536:
                problems.append(f"{where}.service.port: must be a port number (1-65535)")
    return service_name, port


def _role_ports(where: str, spec: dict, problems: list[str]) -> dict:
    """`ports`: name -> port number ({} when wrong)."""
    ports = spec.get("ports") or {}
    if not isinstance(ports, dict) or not all(
        isinstance(p, int) and 0 < p < 65536 for p in ports.values()
    ):
        problems.append(f"{where}.ports: must map names to port numbers (1-65535)")
        ports = {}
    return ports


def _role_names(where: str, spec: dict, key: str, what: str, problems: list[str]) -> list:
    """A list of names under `key` ([] when missing or wrong)."""
    names = spec.get(key) or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append(f"{where}.{key}: must be a list of {what}")
        names = []
    return names


def _role_uplinks(where: str, spec: dict, problems: list[str]) -> list:
    """`uplinks`: a list of host:port ([] when wrong)."""
    uplinks = spec.get("uplinks") or []
    if not isinstance(uplinks, list) or not all(
        isinstance(u, str) and u.rpartition(":")[2].isdigit() for u in uplinks
    ):
        problems.append(f"{where}.uplinks: must be a list of host:port")
        uplinks = []
    return uplinks


def _role_flag(where: str, spec: dict, key: str, default: bool, problems: list[str]) -> Any:
    """A true-or-false key, as given (a problem when it is not a boolean)."""
    value = spec.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"{where}.{key}: must be true or false")
    return value


HEALTH_KEYS = frozenset({"unit", "probe", "port", "path", "expect"})


def _health(
    where: str, spec: Any, service: str | None, ports: dict, problems: list[str]
) -> tuple[HealthCheck, ...]:
    """`health`: {check name: {unit, probe, port, path, expect}}."""
    if not isinstance(spec, dict):
        problems.append(f"{where}.health: must map a check name to {{unit, probe, port, ...}}")
        return ()
    named = {*ports, *([service] if service else [])}
    checks = []
    for name, check in spec.items():
        at = f"{where}.health.{name}"
        if not isinstance(name, str) or not CHECK_NAME.match(name):
            problems.append(f"{at}: a check's name is lowercase letters, digits and _")
            continue
        if (
            not isinstance(check, dict)
            or not set(check) <= HEALTH_KEYS
            or not (check.get("unit") or check.get("probe"))
        ):
            problems.append(f"{at}: must be {{unit: <systemd unit>, probe: ..., port: ...}}"
                            f" with `unit` or `probe` (keys: {sorted(HEALTH_KEYS)})")  # fmt: skip
            continue
        probe, port = check.get("probe"), check.get("port")
        if probe is not None and probe not in PROBES:
            problems.append(f"{at}.probe: {probe!r} is not one of {sorted(PROBES)}")
        if probe is not None and port not in named:
            problems.append(f"{at}.port: {port!r} is not this role's service or one of its"
                            f" ports ({', '.join(sorted(named)) or 'none'})")  # fmt: skip
        expect = check.get("expect") or []
        path = check.get("path", "/")
        if not isinstance(expect, list) or not all(isinstance(e, int) for e in expect):
            problems.append(f"{at}.expect: must be a list of HTTP statuses")
            expect = []
        if not isinstance(path, str) or not path.startswith("/"):
            problems.append(f"{at}.path: must start with /")
            path = "/"
        checks.append(HealthCheck(name, check.get("unit"), probe, port, path, tuple(expect)))
    return tuple(checks)


def _only_from(
    where: str, spec: Any, service: str | None, ports: dict, problems: list[str]
) -> dict[str, tuple[str, ...]]:
    """`only_from`: {port name: [role, ...]}, each name the role's service or one of its ports.
    The roles are checked against the whole catalogue by `_check_sources`."""
    named = {*ports, *([service] if service else [])}
    if not isinstance(spec, dict) or not all(
        isinstance(v, list) and v and all(isinstance(r, str) for r in v) for v in spec.values()
    ):
        problems.append(f"{where}.only_from: must map a port name to a list of roles")
        return {}
    for name in spec:
        if name not in named:
            problems.append(
                f"{where}.only_from.{name}: not this role's service or one of its ports"
                f" ({', '.join(sorted(named)) or 'none'})"
            )
    return {str(k): tuple(v) for k, v in spec.items()}


def _check_sources(roles: dict[str, Role], problems: list[str]) -> None:
    for role in roles.values():
        for target in role.containers_reach:
            if target not in roles or roles[target].service is None:
                problems.append(
                    f"roles.{role.name}.containers_reach: {target!r} is no role of the catalogue"
                    " with a service (its containers reach a role's service port)"
                )
        for target in role.after:
            if target not in roles:
                problems.append(f"roles.{role.name}.after: {target!r} is no role of the catalogue")
        for port, sources in role.only_from.items():
            for source in sources:
                pseudo = (DAGSTER_SOURCE, HOSTS_SOURCE, DAGSTER_HOSTS_SOURCE)
                if source not in pseudo and source not in roles:
                    problems.append(
                        f"roles.{role.name}.only_from.{port}: {source!r} is no role of the"
                        f" catalogue (nor {DAGSTER_SOURCE!r}, where Dagster runs, nor"
                        f" {DAGSTER_HOSTS_SOURCE!r}, the dagster role's hosts, nor"
                        f" {HOSTS_SOURCE!r}, every host)"
                    )
