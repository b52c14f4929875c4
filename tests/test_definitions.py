"""The Dagster code location: it loads, its graph has the lineage DESIGN.md draws, and its assets
materialise in process against the real topology files."""

from __future__ import annotations

import json
import subprocess
import sys

import dagster as dg
import pytest

from infra_assets.topology.assets import check_plan
from infra_assets.topology.model import Address, AddressPlan, address_plan, load_topology


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from infra_assets.definitions import defs

    return defs()


AUDIT_IMPORT = """
import sys, dagster, json
events = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str):
        path = args[0]
        if not path.endswith((".py", ".pyc", ".so")) and "/site-packages/" not in path and "/lib/python3" not in path:
            events.append(f"open {path}")
    elif event in ("subprocess.Popen", "os.system", "socket.connect", "os.fork"):
        events.append(f"{event} {args!r}")
sys.addaudithook(hook)
import infra_assets.definitions
print(json.dumps(events))
"""


def test_definitions_import_does_no_io():
    """Importing the code location opens no file of ours, runs no command and makes no
    connection (Python's audit hooks see every open, subprocess and connect)."""
    out = subprocess.run(
        [sys.executable, "-c", AUDIT_IMPORT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_asset_keys_and_lineage(defs):
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"topology", "ip_plan"} <= keys
    assert dg.AssetKey("topology") in graph.get(dg.AssetKey("ip_plan")).parent_keys
    assert graph.get(dg.AssetKey("topology")).group_name == "topology"
    check_keys = {c.name for c in graph.asset_check_keys}
    assert "ip_plan_has_no_collisions" in check_keys


def test_every_asset_has_kinds_and_a_description(defs):
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.kinds, f"{key.to_user_string()} has no kinds"
        assert node.description, f"{key.to_user_string()} has no description"


def test_a_broken_topology_still_loads_the_code_location(write_topology, monkeypatch):
    from infra_assets.definitions import defs

    monkeypatch.setenv("INFRA_TOPOLOGY", str(write_topology("hosts: [\n")))
    loaded = defs()
    # the job CI runs on a pull request is there, to say what is wrong with the file
    assert job_assets(loaded, "topology") == {"topology", "ip_plan"}
    assert dg.AssetKey("topology") in loaded.resolve_asset_graph().get_all_asset_keys()


def job_assets(defs: dg.Definitions, job: str) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.selected_asset_keys}


def test_jobs_for_ci(defs):
    # `topology`: what a pull request to topology.yaml runs: the file and its address plan only
    assert job_assets(defs, "topology") == {"topology", "ip_plan"}
    # `main`: every part of the site, without the per-commit builds, the releases, the
    # health checks and the backups (their own jobs and schedules)
    everything = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    main = job_assets(defs, "main")
    assert main == {
        k for k in everything if not k.startswith(("app_image/", "release/", "health/", "backup/"))
    }
    assert job_assets(defs, "backups") == {k for k in everything if k.startswith("backup/")}
    assert job_assets(defs, "health") == {k for k in everything if k.startswith("health/")}
    assert {
        "topology",
        "ip_plan",
        "images/web",
        "plan/network/nz-por-1",
        "network/nz-por-1",
        "plan/instances/nz-por-1",
        "instances/nz-por-1",
        "minion_keys",
        "minions",
        "salt_pillar",
        "highstate/web-staging",
    } <= main


def test_topology_job_materialises_the_coop_topology(defs, repo_root, monkeypatch, tmp_path):
    # the co-op's file, committed in a repo of the test's own: the commit it records is known
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@x.coop", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    (tmp_path / "topology.yaml").write_bytes((repo_root / "topology.yaml").read_bytes())
    git("init", "-q", "-b", "main")
    git("add", "topology.yaml")
    git("commit", "-q", "-m", "the topology")
    monkeypatch.setenv("INFRA_TOPOLOGY", str(tmp_path / "topology.yaml"))
    result = defs.resolve_job_def("topology").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    topo_md = result.asset_materializations_for_node("read_topology")[0].metadata
    assert topo_md["hosts"].value == 6 and topo_md["locations"].value == 1
    assert "| web-staging-1 | nz-por-1 | web-staging | 10.100.5.1 |" in topo_md["hosts_table"].value
    assert topo_md["git_commit"].value == git("rev-parse", "HEAD")
    assert topo_md["uncommitted_changes"].value is False
    plan_md = result.asset_materializations_for_node("ip_plan")[0].metadata
    assert plan_md["addresses"].value == 12
    assert "| support-1 | docker-registry | 10.100.9.1 |" in plan_md["plan"].value
    assert "10.100.9.1\tdocker-registry-1.nz-por-1.coop.internal" in plan_md["dnsmasq_hosts"].value
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("ip_plan_has_no_collisions", True)]
    plan = result.output_for_node("ip_plan")
    assert plan.primary("web-staging-1").address == "10.100.5.1"


def test_a_broken_topology_fails_the_run_with_the_clear_error(defs, write_topology, monkeypatch):
    path = write_topology(edit=lambda d: d["apps"]["hello"].update(port=99999))
    monkeypatch.setenv("INFRA_TOPOLOGY", str(path))
    result = defs.resolve_job_def("topology").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    failure = result.failure_data_for_node("read_topology")
    assert "apps.hello.port: 99999 is out of range: must be 1..65535" in failure.error.message
    assert result.asset_materializations_for_node("ip_plan") == []


def test_the_check_fails_on_a_collision_or_an_address_outside_its_location(repo_root):
    topo = load_topology(repo_root / "topology.yaml")
    plan = address_plan(topo)
    assert check_plan(plan, topo).passed
    twin = Address("web-staging-2", "nz-por-1", "web-staging", "10.100.5.1", True, ("x",))
    stray = Address("stray", "nz-por-1", "web-staging", "10.101.5.9", True, ("y",))
    bad = check_plan(AddressPlan(plan.domain, (*plan.addresses, twin, stray)), topo)
    assert not bad.passed
    assert bad.metadata["collisions"].value == 1 and bad.metadata["outside_location"].value == 1
    assert "10.100.5.1: web-staging-1/web-staging, web-staging-2/web-staging" in bad.description
    assert "outside its location's network: 10.101.5.9 (stray/web-staging)" in bad.description
