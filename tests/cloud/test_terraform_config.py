"""The OpenStack configuration in terraform/: no OpenStack provider can be had here, so it is
checked by `terraform fmt -check`, by evaluating its provider-free layout module with the real
Terraform 1.0.3 on the co-op's topology (addresses and security rules as Terraform computes
them), by rendering its cloud-init template with Terraform, and by tests on its parsed HCL
(every OpenStack resource takes its values from the layout), and for secrets."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import hcl2
import pytest
import yaml
from cloud_env import cli_config, terraform_binary

from infra_assets.cloud.groups import image_groups
from infra_assets.cloud.tfvars import network_vars, salt_key_vars, stack_hosts
from infra_assets.configuration.salt_keys import KeyStore
from infra_assets.topology.model import address_plan, load_topology
from resources.terraform import TerraformResource

BASTION = "203.0.113.10/32"


@pytest.fixture(scope="module")
def coop(repo_root):
    return load_topology(repo_root / "topology.yaml")


@pytest.fixture(scope="module")
def layout(repo_root, coop, tmp_path_factory) -> dict:
    """The layout module's outputs for nz-por-1, as the real Terraform evaluates them."""
    folder = tmp_path_factory.mktemp("layout")
    stack = folder / "config" / "layout"
    stack.mkdir(parents=True)
    module = repo_root / "terraform" / "modules" / "layout"
    stack.joinpath("main.tf").write_text(
        'variable "location_number" { type = number }\n'
        'variable "bastion_cidr" { type = string }\n'
        'variable "hosts" { type = any }\n'
        'module "layout" {\n'
        f'  source          = "{module}"\n'
        "  location_number = var.location_number\n"
        "  bastion_cidr    = var.bastion_cidr\n"
        "  hosts           = var.hosts\n"
        "}\n"
        'output "layout" { value = module.layout }\n'
    )
    tf = TerraformResource(
        binary=str(terraform_binary()),
        config_dir=str(folder / "config"),
        data_dir=str(folder / "data"),
        backend="local",
        cli_config_file=str(cli_config(folder)),
    )
    stack.joinpath("backend.tf").write_text('terraform {\n  backend "local" {}\n}\n')
    variables = network_vars(coop, "nz-por-1")
    variables["bastion_cidr"] = BASTION
    plan = tf.plan(
        stack="layout",
        location="nz-por-1",
        variables={k: variables[k] for k in ("location_number", "bastion_cidr", "hosts")},
        log=lambda _l: None,
    )
    outputs = tf.apply(plan=plan, log=lambda _l: None).outputs
    # a preview plan's user-data (no key pairs), as terraform/instances renders it
    preview = TerraformResource(binary=str(terraform_binary())).user_data(
        stack="instances",
        variables={
            "hosts": {"web-staging-1": {"roles": ["web-staging", "dns"]}},
            "location": "nz-por-1",
            "salt_master_address": "10.100.1.1",
        },
    )
    return {**outputs["layout"]["value"], "cloud_init": preview["web-staging-1"]}


def test_the_configuration_is_formatted(repo_root, tmp_path):
    tf = TerraformResource(binary=str(terraform_binary()))
    assert tf.fmt_check(path=repo_root / "terraform") == []
    assert tf.fmt_check(path=Path(__file__).parents[1] / "terraform") == []
    # and the check does catch a badly formatted file
    bad = tmp_path / "bad.tf"
    bad.write_text('resource "null_resource" "x" {\ntriggers = {a="b"}\n}\n')
    assert tf.fmt_check(path=tmp_path) == [str(bad)]


def test_every_host_has_its_addresses_on_its_port(coop, layout):
    plan = address_plan(coop)
    hosts = [h for h, host in coop.hosts.items() if host.location == "nz-por-1"]
    assert sorted(layout["ports"]) == sorted(hosts)
    for host in hosts:
        expected = [a.address for a in plan.for_host(host)]
        assert layout["ports"][host]["fixed_ips"] == expected, host
    # support-1 carries its service addresses too, its primary first
    assert layout["ports"]["support-1"]["fixed_ips"] == [
        "10.100.1.1",
        "10.100.3.1",
        "10.100.9.1",
        "10.100.10.1",
        "10.100.11.1",
        "10.100.12.1",
    ]
    # DHCP never hands out a planned address (they are all 10.N.T.I with T >= 1)
    pool = layout["allocation_pool"]
    assert (pool["start"], pool["end"]) == ("10.100.0.10", "10.100.0.250")
    assert layout["cidr"] == "10.100.0.0/16" and layout["gateway_ip"] == "10.100.0.1"


