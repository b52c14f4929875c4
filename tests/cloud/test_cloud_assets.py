"""The cloud part's Dagster assets, run in process: `plan/<stack>/<location>`, its gates,
`network/<location>` and `instances/<location>`, `images/<group>`.

Real: Dagster, Terraform 1.0.3 with the null provider (the stand-in of the OpenStack stacks, fed
by the real layout module and the variables the assets derive from the topology), Packer 1.6.6
(a stand-in template that "builds" by registering an image), openstacksdk. FAKE: the OpenStack
API (tests/fakes/openstack.py); the servers that the OpenStack provider would create are seeded
in it by the tests, since no provider can create them here."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from cloud_env import terraform_resource, write_location
from fakes.openstack import FakeOpenStack

from infra_assets.cloud.stacks import GIT_SHA_TAG as GIT_SHA
from infra_assets.cloud.tfvars import salt_key_vars
from infra_assets.configuration.salt_keys import KeyStore
from infra_assets.definitions import build_definitions
from infra_assets.topology.model import load_topology
from resources.infra_repo import InfraRepoResource
from resources.openstack import GROUP_PROPERTY, OpenStackResource
from resources.packer import PackerResource

HERE = Path(__file__).parents[1]

TOPOLOGY = """
locations:
  test-1: {number: 42, cloud: fake}
types: {salt-master: 1, web-staging: 5, docker-registry: 9}
hosts:
  support-1: {location: test-1, instance: 1, roles: [salt-master, docker-registry, dns]}
  web-staging-1: {location: test-1, instance: 1, roles: [web-staging]}
  web-staging-2: {location: test-1, instance: 2, roles: [web-staging]}
"""
L = "test-1"
PLAN_NETWORK = dg.AssetKey(["plan", "network", L])
PLAN_INSTANCES = dg.AssetKey(["plan", "instances", L])
NETWORK = dg.AssetKey(["network", L])
INSTANCES = dg.AssetKey(["instances", L])
# What the OpenStack provider would have made for TOPOLOGY: each server with its addresses.
SERVERS = {
    "support-1": ["10.42.1.1", "10.42.9.1"],
    "web-staging-1": ["10.42.5.1"],
    "web-staging-2": ["10.42.5.2"],
}


class Site:
    """A cloud location of the tests' own: its topology file, the fake cloud, the resources."""

    def __init__(self, root: Path, fake: FakeOpenStack, monkeypatch):
        self.root = root
        self.fake = fake
        self.topology_file = root / "topology.yaml"
        self.topology_file.write_text(TOPOLOGY)
        monkeypatch.setenv("INFRA_TOPOLOGY", str(self.topology_file))
        monkeypatch.delenv("OS_PASSWORD", raising=False)
        # where `minion_keys` keeps the salt key pairs that the servers' user-data carries
        self.keys_dir = root / "salt-keys"
        monkeypatch.setenv("INFRA_SALT_KEYS_DIR", str(self.keys_dir))
        clouds = root / "clouds.yaml"
        clouds.write_text(yaml.safe_dump(fake.clouds_yaml("fake")))
        self.terraform = terraform_resource(root / "tf")
        write_location(Path(self.terraform.config_dir), L)
        self.openstack = OpenStackResource(
            clouds_yaml=str(clouds), password=fake.credentials.password
        )
        packer_dir = root / "packer"
        (packer_dir / "clouds").mkdir(parents=True)
        for name in ("coop.pkr.hcl", "register_image.py"):
            shutil.copy(HERE / "packer" / "standin" / name, packer_dir)
        (packer_dir / "clouds" / "fake.pkrvars.hcl").write_text(
            f'python  = "{sys.executable}"\nout_dir = "{root}"\n'
        )
        self.packer = PackerResource(
            template_dir=str(packer_dir),
            work_dir=str(root / "packer-work"),
            salt_tree=str(HERE / "packer" / "salt"),
        )
        self.images = {
            "support": fake.add_image("coop-support-1", properties={GROUP_PROPERTY: "support"}),
            "web": fake.add_image("coop-web-1", properties={GROUP_PROPERTY: "web"}),
        }

    def write(self, text: str) -> None:
        self.topology_file.write_text(text)

    def resources(self) -> dict:
        return {"terraform": self.terraform, "openstack": self.openstack, "packer": self.packer}

    def run(self, job: str, *, run_config: dict | None = None, selection=None, **kwargs):
        overrides = {**self.resources(), **kwargs.pop("resources", {})}
        defs = build_definitions(load_topology(self.topology_file), overrides)
        return defs.resolve_job_def(job).execute_in_process(
            instance=kwargs.pop("instance", None) or dg.DagsterInstance.ephemeral(),
            run_config=run_config or {},
            asset_selection=selection,
            raise_on_error=False,
            **kwargs,
        )

    def seed_servers(self, hosts: dict[str, list[str]]) -> None:
        """What the OpenStack provider would have created (it cannot run here)."""
        for name, addresses in hosts.items():
            group = "support" if name.startswith("support") else "web"
            self.fake.add_server(name, image_id=self.images[group], addresses=addresses)


