"""Image groups: one Packer image per group of roles (the role catalogue, salt/roles.yaml: each
role's `image`, each group's `description`).

A host boots from the image of the group that holds its primary role (its first role with an
address type); salt then applies all of its roles.
"""

from __future__ import annotations

from pathlib import Path

from infra_assets.topology.model import Host, Topology
from infra_assets.topology.roles import (
    CATALOGUE_FILE,
    ImageGroup,
    RoleCatalogueError,
    role_catalogue,
)

__all__ = ["CATALOGUE_FILE", "ImageGroup", "ImageGroupError", "image_groups"]


class ImageGroupError(ValueError):
    """The role catalogue is broken, or a role belongs to no image group."""


def image_groups(path: Path = CATALOGUE_FILE) -> dict[str, ImageGroup]:
    """The image groups, by name, in file order."""
    try:
        return role_catalogue(path).images
    except RoleCatalogueError as err:
        raise ImageGroupError(str(err)) from None


def group_of_role(role: str, path: Path = CATALOGUE_FILE) -> str | None:
    return next((g.name for g in image_groups(path).values() if role in g.roles), None)


def group_of_host(topo: Topology, name: str, host: Host, path: Path = CATALOGUE_FILE) -> str:
    """The image group of the host's primary role. Raises ImageGroupError when it has none."""
    primary = topo.typed_roles(host)[0]
    group = group_of_role(primary, path)
    if group is None:
        raise ImageGroupError(
            f"host {name}: its primary role {primary!r} is in no image group: add it to the"
            f" role catalogue {path} with its `image`"
        )
    return group


def groups_in_use(topo: Topology, path: Path = CATALOGUE_FILE) -> dict[str, list[str]]:
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
