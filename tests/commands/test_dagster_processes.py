"""Dagster itself, as CI and a person run it: `dagster job execute` in a subprocess, and the real
webserver on loopback answering GraphQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from lab.processes import Supervisor, free_port

# `dagster job execute` and the webserver: Dagster processes of their own.
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def dagster_job_execute(job: str, *, topology: Path, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "dagster"), "job", "execute", "-m", "infra_assets.definitions", "-j", job],
        capture_output=True,
        text=True,
        cwd=home,
        env={**os.environ, "DAGSTER_HOME": str(home), "INFRA_TOPOLOGY": str(topology)},
        timeout=180,
    )


def test_dagster_job_execute_succeeds_on_the_shipped_topology(dagster_home, repo_root):
    out = dagster_job_execute("topology", topology=repo_root / "topology.yaml", home=dagster_home)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert 'RUN_SUCCESS - Finished execution of run for "topology"' in log
    assert "Materialized value ip_plan" in log
    assert "Asset check 'ip_plan_has_no_collisions' on 'ip_plan' passed" in log
    # dagster.yaml keeps the history in the instance's own .dagster/
    assert (dagster_home / ".dagster" / "storage" / "history" / "runs.db").exists()


def test_dagster_job_execute_fails_with_the_clear_error(dagster_home, write_topology):
    path = write_topology(edit=lambda d: d["hosts"]["web-staging-1"].update(location="nz-akl-9"))
    out = dagster_job_execute("topology", topology=path, home=dagster_home)
    assert out.returncode != 0
    log = out.stdout + out.stderr
    assert "hosts.web-staging-1.location: unknown location 'nz-akl-9'" in log
    assert "Materialized value" not in log


def _webserver(dagster_home, repo_root, tmp_path, topology: Path | None = None):
    port = free_port()
    sup = Supervisor(tmp_path / "run")

    def loaded() -> bool:
        """The webserver answers and has loaded the code location (not only started)."""
        try:
            data = graphql(f"http://127.0.0.1:{port}", LOCATIONS)
        except OSError:
            return False
        entries = data["data"]["workspaceOrError"]["locationEntries"]
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)

    env = {"DAGSTER_HOME": str(dagster_home)}
    if topology is not None:
        env["INFRA_TOPOLOGY"] = str(topology)
    sup.start(
        "dagster-webserver",
        [
            BIN / "dagster-webserver",
            "-w",
            repo_root / "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        log=tmp_path / "webserver.log",
        cwd=dagster_home,
        env=env,
        ready=loaded,
        ready_timeout_s=120,
    )
    return sup, f"http://127.0.0.1:{port}"


@pytest.fixture
def webserver(dagster_home, repo_root, tmp_path):
    sup, url = _webserver(dagster_home, repo_root, tmp_path)
    yield url
    sup.stop("dagster-webserver", timeout_s=20)


@pytest.fixture
def lab_webserver(dagster_home, repo_root, tmp_path):
    """The webserver on the lab's topology (definitions only: no lab needs to be up)."""
    sup, url = _webserver(dagster_home, repo_root, tmp_path, repo_root / "topology.lab.yaml")
    yield url
    sup.stop("dagster-webserver", timeout_s=20)


LOCATIONS = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_webserver_shows_the_asset_graph(webserver):
    data = graphql(
        webserver,
        "{ assetNodes { assetKey { path } dependencyKeys { path } groupName kinds } }",
    )
    assert "errors" not in data, data
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["data"]["assetNodes"]}
    assert {"topology", "ip_plan"} <= set(nodes)
    assert {"path": ["topology"]} in nodes["ip_plan"]["dependencyKeys"]
    assert nodes["topology"]["groupName"] == "topology"
    assert "yaml" in nodes["topology"]["kinds"]


def test_the_code_location_loads_without_error(webserver):
    entries = graphql(webserver, LOCATIONS)["data"]["workspaceOrError"]["locationEntries"]
    assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in entries] == [
        ("coop-infra", "RepositoryLocation")
    ]


def test_the_webserver_lists_the_jobs(webserver):
    data = graphql(
        webserver,
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }",
    )
    names = {
        j["name"] for repo in data["data"]["repositoriesOrError"]["nodes"] for j in repo["jobs"]
    }
    assert {"topology", "main"} <= names


def test_the_ui_shows_one_lineage_from_an_image_to_a_release(lab_webserver):
    """The graph is one chain, as the UI draws it: a role image -> the lab's plan -> its
    instances -> the minions -> each role's states -> the app's image (built on the build agent,
    pushed to the registry) -> staging -> production."""
    data = graphql(lab_webserver, "{ assetNodes { assetKey { path } dependencyKeys { path } } }")
    assert "errors" not in data, data
    parents = {
        "/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]}
        for n in data["data"]["assetNodes"]
    }
    chain = [
        ("images/web", "plan/instances/lab"),
        ("images/support", "plan/instances/lab"),
        ("minion_keys", "plan/instances/lab"),
        ("plan/instances/lab", "instances/lab"),
        ("instances/lab", "minions"),
        ("minions", "highstate/web-staging"),
        ("minions", "highstate/docker-registry"),
        ("highstate/docker-registry", "app_image/hello"),
        ("highstate/jenkins-agent", "app_image/hello"),
        ("app_image/hello", "release/staging/hello"),
        ("highstate/web-staging", "release/staging/hello"),
        ("release/staging/hello", "release/production/hello"),
    ]
    missing = [(up, down) for up, down in chain if up not in parents.get(down, set())]
    assert not missing, missing
