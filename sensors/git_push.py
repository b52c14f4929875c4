"""`git_push_sensor`: a new commit on an app's branch asks for an image build of that commit.

Every app's repo and branch (topology.yaml `apps`) is read at once (`git ls-remote`, in
parallel). The cursor is the last sha seen per app, as JSON (`{"hello": "3f2a..."}`). Each new
sha adds a partition to that app's `app_image` (its dynamic partitions are the app's commits) and
asks for one run of the app's build job with run_key `<app>:<sha>`, so a replayed tick, or a
branch pushed back to a commit already built, asks for no second run. A repo that cannot be read
is skipped with its reason and keeps its cursor: the next tick tries it again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg

from infra_assets.model import App
from resources.git import GitResource
from resources.git_url import resolve_repo
from resources.topology import TopologyResource
from sensors.cursors import CursorError, read_json_cursor

SENSOR_NAME = "git_push_sensor"


@dataclass(frozen=True)
class AppTarget:
    """Where a new commit of one app goes: its build job and its commits' partitions."""

    job_name: str
    partitions_def_name: str


@dataclass
class Poll:
    new: dict[str, str] = field(default_factory=dict)  # app -> new sha
    unreachable: dict[str, str] = field(default_factory=dict)  # app -> why
    cursor: dict[str, str] = field(default_factory=dict)


def read_cursor(text: str | None) -> dict[str, str]:
    return read_json_cursor(
        text, valid=lambda sha: isinstance(sha, str), shape='{"<app>": "<sha>"}'
    )


def poll(*, apps: Mapping[str, App], cursor: Mapping[str, str], git: GitResource, base_dir) -> Poll:
    """Read every app's branch head; compare with the cursor. No Dagster here: testable alone."""
    names = list(apps)
    heads = git.heads(
        targets=[(resolve_repo(apps[n].repo, base_dir), apps[n].branch) for n in names]
    )
    result = Poll()
    for name, head in zip(names, heads, strict=True):
        if head.sha is None:
            result.unreachable[name] = head.error or "unknown error"
            if name in cursor:
                result.cursor[name] = cursor[name]  # kept: the next tick tries again
            continue
        result.cursor[name] = head.sha
        if cursor.get(name) != head.sha:
            result.new[name] = head.sha
    return result


def run_key(app: str, sha: str) -> str:
    return f"{app}:{sha}"


def build_git_push_sensor(
    *,
    apps: Mapping[str, App],
    targets: Mapping[str, AppTarget],
    jobs: list,
    minimum_interval_seconds: int = 30,
) -> dg.SensorDefinition:
    """The sensor for these apps; `targets[app]` names each app's build job and partitions."""

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=jobs,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="A new commit on an app's branch (topology.yaml apps: repo, branch) -> an"
        " image build of that commit (run_key <app>:<sha>). Cursor: the last sha per app.",
    )
    def git_push_sensor(
        context: dg.SensorEvaluationContext, git: GitResource, topology_file: TopologyResource
    ):
        try:
            cursor = read_cursor(context.cursor)
        except CursorError as err:
            return dg.SkipReason(str(err))
        result = poll(apps=apps, cursor=cursor, git=git, base_dir=topology_file.file().parent)
        unreachable = [f"{app}: {why}" for app, why in sorted(result.unreachable.items())]
        for line in unreachable:
            context.log.warning(f"skipped {line}")
        if not result.new:
            why = "no new commit"
            if unreachable:
                why += f"; {len(unreachable)} repo(s) could not be read (cursor kept): " + (
                    "; ".join(unreachable)
                )
            # The cursor still moves for what was read: only the unreachable keep theirs.
            return dg.SensorResult(skip_reason=why, cursor=_dump(result.cursor))
        requests, partitions = [], []
        for app, sha in sorted(result.new.items()):
            target = targets[app]
            partitions.append(
                dg.AddDynamicPartitionsRequest(
                    partitions_def_name=target.partitions_def_name, partition_keys=[sha]
                )
            )
            requests.append(
                dg.RunRequest(
                    run_key=run_key(app, sha),
                    job_name=target.job_name,
                    partition_key=sha,
                    tags={"coop/app": app, "coop/sha": sha, "coop/branch": apps[app].branch},
                )
            )
        context.log.info(summarise_commits(result.new))
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=partitions,
            cursor=_dump(result.cursor),
        )

    return git_push_sensor


LOGGED_COMMITS = 10


def summarise_commits(new: dict[str, str]) -> str:
    """`new commits: a 1234..., b 5678...` with the first few apps named, the rest counted: one
    short line per tick, even when 200 apps move at once."""
    named = [f"{app} {sha[:12]}" for app, sha in sorted(new.items())[:LOGGED_COMMITS]]
    more = len(new) - len(named)
    return f"new commits ({len(new)}): " + ", ".join(named) + (f", and {more} more" if more else "")


def _dump(cursor: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(cursor.items())), separators=(",", ":"))
