"""Git: GitResource and git_push_sensor against real git repos (bare repos under tmp_path, pushes)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration
from fixtures_delivery import REPO_ROOT, delivery_defs, git, write_app_topology

from infra_assets.delivery.app_images import build_job_name, partitions_def_name
from infra_assets.topology.model import load_topology
from lab.processes import free_port
from resources.git import GitError, GitResource
from resources.git_url import resolve_repo
from sensors.git_push import SENSOR_NAME, summarise_commits


def test_head_reads_the_branch_tip_of_a_local_repo(app_repos):
    repo = app_repos("hello")
    first = repo.commit(message="one")
    second = repo.commit(message="two")
    assert first != second
    assert GitResource().head(repo=str(repo.bare), branch="main") == second


def test_head_says_why_a_repo_cannot_be_read(tmp_path, app_repos):
    git = GitResource(timeout_s=10)
    with pytest.raises(GitError, match="does not appear to be a git repository"):
        git.head(repo=str(tmp_path / "nowhere.git"), branch="main")
    with pytest.raises(GitError, match="Failed to connect to 127.0.0.1"):
        git.head(repo=f"http://127.0.0.1:{free_port()}/hello.git", branch="main")
    repo = app_repos("hello")
    repo.commit()
    with pytest.raises(GitError, match="no branch 'release' in"):
        git.head(repo=str(repo.bare), branch="release")


def test_checkout_gives_the_tree_of_one_commit_without_history(tmp_path, app_repos):
    repo = app_repos("hello")
    old = repo.commit({"app.py": "print('v1')\n"}, "v1")
    repo.commit({"app.py": "print('v2')\n"}, "v2")
    out = GitResource().checkout(repo=str(repo.bare), sha=old, dest=tmp_path / "build")
    assert (out.path / "app.py").read_text() == "print('v1')\n"
    assert not (out.path / ".git").exists()
    with pytest.raises(GitError, match="not a full commit sha"):
        GitResource().checkout(repo=str(repo.bare), sha="abc", dest=tmp_path / "b2")
    with pytest.raises(GitError, match="cannot check out 0000000000"):
        GitResource().checkout(repo=str(repo.bare), sha="0" * 40, dest=tmp_path / "b3")


def test_on_branch_knows_the_branch_s_commits_from_another_branch_s(app_repos):
    """Real git: the tip and an older commit of main are on main; a commit pushed to another
    branch only, and a sha nobody has, are not; an unknown branch is an error."""
    repo = app_repos("hello")
    old = repo.commit(message="one")
    tip = repo.commit(message="two")
    git("checkout", "-q", "-b", "feature", cwd=repo.work)
    feature = repo.commit(message="not reviewed")  # AppRepo pushes to its own branch...
    git("push", "-q", "origin", "HEAD:refs/heads/feature", cwd=repo.work)
    git("push", "-q", "-f", "origin", f"{tip}:refs/heads/main", cwd=repo.work)  # ...main back
    resource = GitResource()
    bare = str(repo.bare)
    assert resource.head(repo=bare, branch="main") == tip
    assert resource.on_branch(repo=bare, branch="main", sha=tip)
    assert resource.on_branch(repo=bare, branch="main", sha=old)
    assert not resource.on_branch(repo=bare, branch="main", sha=feature)
    assert resource.on_branch(repo=bare, branch="feature", sha=feature)
    assert not resource.on_branch(repo=bare, branch="main", sha="0" * 40)
    with pytest.raises(GitError, match="no branch 'release' in"):
        resource.on_branch(repo=bare, branch="release", sha=old)
    with pytest.raises(GitError, match="not a full commit sha"):
        resource.on_branch(repo=bare, branch="main", sha="abc")


def test_resolve_repo_keeps_urls_and_anchors_relative_paths(tmp_path):
    for url in (
        "https://git.example.coop/hello.git",
        "ssh://git@git.example.coop/hello.git",
        "git@git.example.coop:coop/hello.git",
        "gitea:coop/hello.git",  # scp-like without a user: ssh to gitea
        "[::1]:hello.git",
        "file:///srv/git/hello.git",
    ):
        assert resolve_repo(url, tmp_path) == url
    assert resolve_repo(".state/git/hello.git", tmp_path) == str(tmp_path / ".state/git/hello.git")
    assert resolve_repo("/srv/git/hello.git", tmp_path) == "/srv/git/hello.git"
    assert resolve_repo("./a:b/hello.git", tmp_path) == str(tmp_path / "a:b/hello.git")


@pytest.mark.parametrize(
    "repo", ["gitea:coop/hello.git", "git@gitea:hello.git", "gitea:hello", "./x:y", "x/y:z"]
)
def test_resolve_repo_reads_a_repo_as_git_itself_does(tmp_path, repo):
    """Real git decides ssh or local path; resolve_repo agrees (it keeps what git reaches over
    ssh, and makes a path of the rest). The ssh git runs here only writes down its arguments."""
    called = tmp_path / "ssh-called"
    ssh = tmp_path / "fake-ssh"
    ssh.write_text(f'#!/bin/sh\necho "$@" > {called}\nexit 1\n')
    ssh.chmod(0o755)
    subprocess.run(
        ["git", "ls-remote", repo],
        cwd=tmp_path,
        env={**os.environ, "GIT_SSH_COMMAND": str(ssh), "GIT_TERMINAL_PROMPT": "0"},
        capture_output=True,
        timeout=30,
    )
    git_uses_ssh = called.exists()
    assert (resolve_repo(repo, tmp_path) == repo) == git_uses_ssh


# --- the sensor -------------------------------------------------------------------------------


@pytest.fixture
def two_apps(tmp_path, app_repos, monkeypatch):
    """Two apps with a commit each, in a topology that names their repos by relative path."""
    hello, world = app_repos("hello"), app_repos("hello-world")
    shas = {"hello": hello.commit(message="hello 1"), "hello-world": world.commit(message="w 1")}
    topo_file = write_app_topology(
        tmp_path / "topology.yaml",
        {"hello": "git/hello.git", "hello-world": "git/hello-world.git"},
    )
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    defs = delivery_defs(load_topology(topo_file))
    return defs, {"hello": hello, "hello-world": world}, shas


def tick(defs: dg.Definitions, cursor: str | None, instance=None):
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    with dg.build_sensor_context(
        instance=instance or dg.DagsterInstance.ephemeral(),
        cursor=cursor,
        definitions=defs,
        resources=defs.resources,
    ) as context:
        return sensor(context)


def test_a_push_asks_for_one_build_per_new_commit_and_a_replay_for_nothing(two_apps):
    defs, repos, shas = two_apps
    # A head is seen once first: the webhook endpoint, the fast path, starts a push at once.
    seen = tick(defs, None)
    assert seen.run_requests in (None, []) and not seen.dynamic_partitions_requests
    assert seen.skip_reason.skip_message.startswith(
        f"seen once (2): hello {shas['hello'][:12]}, hello-world {shas['hello-world'][:12]}:"
        " asked for on the next tick if still the head"
    )
    assert json.loads(seen.cursor) == {"asked": {}, "seen": shas}

    first = tick(defs, seen.cursor)
    assert isinstance(first, dg.SensorResult)
    got = {r.run_key: (r.job_name, r.partition_key, r.tags["coop/app"]) for r in first.run_requests}
    assert got == {
        f"hello:{shas['hello']}": ("deliver_hello", shas["hello"], "hello"),
        f"hello-world:{shas['hello-world']}": (
            "deliver_hello_world",
            shas["hello-world"],
            "hello-world",
        ),
    }
    partitions = {
        (p.partitions_def_name, tuple(p.partition_keys)) for p in first.dynamic_partitions_requests
    }
    assert partitions == {
        ("commits_hello", (shas["hello"],)),
        ("commits_hello_world", (shas["hello-world"],)),
    }
    assert json.loads(first.cursor) == {"asked": shas, "seen": {}}

    # The same tick again, from the cursor it left: nothing new, nothing asked.
    replay = tick(defs, first.cursor)
    assert replay.run_requests in (None, [])
    assert "no new commit" in replay.skip_reason.skip_message

    # A push to one app: one build, of that commit only, on the tick after the one that saw it.
    new = repos["hello"].commit(message="hello 2")
    after_push = tick(defs, first.cursor)
    assert after_push.run_requests in (None, [])
    assert json.loads(after_push.cursor) == {"asked": shas, "seen": {"hello": new}}
    confirmed = tick(defs, after_push.cursor)
    assert [r.run_key for r in confirmed.run_requests] == [f"hello:{new}"]
    assert [r.partition_key for r in confirmed.run_requests] == [new]
    assert json.loads(confirmed.cursor) == {"asked": {**shas, "hello": new}, "seen": {}}

    # Two pushes between ticks, or a head that moved again before its second tick: the head
    # then is what is asked for, once.
    repos["hello"].commit(message="hello 3")
    moved = tick(defs, confirmed.cursor)
    latest = repos["hello"].commit(message="hello 4")
    again = tick(defs, moved.cursor)
    assert again.run_requests in (None, [])
    assert [r.run_key for r in tick(defs, again.cursor).run_requests] == [f"hello:{latest}"]


class SensorDaemon:
    """git_push_sensor ticked by the sensor daemon's own code (`execute_sensor_iteration`, what
    `dagster-daemon run` calls in its loop; a private API of the pinned Dagster 1.13), on the
    code location loaded in this process from infra_assets.definitions, with an instance whose
    run coordinator queues runs as dagster.yaml's does. So the run-key check that skips a
    repeated request is Dagster's own, not the test's. Each tick is a minute after the last
    (the sensor's minimum interval has passed)."""

    def __init__(self, instance: dg.DagsterInstance, workspace):
        self.instance = instance
        self.workspace = workspace
        location = next(iter(workspace.create_request_context().get_code_location_entries()))
        repos = workspace.create_request_context().get_code_location(location).get_repositories()
        [repo] = repos.values()
        self.sensor = repo.get_sensor(SENSOR_NAME)
        instance.start_sensor(self.sensor)
        self.clock = time.time()

    def tick(self):
        """One evaluation of the sensor, as the daemon makes it: its newest tick."""
        self.clock += 60
        with freeze_time(self.clock):
            list(execute_sensor_iteration(self.workspace, logging.getLogger("test"), None, None))
        return self.ticks()[0]

    def ticks(self):
        return self.instance.get_ticks(self.sensor.get_remote_origin_id(), self.sensor.selector_id)

    def runs(self) -> list[dg.DagsterRun]:
        return list(reversed(self.instance.get_runs()))  # oldest first


@contextmanager
def sensor_daemon() -> Iterator[SensorDaemon]:
    queued = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    origin = LoadableTargetOrigin(
        executable_path=sys.executable,
        module_name="infra_assets.definitions",
        working_directory=str(REPO_ROOT),
    )
    target = InProcessWorkspaceLoadTarget(InProcessCodeLocationOrigin(origin))
    with dg.instance_for_test(overrides={"run_coordinator": queued}) as instance:
        with create_test_daemon_workspace_context(target, instance) as workspace:
            yield SensorDaemon(instance, workspace)


def test_the_daemon_makes_one_run_per_commit_and_skips_a_run_key_it_has_seen(two_apps):
    """A branch pushed back to a commit already built: the sensor asks for that commit's run
    again (its cursor was elsewhere), with the same run key, and the daemon skips the request;
    no second run is made. The sensor's own cursor cannot be what stops it here."""
    _, repos, shas = two_apps
    hello = repos["hello"]
    with sensor_daemon() as daemon:
        seen = daemon.tick()  # each head seen once: asked for on the next tick
        assert seen.status == TickStatus.SKIPPED and seen.run_keys == []
        first = daemon.tick()
        assert first.status == TickStatus.SUCCESS
        assert set(first.run_keys) == {f"{app}:{sha}" for app, sha in shas.items()}
        assert len(daemon.runs()) == 2

        quiet = daemon.tick()  # nothing pushed: the cursor stops it, no request at all
        assert quiet.status == TickStatus.SKIPPED and quiet.run_keys == []
        assert quiet.skip_reason == "no new commit"

        new = hello.commit(message="hello 2")
        assert daemon.tick().run_keys == []
        pushed = daemon.tick()
        assert pushed.status == TickStatus.SUCCESS and pushed.run_keys == [f"hello:{new}"]
        assert len(daemon.runs()) == 3

        git("push", "-q", "--force", "origin", f"{shas['hello']}:refs/heads/main", cwd=hello.work)
        assert daemon.tick().run_keys == []
        back = daemon.tick()
        # asked again (the cursor was at `new`), skipped by the daemon: the key has its run
        assert back.run_keys == [f"hello:{shas['hello']}"]
        assert back.status == TickStatus.SKIPPED and back.run_ids == []
        runs = daemon.runs()
        assert sorted(r.tags["dagster/run_key"] for r in runs) == sorted(
            [*(f"{app}:{sha}" for app, sha in shas.items()), f"hello:{new}"]
        )
        assert {r.status for r in runs} == {dg.DagsterRunStatus.QUEUED}
        assert [r.tags["dagster/partition"] for r in runs if r.tags["coop/app"] == "hello"] == [
            shas["hello"],
            new,
        ]


def test_an_unreachable_repo_is_skipped_with_its_reason_and_keeps_its_cursor(two_apps):
    defs, repos, shas = two_apps
    cursor = tick(defs, tick(defs, None).cursor).cursor  # both heads asked for
    shutil.move(repos["hello-world"].bare, repos["hello-world"].bare.with_suffix(".moved"))
    new = repos["hello"].commit(message="hello 2")

    result = tick(defs, tick(defs, cursor).cursor)
    assert [r.run_key for r in result.run_requests] == [f"hello:{new}"]
    assert json.loads(result.cursor)["asked"] == {"hello": new, "hello-world": shas["hello-world"]}

    quiet = tick(defs, result.cursor)
    assert quiet.run_requests in (None, [])
    reason = quiet.skip_reason.skip_message
    assert "1 repo(s) could not be read (cursor kept)" in reason
    assert "hello-world:" in reason and "does not appear to be a git repository" in reason
    assert json.loads(quiet.cursor)["asked"]["hello-world"] == shas["hello-world"]

    # Back again, at the same commit: still nothing to build.
    shutil.move(repos["hello-world"].bare.with_suffix(".moved"), repos["hello-world"].bare)
    assert tick(defs, quiet.cursor).run_requests in (None, [])


def test_a_head_seen_once_then_unreadable_is_asked_for_once_it_reads_again(two_apps):
    defs, repos, shas = two_apps
    cursor = tick(defs, tick(defs, None).cursor).cursor  # both heads asked for
    new = repos["hello"].commit(message="hello 2")
    seen = tick(defs, cursor)
    assert json.loads(seen.cursor)["seen"] == {"hello": new}
    shutil.move(repos["hello"].bare, repos["hello"].bare.with_suffix(".moved"))
    away = tick(defs, seen.cursor)
    assert away.run_requests in (None, [])
    assert json.loads(away.cursor)["seen"] == {"hello": new}  # kept while it cannot be read
    shutil.move(repos["hello"].bare.with_suffix(".moved"), repos["hello"].bare)
    back = tick(defs, away.cursor)
    assert [r.run_key for r in back.run_requests] == [f"hello:{new}"]


def test_a_repo_with_no_commit_yet_is_skipped_not_failed(tmp_path, app_repos, monkeypatch):
    app_repos("hello")  # created, nothing pushed
    topo_file = write_app_topology(tmp_path / "topology.yaml", {"hello": "git/hello.git"})
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    result = tick(delivery_defs(load_topology(topo_file)), None)
    assert result.run_requests in (None, [])
    assert "no branch 'main'" in result.skip_reason.skip_message


def test_a_broken_cursor_is_a_clear_skip(two_apps):
    defs, _, _ = two_apps
    result = tick(defs, "not json")
    assert "the cursor is not JSON" in result.skip_message
    result = tick(defs, '["hello"]')
    assert 'the cursor is not {"asked": {"<app>": "<sha>"}, "seen":' in result.skip_message


def test_the_requested_partition_and_run_exist_in_the_code_location(two_apps, tmp_path):
    """The tick's partition requests, applied as the daemon applies them, make the partition
    the run request names, of the job it names."""
    defs, _, shas = two_apps
    instance = dg.DagsterInstance.ephemeral()
    result = tick(defs, tick(defs, None).cursor, instance)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    for run in result.run_requests:
        job = defs.resolve_job_def(run.job_name)
        keys = job.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
        assert run.partition_key in keys
    assert instance.get_dynamic_partitions(partitions_def_name("hello")) == [shas["hello"]]
    assert build_job_name("hello-world") == "build_hello_world"


def test_the_tick_log_names_a_few_new_commits_and_counts_the_rest():
    new = {f"app-{i:03d}": f"{i:040x}" for i in range(200)}
    line = summarise_commits(new)
    assert line.startswith("new commits (200): app-000 000000000000, app-001 000000000000")
    assert line.endswith(", and 190 more") and "app-010" not in line
    assert summarise_commits({"hello": "ab" * 20}) == "new commits (1): hello abababababab"
