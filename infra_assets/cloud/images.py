"""`images/<group>`: one Packer image per role group (the role catalogue, salt/roles.yaml) that a
host on an OpenStack location boots from, built by packer/coop.pkr.hcl on each cloud that needs it,
with the group's salt states baked in. After a build, the group's old images are pruned through
openstacksdk: the newest `keep` stay, and so does any image a server still runs on.

Rebuilt by the weekly schedule, and by the sensor on main when the template or the group's
states change.

On a `lab` location (this machine as a cloud) the image is `localhost/coop-<group>:lab` in the
project's podman storage, built by the same template's docker.lab source from the lab base image
(resources/lab_images.py), with only the roles the location's hosts of the group have; its data
version is the image id. A group whose inputs did not change (its salt files, bake.sh, the
template, the base image, salt-requirements.txt) is not rebuilt.
"""

import hashlib
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from infra_assets.cloud.changes import EVERY_IMAGE_STATES, baked, states_of_salt_path
from infra_assets.cloud.groups import (
    CATALOGUE_FILE,
    ImageGroupError,
    group_of_host,
    groups_in_use,
    image_groups,
)
from infra_assets.topology.model import Topology
from infra_assets.topology.roles import RoleCatalogueError, role_catalogue
from infra_assets.topology.sites import checkout_head
from resources.lab_images import ensure_lab_base_image, ensure_wheelhouse
from resources.openstack import (
    Image,
    OpenStackError,
    OpenStackResource,
    PruneResult,
    redacted_env,
)
from resources.packer import LAB_SOURCE, LabImage, PackerError, PackerResource
from resources.paths import state_dir
from resources.podman import PodmanError, PodmanResource

TEMPLATE = "coop.pkr.hcl"
LAB_CLOUD = "lab"


FORCE_TAG = "coop/force_rebuild"


class ImageConfig(dg.Config):
    force: bool = Field(
        default=False,
        description="Build even if the newest image already has these states and this template"
        " (the weekly schedule forces a build with the run tag coop/force_rebuild).",
    )
    keep: int = Field(
        default=3,
        ge=1,
        description="Images kept per group and cloud: the newest ones (older images that a"
        " server still uses are kept too).",
    )
    prune_dry_run: bool = Field(
        default=False, description="Report which images pruning would delete, delete none."
    )


def image_key(group: str) -> dg.AssetKey:
    return dg.AssetKey(["images", group])


def states_sha256(tree: Path) -> str:
    """A hash of the salt tree's files (paths and contents): what the image baked."""
    digest = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(tree)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def template_sha256(folder: Path, cloud_vars: Path) -> str:
    """A hash of what shapes an image besides the salt tree (whose role catalogue names the
    groups' roles): the template, the bake script and the cloud's build settings."""
    digest = hashlib.sha256()
    for path in [
        folder / TEMPLATE,
        *sorted(folder.glob("scripts/*")),
        cloud_vars,
    ]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def lab_roles(topo: Topology, group: str, path: Path = CATALOGUE_FILE) -> list[str]:
    """The roles a lab image of `group` bakes: the group's (the catalogue's order) that a host of
    a lab location in this group has."""
    have: set[str] = set()
    for name, host in topo.hosts.items():
        if topo.locations[host.location].cloud == LAB_CLOUD:
            if group_of_host(topo, name, host, path) == group:
                have |= set(host.roles)
    return [r for r in image_groups(path)[group].roles if r in have]


