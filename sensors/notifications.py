"""Notices to the co-op's chat: what went wrong, what went live, and what mended itself.

Three sensors post to the chat's incoming webhook (resources/chat.py; its URL is the secret
`chat.webhook_url`, infra_assets/topology/secrets.py; without it they skip, saying so):

- `run_failure_notice`: every run that fails (a build, a release, a plan...), with the failed
  steps' own messages and the run's page;
- `release_notice`: every run that changed what an environment runs (`release/<env>/<app>`
  materialised with `changed`): a release on staging, a promotion, a rollback, with the commit,
  the URL and, for a push, the seconds since the push;
- `check_notice`: an asset check whose latest evaluation failed where it had passed (or had
  never run), and one that passes again: drift found (`no_drift`), a health check, a backup's
  restore. A failed non-blocking check does not fail its run, so the run sensors never see it:
  this one reads each check's latest evaluation.

Dagster polls run-status sensors every 30 s by default; these run every NOTICE_INTERVAL_S, so a
notice reaches the chat within about that of the run's end. A notice the chat does not take (or
that cannot be sent: a broken secrets file) is kept in a spool under the state folder
(`notices/undelivered.jsonl`, mode 0600, its secrets already cut) and posted, in order, before
the next notice of any of them; the run sensors' tick fails saying so (Dagster moves a run
sensor's cursor on even then: the spool is what keeps the notice). The chat's URL never
appears in an error. `check_notice` posts the changes a tick finds as one
message (a host that goes down fails several checks at once). Every secret value is cut from a
notice's text. They run by default: a co-op that configures a chat hears of everything from
then on (a run-status sensor starts from the present; `check_notice`'s first tick posts only
the checks failing then).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from infra_assets.topology.model import TopologyError, read_topology
from infra_assets.topology.secrets import SecretsError, chat_webhook_url, secret_values
from infra_assets.topology.sites import RUNS_ON_ENV, SiteError, site_for
from resources.chat import ChatError, ChatResource
from resources.paths import state_dir
from resources.topology import TopologyResource
from sensors.cursors import CursorError, read_json_cursor

NOTICE_INTERVAL_S = 5
CHECK_INTERVAL_S = 10
# The Dagster UI's address as people reach it, for links to runs (optional).
UI_URL_ENV = "INFRA_DAGSTER_URL"
RELEASE_PREFIX = "release"


@dataclass(frozen=True)
class Chat:
    """Where notices go (None: no chat configured), why it cannot be used now (`problem`), and
    what a notice must never show."""

    resource: ChatResource | None
    secrets: list[str] = field(repr=False)
    problem: str | None = None

    def redact(self, text: str) -> str:
        for value in self.secrets:
            if len(value) >= 6:
                text = text.replace(value, "***")
        return text


def chat_for(topology_file: TopologyResource) -> Chat:
    """The chat, from the secrets file of the topology's site."""
    try:
        topo = read_topology(topology_file)
        site = site_for(topo)
        path = site.secrets_file()
    except (TopologyError, SiteError):
        # No secrets file named (a cloud without $INFRA_SECRETS_FILE, a broken topology): no
        # chat configured, as with a file that names none; nothing is kept for later.
        return Chat(None, [])
    try:
        secrets = secret_values(path)
    except SecretsError as err:
        # Kept as they are (their secrets cannot be read to cut them): cut when they are posted.
        return Chat(None, [], str(err))
    try:
        url = chat_webhook_url(path)
    except SecretsError as err:  # the notices are kept, their secrets cut all the same
        return Chat(None, secrets, str(err))
    # A Dagster on a host of the site (the dagster role) reaches the chat as that host does:
    # through the lab's egress proxy in a lab, directly on a cloud.
    runs_on = os.environ.get(RUNS_ON_ENV)
    proxy = site.chat_proxy(runs_on) if runs_on in topo.hosts else None
    return Chat(ChatResource(webhook_url=url, proxy=proxy or "") if url else None, secrets)


class NoticeError(RuntimeError):
    """Notices the chat did not take: kept, and posted at a later tick."""


def spool_dir() -> Path:
    return state_dir() / "notices"


