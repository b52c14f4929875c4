"""The calls the webhook endpoint makes to Dagster, through its GraphQL API (the webserver's
/graphql): find runs by tag, add a commit's partition, launch a run. Nothing in process: the
endpoint can run beside any Dagster webserver it can reach."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

from resources.cli_runner import ToolError
from resources.lab_link import route_problem

# workspace.yaml's code location, and the repository a `Definitions` object makes
LOCATION = "coop-infra"
REPOSITORY = "__repository__"
TIMEOUT_S = 10

RUNS = """
query Runs($filter: RunsFilter!, $limit: Int!) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename
    ... on Runs { results { runId status jobName tags { key value } } }
    ... on Error { message }
  }
}"""

ADD_PARTITION = """
mutation Add($name: String!, $key: String!, $repo: RepositorySelector!) {
  addDynamicPartition(partitionsDefName: $name, partitionKey: $key, repositorySelector: $repo) {
    __typename
    ... on Error { message }
  }
}"""

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}"""


SENSOR = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      id sensorState { status typeSpecificData { ... on SensorData { lastCursor } } }
    }
    ... on Error { message }
  }
}"""

DRY_RUN = """
mutation DryRun($selector: SensorSelector!, $cursor: String) {
  sensorDryRun(selectorData: $selector, cursor: $cursor) {
    __typename
    ... on DryRunInstigationTick {
      evaluationResult {
        runRequests { runKey jobName runConfigYaml tags { key value } }
        skipReason
        error { message }
      }
    }
    ... on Error { message }
  }
}"""


START_SENSOR = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on Error { message }
  }
}"""

STOP_SENSOR = """
mutation Stop($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on Error { message }
  }
}"""

RUN_FAILURE = """
query Failure($id: ID!) {
  logsForRun(runId: $id) {
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
  }
}"""


