"""The role catalogue (salt/roles.yaml): the one place each role's states, image group, service
and port, containers and pillar blocks live; every reader (top.sls, the highstate assets, the
image groups, the pillar, the lab's containers) takes them from there, and a broken catalogue is
a clear error naming the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from infra_assets.configuration.pillar import render_pillars
from infra_assets.topology.model import load_topology
from infra_assets.topology.roles import CATALOGUE_FILE, RoleCatalogueError, role_catalogue
from infra_assets.topology.secrets import ensure_secrets
from infra_assets.topology.sites import site_for


def test_every_role_of_both_topologies_is_in_the_catalogue(repo_root):
    catalogue = role_catalogue()
    for name in ("topology.yaml", "topology.lab.yaml"):
        topo = load_topology(repo_root / name)
        used = {role for host in topo.hosts.values() for role in host.roles}
        assert used <= set(catalogue.roles), used - set(catalogue.roles)
    assert catalogue.group_roles("support") == (
        "salt-master", "jenkins-master", "docker-registry", "npm-cache", "pypi-cache", "dagster",
        "dns",
    )  # fmt: skip
    assert catalogue.group_roles("web") == ("web-staging", "web-production")
    assert catalogue.roles["web-staging"].states == ("web",)
    assert catalogue.roles["jenkins-agent"].privileged and not catalogue.roles["dns"].privileged
    assert catalogue.roles["npm-cache"].uplinks == ("registry.npmjs.org:443",)
    assert catalogue.port("registry") == 5000 and catalogue.port("salt-api") == 8000
    assert catalogue.services()["postgres-staging"] == "postgres"


def test_the_pillar_blocks_come_from_the_catalogue(repo_root, tmp_path):
    topo = load_topology(repo_root / "topology.yaml")
    secrets = ensure_secrets(tmp_path / "secrets.yaml", topo, tls_names=["x"])
    pillars = render_pillars(site_for(topo), secrets)
    # The build agent gets the push account, a web host the pull account: never the other one.
    agent = [h for h, s in topo.hosts.items() if "jenkins-agent" in s.roles][0]
    assert pillars[agent]["registry_client"]["user"] == "ci"
    assert pillars["web-staging-1"]["registry_client"]["user"] == "deploy"
    catalogue = role_catalogue()
    for host, spec in topo.hosts.items():
        blocks = {b for r in spec.roles for b in catalogue.roles[r].pillar}
        keys = set(pillars[host]) - {"roles", "coop", "salt", "firewall"}  # every host's
        expected = {"registry_client" if b.startswith("registry_") else b for b in blocks}
        expected = (expected - {"salt_master"}) | ({"apps"} if "web" in blocks else set())
        assert keys == expected, (host, keys, expected)


def _broken(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(CATALOGUE_FILE.read_text())
    edit(data)
    path = tmp_path / "roles.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["roles"]["dns"].pop("image"), "roles.dns.image: None is not an image group"),
        (lambda d: d["roles"]["dns"].update(image="dnsbox"), "roles.dns.image: 'dnsbox' is not"),
        (lambda d: d["roles"]["dns"].update(states=[]), "roles.dns.states: must be a non-empty"),
        (lambda d: d["roles"]["dns"].update(servce={}), "roles.dns: unknown key(s) servce"),
        (
            lambda d: d["roles"]["dns"].update(service={"name": "dns", "port": 70000}),
            "roles.dns.service.port: must be a port number",
        ),
        (lambda d: d["images"].update(spare={}), "images.spare: no role has `image: spare`"),
        (lambda d: d.pop("images"), "`images` must map each image group"),
        (
            lambda d: d["roles"]["jenkins-agent"].update(containers_reach=["npm-cach"]),
            "roles.jenkins-agent.containers_reach: 'npm-cach' is no role of the catalogue with a"
            " service",
        ),
        (
            lambda d: d["roles"]["jenkins-agent"].update(containers_reach="npm-cache"),
            "roles.jenkins-agent.containers_reach: must be a list of roles",
        ),
    ],
    ids=[
        "no-image",
        "unknown-image",
        "no-states",
        "typo",
        "bad-port",
        "empty-group",
        "no-images",
        "reach-unknown",
        "reach-not-a-list",
    ],  # fmt: skip
)
def test_a_broken_catalogue_names_the_file_and_the_key(tmp_path, edit, expected):
    path = _broken(tmp_path, edit)
    with pytest.raises(RoleCatalogueError) as err:
        role_catalogue(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


def test_a_pillar_block_nobody_builds_is_a_clear_error(repo_root, tmp_path, monkeypatch):
    path = _broken(tmp_path, lambda d: d["roles"]["dns"].update(pillar=["dns", "dnssec"]))
    monkeypatch.setattr(
        "infra_assets.configuration.pillar.role_catalogue", lambda: role_catalogue(path)
    )
    topo = load_topology(repo_root / "topology.yaml")
    with pytest.raises(RoleCatalogueError, match=r"roles\.dns\.pillar: no pillar block 'dnssec'"):
        render_pillars(site_for(topo), None)


def test_top_sls_reads_the_catalogue_through_salt(tmp_path, repo_root):
    """salt's own renderer turns the catalogue into the top file: each role matched by its
    pillar `roles`, with the catalogue's states."""
    import json
    import subprocess
    import sys

    tree = tmp_path / "salt"
    shutil.copytree(repo_root / "salt", tree)
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "minion").write_text(
        yaml.safe_dump(
            {
                "file_client": "local",
                "file_roots": {"base": [str(tree)]},
                "root_dir": str(tmp_path / "root"),
                "id": "top-check",
            }
        )
    )
    out = subprocess.run(
        [str(Path(sys.executable).parent / "salt-call"), "--local", "-c", str(conf),
         "--out=json", "slsutil.renderer", str(tree / "top.sls")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    top = json.loads(out.stdout)["local"]["base"]
    assert top["*"] == ["common", "salt.minion"]
    catalogue = role_catalogue()
    for role, spec in catalogue.roles.items():
        assert top[f"I@roles:{role}"] == [{"match": "compound"}, *spec.states]


def test_a_lab_image_depends_on_the_catalogue_only_through_its_roles_states(tmp_path, repo_root):
    """A port, an uplink or a pillar block in the catalogue rebuilds no lab image; a state of
    one of the image's roles does (what goes into the image's inputs hash)."""
    from infra_assets.cloud.images import group_role_states, group_salt_files

    tree = tmp_path / "salt"
    shutil.copytree(repo_root / "salt", tree)
    web = ["web-staging", "web-production"]

    def inputs() -> tuple[list[str], dict]:
        files = [str(p.relative_to(tree)) for p in group_salt_files(tree, web)]
        return files, group_role_states(tree, web)

    before = inputs()
    assert "roles.yaml" not in before[0]
    data = yaml.safe_load((tree / "roles.yaml").read_text())
    data["roles"]["web-staging"]["service"]["port"] = 8080
    data["roles"]["npm-cache"]["uplinks"] = ["registry.example.org:443"]
    data["roles"]["web-production"]["pillar"] = ["web"]
    (tree / "roles.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert inputs() == before
    data["roles"]["web-staging"]["states"] = ["web", "dns"]
    (tree / "roles.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert inputs()[1] != before[1]


def test_what_only_releases_apply_is_in_no_image_s_inputs(repo_root):
    """The `app` state and its module (salt/app/, salt/_states/coop_app.py) are applied by
    releases on running hosts: a change to them rebuilds no lab image (nor a cloud one:
    tests/cloud/test_cloud_sensor.py)."""
    from infra_assets.cloud.images import group_salt_files

    tree = repo_root / "salt"
    assert (tree / "app" / "init.sls").is_file() and (tree / "_states" / "coop_app.py").is_file()
    for roles in (["web-staging", "web-production"], ["salt-master", "docker-registry"]):
        files = {str(p.relative_to(tree)) for p in group_salt_files(tree, roles)}
        assert "web/init.sls" in files or "salt/master.sls" in files
        assert not {f for f in files if f.startswith(("app/", "_states/"))}, files


def test_only_from_names_a_port_of_the_role_and_roles_of_the_catalogue(tmp_path):
    """A guarded port must be the role's own, its sources roles of the catalogue (or `dagster`):
    a typo would otherwise leave a door closed to everyone or open to no one intended."""
    catalogue = role_catalogue()
    assert catalogue.roles["docker-registry"].only_from == {
        "registry": ("web-staging", "web-production", "jenkins-agent", "dagster"),
        "registry-push": ("jenkins-agent", "dagster"),
    }
    text = (catalogue.path).read_text()
    broken = tmp_path / "roles.yaml"
    original = "      registry-push: [jenkins-agent, dagster]"
    assert original in text
    broken.write_text(text.replace(original, "      registry-pushh: [jenkins-agnet, dagster]"))
    with pytest.raises(RoleCatalogueError) as err:
        role_catalogue(broken)
    message = str(err.value)
    assert f"{broken}: " in message
    assert "roles.docker-registry.only_from.registry-pushh: not this role's service or one of" in (
        message
    )
    assert "roles.docker-registry.only_from.registry-pushh: 'jenkins-agnet' is no role" in message