class Spool:
    """The notices not posted yet (a JSON line each), under the state folder, mode 0600; one
    sensor at a time reads and writes it (a lock: the daemon runs sensors in threads)."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or spool_dir()
        self.path = self.folder / "undelivered.jsonl"

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def read(self) -> list[str]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def write(self, texts: list[str]) -> None:
        if not texts:
            self.path.unlink(missing_ok=True)
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(json.dumps(t) + "\n" for t in texts)


def deliver(topology_file: TopologyResource, texts: list[str]) -> str | None:
    """The notices kept from before, then `texts`, posted in order: None when all were, else
    why not (what was not posted is kept for the next tick). No chat configured: nothing is
    posted, nothing kept."""
    spool = Spool()
    if not texts and not spool.path.exists():
        return None  # check_notice's usual tick: nothing to post, no file to read
    chat = chat_for(topology_file)
    if chat.resource is None and chat.problem is None:
        return None
    with spool.held():
        # Cut here, as they are posted: a notice kept while the secrets file could not be read
        # went to the spool (0600, the state folder) uncut.
        pending = [chat.redact(t) for t in spool.read() + texts]
        if chat.resource is None:
            spool.write(pending)
            return f"{len(pending)} notices kept for later: {chat.problem}"
        for i, text in enumerate(pending):
            try:
                chat.resource.post(text)
            except ChatError as err:
                spool.write(pending[i:])
                said = chat.redact(str(err))
                return f"the chat did not take a notice ({said}): {len(pending) - i} kept for later"
        spool.write([])
    return None


def no_chat(topology_file: TopologyResource) -> dg.SkipReason | None:
    """A SkipReason when no chat is configured (nothing to post, nothing kept)."""
    chat = chat_for(topology_file)
    if chat.resource is None and chat.problem is None:
        return dg.SkipReason(
            "no notices: no chat configured (chat.webhook_url in the secrets file: README,"
            " 'Notices')"
        )
    return None


def run_link(run_id: str) -> str:
    ui = os.environ.get(UI_URL_ENV, "").rstrip("/")
    return f"{ui}/runs/{run_id}" if ui else f"run {run_id}"


def _what(run: dg.DagsterRun) -> str:
    """The run's subject from its tags: the app and the commit, when it has them."""
    app = run.tags.get("coop/app")
    sha = run.tags.get("coop/sha") or run.tags.get("dagster/partition", "")
    parts = [app] if app else []
    if len(sha) == 40:
        parts.append(f"commit {sha[:12]}")
    return f" ({', '.join(parts)})" if parts else ""


def failure_text(context: dg.RunFailureSensorContext) -> str:
    run = context.dagster_run
    lines = [f":x: *{run.job_name} failed*{_what(run)}"]
    steps = context.get_step_failure_events()
    for event in steps[:3]:
        data = event.step_failure_data
        user = data.user_failure_data
        said = (user.description if user and user.description else None) or (
            data.error.message if data.error else "(no message)"
        )
        lines.append(f"- {event.step_key}: {said.strip().splitlines()[0][:500]}")
    if len(steps) > 3:
        lines.append(f"- and {len(steps) - 3} more failed steps")
    if not steps:
        lines.append((context.failure_event.message or "the run failed").strip()[:500])
    lines.append(run_link(run.run_id))
    return "\n".join(lines)


@dataclass(frozen=True)
class Release:
    environment: str
    app: str
    sha: str
    digest: str
    why: str
    url: str
    push_to_live_s: float | None


def releases_of(instance: dg.DagsterInstance, run_id: str) -> list[Release]:
    """What the run changed: each `release/<env>/<app>` it materialised with `changed`."""
    found = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        mat = entry.asset_materialization
        if mat is None or len(mat.asset_key.path) != 3:
            continue
        prefix, environment, app = mat.asset_key.path
        meta = {k: v.value for k, v in mat.metadata.items()}
        if prefix != RELEASE_PREFIX or not meta.get("changed"):
            continue
        push = meta.get("push_to_live_s")
        found.append(
            Release(
                environment,
                app,
                str(meta.get("sha", "")),
                str(meta.get("digest", "")),
                str(meta.get("why", "")),
                str(meta.get("url", "")),
                float(push) if isinstance(push, int | float) else None,
            )  # fmt: skip
        )
    return found


def release_text(release: Release, run_id: str) -> str:
    commit = release.sha[:12] if len(release.sha) == 40 else release.digest[:19]
    if release.why.startswith("rollback"):
        head = f":leftwards_arrow_with_hook: *{release.app}* rolled back on *{release.environment}*"
    elif release.why.startswith("promoted"):
        head = f":rocket: *{release.app}* promoted to *{release.environment}*"
    else:
        head = f":rocket: *{release.app}* is live on *{release.environment}*"
    line = f"{head}: commit {commit}"
    if release.push_to_live_s is not None:
        line += f", {release.push_to_live_s:.1f} s after the push"
    url = release.url if release.url.startswith(("http://", "https://")) else ""
    return "\n".join(part for part in (line, url, run_link(run_id)) if part)


