"""Image groups: one Packer image per group of roles (`packer/images.json`, the one place).

A host boots from the image of the group that holds its primary role (its first role with an
address type); salt then applies all of its roles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from infra_assets.model import Host, Topology
from infra_assets.paths import REPO_ROOT

IMAGES_FILE = REPO_ROOT / "packer" / "images.json"


class ImageGroupError(ValueError):
    """packer/images.json is broken, or a role belongs to no image group."""


@dataclass(frozen=True)
class ImageGroup:
    name: str
    roles: tuple[str, ...]
    description: str = ""


@cache
def _load(path: Path, mtime: float) -> dict[str, ImageGroup]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ImageGroupError(f"{path}: cannot read the image groups: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ImageGroupError(f"{path}: must map each image group to {{roles: [...]}}")
    groups: dict[str, ImageGroup] = {}
    owner: dict[str, str] = {}
    for name, spec in data.items():
        roles = spec.get("roles") if isinstance(spec, dict) else None
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise ImageGroupError(f"{path}: {name}.roles must be a non-empty list of role names")
        for role in roles:
            if role in owner:
                raise ImageGroupError(
                    f"{path}: role {role!r} is in two image groups ({owner[role]}, {name}):"
                    " a role's states are baked into one image"
                )
            owner[role] = name
        groups[name] = ImageGroup(name, tuple(roles), str(spec.get("description", "")))
    return groups


def image_groups(path: Path = IMAGES_FILE) -> dict[str, ImageGroup]:
    """The image groups, by name, in file order."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        raise ImageGroupError(f"{path}: missing: it lists the image groups and roles") from None
    return _load(path, mtime)


def group_of_role(role: str, path: Path = IMAGES_FILE) -> str | None:
    return next((g.name for g in image_groups(path).values() if role in g.roles), None)


def group_of_host(topo: Topology, name: str, host: Host, path: Path = IMAGES_FILE) -> str:
    """The image group of the host's primary role. Raises ImageGroupError when it has none."""
    primary = topo.typed_roles(host)[0]
    group = group_of_role(primary, path)
    if group is None:
        raise ImageGroupError(
            f"host {name}: its primary role {primary!r} is in no image group: add it to the"
            f" roles of a group in {path}"
        )
    return group


def groups_in_use(topo: Topology, path: Path = IMAGES_FILE) -> dict[str, list[str]]:
    """Image group -> the clouds that need it (`lab` for the lab's hosts), in file order.
    Raises ImageGroupError naming every host whose primary role has no group."""
    needed: dict[str, list[str]] = {}
    problems = []
    for name, host in topo.hosts.items():
        try:
            group = group_of_host(topo, name, host, path)
        except ImageGroupError as err:
            problems.append(str(err))
            continue
        clouds = needed.setdefault(group, [])
        location = topo.locations[host.location]
        if location.cloud not in clouds:
            clouds.append(location.cloud)
    if problems:
        raise ImageGroupError("; ".join(problems))
    order = list(image_groups(path))
    return {g: needed[g] for g in order if g in needed}