def _rules(layout: dict) -> list[dict]:
    return list(layout["security_rules"].values())


def _groups_of(layout: dict, host: str) -> set[str]:
    return set(layout["ports"][host]["security_groups"])


def test_ssh_only_from_the_bastion(layout):
    ssh = [
        r for r in _rules(layout) if r["port_min"] <= 22 <= r["port_max"] and r["protocol"] == "tcp"
    ]
    assert ssh == [
        {"group": "base", "protocol": "tcp", "port_min": 22, "port_max": 22, "remote": BASTION}
    ]
    assert all("base" in groups["security_groups"] for groups in layout["ports"].values())


def test_only_web_hosts_are_open_to_the_world_and_only_on_80_and_443(coop, layout):
    world = [r for r in _rules(layout) if r["remote"] == "0.0.0.0/0"]
    assert {(r["group"], r["protocol"], r["port_min"], r["port_max"]) for r in world} == {
        ("web", "tcp", 80, 80),
        ("web", "tcp", 443, 443),
    }
    with_web = {h for h in layout["ports"] if "web" in _groups_of(layout, h)}
    web_hosts = {
        h for h, host in coop.hosts.items() if {"web-staging", "web-production"} & set(host.roles)
    }
    assert with_web == web_hosts == {"web-staging-1", "web-production-1"}
    # ... and those, only, get a floating IP: "from anywhere" must reach them
    assert set(layout["public_hosts"]) == web_hosts


# Every ingress rule of the co-op's topology (nz-por-1), written by hand: (group, protocol,
# ports) -> the remote addresses. Primary addresses: support-1 10.100.1.1, support-2 (the build
# agent) 10.100.2.1, web-staging-1 10.100.5.1, web-production-1 10.100.6.1, pg-staging-1
# 10.100.7.1, pg-production-1 10.100.8.1. Not derived from the code that writes the rules.
PRIVATE = "10.100.0.0/16"
EVERY_HOST = [f"10.100.{t}.1/32" for t in (1, 2, 5, 6, 7, 8)]
MATRIX = {
    ("base", "tcp", 22, 22): [BASTION],
    ("base", "icmp", 0, 0): [PRIVATE],
    ("salt-master", "tcp", 4505, 4506): EVERY_HOST,  # every minion
    # the read-only door: the web hosts (pull releases), the agent, Dagster
    ("docker-registry", "tcp", 5000, 5000): [
        "10.100.1.1/32",
        "10.100.2.1/32",
        "10.100.5.1/32",
        "10.100.6.1/32",
    ],
    # the push door: the agent, and Dagster (on support-1)
    ("docker-registry", "tcp", 5001, 5001): ["10.100.1.1/32", "10.100.2.1/32"],
    ("npm-cache", "tcp", 4873, 4873): ["10.100.2.1/32"],  # the build agent
    ("pypi-cache", "tcp", 3141, 3141): ["10.100.2.1/32"],  # the build agent
    ("dns", "udp", 53, 53): [PRIVATE],
    ("dns", "tcp", 53, 53): [PRIVATE],
    ("jenkins-master", "tcp", 8080, 8080): ["10.100.1.1/32", "10.100.2.1/32"],  # agent, Dagster
    ("web", "tcp", 80, 80): ["0.0.0.0/0"],
    ("web", "tcp", 443, 443): ["0.0.0.0/0"],
    ("postgres-staging", "tcp", 5432, 5432): ["10.100.5.1/32"],  # the staging web host
    # the production web host, and Dagster on support-1 (its instance's database)
    ("postgres-production", "tcp", 5432, 5432): ["10.100.1.1/32", "10.100.6.1/32"],
    ("dagster", "tcp", 443, 443): EVERY_HOST,  # Dagster's UI (behind its login): the hosts
}


