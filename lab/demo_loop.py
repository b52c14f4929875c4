"""The pieces of `make demo`'s push-to-live loop (lab/demo.py runs them on the lab):

- `ensure_repo`: the sample app's git repo, the bare repo the topology names (`apps.<app>.repo`)
  and a working clone under the lab's state folder, made from `apps/<app>/`;
- `start_daemon_and_sensors`: the Dagster daemon on the repo's instance (lab/dagster_daemon.py),
  and the sensors on;
- `start_webhooks`: the Dagster webserver, the webhook endpoint, and the app's post-receive hook
  that calls it;
- `push_change` and `wait_live`, the two halves of one round: a commit pushed (the hook starts
  `deliver_<app>`: the build, then the staging release, in one run), then followed until staging
  answers with it. Also used by the demo's test and benchmarks/bench_push_to_live.py.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import requests

from infra_assets.topology.model import Topology
from infra_assets.topology.secrets import webhook_secret
from lab.demo_services import demo_services, install_hook
from lab.lab_dagster import LabDagster, LabDagsterError
from lab.reach import ReachError, Site
from lab.site import lab_secrets, step_error_text
from resources.cli_runner import CliResult, discard, run_cli
from resources.dagster_api import DagsterApi, DagsterApiError, RunRef
from resources.git import run_git
from resources.git_url import redact_repo, resolve_repo
from resources.paths import REPO_ROOT, dagster_home

Say = Callable[..., None]
BIN = Path(sys.executable).parent
SENSORS = ("git_push_sensor", "registry_image_sensor")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "coop-infra demo",
    "GIT_AUTHOR_EMAIL": "demo@coop-infra.invalid",
    "GIT_COMMITTER_NAME": "coop-infra demo",
    "GIT_COMMITTER_EMAIL": "demo@coop-infra.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


class LoopError(RuntimeError):
    """The loop cannot go on; the message says why and where to look."""


@dataclass
class AppRepo:
    app: str
    bare: Path
    work: Path
    branch: str

    def commit(self, message: str, files: dict[str, str] | None = None) -> str:
        for rel, text in (files or {}).items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        _git("add", "-A", cwd=self.work)
        _git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        return _git("rev-parse", "HEAD", cwd=self.work)

    def push(self) -> list[str]:
        """Push the branch; what the repository's hooks said (`remote: ...` lines)."""
        out = _run_git("push", "-q", "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.work)
        return [
            line.removeprefix("remote: ").strip()
            for line in out.lines
            if line.startswith("remote: ") and line.removeprefix("remote: ").strip()
        ]


def demo_app(topo: Topology) -> str:
    """The app the demo pushes: the first one whose source is in this repo (apps/<name>/)."""
    for name in topo.apps:
        if (REPO_ROOT / "apps" / name / "Dockerfile").is_file():
            return name
    raise LoopError(
        f"no app of the topology has its source under {REPO_ROOT / 'apps'} (apps:"
        f" {', '.join(topo.apps) or 'none'}): the demo pushes one of those"
    )


def ensure_repo(topology_file: Path, topo: Topology, app: str, state: Path) -> AppRepo:
    """The app's bare repo where the topology says (made once, from apps/<app>/) and a clone."""
    spec = topo.apps[app]
    bare = Path(resolve_repo(spec.repo, topology_file.parent))
    if "://" in str(spec.repo) or "@" in str(spec.repo).split("/")[0]:
        raise LoopError(
            f"apps.{app}.repo is a URL ({redact_repo(spec.repo)}): the demo needs a local path"
        )
    work = state / "git" / "work" / app
    if not (bare / "HEAD").exists():
        bare.parent.mkdir(parents=True, exist_ok=True)
        _git("init", "-q", "--bare", "-b", spec.branch, str(bare))
    if (work / ".git").exists():
        origin = _git("remote", "get-url", "origin", cwd=work)
        if Path(origin).resolve() != bare.resolve():
            # A clone of another repo (the topology names a new path): made again, unless it
            # holds work of someone's that is not pushed anywhere.
            unsaved = _git("status", "--porcelain", cwd=work) or _git(
                "log", "--branches", "--not", "--remotes", "--oneline", cwd=work
            )
            if unsaved:
                raise LoopError(
                    f"{work} is a clone of {origin}, not of {bare}, and holds changes not pushed"
                    " there: push or move them, then run the demo again"
                )
            shutil.rmtree(work)
    if not (work / ".git").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.parent.mkdir(parents=True, exist_ok=True)
        _git("clone", "-q", str(bare), str(work))
        if not _git("branch", "-r", cwd=work):  # an empty repo: start the branch
            _git("checkout", "-q", "-b", spec.branch, cwd=work)
    repo = AppRepo(app, bare, work, spec.branch)
    source = REPO_ROOT / "apps" / app
    if not (work / "Dockerfile").exists():
        shutil.copytree(source, work, dirs_exist_ok=True)
        repo.commit(f"{app}: the sample app (from coop-infra apps/{app})")
        repo.push()
    return repo


def start_daemon_and_sensors(daemon, env: dict[str, str], say: Say) -> tuple[int, bool]:
    """The Dagster daemon on the repo's instance (`daemon`: a lab/dagster_daemon.DagsterDaemon),
    and the delivery sensors on."""
    home = dagster_home()
    pid, ours = daemon.start(dagster_home=home, env=env)
    if ours:
        say(f"   dagster-daemon (pid {pid}) on the instance {home}; log {daemon.log}")
    else:
        theirs = _topology_of(pid)
        wanted = env.get("INFRA_TOPOLOGY")
        if wanted and theirs != Path(wanted).resolve():
            raise LoopError(
                f"a Dagster daemon already runs on this instance (pid {pid}) on another topology"
                f" ({theirs or 'topology.yaml, the default'}): its sensors would act on that one."
                " Stop it first (Ctrl-C in `make dev`; `infra lab down` for a demo's), then run"
                " the demo again"
            )
        say(
            f"   a Dagster daemon already runs on this instance (pid {pid}: `make dev`?);"
            " the demo uses it"
        )
    # Every sensor of the code location: on the lab, these two and the notices (on by
    # default). Through the workspace, so that they are the sensors of the location the daemon
    # runs ("coop-infra").
    out = run_cli(
        [BIN / "dagster", "sensor", "start", "--start-all", "-w", REPO_ROOT / "workspace.yaml"],
        env={**env, "DAGSTER_HOME": str(home)},
        cwd=home,
        timeout_s=180,
        check=False,
        log=discard,
    )
    if out.returncode != 0:
        text = out.output.strip()
        raise LoopError(f"`dagster sensor start --start-all` failed:\n{text[-2000:]}")
    say(
        f"   sensors on: {', '.join(SENSORS)} (the fallbacks: a push calls the webhook endpoint,"
        " which starts its run at once), and the chat's notices (sensors/notifications.py:"
        " chat.webhook_url in the lab's secrets)"
    )
    return pid, ours


def hand_over(dagster: LabDagster, say: Say) -> None:
    """The lab's own Dagster takes the lab: once it is ready, its delivery sensors are turned
    on (the fallbacks of the webhook endpoint; its notices and schedules are on by default).
    This machine starts no daemon of its own: one Dagster drives the lab."""
    say(f"   the lab's Dagster on {dagster.host} ({dagster.url}) takes over: this machine's"
        " bootstrapped the lab (`infra lab up`) and starts no daemon")  # fmt: skip
    try:
        dagster.wait_ready()
    except LabDagsterError as err:
        raise LoopError(str(err)) from None
    api = dagster.api()
    for name in SENSORS:
        try:
            api.start_sensor(name)
        except DagsterApiError as err:
            raise LoopError(str(err)) from None
    say(f"   sensors on in the lab's Dagster: {', '.join(SENSORS)} (the fallbacks: a push calls"
        " the webhook endpoint, which starts its run there at once)")  # fmt: skip


def start_webhooks(
    site,
    topology_file: Path,
    repo: AppRepo,
    env: dict[str, str],
    say: Say,
    dagster: LabDagster | None = None,
) -> str:
    """The webhook endpoint (lab/demo_services.py) and the app's post-receive hook calling it:
    a push starts its run at once, in the lab's own Dagster (`dagster`), else in this
    machine's, whose webserver is started for it. The URL of the Dagster UI that runs it."""
    lab_secrets(site)  # the lab's throwaway secrets, with webhooks.secret
    services = demo_services(site)
    if dagster is not None:
        ui, login = dagster.url, dagster.webhook_options()
    else:
        ui, login = services.start_webserver(dagster_home=dagster_home(), env=env), []
    say(f"   the Dagster UI and its GraphQL API: {ui}")
    registry = sorted(site.topo.hosts_with_role("docker-registry")) or sorted(site.topo.hosts)
    where = site.webhooks_url(registry[0])  # where the lab's registry sends its notifications
    endpoint = services.start_webhooks(
        topology_file=Path(topology_file).absolute(),
        dagster_url=ui,
        env=env,
        listen=where.removeprefix("http://"),
        dagster_login=login,
    )
    install_hook(
        repo.bare,
        url=f"{endpoint}/push/{repo.app}",
        secret=webhook_secret(site.secrets_file()),
        secret_file=site.root / "webhooks" / "secret",
    )
    say(
        f"   webhook endpoint {endpoint}: {repo.bare}/hooks/post-receive calls it on a push, the"
        " lab's registry on an image pushed"
    )
    return ui


def _topology_of(pid: int) -> Path | None:
    """The topology process `pid` works on ($INFRA_TOPOLOGY in its environment, from its
    working folder), or None when it names none."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    for entry in environ:
        if entry.startswith(b"INFRA_TOPOLOGY="):
            return (cwd / entry.split(b"=", 1)[1].decode()).resolve()
    return None


@contextmanager
def instance():
    """The repo's Dagster instance (dagster.yaml names its storage relative to DAGSTER_HOME)."""
    home = dagster_home()
    before = os.getcwd()
    os.chdir(home)
    try:
        with dg.DagsterInstance.from_config(str(home)) as inst:
            yield inst
    finally:
        os.chdir(before)


def live_version(site: Site, health: str) -> str | None:
    """The version the app's `site` says it runs (its health path), or None (lab/reach.py:
    HTTPS to its domain at the web host's address, the certificate checked; the route into the
    lab checked first: LoopError when it does not go there)."""
    try:
        answer = site.get(health, timeout_s=2)
    except ReachError as err:
        raise LoopError(str(err)) from None
    except requests.RequestException:
        return None
    if answer.status_code != 200:
        return None
    try:
        return str(answer.json().get("version"))
    except (ValueError, AttributeError):
        return None


def wait_live(
    site: Site,
    health: str,
    sha: str,
    *,
    since: float,
    say: Say,
    release_job: str | None = None,
    timeout_s: float = 300,
    poll_s: float = 0.2,
    dagster: LabDagster | None = None,
) -> float:
    """Wait until the app's `site` answers with `sha`; follow the runs started since `since` (a
    timestamp) and stop at the first that fails. Returns the seconds from `since` until the URL
    answered. With `release_job`, return only once that job's run for `sha` has finished too
    (the release records what is live after nginx serves it). The runs are those of the lab's
    own Dagster (`dagster`, through its API) or else of this machine's instance."""
    wait = (site, health, sha, since, say, release_job, timeout_s, poll_s)
    if dagster is not None:
        return _wait_live(*wait, ApiRuns(dagster.api()), f"{dagster.url}/runs")
    with instance() as inst:
        return _wait_live(*wait, InstanceRuns(inst), "make dev, then http://127.0.0.1:3000/runs")


def _wait_live(
    site: Site, health: str, sha: str, since: float, say: Say, release_job: str | None,
    timeout_s: float, poll_s: float, runs: InstanceRuns | ApiRuns, where: str,
) -> float:  # fmt: skip
    url = site.url
    seen: dict[str, str] = {}
    last_runs_check = 0.0
    live_after: float | None = None
    while True:
        if live_after is None and live_version(site, health) == sha:
            live_after = time.time() - since
        if live_after is not None and (
            release_job is None or runs.finished(release_job, sha, since)
        ):
            # Still live once the release is over (its last step stops the old container).
            answer = live_version(site, health)
            if answer != sha:
                raise LoopError(
                    f"{url} answered with {sha[:12]}, then with {answer or 'nothing'} once"
                    f" {release_job or 'the release'} had finished"
                )
            return live_after
        now = time.monotonic()
        if now - last_runs_check >= 1:
            last_runs_check = now
            runs.follow(since, seen, say)
        if time.time() - since > timeout_s:
            raise LoopError(
                f"{url} does not answer with {sha[:12]} after {timeout_s:.0f} s; the runs: {where}"
            )
        time.sleep(poll_s)


class InstanceRuns:
    """The runs of this machine's Dagster instance, read in this process."""

    def __init__(self, inst):
        self.inst = inst

    def finished(self, job: str, sha: str, since: float) -> bool:
        records = self.inst.get_run_records(
            dg.RunsFilter(
                job_name=job,
                tags={"coop/sha": sha},
                statuses=[dg.DagsterRunStatus.SUCCESS],
                created_after=_utc(since),
            ),
            limit=1,
        )
        return bool(records)

    def follow(self, since: float, seen: dict[str, str], say: Say) -> None:
        records = self.inst.get_run_records(
            dg.RunsFilter(created_after=_utc(since)), limit=20, ascending=True
        )
        for record in records:
            run = record.dagster_run
            status = run.status.value
            if seen.get(run.run_id) == status:
                continue
            seen[run.run_id] = status
            label = run.tags.get("dagster/partition") or run.tags.get("coop/digest", "")
            say(f"   {time.time() - since:5.1f} s  {run.job_name} {label[:19]}: {status}")
            if run.status == dg.DagsterRunStatus.FAILURE:
                raise LoopError(
                    f"run {run.run_id} ({run.job_name}) failed:\n{_run_error(self.inst, run)}"
                )


class ApiRuns:
    """The runs of the lab's own Dagster, through its GraphQL API (resources/dagster_api.py)."""

    def __init__(self, api: DagsterApi):
        self.api = api

    def _since(self, since: float) -> list[RunRef]:
        try:
            return self.api.runs_since(since)
        except DagsterApiError as err:
            raise LoopError(str(err)) from None

    def finished(self, job: str, sha: str, since: float) -> bool:
        return any(
            r.job == job and r.tag("coop/sha") == sha and r.status == "SUCCESS"
            for r in self._since(since)
        )

    def follow(self, since: float, seen: dict[str, str], say: Say) -> None:
        for run in reversed(self._since(since)):  # oldest first
            if seen.get(run.run_id) == run.status:
                continue
            seen[run.run_id] = run.status
            label = run.tag("dagster/partition") or run.tag("coop/digest") or ""
            say(f"   {time.time() - since:5.1f} s  {run.job} {label[:19]}: {run.status}")
            if run.status == "FAILURE":
                try:
                    why = self.api.failure(run.run_id) or "(see the run in the UI)"
                except DagsterApiError as err:
                    why = f"(its events could not be read: {err})"
                raise LoopError(f"run {run.run_id} ({run.job}) failed:\n{why}")


def _run_error(inst, run) -> str:
    lines = []
    for entry in inst.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = entry.dagster_event.step_failure_data
        if data and (data.user_failure_data or data.error):
            why = data.user_failure_data.description if data.user_failure_data else None
            lines.append(why or step_error_text(data.error))
    return "\n".join(lines) or "(see the run's log in the UI)"


def _utc(timestamp: float):
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)


def push_change(repo: AppRepo, n: int, say: Say) -> tuple[str, float]:
    """The demo's `n`th change of the app, committed and pushed: (its sha, when it was pushed)."""
    sha = repo.commit(
        f"demo: change {n}",
        {"DEMO.md": f"Pushed by `make demo` at {time.strftime('%Y-%m-%d %H:%M:%S')}.\n"},
    )
    pushed = time.time()
    said = repo.push()
    say(f"-- git push: {repo.app} {sha[:12]} ({'the first' if n == 1 else 'a new'} version)")
    for line in said:
        say(f"   remote: {line}")
    return sha, pushed


def _run_git(*args: str, cwd: Path | None = None) -> CliResult:
    out = run_git(cwd, *args, env=GIT_ENV, timeout_s=120, check=False)
    if out.returncode != 0:
        raise LoopError(f"git {' '.join(args)}: {out.output.strip()}")
    return out


def _git(*args: str, cwd: Path | None = None) -> str:
    return _run_git(*args, cwd=cwd).output.strip()
