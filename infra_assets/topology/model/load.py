"""Read `topology.yaml` into a `Topology`, reporting every problem in the file at once.

Each problem carries the file, its line and its key path (`hosts.web-staging-1.instance`).
Entries are validated one at a time so that a broken host does not hide a broken app; what ties
entries together (references, unique numbers, unique addresses) is checked on the entries that
are themselves valid.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ValidationError

from infra_assets.topology.model.addresses import address_plan
from infra_assets.topology.model.errors import Problem, TopologyError
from infra_assets.topology.model.topology import (
    DOMAIN_RE,
    NAME_RE,
    UNTYPED_ROLES,
    Acme,
    App,
    Host,
    Location,
    Topology,
)
from resources.git_url import redact_repo, repo_password

try:  # libyaml: about ten times faster on a large topology
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

Path_ = tuple[str | int, ...]
SECTIONS: dict[str, type[BaseModel] | None] = {
    "locations": Location,
    "types": None,  # name -> number, checked below
    "hosts": Host,
    "apps": App,
}
REQUIRED_SECTIONS = ("locations", "types", "hosts")
TOP_LEVEL = ("domain", *SECTIONS, "acme", "infra_repo")


class TopologyFile(Protocol):
    """Where a run reads its topology (resources/topology.py's `topology_file`: once per run)."""

    def file(self) -> Path: ...

    def text(self) -> str: ...


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file. Raises `TopologyError` listing every problem."""
    path = Path(path)
    return _checked(path, lambda: path.read_text(encoding="utf-8"))


def read_topology(topology_file: TopologyFile) -> Topology:
    """The topology a run works on, as its `topology_file` resource read it. Raises
    `TopologyError` listing every problem."""
    return _checked(topology_file.file(), topology_file.text)


def _checked(path: Path, read: Callable[[], str]) -> Topology:
    try:
        text = read()
    except FileNotFoundError:
        raise TopologyError(
            str(path), [Problem(None, "", "no such file: pass the topology file's path")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        problem = Problem(None, "", f"cannot read the file: {exc}")
        raise TopologyError(str(path), [problem]) from None
    topology = parse_topology(text, file=str(path))
    topology._source_file, topology._source_text = path.absolute(), text
    return topology


def parse_topology(text: str, *, file: str = "topology.yaml") -> Topology:
    """Validate a topology given as YAML text. Raises `TopologyError` listing every problem."""
    data, lines, problems = _read_yaml(text)
    if data is None:  # a syntax error or an empty file: nothing more to check
        raise TopologyError(file, problems)
    topology, more = _validate(data, _Lines(lines))
    problems += more  # duplicate keys, beside everything else
    if problems or topology is None:
        raise TopologyError(file, problems)
    return topology


# --- YAML, with the line of every key ----------------------------------------------------------


def _read_yaml(text: str) -> tuple[Any, dict[Path_, int], list[Problem]]:
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        return None, {}, [Problem(None, "", "the file is empty: it needs " + _sections_hint())]
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, [Problem(None, "", "the file is empty: it needs " + _sections_hint())]
        lines: dict[Path_, int] = {}
        problems: list[Problem] = []
        _index(node, (), lines, problems)
        data = loader.construct_document(node)
        if data is None:  # `~` or `null` alone
            return None, {}, [Problem(None, "", "the file is empty: it needs " + _sections_hint())]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = f", column {mark.column + 1}" if mark else ""
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        return None, {}, [Problem(line, "", f"YAML syntax error{column}: {what}")]
    except yaml.YAMLError as exc:
        return None, {}, [Problem(None, "", f"YAML syntax error: {exc}")]
    except RecursionError:
        why = "an alias refers to the node that holds it (`a: &x [*x]`): write the value out"
        return None, {}, [Problem(None, "", why)]
    except (ValueError, TypeError) as exc:  # a scalar YAML cannot convert (`2024-02-30`)
        line = _unreadable_scalar_line(node)
        why = f"a value YAML takes for a date or a number cannot be read ({exc}): quote it"
        return None, {}, [Problem(line, "", why)]
    finally:
        loader.dispose()
    return data, lines, problems


def _unreadable_scalar_line(root: yaml.Node) -> int | None:
    """The line of the first scalar under `root` that YAML cannot convert (each tried with a
    loader of its own: the failed one keeps the half-built document)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            probe = _Loader("")
            try:
                probe.construct_object(node, deep=True)
            except (ValueError, TypeError):
                return node.start_mark.line + 1
            finally:
                probe.dispose()
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
    return None


def _index(node: yaml.Node, path: Path_, lines: dict[Path_, int], problems: list[Problem]) -> None:
    """Record the line of every key and item; report duplicate keys, which YAML would drop."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(
                    Problem(
                        line,
                        _dotted((*path, key)),
                        f"duplicate key: already given on line {seen[key]}; "
                        "YAML would keep only the last one",
                    )
                )
            seen[key] = line
            lines[(*path, key)] = line
            _index(value_node, (*path, key), lines, problems)
            lines[(*path, key)] = line  # the key's line, not its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines, problems)


class _Lines:
    def __init__(self, lines: dict[Path_, int]):
        self._lines = lines

    def has(self, path: Path_) -> bool:
        return path in self._lines

    def of(self, path: Path_) -> int | None:
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, str) and not part.isprintable():
            part = repr(part)  # a key with a newline in it: shown as `hosts.'web-1\n'`, on one line
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _sections_hint() -> str:
    return "the keys " + ", ".join(REQUIRED_SECTIONS) + " (and apps); see docs/DESIGN.md"


# --- validation ------------------------------------------------------------------------------


class _Report:
    def __init__(self, lines: _Lines):
        self.lines = lines
        self.problems: list[Problem] = []

    def add(self, path: Path_, message: str) -> None:
        self.problems.append(Problem(self.lines.of(path), _dotted(path), message))


def _validate(data: Any, lines: _Lines) -> tuple[Topology | None, list[Problem]]:
    report = _Report(lines)
    if not isinstance(data, dict):
        report.add((), f"the file must be a mapping with {_sections_hint()}, not {_kind(data)}")
        return None, report.problems

    for key in data:
        if key not in TOP_LEVEL:
            report.add((key,), _unknown_key(key, TOP_LEVEL))
    for section in REQUIRED_SECTIONS:
        if section not in data:
            report.add((section,), f"missing required key {section!r}")

    domain = data.get("domain", "coop.internal")
    entries: dict[str, dict[str, Any]] = {}
    for section, model in SECTIONS.items():
        entries[section] = _validate_section(report, section, data.get(section), model)
    if not isinstance(domain, str) or not DOMAIN_RE.match(domain):
        report.add(("domain",), f"{domain!r} is not a domain name (like coop.internal)")

    acme = _validate_acme(report, data.get("acme"))
    infra_repo = _validate_infra_repo(report, data.get("infra_repo"))
    _cross_check(report, data, entries)
    # Addresses are planned for the hosts that are valid and whose references resolve, so that
    # a collision is reported beside the other problems rather than after they are fixed.
    plannable = {
        name: host
        for name, host in entries["hosts"].items()
        if host.location in entries["locations"]
        and all(r in entries["types"] or r in UNTYPED_ROLES for r in host.roles)
    }
    topology = Topology.model_construct(
        domain=domain,
        locations=entries["locations"],
        types=entries["types"],
        hosts=plannable,
        apps=entries["apps"],
        acme=acme,
        infra_repo=infra_repo,
    )
    _check_addresses(report, topology)
    return (None if report.problems else topology), report.problems


def _validate_infra_repo(report: _Report, value: Any) -> str | None:
    """`infra_repo`: where the dagster role checks this repository out from (a git URL)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        report.add(("infra_repo",), f"must be a git URL (this repository's), not {_kind(value)}")
        return None
    if repo_password(value):
        report.add(
            ("infra_repo",),
            f"{redact_repo(value, mask='***')!r} holds a password or token: credentials never"
            " belong in the topology, which is kept in git (an SSH URL with a deploy key on the"
            " dagster host, or https with git's credential helper there)",
        )
        return None
    return value.strip()


def _validate_acme(report: _Report, value: Any) -> Acme:
    """The `acme` block (where web hosts get certificates); its defaults when absent."""
    if value is None:
        return Acme()
    if not isinstance(value, dict):
        report.add(("acme",), f"must be a mapping (directory, email), not {_kind(value)}")
        return Acme()
    try:
        return Acme.model_validate(value)
    except ValidationError as exc:
        _translate(report, ("acme",), exc, Acme)
        return Acme()


def _validate_section(
    report: _Report, section: str, value: Any, model: type[BaseModel] | None
) -> dict[str, Any]:
    """The section's valid entries, by name; a problem for each invalid one."""
    if value is None:  # absent (reported above) or given with nothing after the colon
        if section in REQUIRED_SECTIONS and report.lines.has((section,)):
            report.add((section,), "is empty: at least one entry is needed")
        return {}
    if not isinstance(value, dict):
        report.add((section,), f"must be a mapping of name -> entry, not {_kind(value)}")
        return {}
    if not value and section in REQUIRED_SECTIONS:
        report.add((section,), "is empty: at least one entry is needed")
    valid: dict[str, Any] = {}
    for name, entry in value.items():
        path: Path_ = (section, name)
        if not isinstance(name, str) or not NAME_RE.match(name):
            report.add(
                path,
                f"{name!r} is not a valid name: lowercase letters, digits and '-', "
                "1-63 characters, not starting or ending with '-' (it is used in DNS names)",
            )
            continue
        if model is None:  # types: name -> number
            if isinstance(entry, bool) or not isinstance(entry, int):
                report.add(path, f"must be a whole number 1..254, not {_kind(entry)}")
            elif not 1 <= entry <= 254:
                report.add(path, f"{entry} is out of range: a type number is 1..254")
            else:
                valid[name] = entry
            continue
        if not isinstance(entry, dict):
            report.add(path, f"must be a mapping of its fields, not {_kind(entry)}")
            continue
        try:
            valid[name] = model.model_validate(entry)
        except ValidationError as exc:
            _translate(report, path, exc, model)
    return valid


def _translate(report: _Report, base: Path_, exc: ValidationError, model: type[BaseModel]) -> None:
    """Pydantic's errors, said as a person would say them."""
    for err in exc.errors():
        loc: Path_ = tuple(err["loc"])
        if loc and loc[-1] == "[key]":  # a mapping's key: its path is the entry's
            loc = loc[:-1]
        path = (*base, *loc)
        kind = err["type"]
        value = err.get("input")
        ctx = err.get("ctx") or {}
        if kind == "missing":
            message = f"missing required key {str(loc[-1])!r}"
        elif kind == "extra_forbidden":
            fields = tuple(model.model_fields)
            message = _unknown_key(str(loc[-1]), fields)
        elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            field = model.model_fields.get(str(loc[0])) if loc else None
            low, high = _bounds(field)
            message = f"{value!r} is out of range: must be {low}..{high}"
        elif kind.endswith("_type") or kind in ("int_from_float",):
            wanted = {
                "int_type": "a whole number",
                "string_type": "a string",
                "list_type": "a list",
                "dict_type": "a mapping",
                "bool_type": "true or false",
            }.get(kind, kind.removesuffix("_type"))
            message = f"must be {wanted}, not {_kind(value)}"
        elif kind in ("too_short", "string_too_short"):
            message = "must not be empty"
        elif kind == "value_error":
            message = str(ctx.get("error", err["msg"]))
        else:
            message = err["msg"]
        report.add(path, message)


def _bounds(field: Any) -> tuple[Any, Any]:
    low = high = "?"
    for meta in getattr(field, "metadata", []):
        low = getattr(meta, "ge", low) if getattr(meta, "ge", None) is not None else low
        high = getattr(meta, "le", high) if getattr(meta, "le", None) is not None else high
    return low, high


def _names(section: Any) -> set[str]:
    return {k for k in section if isinstance(k, str)} if isinstance(section, dict) else set()


def _cross_check(report: _Report, data: dict, entries: dict[str, dict[str, Any]]) -> None:
    """References and unique numbers. References are checked on every host that names them,
    valid or not, against every name given (valid or not), so one mistake is reported once."""
    locations: dict[str, Location] = entries["locations"]
    types: dict[str, int] = entries["types"]
    _check_unique_numbers(report, locations, types)
    location_names = _names(data.get("locations"))
    type_names = _names(data.get("types"))
    raw_hosts = data.get("hosts") if isinstance(data.get("hosts"), dict) else {}
    for name, host in raw_hosts.items():
        _check_host(report, name, host, location_names, type_names)
    _check_salt_master(report, raw_hosts, type_names)
    _check_location_clouds(report, locations)
    _check_apps(report, entries["apps"])


def _check_unique_numbers(
    report: _Report, locations: dict[str, Location], types: dict[str, int]
) -> None:
    """Each location and each type has a number of its own."""
    by_number: dict[int, str] = {}
    for name, location in locations.items():
        if location.number in by_number:
            report.add(
                ("locations", name, "number"),
                f"number {location.number} is taken by location {by_number[location.number]!r}:"
                " each location needs its own",
            )
        else:
            by_number[location.number] = name

    by_type: dict[int, str] = {}
    for name, number in types.items():
        if number in by_type:
            report.add(
                ("types", name),
                f"number {number} is taken by type {by_type[number]!r}: each type needs its own",
            )
        else:
            by_type[number] = name


def _check_host(
    report: _Report, name: str, host: Any, location_names: set[str], type_names: set[str]
) -> None:
    """A host's name, location and roles against the names the file gives."""
    known_roles = type_names | UNTYPED_ROLES
    if name in type_names:
        report.add(
            ("hosts", name),
            f"a host named like the role {name!r}: <{name}>.<location>.<domain> is the DNS"
            f" name of all the role's hosts (round robin), so the host would lose its own;"
            f" rename the host (e.g. {name}-1)",
        )
    if not isinstance(host, dict):
        return
    location = host.get("location")
    if isinstance(location, str) and location and location not in location_names:
        report.add(
            ("hosts", name, "location"),
            f"unknown location {location!r}{_did_you_mean(location, location_names)};"
            f" known: {', '.join(sorted(location_names)) or 'none'}",
        )
    roles = host.get("roles")
    if not isinstance(roles, list) or not type_names:
        return
    for i, role in enumerate(roles):
        if isinstance(role, str) and role not in known_roles:
            report.add(
                ("hosts", name, "roles", i),
                f"unknown role {role!r}{_did_you_mean(role, known_roles)}: a role is a key"
                " of 'types' (it then takes an address) or one of "
                + ", ".join(sorted(UNTYPED_ROLES)),
            )
    if roles and not any(r in type_names for r in roles if isinstance(r, str)):
        if all(isinstance(r, str) and r in known_roles for r in roles):
            report.add(
                ("hosts", name, "roles"),
                "no role with an address type: give the host at least one role listed"
                " under 'types'",
            )


def _check_salt_master(report: _Report, raw_hosts: dict, type_names: set[str]) -> None:
    """DESIGN.md: every host is a salt minion whose id is its name, of the one master."""
    masters = [
        name
        for name, host in raw_hosts.items()
        if isinstance(host, dict)
        and isinstance(host.get("roles"), list)
        and "salt-master" in host["roles"]
    ]
    if raw_hosts and not masters:
        hint = "" if "salt-master" in type_names else " (and the type salt-master under 'types')"
        report.add(
            ("hosts",),
            "no host has the role salt-master: every host is a minion of one;"
            f" give one host the role salt-master{hint}",
        )
    for extra in masters[1:]:
        report.add(
            ("hosts", extra, "roles"),
            f"a second salt master: {masters[0]!r} already has the role salt-master",
        )


def _check_location_clouds(report: _Report, locations: dict[str, Location]) -> None:
    """No `cloud: local` any more, and no lab location beside a cloud's."""
    for name, location in locations.items():
        if location.cloud == "local":
            report.add(
                ("locations", name, "cloud"),
                "'local' (the process-based local site) is gone: this machine as a cloud is"
                " `cloud: lab` (topology.lab.yaml; `infra lab up`)",
            )
    # One site per topology (sites.site_for): the lab's containers live on this machine, which
    # a cloud's servers cannot reach, nor it theirs.
    kinds = {loc.site_kind for loc in locations.values()}
    if len(kinds) > 1:
        for name, location in locations.items():
            if location.site_kind == "cloud":
                continue
            others = sorted({loc.cloud for loc in locations.values()} - {location.cloud})
            report.add(
                ("locations", name, "cloud"),
                f"{location.cloud!r} (this machine) cannot be mixed with {', '.join(others)}"
                " in one topology: keep this machine's locations in a topology of their own"
                " (topology.lab.yaml)",
            )


def _check_apps(report: _Report, apps: dict[str, App]) -> None:
    """Each app's repo looks like a git URL or path, and no two apps share a port."""
    for name, app in apps.items():
        if "{" in app.repo or app.repo.strip() != app.repo:
            report.add(("apps", name, "repo"), f"{app.repo!r} is not a git URL or path")
    # Each app's releases listen on its port and the next (blue and green) on every web host.
    taken: dict[int, str] = {}
    for name, app in apps.items():
        if app.port is None:  # a worker: no port
            continue
        for port in (app.port, app.port + 1):
            if port in taken:
                report.add(
                    ("apps", name, "port"),
                    f"{app.port}: its releases listen on {app.port} and {app.port + 1} (blue"
                    f" and green), and {port} is app {taken[port]!r}'s: give apps ports at least"
                    " two apart",
                )
                break
        else:
            taken.update({app.port: name, app.port + 1: name})


def _check_addresses(report: _Report, topology: Topology) -> None:
    owner: dict[str, tuple[str, str]] = {}
    name_owner: dict[str, str] = {}
    for address in address_plan(topology).addresses:
        if address.address in owner:
            other_host, other_role = owner[address.address]
            report.add(
                ("hosts", address.host, "instance"),
                f"address {address.address} ({address.role}) is already {other_host}'s"
                f" ({other_role}): give one of them another instance number",
            )
        else:
            owner[address.address] = (address.host, address.role)
        # A host's own name, or a role-instance name, must point at one address only.
        for dns in address.names[:-1]:
            if name_owner.get(dns, address.address) != address.address:
                report.add(
                    ("hosts", address.host),
                    f"DNS name {dns} would point at {name_owner[dns]} and {address.address}:"
                    " rename the host",
                )
            name_owner.setdefault(dns, address.address)


def _unknown_key(key: str, allowed: tuple[str, ...]) -> str:
    hint = _did_you_mean(key, allowed)
    return f"unknown key {key!r}{hint}; expected one of: {', '.join(allowed)}"


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, float):
        return f"{value} (a decimal number)"
    return f"{value!r}"
