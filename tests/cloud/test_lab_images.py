"""The lab's role images, for real: the base (debootstrap'd Debian 12 with systemd, podman
import'ed), the salt wheelhouse, and the builder and web groups built by the real Packer 1.6.6
(`-only=docker.lab`: the docker builder driving podman through Debian's podman-docker shim) from
packer/coop.pkr.hcl, baked by the real bake.sh with the real states in bake mode. Each image is
checked from inside (podman run, the project's podman config): salt 3008.4 from /opt/salt, the
salt units the states ship, the group's packages; the id Packer reported is the tag's; a second
build with the same inputs is skipped. The support group (the roles the lab's support host has)
is built too, for the npm cache: verdaccio from the committed lockfile on Debian 12's own nodejs,
booted with systemd and configured by the npm-cache state's server branch.

The images live in the project's podman storage (PodmanResource's default: the state folder's
podman/, or $INFRA_PODMAN_ROOT), as the lab's containers need them, so a later run (and the lab's
own tests) finds them built. Measured on this machine kind (2 cores): cold, everything from
nothing (base 60-85 s, wheelhouse 80 s, web 65 s, builder about 2 min, support about 2 min 10 s:
apt's nodejs and npm 45 s, npm ci 10 s); warm, all skipped, a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from infra_assets.cloud.images import (
    build_lab_image,
    group_role_states,
    group_salt_files,
    lab_roles,
)
from infra_assets.topology.roles import role_catalogue
from resources.cli_runner import run_cli
from resources.lab_images import (
    LAB_BASE_IMAGE,
    RECIPE_LABEL,
    BaseRecipe,
    ensure_lab_base_image,
    ensure_wheelhouse,
)
from resources.packer import INPUTS_LABEL, LabImage, PackerResource, lab_tag
from resources.paths import state_dir
from resources.podman import PodmanResource

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GROUPS: dict[str, tuple[str, ...]] = {
    name: g.roles for name, g in role_catalogue(REPO / "salt" / "roles.yaml").images.items()
}
BUILT = ("builder", "web")


def _quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def podman() -> PodmanResource:
    return PodmanResource()


@pytest.fixture(scope="module")
def lab(podman) -> dict:
    """The base, the wheelhouse and the groups of BUILT, each made if missing (times kept)."""
    state = state_dir()
    started = time.monotonic()
    base = ensure_lab_base_image(podman, state, log=_quiet)
    wheelhouse = ensure_wheelhouse(REPO / "packer" / "salt-requirements.txt", state, log=_quiet)
    packer = PackerResource()
    images: dict[str, LabImage] = {}
    for group in BUILT:
        # as the images/<group> asset builds it: the group's salt files, the lab's roles
        images[group] = build_lab_image(
            group, list(GROUPS[group]), packer=packer, podman=podman, log=_quiet
        )
    took = {
        "base": base.took_s,
        "wheelhouse": wheelhouse.took_s,
        **{g: i.took_s for g, i in images.items()},
        "total": time.monotonic() - started,
    }
    print(f"\nlab images: {json.dumps({k: round(v, 1) for k, v in took.items()})}")  # noqa: T201
    return {
        "base": base,
        "wheelhouse": wheelhouse,
        "images": images,
        "packer": packer,
        "took": took,
    }


def inside(podman: PodmanResource, image: str, script: str) -> str:
    """`sh -c script` in a throwaway container of `image` (no network, not booted)."""
    result = podman.run(
        ["run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image, "-c", script],
        log=_quiet,
    )
    return result.output


def test_the_base_image_has_its_recipe_and_boots_systemd(lab, podman):
    base = lab["base"]
    assert base.ref == LAB_BASE_IMAGE
    assert podman.image_id(LAB_BASE_IMAGE) == base.image_id
    assert podman.labels(LAB_BASE_IMAGE)[RECIPE_LABEL] == BaseRecipe().sha256()
    # a changed recipe is another hash (so the image is made anew)
    assert BaseRecipe(packages=(*BaseRecipe().packages, "vim-tiny")).sha256() != base.recipe_sha256
    out = inside(podman, LAB_BASE_IMAGE, "python3 --version; test -x /sbin/init && echo init")
    assert "Python 3.11" in out and "init" in out

    # systemd as PID 1, with the least a lab host gets (no --privileged), reaches `running`
    name = f"coop-lab-base-{time.monotonic_ns()}-test"
    podman.run(
        ["run", "-d", "--name", name, "--network", "none", "--systemd=always",
         "--cap-add", "NET_ADMIN", LAB_BASE_IMAGE],
        log=_quiet,
    )  # fmt: skip
    try:
        state = ""
        for _ in range(60):
            state = podman.run(
                ["exec", name, "systemctl", "is-system-running"], log=_quiet, check=False
            ).output.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        assert state == "running"
    finally:
        podman.run(["rm", "-f", "-t", "2", name], log=_quiet, check=False)


def test_the_wheelhouse_has_a_wheel_for_every_requirement(lab):
    wheelhouse = lab["wheelhouse"]
    lines = [
        line
        for line in (REPO / "packer" / "salt-requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert len(wheelhouse.wheels) == len(lines)
    assert any(w.startswith("salt-3008.4-") for w in wheelhouse.wheels)
    assert any(w.lower().startswith("cherrypy-") for w in wheelhouse.wheels)


@pytest.mark.parametrize("group", BUILT)
def test_each_group_s_image_is_packer_s_artifact_with_salt_and_its_packages(lab, podman, group):
    image: LabImage = lab["images"][group]
    tag = lab_tag(group)
    assert image.tag == tag == f"localhost/coop-{group}:lab"
    assert podman.image_id(tag) == image.image_id  # the id Packer reported (checked when built)
    labels = podman.labels(tag)
    assert labels[INPUTS_LABEL] == image.inputs_sha256
    assert labels["org.coop-infra.group"] == group
    assert labels["org.coop-infra.roles"] == ",".join(list(GROUPS[group]))
    config = json.loads(
        podman.run(["image", "inspect", "--format", "{{json .Config}}", tag], log=_quiet).lines[-1]
    )
    assert config["Cmd"] == ["/sbin/init"] and not config.get("Entrypoint")

    out = inside(
        podman,
        tag,
        "/opt/salt/bin/salt-call --version; salt-call --version;"
        " readlink /usr/local/bin/salt-minion /usr/local/bin/salt-api;"
        " cat /etc/systemd/system/salt-minion.service;"
        " systemctl is-enabled salt-minion || true;"
        " test -e /etc/apt/sources.list.d/salt.sources && echo SALT-PROJECT-REPO;"
        " ls /var/lib/apt/lists | grep -v -e '^lock$' -e '^partial$' || echo NO-LISTS;"
        " test -e /etc/salt/pki/minion/minion.pem && echo MINION-KEY;"
        " dpkg-query -W -f='${Package} ${Status}\\n' podman crun runc nginx-light 2>/dev/null;"
        " cat /etc/containers/containers.conf",
    )
    assert "salt-call 3008.4" in out.splitlines()[0]
    assert out.splitlines()[1].startswith("salt-call 3008.4")  # the /usr/local/bin link
    assert "/opt/salt/bin/salt-minion\n/opt/salt/bin/salt-api\n" in out
    assert "ExecStart=/opt/salt/bin/salt-minion\n" in out
    # the unit is there, not enabled: the first boot (cloud-init's runcmd) enables it
    assert "\ndisabled\n" in out
    assert "SALT-PROJECT-REPO" not in out and "MINION-KEY" not in out
    assert "NO-LISTS" in out  # the image keeps no package lists

    installed = {
        line.split()[0]
        for line in out.splitlines()
        if line.endswith("install ok installed") and len(line.split()) == 4
    }
    assert {"podman", "crun"} <= installed, out  # both groups run containers, with crun
    assert 'runtime = "crun"' in out
    if group == "web":
        assert "nginx-light" in installed
    if group == "builder":
        out = inside(podman, tag, "for c in buildah git java; do command -v $c; done; id jenkins")
        assert "/usr/bin/buildah" in out and "/usr/bin/java" in out and "jenkins" in out


def test_a_second_build_with_the_same_inputs_is_skipped(lab, podman):
    base, wheelhouse, packer = lab["base"], lab["wheelhouse"], lab["packer"]
    for group in BUILT:
        started = time.monotonic()
        again = packer.build_lab(
            group=group,
            roles=list(GROUPS[group]),
            podman=podman,
            base_image=base.ref,
            base_image_id=base.image_id,
            wheelhouse=wheelhouse.folder,
            salt_files=group_salt_files(packer.states_dir(), list(GROUPS[group])),
            role_states=group_role_states(packer.states_dir(), list(GROUPS[group])),
            log=_quiet,
        )
        took = time.monotonic() - started
        assert not again.built
        assert again.image_id == lab["images"][group].image_id
        assert again.inputs_sha256 == lab["images"][group].inputs_sha256
        assert took < 5, took
    # the base and the wheelhouse too
    assert not ensure_lab_base_image(podman, state_dir(), log=_quiet).built
    assert not ensure_wheelhouse(
        REPO / "packer" / "salt-requirements.txt", state_dir(), log=_quiet
    ).built


@pytest.fixture(scope="module")
def support_image(lab, podman) -> LabImage:
    """The support group's image with the roles topology.lab.yaml's support host has (no
    jenkins-master: no Jenkins here), as `images/support` builds it (after `lab`: the base and
    the wheelhouse exist)."""
    from infra_assets.topology.model import load_topology

    roles = lab_roles(load_topology(REPO / "topology.lab.yaml"), "support")
    assert "npm-cache" in roles and "jenkins-master" not in roles
    image = build_lab_image("support", roles, packer=PackerResource(), podman=podman, log=_quiet)
    print(f"\nsupport image: {image.took_s:.1f} s, built: {image.built}")  # noqa: T201
    return image


def test_the_support_image_runs_the_locked_verdaccio_on_debian_s_node(support_image, podman):
    """verdaccio from salt/npm-cache/files' lockfile (npm ci, as the verdaccio user), on Debian
    12's nodejs 18; booted with systemd, the npm-cache state's server branch (with support-1's
    pillar from the lab topology, listening on 127.0.0.1) starts it: it answers, and refuses a
    self-registration (max_users: -1)."""
    from infra_assets.configuration.pillar import host_pillar
    from infra_assets.topology.model import load_topology
    from infra_assets.topology.sites import LabSite

    files = REPO / "salt" / "npm-cache" / "files"
    lock = json.loads((files / "package-lock.json").read_text())
    wanted = json.loads((files / "package.json").read_text())["dependencies"]["verdaccio"]
    assert lock["packages"]["node_modules/verdaccio"]["version"] == wanted
    tag = support_image.tag
    out = inside(
        podman,
        tag,
        "node --version; node /opt/verdaccio/node_modules/verdaccio/bin/verdaccio --version;"
        " stat -c '%U' /opt/verdaccio /opt/verdaccio/node_modules /opt/verdaccio/package-lock.json;"
        " sha256sum /opt/verdaccio/package-lock.json;"
        " grep -h '^User=' /etc/systemd/system/verdaccio.service;"
        " test -e /var/lib/verdaccio/.npm && echo NPM-CACHE-LEFT;"
        " dpkg-query -W -f='${Status}\\n' gcc 2>/dev/null | grep -q 'ok installed' && echo GCC;"
        " true",
    )
    lines = out.splitlines()
    assert lines[0].startswith("v18."), out  # Debian 12's own nodejs
    assert lines[1] == f"v{wanted}", out
    assert lines[2:5] == ["verdaccio", "verdaccio", "root"], out
    assert hashlib.sha256((files / "package-lock.json").read_bytes()).hexdigest() in out
    assert "NPM-CACHE-LEFT" not in out  # npm ci's cache was a folder of its own, removed
    assert "User=verdaccio" in out
    assert "GCC" not in out  # npm's recommends (a compiler, X11) are not installed

    pillar = host_pillar(LabSite(load_topology(REPO / "topology.lab.yaml")), None, "support-1")
    pillar["npm_cache"]["listen"] = "127.0.0.1"  # no lab network here: the container's loopback
    name = f"coop-support-{time.monotonic_ns()}-test"
    state = ""
    podman.run(
        ["run", "-d", "--name", name, "--network", "none", "--systemd=always",
         "-v", f"{REPO / 'salt'}:/srv/coop/salt:ro", tag, "/sbin/init"],
        log=_quiet,
    )  # fmt: skip
    try:
        for _ in range(60):
            state = podman.run(
                ["exec", name, "systemctl", "is-system-running"], log=_quiet, check=False
            ).output.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        assert state == "running"
        # the npm-cache state alone (common's need the lab's network and addresses)
        exclude = [
            {"sls": "common"},
            {"sls": "common.addresses"},
            {"sls": "common.firewall"},  # nft needs NET_ADMIN, which this container lacks
            {"sls": "salt.minion"},
        ]

        def apply() -> set[str]:
            """The ids of the states that changed something (salt's warnings go to stderr,
            which the runner mixes in: the results are read from a file)."""
            podman.run(
                ["exec", name, "salt-call", "--local", "--file-root=/srv/coop/salt",
                 "--retcode-passthrough", "--out=json", "--out-file=/tmp/apply.json",
                 "state.sls", "npm-cache",
                 f"exclude={json.dumps(exclude)}", f"pillar={json.dumps(pillar)}"],
                log=_quiet,
            )  # fmt: skip
            text = podman.run(["exec", name, "cat", "/tmp/apply.json"], log=_quiet).output
            return {r["__id__"] for r in json.loads(text)["local"].values() if r["changes"]}

        # installed in the image: the first apply configures and starts it, installs nothing
        changed = apply()
        assert "npm-cache-install" not in changed and "npm-cache-config" in changed, changed
        assert not apply()  # and again changes nothing

        check = (
            "curl -s -w ' %{http_code}\\n' http://127.0.0.1:4873/-/ping;"
            " curl -s -w ' %{http_code}\\n' -X PUT -H 'content-type: application/json'"
            ' -d \'{"name": "mallory", "password": "not-a-secret"}\''
            " http://127.0.0.1:4873/-/user/org.couchdb.user:mallory;"
            " ps -o user= -p $(systemctl show -p MainPID --value verdaccio)"
        )
        out = podman.run(["exec", name, "sh", "-c", check], log=_quiet).output
        assert "{} 200" in out.replace("\n", "")
        assert '"user registration disabled"' in out and " 409" in out, out
        assert out.splitlines()[-1].startswith("verdacc"), out  # ps cuts the name at 8
    finally:
        podman.run(["rm", "-f", "-t", "2", name], log=_quiet, check=False)


def test_the_inputs_hash_follows_the_group_s_inputs(lab, tmp_path):
    from resources.packer import lab_inputs_sha256

    tree = tmp_path / "salt"
    (tree / "web").mkdir(parents=True)
    (tree / "web" / "init.sls").write_text("a: b\n")
    packer_dir = REPO / "packer"

    def inputs(**change) -> str:
        args = {
            "group": "web",
            "roles": list(GROUPS["web"]),
            "packer_dir": packer_dir,
            "salt_tree": tree,
            "salt_files": [tree / "web" / "init.sls"],
            "base_image_id": lab["base"].image_id,
            **change,
        }
        return lab_inputs_sha256(**args)

    first = inputs()
    assert inputs() == first
    assert inputs(base_image_id="0" * 64) != first
    assert inputs(roles=["web-staging"]) != first
    states = {"web-staging": ["web"], "web-production": ["web"]}
    assert inputs(role_states={**states, "web-staging": ["web", "extra"]}) != inputs(
        role_states=states
    )
    (tree / "web" / "init.sls").write_text("a: c\n")
    assert inputs() != first


def test_the_lab_build_uses_podman_through_the_shim(lab):
    shim = lab["packer"].docker_shim_dir() / "docker"
    assert shim.is_symlink() and str(shim.readlink()) == "/usr/bin/docker"
    text = run_cli(["cat", "/usr/bin/docker"], log=_quiet).output
    assert "exec /usr/bin/podman" in text


def test_the_images_asset_on_a_lab_topology_is_the_lab_image_by_its_id(lab, podman, tmp_path):
    """`images/web` on topology.lab.yaml: Dagster materialises it through the lab source (the
    image built above has these inputs only if the group's roles are the lab's: web-staging
    and web-production, both on the lab), with the image id as its data version."""
    import dagster as dg

    from infra_assets.cloud import images as images_module
    from infra_assets.topology import assets as topology_module
    from infra_assets.topology.model import load_topology
    from resources.openstack import OpenStackResource
    from resources.topology import TopologyResource

    path = REPO / "topology.lab.yaml"
    topo = load_topology(path)
    assert images_module.lab_roles(topo, "web") == ["web-staging", "web-production"]
    # support bakes only what the lab's support host has (no jenkins-master here)
    assert images_module.lab_roles(topo, "support") == [
        "salt-master",
        "docker-registry",
        "npm-cache",
        "pypi-cache",
        "dagster",
        "dns",
    ]
    tree = REPO / "salt"
    files = images_module.group_salt_files(tree, ["web-staging", "web-production"])
    web_files = {str(p.relative_to(tree)) for p in files}
    assert {"web/init.sls", "common/init.sls", "top.sls", "lib/site.jinja"} <= web_files
    # The catalogue counts by its roles' states only: a port or a pillar block rebuilds nothing.
    assert "roles.yaml" not in web_files
    assert images_module.group_role_states(tree, ["web-staging", "web-production"]) == {
        "web-staging": ["web"],
        "web-production": ["web"],
    }
    assert not {f for f in web_files if f.startswith(("postgres/", "registry/", "dns/"))}

    defs = images_module.definitions(topo)
    [web] = [a for a in defs.assets if dg.AssetKey(["images", "web"]) in a.keys]
    assert web.specs_by_key[dg.AssetKey(["images", "web"])].kinds >= {"podman", "packer"}
    assets = [*dg.load_assets_from_modules([topology_module]), web]
    resources = {
        "topology_file": TopologyResource(path=str(path)),
        "packer": PackerResource(),
        "openstack": OpenStackResource(),
        "podman": podman,
    }
    first = dg.materialize(assets, resources=resources, selection=["topology", "images/web"])
    [event] = [
        e.event_specific_data.materialization
        for e in first.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["images", "web"])
    ]
    meta = {k: v.value for k, v in event.metadata.items()}
    image_id = podman.image_id(lab_tag("web"))
    assert meta["image_id"] == image_id and meta["tag"] == lab_tag("web")
    assert meta["roles"] == "web-staging, web-production"
    assert event.tags["dagster/data_version"] == image_id
    assert first.output_for_node("images__web")["lab"] == {
        "id": image_id,
        "name": lab_tag("web"),
        "built": meta["what"] == "built",
    }
    # again: nothing changed, skipped, the same data version
    started = time.monotonic()
    again = dg.materialize(assets, resources=resources, selection=["topology", "images/web"])
    [event] = [
        e.event_specific_data.materialization
        for e in again.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["images", "web"])
    ]
    assert event.metadata["what"].value == "skipped"
    assert event.tags["dagster/data_version"] == image_id
    assert time.monotonic() - started < 30
