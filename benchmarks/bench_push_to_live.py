"""Push to live on the lab: from `git push` until web-staging-1 answers the new commit.

The lab is the one `make demo` makes (topology.lab.yaml, here at location number 124, with a
state folder and a Dagster instance of the benchmark's own; the images are the project's, built
once in .state/podman), brought up by `infra demo` itself, whose two pushes are the warm-up.
Then ROUNDS more commits are pushed, one at a time; each is followed by the real
`dagster-daemon` (git_push_sensor every 5 s -> build_hello on the jenkins agent through salt ->
registry_image_sensor every 5 s -> release_staging_hello on web-staging-1) until
`GET https://<the app's staging domain>/health` at web-staging-1's address answers with its sha
(the certificate checked against the lab's ACME root; through the lab's link, after the route
check).

Reported: the median total (target: no slower than the process-based local site's 24.6 s, which
the lab replaced), and on its own the part that is ours: the total minus the build (app_image's
`build_time_s`: the agent's checkout, podman build, push) minus the container start (the
release's `container_start_s`). Ours is the sensors' polling, the runs' launches, Dagster, salt
and the nginx switch. Everything is removed at the end (`infra lab down`, the state folder, the
instance); only the lab's `unreachable` route stays.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import Result
from infra_assets.paths import REPO_ROOT

NUMBER = 124
ROUNDS = 5
INFRA = str(Path(sys.executable).parent / "infra")
TARGET_S = 24.6


def run() -> list[Result]:
    from lab.site import write_lab_topology

    folder = Path(tempfile.mkdtemp(prefix="bench-push-", dir=REPO_ROOT / ".state"))
    topology = write_lab_topology(folder, NUMBER)
    home = folder / "dagster"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "INFRA_STATE_DIR": str(folder / "state"),
        "INFRA_TOPOLOGY": str(topology),
        "INFRA_PODMAN_ROOT": os.environ.get("INFRA_PODMAN_ROOT")
        or str(REPO_ROOT / ".state" / "podman"),
        "DAGSTER_HOME": str(home),
    }
    for key in ("INFRA_SECRETS_FILE", "INFRA_SALT_MASTER_CONFIG", "INFRA_REGISTRY_URL"):
        env.pop(key, None)
    try:
        started = time.monotonic()
        out = subprocess.run(
            [INFRA, "demo", "--topology", str(topology)],
            capture_output=True,
            text=True,
            env=env,
            cwd=home,
            timeout=3600,
        )
        if out.returncode != 0:
            raise RuntimeError(f"infra demo failed:\n{(out.stdout + out.stderr)[-4000:]}")
        setup_s = time.monotonic() - started
        totals, builds, starts = _rounds(topology, env)
    finally:
        subprocess.run(
            [INFRA, "lab", "down", "--topology", str(topology)],
            env=env,
            capture_output=True,
            timeout=600,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)

    total = statistics.median(totals)
    ours = [t - b - s for t, b, s in zip(totals, builds, starts, strict=True)]
    rounds = ", ".join(f"{t:.1f}" for t in totals)
    return [
        Result(
            f"push to live on the lab (git push -> web-staging-1 answers the sha), median of"
            f" {ROUNDS}",
            total,
            "s",
            f"<= {TARGET_S:g} s",
            total <= TARGET_S,
            f"rounds: {rounds} s; sensors every 5 s; lab up and two warm-up pushes (infra demo)"
            f" {setup_s:.0f} s",
        ),
        Result(
            "  of which ours (total - build - container start), median",
            statistics.median(ours),
            "s",
            "(reported)",
            True,
            f"build {statistics.median(builds):.1f} s, container start"
            f" {statistics.median(starts):.1f} s (medians)",
        ),
    ]


def _metadata(instance, key, sha: str, name: str) -> float:
    """`name` from the materialisation of `key` made for commit `sha` (the app image's
    partition, or the release whose metadata names the sha)."""
    import dagster as dg

    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=20)
    for record in records.records:
        mat = record.asset_materialization
        if mat is None:
            continue
        meta = mat.metadata
        if mat.partition == sha or (meta.get("sha") and meta["sha"].value == sha):
            return float(meta[name].value)
    raise RuntimeError(f"no materialisation of {key.to_user_string()} for {sha[:12]}")


def _rounds(topology: Path, env: dict[str, str]) -> tuple[list, list, list]:
    """ROUNDS pushes, each followed until live; (totals, build times, container starts)."""
    import dagster as dg

    from infra_assets.releases import staging_job_name
    from lab import demo_loop
    from lab.demo import staging_site
    from lab.site import environment, lab_site

    totals, builds, starts = [], [], []
    keys = ("DAGSTER_HOME", "INFRA_STATE_DIR", "INFRA_TOPOLOGY", "INFRA_PODMAN_ROOT")
    with environment(Path(env["DAGSTER_HOME"]), **{k: env[k] for k in keys}):
        site = lab_site(topology)
        topo = site.topo
        repo = demo_loop.ensure_repo(topology, topo, "hello", site.root)
        where = staging_site(site, topo, "hello")
        health = topo.apps["hello"].health
        for n in range(ROUNDS):
            sha = repo.commit(f"bench: round {n + 1}", {"BENCH.md": f"round {n + 1}\n"})
            pushed = time.time()
            repo.push()
            total = demo_loop.wait_live(
                where,
                health,
                sha,
                since=pushed,
                say=lambda *_a, **_k: None,
                release_job=staging_job_name("hello"),
                timeout_s=300,
            )
            with demo_loop.instance() as inst:
                build = _metadata(inst, dg.AssetKey(["app_image", "hello"]), sha, "build_time_s")
                start = _metadata(
                    inst, dg.AssetKey(["release", "staging", "hello"]), sha, "container_start_s"
                )
            totals.append(total)
            builds.append(build)
            starts.append(start)
    return totals, builds, starts