@pytest.fixture
def site(tmp_path, monkeypatch):
    fake = FakeOpenStack()
    fake.start()
    yield Site(tmp_path, fake, monkeypatch)
    fake.stop()


def materialised(result) -> list[str]:
    return sorted(
        ev.event_specific_data.materialization.asset_key.to_user_string()
        for ev in result.get_asset_materialization_events()
    )


def check(result, key: dg.AssetKey, name: str):
    [evaluation] = [
        c
        for c in result.get_asset_check_evaluations()
        if c.asset_key == key and c.check_name == name
    ]
    return evaluation


def metadata(result, key: dg.AssetKey) -> dict:
    [event] = [
        ev.event_specific_data.materialization
        for ev in result.get_asset_materialization_events()
        if ev.event_specific_data.materialization.asset_key == key
    ]
    return {k: v.value for k, v in event.metadata.items()}


def observations(result, key: dg.AssetKey) -> list[dict]:
    return [
        {k: v.value for k, v in ev.event_specific_data.asset_observation.metadata.items()}
        for ev in result.all_events
        if ev.event_type_value == "ASSET_OBSERVATION"
        and ev.event_specific_data.asset_observation.asset_key == key
    ]


def test_apply_plans_gates_and_applies_the_network_then_the_instances(site):
    site.seed_servers(SERVERS)
    result = site.run("apply")
    assert result.success
    assert materialised(result) == sorted(
        [
            "topology",
            "ip_plan",
            "minion_keys",
            f"plan/network/{L}",
            f"network/{L}",
            f"plan/instances/{L}",
            f"instances/{L}",
        ]
    )
    plan_md = metadata(result, PLAN_NETWORK)
    assert plan_md["add"] == 35 and plan_md["destroy"] == 0
    assert plan_md["plan"].startswith(f"**network/{L}**: 35 to add")
    net = metadata(result, NETWORK)
    assert net["applied"] is True and net["added"] == 35
    assert net["outputs_json"]["cidr"] == "10.42.0.0/16"
    inst = metadata(result, INSTANCES)
    assert inst["added"] == 10  # 3 ports, 3 servers, 2 web hosts' floating IPs and associations
    assert set(inst["outputs_json"]["floating_ips"]) == {"web-staging-1", "web-staging-2"}
    servers = inst["outputs_json"]["servers"]
    assert servers["support-1"]["addresses"] == ["10.42.1.1", "10.42.9.1"]
    # the plan booted each host from its group's newest image, found through openstacksdk
    assert servers["web-staging-2"]["image_id"] == site.images["web"]
    assert servers["support-1"]["image_id"] == site.images["support"]

    assert check(result, PLAN_NETWORK, "safe_to_apply").passed
    assert check(result, PLAN_INSTANCES, "safe_to_apply").passed
    assert not check(result, PLAN_NETWORK, "no_drift").passed  # a first apply is all change
    servers_check = check(result, INSTANCES, "servers_match_the_plan")
    assert servers_check.passed, servers_check.description
    # the servers as the cloud reports them, observed on instances/<location>
    seen = observations(result, INSTANCES)
    assert len(seen) == 2  # while planning, and after the apply
    assert seen[-1]["active"] == 3
    assert "| web-staging-2 | ACTIVE | 10.42.5.2 | 10.42.5.2 | yes |" in seen[-1]["servers"]

    again = site.run("apply")
    assert again.success
    assert metadata(again, NETWORK)["applied"] is False
    assert metadata(again, INSTANCES)["why"] == "the plan has no changes"
    assert check(again, PLAN_NETWORK, "no_drift").passed
    assert check(again, PLAN_INSTANCES, "no_drift").passed


