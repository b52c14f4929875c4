"""The `infra_main` sensor on a real git repository (commits made by the test), with its
resources injected and an explicit cursor; the nightly drift schedule; the location pools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from infra_assets.cloud.changes import changes_between
from infra_assets.cloud.jobs import ensure_location_pools, schedules
from infra_assets.definitions import build_definitions
from infra_assets.topology.model import parse_topology
from resources.infra_repo import InfraRepoResource
from resources.topology import TopologyResource
from sensors.infra_repo import infra_main_sensor

TOPOLOGY = """\
locations:
  test-1: {number: 41, cloud: fake}
  test-2: {number: 42, cloud: fake, auto_apply: true}
types: {salt-master: 1, web-staging: 5, postgres-staging: 7}
hosts:
  support-1: {location: test-1, instance: 1, roles: [salt-master]}
  web-staging-1: {location: test-1, instance: 1, roles: [web-staging]}
  web-staging-2: {location: test-2, instance: 2, roles: [web-staging]}
"""


class Repo:
    def __init__(self, root: Path, repo_root: Path):
        self.root = root
        root.mkdir()
        self.git("init", "-q", "-b", "main")
        shutil.copytree(repo_root / "terraform", root / "terraform")
        shutil.copytree(repo_root / "packer", root / "packer")
        shutil.copytree(repo_root / "salt", root / "salt")  # the real tree, named by state
        (root / "topology.yaml").write_text(TOPOLOGY)
        (root / "README.md").write_text("# infra\n")
        self.commit("the infrastructure")

    def git(self, *args: str) -> str:
        return subprocess.run(
            [
                "git",
                "-C",
                str(self.root),
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.coop",
                *args,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def change(self, path: str, text: str | None = None, append: str = "") -> str:
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text if text is not None else file.read_text() + append)
        return self.commit(f"change {path}")

    @property
    def head(self) -> str:
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path, repo_root) -> Repo:
    return Repo(tmp_path / "infra", repo_root)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def tick(repo: Repo, instance, cursor: str | None, *, path: Path | None = None):
    """One evaluation, by a code location loaded from the original topology."""
    topology = repo.root / "topology.yaml"
    defs = build_definitions(parse_topology(TOPOLOGY))
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        resources={
            "infra_repo": InfraRepoResource(path=str(path or repo.root)),
            "topology_file": TopologyResource(path=str(topology)),
        },
    ) as context:
        return infra_main_sensor(context)


def requests(result) -> dict[str, dg.RunRequest]:
    return {r.run_key: r for r in result.run_requests}


def keys(request: dg.RunRequest) -> set[str]:
    return {k.to_user_string() for k in request.asset_selection}


def test_the_first_look_records_the_head_and_runs_nothing(repo, instance):
    result = tick(repo, instance, None)
    assert result.cursor == repo.head and not result.run_requests
    assert "first look at main" in result.skip_reason.skip_message
    again = tick(repo, instance, repo.head)
    assert isinstance(again, dg.SkipReason) and "main is still at" in again.skip_message


def test_a_commit_that_touches_no_cloud_part_advances_the_cursor_only(repo, instance):
    start = repo.head
    new = repo.change("README.md", append="more\n")
    result = tick(repo, instance, start)
    assert result.cursor == new and not result.run_requests
    assert "changes no network, instances or image (1 files)" in result.skip_reason.skip_message


def test_a_stack_change_plans_where_manual_and_applies_where_auto(repo, instance):
    start = repo.head
    new = repo.change("terraform/instances/main.tf", append="\n# a comment\n")
    result = tick(repo, instance, start)
    assert result.cursor == new
    runs = requests(result)
    assert set(runs) == {f"plan:test-1:{new}", f"apply:test-2:{new}"}
    plan, apply = runs[f"plan:test-1:{new}"], runs[f"apply:test-2:{new}"]
    assert plan.job_name == "plan" and apply.job_name == "apply"
    assert keys(plan) == {"topology", "ip_plan", "plan/instances/test-1"}
    assert keys(apply) == {"topology", "ip_plan", "plan/instances/test-2", "instances/test-2"}
    assert plan.tags["coop/git_sha"] == new and apply.tags["coop/location"] == "test-2"
    # a replay asks for the same run keys (no second run)
    assert set(requests(tick(repo, instance, start))) == set(runs)
    # each location's pool has its limit before any of these runs starts
    pools = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}
    assert pools["location/test-1"] == 1 and pools["location/test-2"] == 1


def test_topology_changes_plan_only_the_locations_they_change(repo, instance):
    start = repo.head
    grown = TOPOLOGY.replace(
        "  web-staging-2:",
        "  web-staging-3: {location: test-1, instance: 3, roles: [web-staging]}\n  web-staging-2:",
    )
    new = repo.change("topology.yaml", grown)
    runs = requests(tick(repo, instance, start))
    assert set(runs) == {f"plan:test-1:{new}"}
    assert keys(runs[f"plan:test-1:{new}"]) == {"topology", "ip_plan", "plan/instances/test-1"}

    moved = repo.change("topology.yaml", grown.replace("number: 42", "number: 43"))
    runs = requests(tick(repo, instance, new))
    assert set(runs) == {f"apply:test-2:{moved}"}
    assert keys(runs[f"apply:test-2:{moved}"]) == {
        "topology",
        "ip_plan",
        "plan/network/test-2",
        "network/test-2",
        "plan/instances/test-2",
        "instances/test-2",
    }


def test_state_and_template_changes_rebuild_the_images_they_touch(repo, instance):
    start = repo.head
    # salt/web is the state of the roles web-staging and web-production (salt/roles.yaml)
    role = repo.change("salt/web/files/nginx.conf.jinja", append="# tuned\n")
    runs = requests(tick(repo, instance, start))
    assert set(runs) == {f"images:{role}"}
    assert runs[f"images:{role}"].job_name == "images"
    assert keys(runs[f"images:{role}"]) == {"topology", "images/web"}

    master = repo.change("salt/salt/master.sls", append="# tuned\n")
    runs = requests(tick(repo, instance, role))
    assert keys(runs[f"images:{master}"]) == {"topology", "images/support"}

    # postgres: no host of an OpenStack location needs its image here: nothing to rebuild
    pg = repo.change("salt/postgres/files/pg_hba.conf.jinja", append="# tuned\n")
    result = tick(repo, instance, master)
    assert result.cursor == pg and not result.run_requests

    shared = repo.change("salt/top.sls", append="# shared\n")
    runs = requests(tick(repo, instance, pg))
    assert keys(runs[f"images:{shared}"]) == {"topology", "images/web", "images/support"}
    common = repo.change("salt/common/init.sls", append="# everywhere\n")
    runs = requests(tick(repo, instance, shared))
    assert keys(runs[f"images:{common}"]) == {"topology", "images/web", "images/support"}

    cloud = repo.change("packer/clouds/fake.pkrvars.hcl", 'flavor = "c1.c1r1"\n')
    runs = requests(tick(repo, instance, common))
    assert keys(runs[f"images:{cloud}"]) == {"topology", "images/web", "images/support"}


def test_a_broken_topology_is_reported_and_passed_over(repo, instance):
    start = repo.head
    new = repo.change("topology.yaml", TOPOLOGY.replace("instance: 2", "instance: 300"))
    result = tick(repo, instance, start)
    assert result.cursor == new and not result.run_requests
    message = result.skip_reason.skip_message
    assert "topology.yaml at" in message and "is broken, nothing planned" in message
    assert "hosts.web-staging-2.instance: 300 is out of range" in message


def test_a_failed_look_leaves_the_cursor_where_it_was(repo, instance, tmp_path):
    result = tick(repo, instance, repo.head, path=tmp_path / "not-a-repo")
    assert isinstance(result, dg.SkipReason)  # no SensorResult: the cursor does not move
    assert "cannot read main of" in result.skip_message


def test_rewritten_history_plans_everything(repo, instance):
    old = repo.head
    repo.git("commit", "-q", "--amend", "-m", "rewritten")
    result = tick(repo, instance, old)
    runs = requests(result)
    assert set(runs) == {
        f"plan:test-1:{repo.head}",
        f"apply:test-2:{repo.head}",
        f"images:{repo.head}",
    }
    assert keys(runs[f"plan:test-1:{repo.head}"]) >= {
        "plan/network/test-1",
        "plan/instances/test-1",
    }


def test_every_file_of_the_salt_tree_rebuilds_the_images_of_the_roles_that_apply_it(repo_root):
    """On the co-op's topology (every image group in use on nz-por-1) and the real salt/ tree
    and roles.yaml: each state's files rebuild its roles' images only."""
    from infra_assets.configuration.highstate import role_states

    coop = parse_topology((repo_root / "topology.yaml").read_text())
    roles = role_states(repo_root / "salt" / "roles.yaml")
    every = {"support", "builder", "web", "postgres"}

    def images(path: str) -> set[str]:
        return changes_between(
            [path],
            topology_path="topology.yaml",
            new_topology=coop,
            read_old_topology=lambda: None,
            salt_roles=roles,
        ).images

    # by path prefix, the most specific first: the image groups a change there rebuilds
    expected = {
        "salt/web/": {"web"},
        "salt/postgres/": {"postgres"},
        "salt/jenkins/master.sls": {"support"},
        "salt/jenkins/agent.sls": {"builder"},
        # one image build on an agent (applied by app_image/<app>, named by no role) and the
        # build script: taken by their folder (jenkins.master and jenkins.agent)
        "salt/jenkins/build.sls": {"builder", "support"},
        "salt/jenkins/files/": {"builder", "support"},
        "salt/salt/master.sls": {"support"},
        # included by salt.master, named by no role: taken by its folder (salt.master and
        # salt.minion), so shared: every image (exact would need the includes followed)
        "salt/salt/api.sls": every,
        "salt/dns/": {"support"},
        "salt/registry/": {"support"},
        "salt/npm-cache/": {"support"},
        "salt/dagster/": {"support"},
        "salt/pypi-cache/": {"support"},
        "salt/salt/minion.sls": every,  # in every image (common includes it)
        "salt/common/": every,
        "salt/lib/": every,  # imported by every state
        "salt/top.sls": every,
        "salt/roles.yaml": every,
        # what releases apply, which no image bakes: nothing is rebuilt
        "salt/app/": set(),
        "salt/_states/coop_app.py": set(),
        "salt/_modules/": set(),  # the health checks' probes, the backups: no image bakes them
    }
    tree = sorted(
        str(p.relative_to(repo_root)) for p in (repo_root / "salt").rglob("*") if p.is_file()
    )
    assert len(tree) >= 20
    for path in tree:
        prefix = max((p for p in expected if path.startswith(p)), key=len, default=None)
        assert prefix is not None, f"{path}: no expectation here for this part of the tree"
        assert images(path) == expected[prefix], path
    # without roles.yaml (missing or broken at that commit), every salt change rebuilds all
    assert (
        changes_between(
            ["salt/web/init.sls"],
            topology_path="topology.yaml",
            new_topology=coop,
            read_old_topology=lambda: None,
        ).images
        == every
    )


def test_changes_between_names_its_reasons():
    topo = parse_topology(TOPOLOGY)
    work = changes_between(
        ["terraform/locations/test-1.tfvars", "terraform/locations/here.tfvars", "docs/x.md"],
        topology_path="topology.yaml",
        new_topology=topo,
        read_old_topology=lambda: TOPOLOGY,
    )
    assert work.stacks == {"test-1": {"network", "instances"}}
    assert work.reasons == [
        "test-1 (instances, network): terraform/locations/test-1.tfvars changed"
    ]
    shared = changes_between(
        ["terraform/shared/location.tf"],
        topology_path="topology.yaml",
        new_topology=topo,
        read_old_topology=lambda: TOPOLOGY,
    )
    assert shared.stacks == {"test-1": {"network", "instances"}, "test-2": {"network", "instances"}}


def test_the_nightly_schedule_plans_and_readies_the_pools(repo, instance):
    [drift, weekly] = schedules()
    topology = TopologyResource(path=str(repo.root / "topology.yaml"))
    with dg.build_schedule_context(
        instance=instance, resources={"topology_file": topology}
    ) as context:
        request = drift(context)
    assert request.tags["coop/trigger"] == "drift_nightly"
    assert drift.job_name == "plan" and weekly.job_name == "images"
    with dg.build_schedule_context(instance=instance) as context:
        assert weekly(context).tags["coop/force_rebuild"] == "true"
    assert {p.name for p in instance.event_log_storage.get_pool_limits()} >= {
        "location/test-1",
        "location/test-2",
    }
    assert ensure_location_pools(instance, ["test-1"]) == []  # already there: left alone
