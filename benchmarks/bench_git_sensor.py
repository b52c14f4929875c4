"""One tick of git_push_sensor over 200 app repos (local bare repos), target: at most 2 s.

Two ticks are timed, each the median of 5: the first tick of a fresh sensor (an empty cursor,
so every app's head is new: 200 run requests and 200 partitions) and a steady tick (the cursor
up to date, nothing new). Both read every repo with `git ls-remote`, in parallel.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg
import yaml

from benchmarks import Result

APPS = 200
RUNS = 5
TARGET_S = 2.0
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.coop",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.coop",
}


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], env=ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repos(root: Path, count: int) -> dict[str, str]:
    """`count` bare repos, each with one commit of its own on main; returns app -> repo path."""
    repos = {}
    for n in range(count):
        bare = root / "git" / f"app-{n}.git"
        _git("init", "-q", "--bare", "-b", "main", str(bare))
        tree = _git("--git-dir", str(bare), "hash-object", "-w", "-t", "tree", "/dev/null")
        sha = _git("--git-dir", str(bare), "commit-tree", tree, "-m", f"app {n}")
        _git("--git-dir", str(bare), "update-ref", "refs/heads/main", sha)
        repos[f"app-{n}"] = f"git/app-{n}.git"
    return repos


def write_topology(root: Path, repos: dict[str, str]) -> Path:
    data = {
        "locations": {"lab": {"number": 127, "cloud": "lab"}},
        "types": {"salt-master": 1, "web-staging": 5},
        "hosts": {
            "support-1": {"location": "lab", "instance": 1, "roles": ["salt-master"]},
            "web-staging-1": {"location": "lab", "instance": 1, "roles": ["web-staging"]},
        },
        "apps": {
            name: {"repo": repo, "branch": "main", "port": 8000 + 2 * i, "health": "/health"}
            for i, (name, repo) in enumerate(repos.items())
        },
    }
    path = root / "topology.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run() -> list[Result]:
    from infra_assets.definitions import build_definitions
    from infra_assets.topology.model import load_topology
    from sensors.git_push import SENSOR_NAME

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        topo_file = write_topology(root, make_repos(root, APPS))
        old = os.environ.get("INFRA_TOPOLOGY")
        os.environ["INFRA_TOPOLOGY"] = str(topo_file)
        try:
            defs = build_definitions(load_topology(topo_file))
            sensor = defs.resolve_sensor_def(SENSOR_NAME)
            instance = dg.DagsterInstance.ephemeral()

            def tick(cursor: str | None):
                # A context manager: some resources (salt's) have a teardown.
                with dg.build_sensor_context(
                    instance=instance, cursor=cursor, resources=defs.resources
                ) as context:
                    started = time.perf_counter()
                    result = sensor(context)
                    return time.perf_counter() - started, result

            first_times, steady_times = [], []
            for _ in range(RUNS):
                _, seen = tick(None)  # every head seen once: asked for on the next tick
                took, first = tick(seen.cursor)
                assert len(first.run_requests) == APPS, "every app's head is new"
                first_times.append(took)
                took, steady = tick(first.cursor)
                assert isinstance(steady, dg.SensorResult) and not steady.run_requests
                steady_times.append(took)
        finally:
            if old is None:
                os.environ.pop("INFRA_TOPOLOGY", None)
            else:
                os.environ["INFRA_TOPOLOGY"] = old
    first_s, steady_s = statistics.median(first_times), statistics.median(steady_times)
    return [
        Result(
            f"git_push_sensor tick over {APPS} repos, all new (asked for)",
            first_s,
            "s",
            f"<= {TARGET_S:g} s",
            first_s <= TARGET_S,
            f"median of {RUNS}; {APPS} run requests and partitions",
        ),
        Result(
            f"git_push_sensor tick over {APPS} repos, steady (nothing new)",
            steady_s,
            "s",
            f"<= {TARGET_S:g} s",
            steady_s <= TARGET_S,
            f"median of {RUNS}; git ls-remote x {APPS}, 16 at a time",
        ),
    ]