def _plan_texts(folder: Path) -> dict[str, bytes]:
    """Every saved plan under `folder`: its members' bytes, joined (a plan is a zip)."""
    texts = {}
    for plan in folder.rglob("*.tfplan"):
        with zipfile.ZipFile(plan) as archive:
            texts[str(plan)] = b"".join(archive.read(name) for name in archive.namelist())
    return texts


def test_servers_get_their_key_pairs_from_the_apply_s_plan_and_a_preview_holds_none(site):
    """The apply job makes the salt key pairs (minion_keys) before it plans, and each server's
    user-data carries its own pair (the master's server also the master's pair and the minions'
    public keys as accepted). The spent plan, which held them, is gone after the apply; the plan
    job's previews hold the public keys only; no run's event shows a private key."""
    site.seed_servers(SERVERS)
    applied = site.run("apply")
    assert applied.success
    assert "minion_keys" in materialised(applied)
    store = KeyStore(site.keys_dir)
    privates = [store.get(n).private_pem for n in ["master", *store.minions()]]
    assert len(privates) == 4
    # each server was created with the user-data that carries its pair: the state's SHA-1 of it
    # (all the provider keeps) is that of the stack's rendering with the store's keys
    topo = load_topology(site.topology_file)
    expected = site.terraform.user_data(
        stack="instances",
        variables={
            "hosts": {h: {"roles": list(s.roles)} for h, s in topo.hosts.items()},
            "location": L,
            "salt_master_address": "10.42.1.1",
            **salt_key_vars(topo, L, store, private=True),
        },
    )
    state = site.terraform.output(stack="instances", location=L)["user_data"]["value"]
    assert state == {h: hashlib.sha1(text.encode()).hexdigest() for h, text in expected.items()}
    support, web = (yaml.safe_load(expected[h]) for h in ("support-1", "web-staging-1"))

    def files(data: dict) -> dict[str, str]:
        return {
            f["path"]: base64.b64decode(f["content"]).decode()
            for f in data["write_files"]
            if f.get("encoding") == "b64"
        }

    assert (
        files(web)["/etc/salt/pki/minion/minion.pem"] == store.minion("web-staging-1").private_pem
    )
    assert "/etc/salt/pki/master/master.pem" not in files(web)
    assert files(support)["/etc/salt/pki/master/master.pem"] == store.master().private_pem
    assert files(support)["/etc/salt/pki/master/minions/web-staging-2"] == (
        store.minion("web-staging-2").public_pem
    )
    plans = Path(site.terraform.data_dir) / L
    assert not [p for p, text in _plan_texts(plans).items() if b"PRIVATE KEY" in text]
    assert not list(plans.rglob("*.tfvars.json"))
    # an apply with nothing to do goes too: its plan held the pairs as well
    again = site.run("apply")
    assert again.success and metadata(again, INSTANCES)["applied"] is False
    assert not list(plans.rglob("*.tfplan")) and not list(plans.rglob("*.tfvars.json"))

    preview = site.run("plan")
    assert preview.success and f"plan/instances/{L}" in materialised(preview)
    saved = _plan_texts(plans / "instances")
    assert saved, "the preview's plan is kept"
    for text in saved.values():
        assert b"PRIVATE KEY" not in text
        assert store.minion("web-staging-1").public_pem.encode() in text  # the accepted keys
    for plan in (plans / "instances").rglob("*.tfplan"):
        assert plan.stat().st_mode & 0o777 == 0o600
        assert plan.parent.stat().st_mode & 0o777 == 0o700
    for event in [*applied.all_events, *preview.all_events]:
        for private in privates:
            assert private.strip().splitlines()[1] not in str(event), event.event_type_value