def group_salt_files(tree: Path, roles: list[str]) -> list[Path]:
    """The salt files a lab image of `roles` depends on: every file but those of states that only
    other roles apply (as the infra_main sensor decides which cloud images a salt change
    rebuilds), and but the role catalogue (roles.yaml), of which an image bakes only its roles'
    states (hashed on their own: `group_role_states`), not ports, pillar blocks or other roles.
    The cloud is coarser: any change to roles.yaml rebuilds every cloud image in use."""
    try:
        states = role_catalogue(tree / "roles.yaml").states()
    except RoleCatalogueError:  # missing or broken: every file counts
        states = {}
    if not states:
        return sorted(p for p in tree.rglob("*") if p.is_file())
    every = set().union(EVERY_IMAGE_STATES, *map(set, states.values()))
    mine = set().union(EVERY_IMAGE_STATES, *(set(states.get(r, [])) for r in roles))
    files = []
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        salt_path = "salt/" + str(path.relative_to(tree))
        if path == tree / "roles.yaml" or not baked(salt_path):
            continue
        owners = states_of_salt_path(salt_path, every)
        if not owners or owners & mine:
            files.append(path)
    return files


def group_role_states(tree: Path, roles: list[str]) -> dict[str, list[str]]:
    """The part of the role catalogue an image of `roles` bakes: each role's states ({} when the
    catalogue is missing or broken: then `group_salt_files` counts the whole tree, itself
    included)."""
    try:
        states = role_catalogue(tree / "roles.yaml").states()
    except RoleCatalogueError:
        return {}
    return {role: states.get(role, []) for role in roles}


def build_lab_image(
    group: str,
    roles: list[str],
    *,
    packer: PackerResource,
    podman: PodmanResource,
    state: Path | None = None,
    git_commit: str = "",
    force: bool = False,
    log=None,
) -> LabImage:
    """The lab base and the salt wheelhouse (each made once), then the group's lab image
    (skipped when its inputs did not change)."""
    state = state or state_dir()
    base = ensure_lab_base_image(podman, state, log=log)
    wheelhouse = ensure_wheelhouse(packer.folder() / "salt-requirements.txt", state, log=log)
    return packer.build_lab(
        group=group,
        roles=roles,
        podman=podman,
        base_image=base.ref,
        base_image_id=base.image_id,
        wheelhouse=wheelhouse.folder,
        salt_files=group_salt_files(packer.states_dir(), roles),
        role_states=group_role_states(packer.states_dir(), roles),
        git_commit=git_commit,
        force=force,
        log=log,
    )


def _lab_image(
    context: dg.AssetExecutionContext,
    group: str,
    topology: Topology,
    packer: PackerResource,
    podman: PodmanResource,
    commit: str,
    force: bool,
) -> dg.Output[dict]:
    roles = lab_roles(topology, group)
    try:
        image = build_lab_image(
            group,
            roles,
            packer=packer,
            podman=podman,
            git_commit=commit,
            force=force,
            log=context.log.info,
        )
    except (PackerError, PodmanError) as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    what = "built" if image.built else "skipped: its inputs did not change"
    context.log.info(f"{group} on the lab: {image.tag} {image.image_id} ({what})")
    built = {LAB_CLOUD: {"id": image.image_id, "name": image.tag, "built": image.built}}
    return dg.Output(
        built,
        data_version=dg.DataVersion(image.image_id),
        metadata={
            "image_id": image.image_id,
            "tag": image.tag,
            "roles": ", ".join(image.roles),
            "inputs_sha256": image.inputs_sha256,
            "took_s": round(image.took_s, 1),
            "built": dg.MetadataValue.json(built),
            "what": "built" if image.built else "skipped",
            "git_commit": commit,
        },
    )


def _clouds_of_group(topology: Topology, group: str) -> list[str]:
    """The clouds that need `group`'s image (`lab` for the lab's hosts)."""
    try:
        return groups_in_use(topology).get(group, [])
    except ImageGroupError as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None


def _salt_tree(packer: PackerResource) -> Path:
    """The salt state tree the images bake; a Failure when it is missing."""
    tree = packer.states_dir()
    if not tree.is_dir():
        raise dg.Failure(
            description=f"the salt state tree {tree} does not exist: images bake the role"
            " states from it (salt/, with top.sls by role)",
            allow_retries=False,
        )
    return tree


