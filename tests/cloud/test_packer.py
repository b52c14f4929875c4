"""The PackerResource with the real Packer 1.6.6: a real build of a local source (the file
builder) baked by the real packer/scripts/bake.sh running `salt-call --local` with a tiny state
tree of the tests' own, streaming and manifest parsing; `packer validate` of the real OpenStack
template against the FAKE OpenStack API (Packer's openstack builder authenticates while it
prepares); formatting; parsing of recorded machine-readable output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fakes.openstack import FakeOpenStack

from resources.openstack import OpenStackResource, redacted_env
from resources.packer import PackerError, PackerResource, decode_machine_line, read_manifest

HERE = Path(__file__).parents[1]
SALT_CALL = str(Path(sys.executable).parent / "salt-call")


@pytest.fixture
def local_packer(tmp_path) -> PackerResource:
    return PackerResource(template_dir=str(HERE / "packer"), work_dir=str(tmp_path / "work"))


def local_vars(tmp_path: Path, repo_root: Path, roles: str) -> dict:
    return {
        "out_dir": str(tmp_path),
        "image_name": "coop-test-20261130-0300",
        "roles": roles,
        "salt_call": SALT_CALL,
        "bake_script": str(repo_root / "packer" / "scripts" / "bake.sh"),
    }


def test_a_real_build_streams_its_output_and_returns_the_manifest_artifact(
    tmp_path, repo_root, local_packer
):
    lines: list[str] = []
    build = local_packer.build(
        template="local.pkr.hcl",
        variables=local_vars(tmp_path, repo_root, "web-staging,dns"),
        log=lines.append,
    )
    [artifact] = build.artifacts
    assert artifact.builder_type == "file" and artifact.build_name == "image"
    assert artifact.image_name == "coop-test-20261130-0300"
    assert artifact.custom_data["roles"] == "web-staging,dns"
    assert artifact.files == [str(tmp_path / "image.txt")]
    assert json.loads(Path(build.manifest).read_text())["last_run_uuid"] == build.run_uuid

    # the states were baked by salt-call --local, chosen by the roles in the pillar
    baked = (tmp_path / "baked-web-staging.txt").read_text()
    assert baked == "web-staging baked into image-test (image_bake=True)\n"
    assert (tmp_path / "baked-dns.txt").exists()
    # each line reached the log decoded, in order: the bake's, then Packer's summary
    text = "\n".join(lines)
    assert "bake: applying the states of web-staging,dns" in text
    assert "Succeeded: 2 (changed=2)" in text
    assert text.index("bake: done") < text.index("Builds finished")
    assert "%!(PACKER_COMMA)" not in text and not any(line[:10].isdigit() for line in lines)


def test_a_failing_state_fails_the_build_with_packer_s_error(tmp_path, repo_root, local_packer):
    lines: list[str] = []
    with pytest.raises(PackerError) as err:
        local_packer.build(
            template="local.pkr.hcl",
            variables=local_vars(tmp_path, repo_root, "broken"),
            log=lines.append,
        )
    assert "non-zero exit status" in str(err.value)
    assert any("the broken state ran" in line for line in lines)
    assert not list((tmp_path / "work").glob("*.manifest.json"))  # no artifact recorded


def test_missing_template_or_variables_file(tmp_path, local_packer):
    with pytest.raises(PackerError, match="no Packer template .*nope.pkr.hcl"):
        local_packer.build(template="nope.pkr.hcl", variables={})
    with pytest.raises(PackerError, match="variables file .*absent.pkrvars.hcl is missing"):
        local_packer.validate(
            template="local.pkr.hcl", variables={}, var_files=[tmp_path / "absent.pkrvars.hcl"]
        )


@pytest.fixture
def fake():
    cloud = FakeOpenStack()
    cloud.start()
    yield cloud
    cloud.stop()


def openstack_vars(group: str = "web") -> dict:
    return {
        "group": group,
        "image_name": f"coop-{group}-20261130-0300",
        "salt_tree": str(HERE / "packer" / "salt"),
    }


def test_the_openstack_template_validates_against_the_fake_cloud(tmp_path, fake):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump(fake.clouds_yaml("catalyst")))
    openstack = OpenStackResource(clouds_yaml=str(clouds), password=fake.credentials.password)
    packer = PackerResource(work_dir=str(tmp_path / "work"))
    env = openstack.tool_env(cloud="catalyst")
    packer.validate(
        template="coop.pkr.hcl",
        variables=openstack_vars(),
        var_files=[Path("clouds/catalyst.pkrvars.hcl")],
        env=env,
        redact=redacted_env(env),
    )
    # Packer's openstack builder really authenticated against the fake Keystone
    assert ("POST", "/identity/v3/auth/tokens") in fake.requests()

    wrong = OpenStackResource(clouds_yaml=str(clouds), password="wrong-password-123")
    env = wrong.tool_env(cloud="catalyst")
    with pytest.raises(PackerError) as err:
        packer.validate(
            template="coop.pkr.hcl",
            variables=openstack_vars(),
            var_files=[Path("clouds/catalyst.pkrvars.hcl")],
            env=env,
            redact=redacted_env(env),
        )
    assert "Authentication failed" in str(err.value)
    assert "wrong-password-123" not in str(err.value)


def test_the_openstack_template_names_a_missing_salt_tree(tmp_path, fake):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump(fake.clouds_yaml("catalyst")))
    openstack = OpenStackResource(clouds_yaml=str(clouds), password=fake.credentials.password)
    packer = PackerResource(work_dir=str(tmp_path / "work"))
    with pytest.raises(PackerError, match=r"Bad source\s+'.*no-salt/'"):
        packer.validate(
            template="coop.pkr.hcl",
            variables={**openstack_vars(), "salt_tree": str(tmp_path / "no-salt")},
            var_files=[Path("clouds/catalyst.pkrvars.hcl")],
            env=openstack.tool_env(cloud="catalyst"),
        )
    # the syntax alone is checked offline, for any group
    packer.validate(
        template="coop.pkr.hcl",
        variables=openstack_vars("postgres"),
        var_files=[Path("clouds/catalyst.pkrvars.hcl")],
        syntax_only=True,
    )


def test_the_cloud_settings_let_packer_reach_the_build_instance(repo_root):
    """The cloud's default security group blocks ssh: the build instance needs a group that lets
    Packer in, and a network; the template hands both to the openstack source."""
    import hcl2

    def load(path: Path):
        def unquote(value):
            if isinstance(value, dict):
                return {k.strip('"'): unquote(v) for k, v in value.items()}
            if isinstance(value, list):
                return [unquote(v) for v in value]
            if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
                return value[1:-1]
            return value

        return unquote(hcl2.loads(path.read_text()))

    settings = load(repo_root / "packer" / "clouds" / "catalyst.pkrvars.hcl")
    assert settings["security_groups"] == ["coop-packer-build"]
    assert settings["network_discovery_cidrs"] == ["10.100.0.0/16"]  # nz-por-1's network
    template = load(repo_root / "packer" / "coop.pkr.hcl")
    [source] = [s["openstack"]["role"] for s in template["source"] if "openstack" in s]
    for key in ("security_groups", "networks", "network_discovery_cidrs", "floating_ip_network"):
        assert source[key] == f"${{var.{key}}}", key
    # and the README tells a person what to create on the cloud: each group the builds join,
    # with a rule that lets Packer's ssh in (port 22) from one address
    readme = (repo_root / "README.md").read_text()
    for group in settings["security_groups"]:
        assert f"`openstack security group create {group}`" in readme, group
        rule = re.search(
            r"`openstack security group rule create --protocol tcp --dst-port 22"
            rf" --remote-ip <[^>]+>/32 {re.escape(group)}`",
            readme,
        )
        assert rule, f"the README gives no ssh rule for {group}"


def test_templates_are_formatted(repo_root):
    for folder in (repo_root / "packer", HERE / "packer"):
        out = subprocess.run(
            ["packer", "fmt", "-check", "."], cwd=folder, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_machine_readable_lines_and_manifests_are_read(tmp_path):
    recorded = [
        "1795832310,,ui,message,    tiny.file.image: baking%!(PACKER_COMMA) with a comma",
        "1795832310,,ui,say,\\n==> Builds finished. The artifacts of successful builds are:",
        "1795832310,tiny.file.image,artifact,0,id,File",
        "not a machine-readable line",
    ]
    assert decode_machine_line(recorded[0]) == (
        "",
        "ui",
        ["message", "    tiny.file.image: baking, with a comma"],
    )
    assert decode_machine_line(recorded[1])[2][1].startswith("\n==> Builds finished")
    assert decode_machine_line(recorded[2]) == ("tiny.file.image", "artifact", ["0", "id", "File"])
    assert decode_machine_line(recorded[3]) is None

    manifest = tmp_path / "m.json"
    manifest.write_text(
        json.dumps(
            {
                "builds": [
                    {
                        "name": "role",
                        "builder_type": "openstack",
                        "artifact_id": "old-id",
                        "packer_run_uuid": "run-1",
                        "custom_data": {"image_name": "coop-web-1"},
                    },
                    {
                        "name": "role",
                        "builder_type": "openstack",
                        "build_time": 1795832310,
                        "artifact_id": "5f0e-new",
                        "packer_run_uuid": "run-2",
                        "custom_data": {"image_name": "coop-web-2", "group": "web"},
                    },
                ],
                "last_run_uuid": "run-2",
            }
        )
    )
    run, [artifact] = read_manifest(manifest)
    assert run == "run-2"
    assert (artifact.artifact_id, artifact.image_name) == ("5f0e-new", "coop-web-2")
    with pytest.raises(PackerError, match="wrote no manifest"):
        read_manifest(tmp_path / "none.json")