def test_the_gate_stops_a_destroy_unless_the_run_allows_it(site):
    site.seed_servers(SERVERS)
    assert site.run("apply").success
    site.write(
        TOPOLOGY.replace(
            "  web-staging-2: {location: test-1, instance: 2, roles: [web-staging]}\n", ""
        )
    )

    blocked = site.run("apply")
    assert not blocked.success
    gate = check(blocked, PLAN_INSTANCES, "safe_to_apply")
    assert not gate.passed
    assert 'delete null_resource.server["web-staging-2"]' in gate.description
    assert "allow_destroy" in gate.description
    assert f"instances/{L}" not in materialised(blocked)
    state = site.terraform.output(stack="instances", location=L)["servers"]["value"]
    assert "web-staging-2" in state  # nothing was destroyed

    server = 'null_resource.server["web-staging-2"]'
    allowed = site.run(
        "apply",
        run_config={"ops": {"plan__instances__test_1": {"config": {"allow_destroy": [server]}}}},
    )
    assert allowed.success
    gate = check(allowed, PLAN_INSTANCES, "safe_to_apply")
    assert gate.passed and gate.metadata["allowed_by_config"].value == [f"delete {server}"]
    # its server, its port, its floating IP and the IP's association
    assert metadata(allowed, INSTANCES)["destroyed"] == 4
    assert (
        "web-staging-2"
        not in site.terraform.output(stack="instances", location=L)["servers"]["value"]
    )


def test_the_apply_refuses_a_destroy_itself_when_the_gate_check_is_left_out(site):
    """The apply asset tests the gate again, so a job that selects the assets without their
    checks (safe_to_apply never runs) still cannot destroy a protected server."""
    site.seed_servers(SERVERS)
    assert site.run("apply").success
    site.write(
        TOPOLOGY.replace(
            "  web-staging-2: {location: test-1, instance: 2, roles: [web-staging]}\n", ""
        )
    )
    unguarded = dg.define_asset_job(
        "apply_without_checks",
        selection=dg.AssetSelection.assets(
            "topology", "ip_plan", "minion_keys", PLAN_INSTANCES, INSTANCES
        ).without_checks(),
    )
    defs = dg.Definitions.merge(
        build_definitions(load_topology(site.topology_file), site.resources()),
        dg.Definitions(jobs=[unguarded]),
    )
    result = defs.resolve_job_def("apply_without_checks").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )

    assert not result.success
    assert result.get_asset_check_evaluations() == []  # the blocking check did not stop it
    assert f"plan/instances/{L}" in materialised(result)
    assert f"instances/{L}" not in materialised(result)
    message = result.failure_data_for_node("instances__test_1").error.message
    assert 'the plan would delete null_resource.server["web-staging-2"]' in message
    assert "allow_destroy" in message
    state = site.terraform.output(stack="instances", location=L)["servers"]["value"]
    assert "web-staging-2" in state  # nothing was destroyed
    # the refused plan is discarded like a spent one
    assert not list((Path(site.terraform.data_dir) / L).rglob("*.tfplan"))


def test_a_new_network_number_replaces_the_network_only_with_leave(site):
    assert site.run(
        "apply", selection=[dg.AssetKey("topology"), dg.AssetKey("ip_plan"), PLAN_NETWORK, NETWORK]
    ).success
    site.write(TOPOLOGY.replace("number: 42", "number: 43"))
    blocked = site.run(
        "apply", selection=[dg.AssetKey("topology"), dg.AssetKey("ip_plan"), PLAN_NETWORK, NETWORK]
    )
    assert not blocked.success
    assert (
        "replace null_resource.network" in check(blocked, PLAN_NETWORK, "safe_to_apply").description
    )