def _cloud_var_file(packer: PackerResource, cloud: str) -> Path:
    """packer/clouds/<cloud>.pkrvars.hcl: how to build on `cloud`; a Failure when it is missing."""
    var_file = packer.folder() / "clouds" / f"{cloud}.pkrvars.hcl"
    if not var_file.is_file():
        raise dg.Failure(
            description=f"{var_file} is missing: it says how to build on cloud"
            f" {cloud!r} (source image, flavor, network). Copy"
            " packer/clouds/catalyst.pkrvars.hcl and adapt it.",
            allow_retries=False,
        )
    return var_file


def _up_to_date(current: Image, force: bool, states: str, template: str) -> bool:
    """Whether the newest image already has these states and this template (and no force)."""
    return (
        not force
        and current.properties.get("coop_states_sha256") == states
        and current.properties.get("coop_template_sha256") == template
    )


def _packer_build_on_cloud(
    context: dg.AssetExecutionContext,
    group: str,
    cloud: str,
    *,
    packer: PackerResource,
    openstack: OpenStackResource,
    name: str,
    env: dict[str, str],
    var_file: Path,
    tree: Path,
    commit: str,
    states: str,
    template: str,
) -> Image:
    """Packer builds the image on `cloud`; the cloud must then have it, active."""
    build = packer.build(
        template=TEMPLATE,
        variables={
            "group": group,
            "image_name": name,
            "cloud": cloud,
            "salt_tree": str(tree),
            "git_commit": commit,
            "states_sha256": states,
            "template_sha256": template,
        },
        var_files=[var_file],
        env=env,
        redact=redacted_env(env),
        skip=[LAB_SOURCE],
        log=context.log.info,
    )
    artifact = build.artifacts[-1]
    # Packer says it made an image: the cloud must have it, active.
    image = openstack.find_image(cloud=cloud, name_or_id=artifact.artifact_id)
    image = image or openstack.find_image(cloud=cloud, name_or_id=artifact.image_name)
    if image is None or image.status != "active":
        raise dg.Failure(
            description=f"Packer reported image {artifact.image_name}"
            f" ({artifact.artifact_id}) but cloud {cloud!r} has"
            f" {'no such image' if image is None else 'it ' + image.status}",
            allow_retries=False,
        )
    return image


def _image_on_cloud(
    context: dg.AssetExecutionContext,
    config: ImageConfig,
    group: str,
    cloud: str,
    *,
    packer: PackerResource,
    openstack: OpenStackResource,
    tree: Path,
    states: str,
    commit: str,
    force: bool,
) -> tuple[dict, str, PruneResult | None]:
    """The group's image on `cloud`: the newest one when it is up to date, else a new build and
    the old images pruned. Returns its `built` entry, its table row and the pruning (None: no
    build)."""
    var_file = _cloud_var_file(packer, cloud)
    template = template_sha256(packer.folder(), var_file)
    name = f"coop-{group}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    env = openstack.tool_env(cloud=cloud)
    try:
        current = openstack.latest_images(cloud=cloud, groups=[group]).get(group)
        if current is not None and _up_to_date(current, force, states, template):
            context.log.info(
                f"{group} on {cloud}: {current.name} already has these states and this"
                " template: nothing to build"
            )
            entry = {"id": current.id, "name": current.name, "built": False}
            return entry, f"| {cloud} | {current.name} | `{current.id}` | up to date | | |", None
        image = _packer_build_on_cloud(
            context,
            group,
            cloud,
            packer=packer,
            openstack=openstack,
            name=name,
            env=env,
            var_file=var_file,
            tree=tree,
            commit=commit,
            states=states,
            template=template,
        )
        pruned = openstack.prune_images(
            cloud=cloud, group=group, keep=config.keep, dry_run=config.prune_dry_run
        )
    except (PackerError, OpenStackError) as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    entry = {"id": image.id, "name": image.name, "built": True}
    row = (
        f"| {cloud} | {image.name} | `{image.id}` | built | {len(pruned.deleted)} |"
        f" {len(pruned.in_use)} |"
    )
    context.log.info(
        f"{group} on {cloud}: built {image.name} ({image.id}); "
        f"{'would delete' if pruned.dry_run else 'deleted'}"
        f" {len(pruned.deleted)}, kept {len(pruned.kept)} newest"
        f" and {len(pruned.in_use)} in use"
    )
    return entry, row, pruned