def test_the_security_groups_are_the_hand_written_matrix(coop, layout):
    """Each guarded port is open to the hosts the role catalogue names and nothing else (salt to
    every host, Jenkins and the registry's push door to the build agent, the read-only door to
    the web hosts and the agent, the npm and PyPI caches to the agent, each PostgreSQL to its
    environment's web host); DNS to the private network, the web to the world, ssh to the
    bastion. `dagster` is the salt master's host (support-1), where Dagster runs."""
    seen: dict[tuple, list[str]] = {}
    for rule in _rules(layout):
        key = (rule["group"], rule["protocol"], rule["port_min"], rule["port_max"])
        seen.setdefault(key, []).append(rule["remote"])
    assert {k: sorted(v) for k, v in seen.items()} == {k: sorted(v) for k, v in MATRIX.items()}
    # each group is on the hosts holding its role, and on no other
    for group, role in [
        ("salt-master", "salt-master"),
        ("docker-registry", "docker-registry"),
        ("npm-cache", "npm-cache"),
        ("pypi-cache", "pypi-cache"),
        ("jenkins-master", "jenkins-master"),
        ("postgres-staging", "postgres-staging"),
        ("postgres-production", "postgres-production"),
        ("dagster", "dagster"),
    ]:
        holders = {h for h, host in coop.hosts.items() if role in host.roles}
        assert {h for h in layout["ports"] if group in _groups_of(layout, h)} == holders, group


def test_the_cloud_init_points_the_minion_at_the_master(layout):
    data = yaml.safe_load(layout["cloud_init"])
    assert data["hostname"] == "web-staging-1"
    files = {f["path"]: f["content"] for f in data["write_files"]}
    assert yaml.safe_load(files["/etc/salt/minion.d/coop.conf"]) == {
        "id": "web-staging-1",
        "master": "10.100.1.1",
    }
    assert yaml.safe_load(files["/etc/salt/grains"]) == {"roles": ["web-staging", "dns"]}
    assert layout["cloud_init"].startswith("#cloud-config\n")


# Nova refuses user-data over 65535 bytes once base64-encoded.
NOVA_USER_DATA_LIMIT = 65535


def _decoded_files(text: str) -> dict[str, tuple[str, str]]:
    files = {}
    for item in yaml.safe_load(text)["write_files"]:
        content = item["content"]
        if item.get("encoding") == "b64":
            content = base64.b64decode(content).decode()
        files[item["path"]] = (content, item["permissions"])
    return files


def test_each_server_s_user_data_carries_its_key_pair_and_the_master_s_the_accepted_keys(
    coop, tmp_path
):
    """In a plan made to be applied, every server of the co-op's topology gets its own salt key
    pair (root-only), the master's public key pinned (file and fingerprint); the master's server
    also the master's pair and every declared host's public key as accepted; nobody else gets
    a private key that is not theirs. The master's user-data stays under Nova's limit."""
    store = KeyStore(tmp_path / "keys")
    store.ensure(sorted(coop.hosts))
    master = coop.salt_master()
    variables = {
        "hosts": {h: {"roles": list(s.roles)} for h, s in coop.hosts.items()},
        "location": "nz-por-1",
        "salt_master_address": "10.100.1.1",
        **salt_key_vars(coop, "nz-por-1", store, private=True),
    }
    rendered = TerraformResource(binary=str(terraform_binary())).user_data(
        stack="instances", variables=variables
    )
    assert sorted(rendered) == sorted(coop.hosts)
    secrets = {name: store.get(name).private_pem for name in ["master", *coop.hosts]}
    for host, text in rendered.items():
        files = _decoded_files(text)
        pair = store.minion(host)
        assert files["/etc/salt/pki/minion/minion.pem"] == (pair.private_pem, "0600"), host
        assert files["/etc/salt/pki/minion/minion.pub"] == (pair.public_pem, "0644"), host
        pinned = store.master().public_pem
        assert files["/etc/salt/pki/minion/minion_master.pub"] == (pinned, "0644"), host
        conf = yaml.safe_load(files["/etc/salt/minion.d/coop.conf"][0])
        assert conf["master_finger"] == store.master().finger
        theirs = {host} | ({"master"} if host == master else set())
        written = "".join(content for content, _mode in files.values())
        for name, pem in secrets.items():
            assert (pem in written) == (name in theirs), (host, name)
        accepted = {p: c for p, c in files.items() if p.startswith("/etc/salt/pki/master/minions/")}
        if host == master:
            assert files["/etc/salt/pki/master/master.pem"] == (store.master().private_pem, "0600")
            assert {p.rsplit("/", 1)[1]: c for p, (c, _m) in accepted.items()} == {
                h: store.minion(h).public_pem for h in coop.hosts
            }
            assert len(base64.b64encode(text.encode())) < NOVA_USER_DATA_LIMIT
        else:
            assert accepted == {} and "/etc/salt/pki/master/master.pem" not in files