def test_the_plan_job_plans_a_new_location_and_applies_nothing(site):
    """A pull request adding a location: its network is planned; its instances cannot be until
    the network exists, so that plan is skipped, saying why, and the job (CI) succeeds."""
    result = site.run("plan")
    assert result.success
    assert materialised(result) == sorted(["topology", "ip_plan", f"plan/network/{L}"])
    skipped = observations(result, PLAN_INSTANCES)
    assert skipped == [
        {
            "skipped": f"network not applied yet: instances are planned after network/{L}"
            " is applied",
            "planned": False,
        }
    ]
    assert not [c for c in result.get_asset_check_evaluations() if c.asset_key == PLAN_INSTANCES]
    assert site.terraform.output(stack="network", location=L) == {}
    # once the network is applied, the same job plans the instances
    assert site.run(
        "apply", selection=[dg.AssetKey("topology"), dg.AssetKey("ip_plan"), PLAN_NETWORK, NETWORK]
    ).success
    again = site.run("plan")
    assert again.success and f"plan/instances/{L}" in materialised(again)
    assert metadata(again, PLAN_INSTANCES)["add"] == 10


def test_terraform_gets_the_cloud_credentials_of_the_openstack_resource(site, tmp_path):
    """The network stack's provider needs the cloud's credentials too: what reached Terraform's
    environment is traced by the stand-in (OS_CLOUD, OS_CLIENT_CONFIG_FILE, the password's
    length), and the password is in no event of the run."""
    trace = tmp_path / "env.trace"
    write_location(Path(site.terraform.config_dir), L, env_trace_file=str(trace))
    result = site.run(
        "apply", selection=[dg.AssetKey("topology"), dg.AssetKey("ip_plan"), PLAN_NETWORK, NETWORK]
    )
    assert result.success
    password = site.fake.credentials.password
    assert trace.read_text().split() == ["fake", site.openstack.clouds_yaml, str(len(password))]
    for event in result.all_events:
        assert password not in str(event), event.event_type_value


