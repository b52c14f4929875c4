"""What a range of commits on the infra repo's main branch changed, for the cloud part: which
Terraform stacks of which locations to plan, which role images to rebuild.

- `terraform/modules/`, `terraform/shared/`, `terraform/network/`: every OpenStack location's
  network and instances; `terraform/instances/`: every location's instances;
  `terraform/locations/<L>.tfvars`: L's.
- `topology.yaml`: the locations whose stack inputs differ between the two commits (a location's
  number or cloud: its network; its hosts, addresses, roles, flavors, the salt master: its
  instances); a new location: both.
- `packer/` (template, bake script): every image in use; `packer/clouds/<c>`: the images built on
  cloud c. `salt/`: the tree is named by state (`salt/web/`, `salt/jenkins/master.sls`), and the
  role catalogue `salt/roles.yaml` says which states each role applies: a changed path is the state
  it belongs to (`salt/postgres/files/x` -> postgres; `salt/jenkins/x` -> every jenkins.* state),
  whose roles' groups are rebuilt. `common` and `salt.minion` are in every image, and a path of no
  role's state (top.sls, roles.yaml, lib/) is treated as shared: every image in use. What only
  releases apply (`salt/app/`, `salt/_states/coop_app.py`) or the health checks and backups
  call (`salt/_modules/`) rebuilds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from infra_assets.cloud.groups import ImageGroupError, group_of_role, groups_in_use
from infra_assets.cloud.tfvars import STACKS, cloud_locations, stack_hosts
from infra_assets.topology.model import Topology, TopologyError, parse_topology


@dataclass
class ChangeSet:
    stacks: dict[str, set[str]] = field(default_factory=dict)  # location -> stacks to plan
    images: set[str] = field(default_factory=set)  # image groups to rebuild
    reasons: list[str] = field(default_factory=list)

    def add_stacks(self, location: str, stacks: tuple[str, ...] | set[str], why: str) -> None:
        self.stacks.setdefault(location, set()).update(stacks)
        self.reasons.append(f"{location} ({', '.join(sorted(stacks))}): {why}")

    def add_images(self, groups: set[str] | list[str], why: str) -> None:
        if groups:
            self.images.update(groups)
            self.reasons.append(f"images {', '.join(sorted(groups))}: {why}")

    @property
    def empty(self) -> bool:
        return not self.stacks and not self.images


def _load(text: str | None, file: str) -> Topology | None:
    if text is None:
        return None
    try:
        return parse_topology(text, file=file)
    except TopologyError:
        return None


def _network_inputs(topo: Topology, location: str) -> tuple:
    loc = topo.locations[location]
    return (loc.number, loc.cloud)


def _instances_inputs(topo: Topology, location: str) -> tuple:
    try:
        hosts = stack_hosts(topo, location)
    except ImageGroupError as err:
        hosts = {"error": str(err)}
    return (repr(sorted(hosts.items())), topo.salt_master(), topo.domain)


# States every role's states include (salt/roles.yaml's note): a change to them is in every image.
EVERY_IMAGE_STATES = {"common", "salt.minion"}
# What releases apply and no image bakes: the `app` state and its state module (a highstate syncs
# `_states/` to the minions, but no role's state uses coop_app); and what the health checks call
# and the backups call (`_modules/`, synced by a highstate or by their jobs). A change rebuilds
# no image.
RELEASE_ONLY = (
    "salt/app/",
    "salt/_states/coop_app.py",
    "salt/_modules/coop_health.py",
    "salt/_modules/coop_backup.py",
)


def baked(path: str) -> bool:
    """Whether the salt file `salt/<...>` can change what an image bakes."""
    return not path.startswith(RELEASE_ONLY)


def states_of_salt_path(path: str, states: set[str]) -> set[str]:
    """The states of `states` (dotted names) that the file `salt/<...>` belongs to: the state
    whose file or folder holds it (`salt/jenkins/master.sls`, `salt/web/files/x`), else every
    state under its top folder (`salt/jenkins/files/x` -> jenkins.master, jenkins.agent).
    Empty: the path is no state's (top.sls, roles.yaml, lib/, a state no role applies)."""
    parts = list(PurePosixPath(path).parts[1:])
    if len(parts) < 2:  # salt/top.sls, salt/roles.yaml: shared by all
        return set()
    if parts[-1].endswith(".sls"):
        parts[-1] = parts[-1].removesuffix(".sls")
        if parts[-1] == "init":
            parts.pop()
    exact = {s for s in states if parts[: len(s.split("."))] == s.split(".")}
    if exact:
        return exact
    return {s for s in states if s.split(".")[0] == parts[0]}