def test_a_preview_plan_s_user_data_holds_no_private_key(coop, tmp_path):
    """The plan job's plans (pull requests, the nightly drift check) get the public halves
    only: the fingerprint to pin, and no key files at all."""
    store = KeyStore(tmp_path / "keys")
    store.ensure(sorted(coop.hosts))
    data = salt_key_vars(coop, "nz-por-1", store, private=False)
    assert "salt_minion_keys" not in data and "salt_master_key" not in data
    assert "PRIVATE KEY" not in json.dumps(data)
    rendered = TerraformResource(binary=str(terraform_binary())).user_data(
        stack="instances",
        variables={
            "hosts": {h: {"roles": list(s.roles)} for h, s in coop.hosts.items()},
            "location": "nz-por-1",
            "salt_master_address": "10.100.1.1",
            **data,
        },
    )
    for text in rendered.values():
        assert "PRIVATE KEY" not in "".join(c for c, _m in _decoded_files(text).values())
        assert "/etc/salt/pki/minion/minion.pem" not in text
    # and a plan to be applied refuses to go without the pairs
    with pytest.raises(ValueError, match="materialise `minion_keys` first"):
        salt_key_vars(coop, "nz-por-1", KeyStore(tmp_path / "none"), private=True)
    with pytest.raises(ValueError, match="no salt key pair for web-staging-1"):
        lacking = KeyStore(tmp_path / "lacking")
        lacking.ensure([h for h in coop.hosts if h != "web-staging-1"])
        salt_key_vars(coop, "nz-por-1", lacking, private=True)


def test_the_cloud_init_installs_the_minion_into_a_venv_pinned_as_the_images_do(
    repo_root, layout, tmp_path
):
    """Debian 12 has no salt-minion: where an image lacks it, cloud-init installs salt from PyPI
    into the venv /opt/salt with the images' pinned closure (a copy of
    packer/salt-requirements.txt), the same way as bake.sh, and the minion's unit as
    salt.minion ships it; no other apt repository."""
    data = yaml.safe_load(layout["cloud_init"])
    files = {f["path"]: f for f in data["write_files"]}
    install = files["/usr/local/sbin/coop-install-salt-minion"]
    assert install["permissions"] == "0755"
    script = install["content"]
    assert data["runcmd"][0] == ["/usr/local/sbin/coop-install-salt-minion"]
    assert data["runcmd"][1:] == [
        ["systemctl", "enable", "salt-minion"],
        ["systemctl", "restart", "salt-minion"],
    ]
    # the rendered script is valid shell
    path = tmp_path / "install.sh"
    path.write_text(script)
    assert subprocess.run(["sh", "-n", str(path)], capture_output=True).returncode == 0

    # the images' pinned requirements, as Terraform rendered them
    requirements = (repo_root / "packer" / "salt-requirements.txt").read_text()
    assert files["/etc/salt/requirements.txt"]["content"] == requirements
    assert "\nsalt==3008.4 --hash=sha256:" in requirements

    lines = [" ".join(line.split()) for line in script.splitlines() if line.strip()]
    venv, build, pip = (
        next(i for i, line in enumerate(lines) if line.startswith(marker))
        for marker in (
            "python3 -m venv /opt/salt",
            "/opt/salt/bin/pip install -q --no-cache-dir --require-hashes -r",
            "/opt/salt/bin/pip install -q --no-cache-dir --require-hashes --no-build-isolation",
        )
    )
    assert venv < build < pip
    assert lines[build].endswith("-r /etc/salt/build-requirements.txt")
    assert lines[pip + 1] == "-r /etc/salt/requirements.txt"
    build_requirements = (repo_root / "packer" / "salt-build-requirements.txt").read_text()
    assert files["/etc/salt/build-requirements.txt"]["content"] == build_requirements
    assert "apt-get install -y -q python3-venv ca-certificates gcc python3-dev" in lines
    for old in ("salt.sources", "keyrings", "preferences.d", "apt-get install -y -q salt-minion"):
        assert old not in script, old
    # bake.sh: the same venv, from the same file, and the same links
    bake = (repo_root / "packer" / "scripts" / "bake.sh").read_text()
    assert "SALT_VENV=/opt/salt\n" in bake
    assert 'python3 -m venv "$SALT_VENV"' in bake
    assert (
        "for command in salt salt-call salt-minion salt-master salt-api salt-key salt-run; do"
        in bake
    )
    assert (
        "for command in salt salt-call salt-minion salt-master salt-api salt-key salt-run; do"
        in script
    )
    # the unit is salt.minion's, line for line
    unit = script.split("<<'UNIT'\n", 1)[1].split("UNIT\n", 1)[0]
    state = (repo_root / "salt" / "salt" / "minion.sls").read_text()
    shipped = state.split("    - contents: |\n", 1)[1].split("{%", 1)[0]
    assert unit == "".join(line[8:] + "\n" for line in shipped.rstrip("\n").splitlines())
    assert "ExecStart=/opt/salt/bin/salt-minion\n" in unit