class DagsterApiError(ToolError):
    """Dagster could not be asked, or refused; the message says which call and why."""


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation of a sensor asked for (its own code, run by Dagster)."""

    requests: list[dict[str, Any]]  # {runKey, jobName, runConfigYaml, tags: [{key, value}]}
    skip_reason: str


@dataclass(frozen=True)
class RunRef:
    run_id: str
    status: str
    job: str
    tags: list[dict[str, str]] = field(default_factory=list)

    def tag(self, key: str) -> str | None:
        return next((t["value"] for t in self.tags if t.get("key") == key), None)


class DagsterApi:
    """Dagster's GraphQL API at `url` (its webserver, or nginx before it). Behind a login:
    `auth` (account, password) and the certificate to check in `ca_file`. `route_device`: the
    address is in a lab, and nothing is sent unless the machine's route to it goes through
    that link (resources/lab_link.py)."""

    def __init__(
        self,
        url: str,
        *,
        session: requests.Session | None = None,
        auth: tuple[str, str] | None = None,
        ca_file: str | None = None,
        route_device: str | None = None,
    ):
        self.url = url.rstrip("/")
        self.session = session or requests.Session()
        self.route_device = route_device
        if auth:
            self.session.auth = auth
        if ca_file:
            self.session.verify = ca_file
        if route_device:
            self.session.trust_env = False  # a lab's address, never through a proxy

    def run_url(self, run_id: str) -> str:
        return f"{self.url}/runs/{run_id}"

    def query(self, what: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """Any GraphQL query or mutation: its `data` (DagsterApiError names `what` failed)."""
        return self._call(what, query, variables)

    def _call(self, what: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        if self.route_device:
            problem = route_problem(self.url + "/", self.route_device)
            if problem:
                raise DagsterApiError(f"{what}: {problem}", command=what)
        try:
            answer = self.session.post(
                f"{self.url}/graphql",
                json={"query": query, "variables": variables},
                timeout=TIMEOUT_S,
            )
        except requests.RequestException as err:
            raise DagsterApiError(
                f"{what}: Dagster at {self.url} cannot be reached: {err}", command=what
            ) from None
        if answer.status_code != 200:
            raise DagsterApiError(
                f"{what}: Dagster at {self.url} answered HTTP {answer.status_code}:"
                f" {answer.text[:300]}",
                command=what,
            )
        try:
            body = answer.json()
        except ValueError:
            raise DagsterApiError(
                f"{what}: Dagster at {self.url} answered no JSON", command=what
            ) from None
        if body.get("errors"):
            messages = "; ".join(str(e.get("message")) for e in body["errors"])
            raise DagsterApiError(f"{what}: {messages}", command=what)
        return body.get("data") or {}

    @staticmethod
    def _refused(what: str, result: dict[str, Any]) -> DagsterApiError:
        errors = [e.get("message") for e in result.get("errors") or []]
        why = result.get("message") or "; ".join(map(str, errors)) or result.get("__typename")
        return DagsterApiError(f"{what}: {result.get('__typename')}: {why}", command=what)

    def runs(self, tags: dict[str, str]) -> list[RunRef]:
        """The runs that carry every one of `tags` (at most 5, newest first)."""
        tags_filter = [{"key": k, "value": v} for k, v in tags.items()]
        return self._runs({"tags": tags_filter}, limit=5)

    def _runs(self, runs_filter: dict[str, Any], *, limit: int) -> list[RunRef]:
        what = "find runs"
        data = self._call(what, RUNS, {"filter": runs_filter, "limit": limit})
        result = data.get("runsOrError") or {}
        if result.get("__typename") != "Runs":
            raise self._refused(what, result)
        return [
            RunRef(r["runId"], r["status"], r["jobName"], r.get("tags") or [])
            for r in result["results"]
        ]

    def add_partition(self, partitions_def: str, key: str) -> None:
        """Add `key` to dynamic partitions `partitions_def` (there already: nothing to do)."""
        what = f"add partition {key} to {partitions_def}"
        data = self._call(
            what,
            ADD_PARTITION,
            {"name": partitions_def, "key": key, "repo": _repository()},
        )
        result = data.get("addDynamicPartition") or {}
        if result.get("__typename") not in (
            "AddDynamicPartitionSuccess",
            "DuplicateDynamicPartitionError",
        ):
            raise self._refused(what, result)

    def _sensor_data(self, what: str, name: str) -> dict[str, Any]:
        data = self._call(what, SENSOR, {"selector": _sensor(name)})
        result = data.get("sensorOrError") or {}
        if result.get("__typename") != "Sensor":
            raise self._refused(what, result)
        return result

    def sensor(self, name: str) -> tuple[str, str | None]:
        """Sensor `name`'s status (RUNNING, STOPPED) and its cursor."""
        state = self._sensor_data(f"read sensor {name}", name)["sensorState"]
        return state["status"], (state.get("typeSpecificData") or {}).get("lastCursor")

    def evaluate(self, name: str, cursor: str | None) -> Evaluation:
        """Sensor `name` evaluated now from `cursor`, by Dagster in the code location (a dry
        run: nothing is launched, the cursor is not moved)."""
        what = f"evaluate sensor {name}"
        data = self._call(what, DRY_RUN, {"selector": _sensor(name), "cursor": cursor})
        result = data.get("sensorDryRun") or {}
        if result.get("__typename") != "DryRunInstigationTick":
            raise self._refused(what, result)
        evaluation = result.get("evaluationResult") or {}
        if evaluation.get("error"):
            raise DagsterApiError(f"{what}: {evaluation['error'].get('message')}")
        return Evaluation(evaluation.get("runRequests") or [], evaluation.get("skipReason") or "")

    def launch(
        self, job: str, *, tags: dict[str, str], run_config: dict[str, Any] | None = None,
        assets: list[list[str]] | None = None,
    ) -> str:  # fmt: skip
        """Launch a run of `job` with `tags` (its partition: the `dagster/partition` tag), of
        `assets` alone when given (asset key paths); the run id. The run waits in Dagster's
        queue until the daemon starts it."""
        what = f"launch {job}"
        selector: dict[str, Any] = {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "jobName": job,
        }
        if assets:
            selector["assetSelection"] = [{"path": path} for path in assets]
        params = {
            "selector": selector,
            "runConfigData": run_config or {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        data = self._call(what, LAUNCH, {"params": params})
        result = data.get("launchRun") or {}
        if result.get("__typename") != "LaunchRunSuccess":
            raise self._refused(what, result)
        return result["run"]["runId"]

    def start_sensor(self, name: str) -> str:
        """Turn sensor `name` on (on already: nothing changes); its status."""
        what = f"start sensor {name}"
        data = self._call(what, START_SENSOR, {"selector": _sensor(name)})
        result = data.get("startSensor") or {}
        if result.get("__typename") != "Sensor":
            raise self._refused(what, result)
        return result["sensorState"]["status"]

    def stop_sensor(self, name: str) -> str:
        """Turn sensor `name` off; its status."""
        what = f"stop sensor {name}"
        data = self._call(what, STOP_SENSOR, {"id": self._sensor_data(what, name)["id"]})
        result = data.get("stopSensor") or {}
        if result.get("__typename") != "StopSensorMutationResult":
            raise self._refused(what, result)
        return result["instigationState"]["status"]

    def runs_since(self, created_after: float) -> list[RunRef]:
        """The runs created after `created_after` (a timestamp), newest first (at most 20)."""
        return self._runs({"createdAfter": created_after}, limit=20)

    def failure(self, run_id: str) -> str:
        """The messages of a run's failed steps and of its failure (what went wrong)."""
        data = self._call("read a run's events", RUN_FAILURE, {"id": run_id})
        events = (data.get("logsForRun") or {}).get("events") or []
        failed = ("ExecutionStepFailureEvent", "RunFailureEvent")
        return "\n".join(e["message"] for e in events if e["__typename"] in failed)


def _repository() -> dict[str, str]:
    return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}


def _sensor(name: str) -> dict[str, str]:
    return {**_repository(), "sensorName": name}