def _terraform_changed(
    out: ChangeSet, path: str, parts: tuple[str, ...], locations: list[str]
) -> None:
    """`terraform/...`: the modules, shared and network stacks are every location's; instances:
    every location's instances; `locations/<L>.tfvars`: L's."""
    if parts[1] in ("modules", "shared", "network"):
        for loc in locations:
            out.add_stacks(loc, STACKS, f"{path} changed")
    elif parts[1] == "instances":
        for loc in locations:
            out.add_stacks(loc, ("instances",), f"{path} changed")
    elif parts[1] == "locations" and len(parts) > 2:
        loc = parts[2].split(".")[0]
        if loc in locations:
            out.add_stacks(loc, STACKS, f"{path} changed")


def _packer_changed(
    out: ChangeSet, path: str, parts: tuple[str, ...], in_use: dict[str, list[str]]
) -> None:
    """`packer/clouds/<c>`: the images built on cloud c; the rest of packer/: every image."""
    if parts[1] == "clouds" and len(parts) > 2:
        cloud = parts[2].split(".")[0]
        out.add_images({g for g, c in in_use.items() if cloud in c}, f"{path} changed")
    else:
        out.add_images(set(in_use), f"{path} changed")


def _salt_changed(
    out: ChangeSet,
    path: str,
    in_use: dict[str, list[str]],
    role_states: dict[str, set[str]],
    all_states: set[str],
) -> None:
    """A baked salt file: the image groups of the roles whose states it belongs to; a shared
    file (no role's state, or common / salt.minion): every image in use."""
    states = states_of_salt_path(path, all_states)
    if not states or states & EVERY_IMAGE_STATES:
        out.add_images(set(in_use), f"{path} changed (shared states)")
        return
    roles = {r for r, s in role_states.items() if s & states}
    groups = {group_of_role(r) for r in roles} - {None}
    out.add_images(
        {g for g in groups if g in in_use},
        f"{path} changed (state {', '.join(sorted(states))}: role {', '.join(sorted(roles))})",
    )


def _topology_changed(
    out: ChangeSet,
    *,
    topology_path: str,
    new_topology: Topology,
    read_old_topology: Callable[[], str | None],
    locations: list[str],
    in_use: dict[str, list[str]],
) -> None:
    """The topology file: the stacks whose inputs differ from the old commit's, and the images
    newly needed on a cloud."""
    old = _load(read_old_topology(), topology_path)
    for loc in locations:
        if old is None or loc not in old.locations:
            out.add_stacks(loc, STACKS, "new in the topology")
            continue
        if _network_inputs(old, loc) != _network_inputs(new_topology, loc):
            out.add_stacks(loc, STACKS, "its number or cloud changed in the topology")
        elif _instances_inputs(old, loc) != _instances_inputs(new_topology, loc):
            out.add_stacks(loc, ("instances",), "its hosts changed in the topology")
    try:
        old_groups = groups_in_use(old) if old is not None else {}
    except ImageGroupError:
        old_groups = {}
    fresh = {g for g, clouds in in_use.items() if set(clouds) - set(old_groups.get(g, []))}
    out.add_images(fresh, "newly needed by a host in the topology")


def changes_between(
    changed_files: list[str],
    *,
    topology_path: str,
    new_topology: Topology,
    read_old_topology: Callable[[], str | None],
    salt_roles: Mapping[str, list[str]] | None = None,
) -> ChangeSet:
    """The plan and rebuild work that `changed_files` (repo-relative paths) calls for, on the
    locations of `new_topology` that are on an OpenStack cloud. `salt_roles`: salt/roles.yaml
    (role -> states) at the new commit; None: every salt/ change rebuilds every image."""
    out = ChangeSet()
    locations = cloud_locations(new_topology)
    try:
        in_use = groups_in_use(new_topology)
    except ImageGroupError:
        in_use = {}
    role_states = {r: set(states) for r, states in (salt_roles or {}).items()}
    # (top.sls gives every host common and salt.minion besides its roles' states)
    all_states = set().union(EVERY_IMAGE_STATES, *role_states.values()) if role_states else set()

    for path in changed_files:
        parts = PurePosixPath(path).parts
        if not parts:
            continue
        top = parts[0]
        if top == "terraform" and len(parts) > 1:
            _terraform_changed(out, path, parts, locations)
        elif top == "packer" and len(parts) > 1:
            _packer_changed(out, path, parts, in_use)
        elif top == "salt" and not baked(path):
            continue
        elif top == "salt":
            _salt_changed(out, path, in_use, role_states, all_states)
        elif path == topology_path:
            _topology_changed(
                out,
                topology_path=topology_path,
                new_topology=new_topology,
                read_old_topology=read_old_topology,
                locations=locations,
                in_use=in_use,
            )
    return out