def _hcl(path: Path) -> dict:
    def unquote(value):
        if isinstance(value, dict):
            return {k.strip('"'): unquote(v) for k, v in value.items() if k != "__comments__"}
        if isinstance(value, list):
            return [unquote(v) for v in value]
        if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
            return value[1:-1]
        return value

    with open(path) as handle:
        return unquote(hcl2.load(handle))


def _resources(path: Path) -> dict[str, dict]:
    found = {}
    for block in _hcl(path).get("resource", []):
        for rtype, named in block.items():
            for name, body in named.items():
                found[f"{rtype}.{name}"] = body
    return found


def test_openstack_resources_take_their_values_from_the_layout(repo_root):
    network = _resources(repo_root / "terraform" / "network" / "main.tf")
    rules = {
        k: v for k, v in network.items() if k.startswith("openstack_networking_secgroup_rule_v2.")
    }
    assert set(rules) == {
        "openstack_networking_secgroup_rule_v2.ingress",
        "openstack_networking_secgroup_rule_v2.egress",
    }
    ingress = rules["openstack_networking_secgroup_rule_v2.ingress"]
    assert ingress["for_each"] == "${module.layout.security_rules}"
    assert ingress["direction"] == "ingress"
    assert ingress["remote_ip_prefix"] == "${each.value.remote}"
    assert rules["openstack_networking_secgroup_rule_v2.egress"]["direction"] == "egress"
    groups = network["openstack_networking_secgroup_v2.group"]
    assert groups["for_each"] == "${module.layout.security_groups}"
    assert groups["delete_default_rules"] is True
    subnet = network["openstack_networking_subnet_v2.private"]
    assert subnet["cidr"] == "${module.layout.cidr}"

    instances = _resources(repo_root / "terraform" / "instances" / "main.tf")
    port = instances["openstack_networking_port_v2.host"]
    assert port["for_each"] == "${module.layout.ports}"
    fixed = port["dynamic"][0]["fixed_ip"]
    assert fixed["for_each"] == "${each.value.fixed_ips}"
    assert "each.value.security_groups" in port["security_group_ids"]
    server = instances["openstack_compute_instance_v2.host"]
    assert server["network"][0]["port"] == "${openstack_networking_port_v2.host[each.key].id}"
    assert server["image_id"] == "${var.images[each.value.image_group]}"
    assert server["user_data"] == "${local.user_data[each.key]}"  # user_data.tf, tested above
    # A newer image, or new user-data, leaves an existing server alone (the stand-in's test of
    # it, in test_terraform_resource.py, stands for this block)
    assert server["lifecycle"] == [
        {"ignore_changes": ["image_id", "user_data"], "__is_block__": True}
    ]
    # the web hosts' floating IPs: from the location's external network, on the host's port
    floating = instances["openstack_networking_floatingip_v2.public"]
    assert floating["for_each"] == "${module.layout.public_hosts}"
    assert floating["pool"] == "${var.external_network}"
    associate = instances["openstack_networking_floatingip_associate_v2.public"]
    assert associate["for_each"] == "${module.layout.public_hosts}"
    assert associate["port_id"] == "${openstack_networking_port_v2.host[each.key].id}"
    assert associate["floating_ip"] == (
        "${openstack_networking_floatingip_v2.public[each.key].address}"
    )