def _cloud_images(
    context: dg.AssetExecutionContext,
    config: ImageConfig,
    group: str,
    clouds: list[str],
    *,
    packer: PackerResource,
    openstack: OpenStackResource,
    tree: Path,
    states: str,
    commit: str,
    force: bool,
) -> dg.Output[dict]:
    """The group's image on each OpenStack cloud that needs it, and a table of them."""
    built: dict[str, dict] = {}
    rows = ["| cloud | image | id | what | pruned | kept in use |", "|---|---|---|---|---|---|"]
    prunes = {}
    for cloud in clouds:
        built[cloud], row, pruned = _image_on_cloud(
            context,
            config,
            group,
            cloud,
            packer=packer,
            openstack=openstack,
            tree=tree,
            states=states,
            commit=commit,
            force=force,
        )
        if pruned is not None:
            prunes[cloud] = pruned
        rows.append(row)
    if not clouds:
        context.log.info(f"no host on an OpenStack location boots the {group} image")
    return dg.Output(
        built,
        metadata={
            "images": dg.MetadataValue.md("\n".join(rows)),
            "built": dg.MetadataValue.json(built),
            "roles": ", ".join(image_groups()[group].roles),
            "states_sha256": states,
            "git_commit": commit,
            "keep": config.keep,
            **{
                f"pruning_{cloud}": dg.MetadataValue.md(p.markdown()) for cloud, p in prunes.items()
            },
        },
    )


def _build_image(
    context: dg.AssetExecutionContext,
    config: ImageConfig,
    group: str,
    topology: Topology,
    packer: PackerResource,
    openstack: OpenStackResource,
    podman: PodmanResource,
) -> dg.Output[dict]:
    """The `images/<group>` asset: on the lab, or on each OpenStack cloud that needs it."""
    clouds = _clouds_of_group(topology, group)
    tree = _salt_tree(packer)
    states = states_sha256(tree)
    commit = context.run.tags.get("coop/git_sha") or checkout_head()
    force = config.force or context.run.tags.get(FORCE_TAG) == "true"
    if LAB_CLOUD in clouds:
        # one kind of site per topology (sites.site_for): a lab topology has no other cloud
        return _lab_image(context, group, topology, packer, podman, commit, force)
    return _cloud_images(
        context,
        config,
        group,
        clouds,
        packer=packer,
        openstack=openstack,
        tree=tree,
        states=states,
        commit=commit,
        force=force,
    )


def _image_asset(group: str, description: str, lab: bool = False) -> dg.AssetsDefinition:
    @dg.asset(
        key=image_key(group),
        group_name="images",
        kinds={"packer", "podman"} if lab else {"packer", "openstack"},
        ins={"topology": dg.AssetIn(dg.AssetKey("topology"))},
        tags={"coop/image_group": group},
        description=f"The {group} image: {description}. Built by Packer (packer/{TEMPLATE}) with"
        " the group's salt states baked in; old images pruned.",
    )
    def image(
        context: dg.AssetExecutionContext,
        config: ImageConfig,
        topology: Topology,
        packer: PackerResource,
        openstack: OpenStackResource,
        podman: PodmanResource,
    ) -> dg.Output[dict]:
        return _build_image(context, config, group, topology, packer, openstack, podman)

    return image


def definitions(topo: Topology) -> dg.Definitions:
    try:
        needed = groups_in_use(topo, CATALOGUE_FILE)
        groups = image_groups(CATALOGUE_FILE)
    except ImageGroupError:
        return dg.Definitions()  # plan/instances says what is wrong when it runs
    return dg.Definitions(
        assets=[
            _image_asset(g, groups[g].description or g, lab=LAB_CLOUD in needed[g]) for g in needed
        ]
    )