@dg.run_failure_sensor(
    name="run_failure_notice",
    minimum_interval_seconds=NOTICE_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts every failed run to the co-op's chat (chat.webhook_url in the secrets).",
)
def run_failure_notice(context: dg.RunFailureSensorContext, topology_file: TopologyResource):
    skip = no_chat(topology_file)
    if skip:
        return skip
    problem = deliver(topology_file, [failure_text(context)])
    if problem:  # the tick fails, saying so; the notice is kept (the sensor moves on)
        raise NoticeError(problem)
    return None


@dg.run_status_sensor(
    name="release_notice",
    run_status=dg.DagsterRunStatus.SUCCESS,
    minimum_interval_seconds=NOTICE_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts each release, promotion and rollback that changed an environment to the"
    " co-op's chat.",
)
def release_notice(context: dg.RunStatusSensorContext, topology_file: TopologyResource):
    releases = releases_of(context.instance, context.dagster_run.run_id)
    if not releases:
        return dg.SkipReason(f"{context.dagster_run.job_name}: no release changed")
    skip = no_chat(topology_file)
    if skip:
        return skip
    texts = [release_text(r, context.dagster_run.run_id) for r in releases]
    problem = deliver(topology_file, texts)
    if problem:
        raise NoticeError(problem)
    return None


# --- asset checks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckState:
    key: dg.AssetCheckKey
    record_id: int
    passed: bool
    description: str
    severity: str
    run_id: str


def check_states(
    instance: dg.DagsterInstance, keys: Sequence[dg.AssetCheckKey]
) -> list[CheckState]:
    """Each check's latest evaluation. Checks that never ran are left out, and so are checks
    whose latest record is only planned: a run that is evaluating them, or one whose asset failed
    before they ran (that record stays planned for good, and its event is the plan, not an
    evaluation)."""
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(keys))
    states = []
    for key, record in latest.items():
        evaluation = record.evaluation
        if not isinstance(evaluation, dg.AssetCheckEvaluation):
            continue
        states.append(
            CheckState(
                key,
                record.id,
                evaluation.passed,
                evaluation.description or "",
                evaluation.severity.value,
                record.run_id,
            )  # fmt: skip
        )
    return states


def _name(key: dg.AssetCheckKey) -> str:
    return f"*{key.name}* on {key.asset_key.to_user_string()}"


def check_changes(
    known: dict[str, dict], states: Iterable[CheckState]
) -> tuple[list[str], dict[str, dict]]:
    """The notices for checks whose state changed since `known` (the cursor), and the new
    cursor. A failure is posted once, when it starts (at the first tick: each failing check);
    a recovery when a failed check passes again."""
    texts = []
    cursor = dict(known)
    for state in sorted(states, key=lambda s: s.key.to_user_string()):
        name = state.key.to_user_string()
        before = known.get(name)
        cursor[name] = {"id": state.record_id, "passed": state.passed}
        if before is not None and before["id"] == state.record_id:
            continue
        was_failing = before is not None and not before["passed"]
        if not state.passed and not was_failing:
            lines = [f":warning: *check failed* ({state.severity.lower()}): {_name(state.key)}"]
            if state.description:
                lines.append(state.description.strip()[:500])
            lines.append(run_link(state.run_id))
            texts.append("\n".join(lines))
        elif state.passed and was_failing:
            texts.append(f":white_check_mark: *check passes again*: {_name(state.key)}")
    return texts, cursor


def _valid_entry(value) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("id"), int)
        and isinstance(value.get("passed"), bool)
    )


@dg.sensor(
    name="check_notice",
    minimum_interval_seconds=CHECK_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts an asset check that starts failing (drift, health, backups), and one that"
    " passes again, to the co-op's chat.",
)
def check_notice(context: dg.SensorEvaluationContext, topology_file: TopologyResource):
    try:
        known = read_json_cursor(
            context.cursor, valid=_valid_entry, shape='{"<check>": {"id": n, "passed": bool}}'
        )
    except CursorError as err:
        return dg.SkipReason(str(err))
    keys = list(context.repository_def.asset_graph.asset_check_keys)
    states = check_states(context.instance, keys)
    texts, cursor = check_changes(known, states)
    context.update_cursor(json.dumps(cursor, sort_keys=True))
    # One message per tick (a host that goes down fails several checks at once); and the
    # notices kept from before, when there are.
    problem = deliver(topology_file, ["\n\n".join(texts)] if texts else [])
    if problem:  # kept: the cursor moves on, the notice is posted at a later tick
        return dg.SkipReason(problem)
    if not texts:
        return dg.SkipReason(f"{len(states)} checks evaluated; none changed")
    return None


SENSORS = [run_failure_notice, release_notice, check_notice]