def test_both_stacks_keep_remote_state_in_pg_and_share_the_location_settings(repo_root):
    for stack in ("network", "instances"):
        versions = _hcl(repo_root / "terraform" / stack / "versions.tf")
        backend = versions["terraform"][0]["backend"][0]
        assert list(backend) == ["pg"], stack
        assert backend["pg"] in ({}, {"__is_block__": True}), "no backend setting in git"
    # One file, not two copies that agree today: each stack's location.tf is a link to it.
    shared = repo_root / "terraform" / "shared" / "location.tf"
    assert shared.is_file() and not shared.is_symlink()
    for stack in ("network", "instances"):
        link = repo_root / "terraform" / stack / "location.tf"
        assert link.is_symlink(), f"{link} is a copy, not a link to terraform/shared/location.tf"
        assert link.resolve(strict=True) == shared.resolve(), stack
    # ... and it declares the settings both stacks read from terraform/locations/<location>.tfvars
    variables = {name for block in _hcl(shared).get("variable", []) for name in block}
    assert {"bastion_cidr", "external_network"} <= variables, variables


def test_the_stand_in_has_the_real_stacks_outputs_and_resources(repo_root):
    def outputs(path: Path) -> set[str]:
        return set(re.findall(r'^output "([^"]+)"', path.read_text(), re.M))

    def for_each(path: Path) -> dict[str, str]:
        """Resource address -> what it is made for (`for_each`, else one)."""
        return {
            address: str(body.get("for_each", body.get("count", "one")))
            for address, body in _resources(path).items()
        }

    for stack in ("network", "instances"):
        real = set().union(*(outputs(p) for p in (repo_root / "terraform" / stack).glob("*.tf")))
        standin_file = Path(__file__).parents[1] / "terraform" / "standin" / stack / "standin.tf"
        # the stand-in's one extra output shows the tests what user-data the servers would get
        assert real == outputs(standin_file) - {"user_data"}, stack
    # every resource of the real instances stack has its stand-in, made as many times
    real = for_each(repo_root / "terraform" / "instances" / "main.tf")
    standin = for_each(
        Path(__file__).parents[1] / "terraform" / "standin" / "instances" / "standin.tf"
    )
    assert sorted(real.values()) == sorted(standin.values())
    assert len(real) == 4  # port, server, floating IP, its association


def test_every_role_of_the_coop_has_an_image_group_and_a_security_group_if_it_serves(
    repo_root, coop
):
    groups = image_groups()
    roles = {r for g in groups.values() for r in g.roles}
    assert set(coop.roles()) <= roles
    hosts = stack_hosts(coop, "nz-por-1")
    assert hosts["support-1"]["image_group"] == "support"
    assert hosts["support-2"]["image_group"] == "builder"
    assert hosts["pg-production-1"]["image_group"] == "postgres"


SECRET_PATTERNS = [
    re.compile(r"(password|secret|token|private_key|access_key)\s*=\s*\"[^\"$]+\"", re.I),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"postgres(ql)?://[^/\s:@]+:[^/\s@]+@"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
]


def test_no_secret_in_the_configuration_or_the_generated_variables(repo_root, coop):
    files = [p for d in ("terraform", "packer") for p in (repo_root / d).rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        text = path.read_text()
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{path}: {pattern.pattern}"
    generated = json.dumps(network_vars(coop, "nz-por-1"))
    assert not re.search(r"password|secret|token", generated, re.I)
    # and the patterns do find a secret
    assert SECRET_PATTERNS[0].search('password = "hunter2"')
    assert SECRET_PATTERNS[2].search("postgres://tf:hunter2@db/state")
