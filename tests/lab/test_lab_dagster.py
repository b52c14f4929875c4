"""Dagster in the lab, for real: the `dagster` role (salt/dagster) runs dagster-webserver and
dagster-daemon as systemd units on support-1, from a checkout of this repository (cloned from the
lab's git daemon), with the instance on PostgreSQL on pg-production-1, and the UI behind nginx
with TLS and the co-op's accounts. The test opens the UI from this machine as a person would
(through the lab's link, the certificate checked), launches the `health` job through its
GraphQL API and follows the run: it runs on support-1 and asks every host through salt-api from
inside the lab; then the run's row is read in PostgreSQL on pg-production-1."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from lab_env import LAB_NUMBER, LabEnv

from lab import site as lab_site
from resources.lab import LabNetwork
from resources.lab_link import route_problem

HOST = "support-1"
LOCATION = "coop-infra"
REPOSITORY = "__repository__"


class UI:
    """The lab's Dagster UI, as this machine reaches it: HTTPS to the dagster address through
    the lab's link (the route checked before any packet), the certificate checked against the
    lab's copy of it, basic auth."""

    def __init__(self, lab_env: LabEnv, auth: tuple[str, str] | None):
        site = lab_env.site
        self.base = f"https://{site.reach(HOST, 'dagster')}"
        self.device = LabNetwork(site.number_of(HOST)).machine_link
        self.http = requests.Session()
        self.http.trust_env = False  # a lab address is never reached through a proxy
        self.http.verify = str(site.dagster_ui_ca_file())
        self.http.auth = auth

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        problem = route_problem(self.base + "/", self.device)
        assert problem is None, problem
        return self.http.request(method, self.base + path, timeout=30, **kwargs)

    def raw(self, path: str) -> tuple[int, bytes]:
        """GET `path` exactly as written, with no account (requests would tidy `..` away)."""
        problem = route_problem(self.base + "/", self.device)
        assert problem is None, problem
        context = ssl.create_default_context(cafile=self.http.verify)
        conn = http.client.HTTPSConnection(urlsplit(self.base).hostname, 443, context=context,
                                           timeout=30)  # fmt: skip
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def launch(self, job: str) -> str:
        """Launch a run of `job` through the GraphQL API; its id."""
        launched = self.graphql(
            "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename"
            " ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }",
            {
                "p": {
                    "selector": {
                        "repositoryLocationName": LOCATION,
                        "repositoryName": REPOSITORY,
                        "jobName": job,
                    },
                    "runConfigData": {},
                }
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = self.request("POST", "/graphql", json={"query": query, "variables": variables})
        assert response.status_code == 200, response.text[:500]
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]


@pytest.fixture(scope="module")
def accounts(lab_env: LabEnv) -> dict[str, str]:
    data = yaml.safe_load(lab_env.site.secrets_file().read_text())
    return data["dagster"]["accounts"]


@pytest.fixture(scope="module")
def ui(lab_env: LabEnv, accounts) -> UI:
    name, password = sorted(accounts.items())[0]
    return UI(lab_env, (name, password))


def test_lab_up_gives_the_lab_s_dagster_the_images_its_builds_start_from(lab_env: LabEnv):
    """support-1 has no podman: `infra lab up` pushed the base image, and the standard build's
    runtime images (the lab has both caches), each with its runtime's version as a label."""
    from resources.podman import RUNTIME_LABEL

    registry = lab_env.definitions().resources["registry"]
    assert registry.manifest(repository="coop-base", reference="bookworm") is not None
    for runtime in ("node", "python"):
        manifest = registry.manifest(repository=f"coop-{runtime}", reference="bookworm")
        assert manifest is not None, runtime
        labels = registry.labels(repository=f"coop-{runtime}", manifest=manifest)
        assert labels.get(RUNTIME_LABEL), (runtime, labels)


def test_status_says_where_the_ui_is_and_it_asks_for_an_account(lab_env: LabEnv, accounts):
    status = lab_site.status(lab_env.topology_file)
    (entry,) = status["dagster_ui"]
    assert entry["host"] == HOST
    assert entry["url"] == f"https://10.{LAB_NUMBER}.12.1/"  # its planned address (type 12)
    assert status["hosts"][HOST]["services"]["dagster"]["port"] == 443

    anyone = UI(lab_env, None)
    assert anyone.request("GET", "/").status_code == 401
    assert anyone.request("POST", "/graphql", json={"query": "{ version }"}).status_code == 401
    # ... but for the health check's probe: the webserver's versions, and nothing else
    info = anyone.request("GET", "/server_info")
    assert info.status_code == 200 and set(info.json()) <= {
        "dagster_webserver_version", "dagster_version", "dagster_graphql_version",
    }  # fmt: skip
    assert anyone.request("POST", "/server_info").status_code == 403
    # nginx passes that path and no other: `..` before it reaches the versions, not the UI
    status, body = anyone.raw("/static/../server_info")
    assert status == 200 and set(json.loads(body)) <= {
        "dagster_webserver_version", "dagster_version", "dagster_graphql_version",
    }, body[:200]  # fmt: skip
    assert anyone.raw("/server_info/../")[0] == 401
    name = sorted(accounts)[0]
    assert UI(lab_env, (name, "not-the-password")).request("GET", "/").status_code == 401
    assert UI(lab_env, ("nobody", accounts[name])).request("GET", "/").status_code == 401
    # Logged in, but asked by another site's page (cross-site request forgery): refused.
    ui = UI(lab_env, (name, accounts[name]))
    query = {"json": {"query": "{ version }"}}
    assert ui.request("POST", "/graphql", **query).status_code == 200
    evil = ui.request("POST", "/graphql", headers={"Origin": "https://evil.example"}, **query)
    assert evil.status_code == 403
    cross = ui.request("POST", "/graphql", headers={"Sec-Fetch-Site": "cross-site"}, **query)
    assert cross.status_code == 403
    assert ui.request("GET", "/graphql", params={"query": "{ version }"}).status_code == 403
    # Over plain HTTP, nothing is served (nginx listens for TLS only on 443; 80 is closed).
    with pytest.raises(requests.exceptions.ConnectionError):
        UI(lab_env, None).http.get(f"http://10.{LAB_NUMBER}.12.1/", timeout=5)


def test_the_webserver_behind_nginx_has_the_code_location_and_a_healthy_daemon(ui: UI):
    info = ui.request("GET", "/server_info")
    assert info.status_code == 200, info.text[:300]
    assert info.json()["dagster_webserver_version"] == "1.13.27"

    data = ui.graphql(
        "{ repositoriesOrError { ... on RepositoryConnection { nodes {"
        " name location { name } jobs { name } } } } }"
    )
    (repo,) = data["repositoriesOrError"]["nodes"]
    assert repo["location"]["name"] == LOCATION
    jobs = {j["name"] for j in repo["jobs"]}
    assert {"health", "backups", "promote", "rollback"} <= jobs

    deadline = time.monotonic() + 120
    while True:  # the daemon's first heartbeats
        statuses = ui.graphql(
            "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"
        )["instance"]["daemonHealth"]["allDaemonStatuses"]
        unhealthy = [s["daemonType"] for s in statuses if s["required"] and not s["healthy"]]
        if not unhealthy or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not unhealthy, f"daemons not healthy after 120 s: {unhealthy}"
    assert {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"} <= {s["daemonType"] for s in statuses}


def test_a_run_launched_through_graphql_runs_in_the_lab_and_is_stored_in_postgres(
    lab_env: LabEnv, ui: UI
):
    run_id = ui.launch("health")

    deadline = time.monotonic() + 300
    status = None
    while time.monotonic() < deadline:  # queued -> started by the daemon -> done
        status = ui.graphql(
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id}
        )["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(3)
    if status != "SUCCESS":
        events = ui.graphql(
            "query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {"
            " __typename ... on MessageEvent { message } } } } }",
            {"id": run_id},
        )
        messages = [e.get("message") for e in events["logsForRun"]["events"]][-15:]
        pytest.fail(f"run {run_id}: {status}\n" + "\n".join(str(m) for m in messages))

    # Its checks were evaluated: every host answered salt-api's call from inside the lab.
    checks = ui.graphql(
        "query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {"
        " __typename ... on AssetCheckEvaluationEvent { evaluation { checkName"
        " assetKey { path } success } } } } } }",
        {"id": run_id},
    )["logsForRun"]["events"]
    evaluated = {
        (e["evaluation"]["assetKey"]["path"][-1], e["evaluation"]["checkName"]): e["evaluation"][
            "success"
        ]
        for e in checks
        if e["__typename"] == "AssetCheckEvaluationEvent"
    }
    assert {(h, "minion") for h in lab_env.topo.hosts} <= set(evaluated)
    assert all(evaluated[(h, "minion")] for h in lab_env.topo.hosts), evaluated
    # ... and its own two checks pass: nginx asks for an account, the daemon's unit runs
    assert evaluated[(HOST, "dagster_ui")] and evaluated[(HOST, "dagster_daemon")], evaluated

    # The run is a row of the instance's database on pg-production-1 (not a file on support-1).
    driver = lab_env.lab().lab()
    rows = driver.exec(
        LAB_NUMBER,
        "pg-production-1",
        ["runuser", "-u", "postgres", "--", "psql", "-d", "dagster", "-tAc",
         f"select status from runs where run_id = '{run_id}'"],
    ).output.strip()  # fmt: skip
    assert rows == "SUCCESS"
    sqlite = driver.exec(LAB_NUMBER, HOST, ["find", "/var/lib/dagster", "-name", "*.db"])
    assert sqlite.returncode == 0 and sqlite.output.strip() == ""  # the folder is there
