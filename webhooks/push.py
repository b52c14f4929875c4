"""What a push starts: `deliver_<app>` for the head of the app's branch, at once.

The payload is not trusted: it may say which refs moved (a post-receive hook's lines, a forge's
`ref`), which only decides whether the app's branch is among them; the commit is the branch head
as the endpoint reads it from the app's repository (`git ls-remote`), like git_push_sensor. The run
carries git_push_sensor's name and its run key (`<app>:<sha>`): Dagster skips a run key only for
the sensor that made it, so these tags make the sensor's next poll skip this commit; and a commit
that already has such a run (a second hook, the sensor first) gets no second one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from infra_assets.delivery.app_images import partitions_def_name
from infra_assets.delivery.jobs import push_job_name
from infra_assets.delivery.releases import PARTITION_TAG, PUSHED_AT_TAG
from infra_assets.topology.model import Topology, TopologyError, load_topology
from resources.dagster_api import DagsterApi
from resources.git import GitError, GitResource
from resources.git_url import redact_repo, resolve_repo
from sensors import git_push

SENSOR_NAME_TAG = "dagster/sensor_name"
RUN_KEY_TAG = "dagster/run_key"
STARTED_BY_TAG = "coop/started_by"


class PushError(RuntimeError):
    """A push that cannot start anything; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class PushOutcome:
    app: str
    started: bool
    why: str
    sha: str = ""
    run_id: str = ""
    run_url: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in ("", {})}


class PushHandler:
    def __init__(self, topology_file: Path, api: DagsterApi, git: GitResource | None = None):
        self.topology_file = Path(topology_file)
        self.api = api
        self.git = git or GitResource()
        # One push at a time: two hooks of one push (or two pushes) never race to one launch.
        self._lock = threading.Lock()

    def topology(self) -> Topology:
        """Read at each push: a topology changed since the endpoint started counts."""
        try:
            return load_topology(self.topology_file)
        except TopologyError as err:
            raise PushError(500, f"the topology does not load: {err}") from None

    def push(self, app: str, *, refs: list[str] | None, pushed_at: float | None) -> PushOutcome:
        """`refs`: the refs the payload says moved (None: it says none, so look anyway)."""
        received = time.time()
        topo = self.topology()
        spec = topo.apps.get(app)
        if spec is None:
            raise PushError(404, f"no app {app!r} in {self.topology_file} ({', '.join(topo.apps)})")
        branch_ref = f"refs/heads/{spec.branch}"
        if refs is not None and branch_ref not in refs:
            return PushOutcome(app, False, f"{', '.join(refs) or 'no ref'} moved, not {branch_ref}")
        repo = resolve_repo(spec.repo, self.topology_file.parent)
        try:
            sha = self.git.head(repo=repo, branch=spec.branch)
        except GitError as err:
            where = f"{spec.branch} of {redact_repo(repo)}"
            raise PushError(502, f"cannot read {where}: {err}") from None
        key = git_push.run_key(app, sha)
        job = push_job_name(topo, app)
        with self._lock:
            existing = self.api.runs({RUN_KEY_TAG: key, SENSOR_NAME_TAG: git_push.SENSOR_NAME})
            if existing:
                run = existing[0]
                return PushOutcome(
                    app, False, f"{sha[:12]} has a run already ({run.status})", sha, run.run_id,
                    self.api.run_url(run.run_id),
                )  # fmt: skip
            self.api.add_partition(partitions_def_name(app), sha)
            tags = {
                PARTITION_TAG: sha,
                SENSOR_NAME_TAG: git_push.SENSOR_NAME,
                RUN_KEY_TAG: key,
                "coop/app": app,
                "coop/sha": sha,
                "coop/branch": spec.branch,
                STARTED_BY_TAG: "webhook",
            }
            if pushed_at is not None and received - 3600 <= pushed_at <= received + 1:
                tags[PUSHED_AT_TAG] = f"{pushed_at:.3f}"
            run_id = self.api.launch(job, tags=tags)
        return PushOutcome(
            app, True, f"{job} started for {sha[:12]}", sha, run_id, self.api.run_url(run_id),
            {"endpoint_s": round(time.time() - received, 3)},
        )  # fmt: skip