def test_a_run_for_a_commit_plans_only_a_checkout_at_that_commit(site, monkeypatch):
    """The sensor tags its runs with the commit it saw on main; the plan reads the files on
    disk, so it refuses when the checkout is elsewhere or has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(site.root), "-c", "user.name=t", "-c", "user.email=t@x.coop", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "the infrastructure")
    first = git("rev-parse", "HEAD")
    site.write(
        TOPOLOGY + "  web-staging-3: {location: test-1, instance: 3, roles: [web-staging]}\n"
    )
    git("commit", "-q", "-am", "a third web host")
    second = git("rev-parse", "HEAD")
    repo = {"infra_repo": InfraRepoResource(path=str(site.root))}
    selection = [dg.AssetKey("topology"), dg.AssetKey("ip_plan"), PLAN_NETWORK]

    git("checkout", "-q", first)  # main moved on; this checkout was not updated
    behind = site.run("plan", selection=selection, resources=repo, tags={GIT_SHA: second})
    assert not behind.success
    message = behind.failure_data_for_node("plan__network__test_1").error.message
    assert f"this run plans commit {second[:12]}" in message
    assert f"is at {first[:12]}: update the checkout" in message
    assert "Nothing was planned" in message
    assert not list(Path(site.terraform.data_dir).rglob("*.tfplan"))

    git("checkout", "-q", "main")
    at_commit = site.run("plan", selection=selection, resources=repo, tags={GIT_SHA: second})
    assert at_commit.success
    assert metadata(at_commit, PLAN_NETWORK)["git_sha"] == second

    tfvars = site.terraform.location_file(L)
    tfvars.write_text(tfvars.read_text() + 'dns_nameservers = ["192.0.2.53"]\n')
    dirty = site.run("plan", selection=selection, resources=repo, tags={GIT_SHA: second})
    assert not dirty.success
    message = dirty.failure_data_for_node("plan__network__test_1").error.message
    assert "has uncommitted changes the plan would read" in message
    assert message.strip().endswith(
        f"tf/terraform/locations/{L}.tfvars. Commit or discard them (git"
        " stash) and run again. Nothing was planned."
    )
    # (Terraform's own .terraform.lock.hcl, written by init beside the stack, does not count)
    git("checkout", "--", str(tfvars))
    assert list((site.root / "tf" / "terraform").rglob(".terraform.lock.hcl"))
    assert site.run("plan", selection=selection, resources=repo, tags={GIT_SHA: second}).success
    # a run by hand (no commit tag) plans what is on disk, as before
    assert site.run("plan", selection=selection, resources=repo).success


def test_an_apply_takes_only_a_plan_made_in_its_own_run(site, tmp_path):
    io = {"io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))}
    instance = dg.DagsterInstance.ephemeral()
    first = site.run(
        "plan",
        selection=[dg.AssetKey("topology"), dg.AssetKey("ip_plan"), PLAN_NETWORK],
        resources=io,
        instance=instance,
    )
    assert first.success
    second = site.run("apply", selection=[NETWORK], resources=io, instance=instance)
    assert not second.success
    message = second.failure_data_for_node("network__test_1").error.message
    assert f"network/{L} applies only a plan made in the same run" in message
    assert first.run_id in message
    assert site.terraform.output(stack="network", location=L) == {}


def test_drift_is_reported_by_the_nightly_plan(site):
    site.seed_servers(SERVERS)
    assert site.run("apply").success
    # someone removes the router behind Terraform's back (here: from its state)
    tf = site.terraform
    subprocess.run(
        [tf.binary, "state", "rm", "null_resource.router_interface"],
        cwd=tf.stack_dir("network"),
        env=tf._env("network", L),
        check=True,
        capture_output=True,
    )
    result = site.run("plan", tags={"coop/trigger": "drift_nightly"})
    drift = check(result, PLAN_NETWORK, "no_drift")
    assert not drift.passed
    assert drift.severity == dg.AssetCheckSeverity.WARN
    assert "create `null_resource.router_interface`" in drift.description
    assert check(result, PLAN_INSTANCES, "no_drift").passed


def test_observation_reports_a_server_that_differs_from_the_plan(site):
    site.seed_servers({"support-1": ["10.42.1.1"], "web-staging-1": ["10.42.5.1"]})
    result = site.run("apply")
    servers_check = check(result, INSTANCES, "servers_match_the_plan")
    assert not servers_check.passed
    assert "- no server for web-staging-2" in servers_check.description
    assert "- support-1: addresses differ from the plan" in servers_check.description
    seen = observations(result, INSTANCES)[-1]
    assert seen["missing"] == ["web-staging-2"] and seen["mismatched"] == ["support-1"]


def test_a_location_without_its_settings_file_is_named(site):
    site.terraform.location_file(L).unlink()
    result = site.run(
        "plan", selection=[dg.AssetKey("topology"), dg.AssetKey("ip_plan"), PLAN_NETWORK]
    )
    assert not result.success
    message = result.failure_data_for_node("plan__network__test_1").error.message
    assert f"locations/{L}.tfvars is missing" in message and "bastion_cidr" in message


def test_the_image_is_built_verified_and_old_ones_pruned(site):
    weeks_ago = [datetime.now(UTC) - timedelta(weeks=w) for w in (4, 3, 2)]
    old = [
        site.fake.add_image(f"coop-web-0{i}", properties={GROUP_PROPERTY: "web"}, created_at=when)
        for i, when in enumerate(weeks_ago)
    ]
    site.fake.add_server("web-production-9", image_id=old[0], addresses=["10.42.6.9"])
    result = site.run(
        "images",
        selection=[dg.AssetKey("topology"), dg.AssetKey(["images", "web"])],
        run_config={"ops": {"images__web": {"config": {"keep": 2}}}},
    )
    assert result.success
    md = metadata(result, dg.AssetKey(["images", "web"]))
    built = md["built"]["fake"]
    assert built["name"].startswith("coop-web-")
    names = site.fake.image_names()
    assert built["name"] in names
    # of 5 web images, the newest two stay (the new one and coop-web-1), and the oldest, which
    # web-production-9 runs on; the other two are gone
    assert {i for i in names if i.startswith("coop-web")} == {
        built["name"],
        "coop-web-1",
        "coop-web-00",
    }
    assert md["keep"] == 2
    assert "kept (in use)" in md["pruning_fake"]
    assert md["states_sha256"] and len(md["states_sha256"]) == 64
    assert site.fake.requests("POST", "^/image/v2/images$")  # Packer's build registered it

    # nothing changed: nothing is built; the weekly schedule's tag builds all the same
    again = site.run("images", selection=[dg.AssetKey("topology"), dg.AssetKey(["images", "web"])])
    same = metadata(again, dg.AssetKey(["images", "web"]))["built"]["fake"]
    assert same == {**built, "built": False}
    assert len(site.fake.requests("POST", "^/image/v2/images$")) == 1
    weekly = site.run(
        "images",
        selection=[dg.AssetKey("topology"), dg.AssetKey(["images", "web"])],
        tags={"coop/force_rebuild": "true"},
    )
    assert metadata(weekly, dg.AssetKey(["images", "web"]))["built"]["fake"]["built"] is True
    assert len(site.fake.requests("POST", "^/image/v2/images$")) == 2


def test_an_image_build_without_the_salt_tree_says_so(site, tmp_path):
    packer = PackerResource(
        template_dir=site.packer.template_dir,
        work_dir=site.packer.work_dir,
        salt_tree=str(tmp_path / "no-salt"),
    )
    result = site.run(
        "images",
        selection=[dg.AssetKey("topology"), dg.AssetKey(["images", "web"])],
        resources={"packer": packer},
    )
    assert not result.success
    message = result.failure_data_for_node("images__web").error.message
    assert "no-salt does not exist: images bake the role states from it" in message


def test_the_lab_s_main_job_needs_no_cloud_credentials(repo_root, monkeypatch):
    """The lab is this machine as a cloud: its main job has the cloud's parts (images, plan,
    instances) and its first steps run with no OpenStack or Terraform credentials at all (the
    rest needs the lab itself: tests/lab/test_lab.py)."""
    for name in ("OS_PASSWORD", "TF_PG_CONN_STR", "PGPASSWORD", "OS_CLOUD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INFRA_TOPOLOGY", str(repo_root / "topology.lab.yaml"))
    defs = build_definitions(load_topology(repo_root / "topology.lab.yaml"))
    main = defs.resolve_job_def("main")
    selected = {k.to_user_string() for k in main.asset_layer.selected_asset_keys}
    assert {"plan/instances/lab", "instances/lab"} <= selected
    assert any(k.startswith("images/") for k in selected)
    result = main.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        asset_selection=[dg.AssetKey("topology"), dg.AssetKey("ip_plan")],
    )
    assert result.success


def test_the_coop_graph_has_the_designed_lineage(repo_root):
    defs = build_definitions(load_topology(repo_root / "topology.yaml"))
    graph = defs.resolve_asset_graph()

    def parents(*path: str) -> set[str]:
        return {k.to_user_string() for k in graph.get(dg.AssetKey(list(path))).parent_keys}

    assert parents("plan", "network", "nz-por-1") == {"topology", "ip_plan"}
    assert parents("network", "nz-por-1") == {"topology", "plan/network/nz-por-1"}
    assert parents("plan", "instances", "nz-por-1") == {
        "topology",
        "ip_plan",
        "network/nz-por-1",
        "minion_keys",  # the servers' user-data carries their key pairs
        "images/support",
        "images/builder",
        "images/web",
        "images/postgres",
    }
    assert parents("images", "web") == {"topology"}
    for key in (
        "plan/network/nz-por-1",
        "network/nz-por-1",
        "plan/instances/nz-por-1",
        "instances/nz-por-1",
    ):
        node = graph.get(dg.AssetKey(key.split("/")))
        assert node.pools == {"location/nz-por-1"}, key
        assert "terraform" in node.kinds
    checks = {c.to_user_string() for c in graph.asset_check_keys}
    assert {
        "plan/network/nz-por-1:safe_to_apply",
        "plan/instances/nz-por-1:no_drift",
        "instances/nz-por-1:servers_match_the_plan",
    } <= checks
    # the sensor on the infra repo's main branch plans, applies and rebuilds images; off until
    # a person turns it on
    sensor = defs.resolve_sensor_def("infra_main")
    assert sorted(job.name for job in sensor.jobs) == ["apply", "images", "plan"]
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert {s.name for s in defs.schedules} == {
        "drift_nightly", "images_weekly", "health_every_5_minutes", "backups_nightly"
    }  # fmt: skip
    # health and backups run by default; the others change the cloud: a person turns them on
    running = {s.name for s in defs.schedules if s.default_status.value == "RUNNING"}
    assert running == {"health_every_5_minutes", "backups_nightly"}
