"""`git_push_sensor`: a new commit on an app's branch asks for an image build of that commit.

Every app's repo and branch (topology.yaml `apps`) is read at once (`git ls-remote`, in
parallel). It is the fallback: a push reaches Dagster at once through the webhook endpoint
(webhooks/push.py), which launches the commit's run under this sensor's name and run key. So a
new head is asked for on the tick after the one that first saw it, still the head then: by that
time the endpoint's run exists and Dagster skips the request (a run key is run once per sensor).
Asking on the first sight would race the endpoint, whose check for a run and launch can fall
between the sensor's evaluation and the daemon's creating its run: two builds of one push. A
hook that never came costs one interval more (30 s).

The cursor is JSON: `{"asked": {"<app>": "<sha>"}, "seen": {"<app>": "<sha>"}}`, the last sha
asked for per app and a head seen once, waiting for the next tick. Each sha asked for adds a
partition to that app's `app_image` (its dynamic partitions are the app's commits) and asks for
one run of the app's build job with run_key `<app>:<sha>`, so a replayed tick, or a branch pushed
back to a commit already built, asks for no second run. A repo that cannot be read is skipped
with its reason and keeps its cursor: the next tick tries it again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg

from infra_assets.topology.model import App
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
class Cursor:
    """What the sensor remembers between ticks (see the module's docstring)."""

    asked: dict[str, str] = field(default_factory=dict)  # app -> the last sha asked for
    seen: dict[str, str] = field(default_factory=dict)  # app -> a new head seen once

    def dump(self) -> str:
        data = {"asked": dict(sorted(self.asked.items())), "seen": dict(sorted(self.seen.items()))}
        return json.dumps(data, separators=(",", ":"))


@dataclass
class Poll:
    new: dict[str, str] = field(default_factory=dict)  # app -> sha asked for now
    waiting: dict[str, str] = field(default_factory=dict)  # app -> sha seen for the first time
    unreachable: dict[str, str] = field(default_factory=dict)  # app -> why
    cursor: Cursor = field(default_factory=Cursor)


SHAPE = '{"asked": {"<app>": "<sha>"}, "seen": {"<app>": "<sha>"}}'


def read_cursor(text: str | None) -> Cursor:
    """The cursor; one written before heads waited a tick (`{"<app>": "<sha>"}`) reads as the
    shas asked for."""
    data = read_json_cursor(text, valid=lambda value: isinstance(value, str | dict), shape=SHAPE)
    if all(isinstance(value, str) for value in data.values()):
        return Cursor(asked=data)
    if set(data) <= {"asked", "seen"} and all(
        isinstance(value, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        for value in data.values()
    ):
        return Cursor(asked=data.get("asked", {}), seen=data.get("seen", {}))
    raise CursorError(f"the cursor is not {SHAPE}; reset it in the UI")


def poll(*, apps: Mapping[str, App], cursor: Cursor, git: GitResource, base_dir) -> Poll:
    """Read every app's branch head; compare with the cursor. No Dagster here: testable alone."""
    names = list(apps)
    heads = git.heads(
        targets=[(resolve_repo(apps[n].repo, base_dir), apps[n].branch) for n in names]
    )
    result = Poll()
    for name, head in zip(names, heads, strict=True):
        asked, seen = cursor.asked.get(name), cursor.seen.get(name)
        if head.sha is None:
            result.unreachable[name] = head.error or "unknown error"
            # kept: the next tick tries again
            if asked is not None:
                result.cursor.asked[name] = asked
            if seen is not None:
                result.cursor.seen[name] = seen
            continue
        if asked is not None:
            result.cursor.asked[name] = asked
        if head.sha == asked:
            continue
        if head.sha == seen:  # the head a tick ago too: the endpoint had its chance
            result.new[name] = head.sha
            result.cursor.asked[name] = head.sha
        else:
            result.waiting[name] = head.sha
            result.cursor.seen[name] = head.sha
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
        " image build of that commit (run_key <app>:<sha>), asked for on the tick after the"
        " one that first saw it (the webhook endpoint starts a push at once). Cursor: the last"
        " sha asked for per app, and the heads seen once.",
    )
    def git_push_sensor(
        context: dg.SensorEvaluationContext, git: GitResource, topology_file: TopologyResource
    ):
        return _evaluate(context, git, topology_file, apps=apps, targets=targets)

    return git_push_sensor


def _evaluate(
    context: dg.SensorEvaluationContext,
    git: GitResource,
    topology_file: TopologyResource,
    *,
    apps: Mapping[str, App],
    targets: Mapping[str, AppTarget],
) -> dg.SkipReason | dg.SensorResult:
    """One tick: the new heads asked for (each with its partition), or why there is none."""
    try:
        cursor = read_cursor(context.cursor)
    except CursorError as err:
        return dg.SkipReason(str(err))
    result = poll(apps=apps, cursor=cursor, git=git, base_dir=topology_file.file().parent)
    unreachable = [f"{app}: {why}" for app, why in sorted(result.unreachable.items())]
    for line in unreachable:
        context.log.warning(f"skipped {line}")
    if not result.new:
        return _nothing_new(result, unreachable)
    requests, partitions = _requests(result.new, apps=apps, targets=targets)
    context.log.info(summarise_commits(result.new))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=partitions,
        cursor=result.cursor.dump(),
    )


def _nothing_new(result: Poll, unreachable: list[str]) -> dg.SensorResult:
    """The skip of a tick with no head to ask for: why (heads waiting, repos unreadable)."""
    why = "no new commit"
    if result.waiting:
        why = (
            summarise_commits(result.waiting, "seen once")
            + ": asked for on the next tick if still the head (the webhook endpoint"
            " starts a push at once)"
        )
    if unreachable:
        why += f"; {len(unreachable)} repo(s) could not be read (cursor kept): " + (
            "; ".join(unreachable)
        )
    # The cursor still moves for what was read: only the unreachable keep theirs.
    return dg.SensorResult(skip_reason=why, cursor=result.cursor.dump())


def _requests(
    new: dict[str, str], *, apps: Mapping[str, App], targets: Mapping[str, AppTarget]
) -> tuple[list[dg.RunRequest], list[dg.AddDynamicPartitionsRequest]]:
    """Per new head: its build run (run_key `<app>:<sha>`) and its partition of the app's image."""
    requests, partitions = [], []
    for app, sha in sorted(new.items()):
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
    return requests, partitions


LOGGED_COMMITS = 10


def summarise_commits(new: dict[str, str], what: str = "new commits") -> str:
    """`new commits (2): a 1234..., b 5678...` with the first few apps named, the rest counted:
    one short line per tick, even when 200 apps move at once."""
    named = [f"{app} {sha[:12]}" for app, sha in sorted(new.items())[:LOGGED_COMMITS]]
    more = len(new) - len(named)
    return f"{what} ({len(new)}): " + ", ".join(named) + (f", and {more} more" if more else "")
