"""Push to live on the local site: from `git push` until the staging URL answers the new commit.

The site is the one `make demo` makes (topology.local.yaml, in a state folder and a Dagster
instance of the benchmark's own), brought up by `infra demo` itself, whose two pushes are the
warm-up. Then ROUNDS more commits are pushed, one at a time; each is followed by the real
`dagster-daemon` (git_push_sensor every 5 s -> build_hello -> registry_image_sensor every 5 s ->
release_staging_hello) until `GET <staging URL>/health` answers with its sha.

Reported: the median total (target: at most 30 s), and on its own the part that is ours: the
total minus the build (app_image's `build_time_s`: checkout, podman build, push) minus the
container start (the release's `container_start_s`: podman run until the first 200 on the health
path). Ours is the sensors' polling, the runs' launches, Dagster, salt and the nginx switch.

The base image comes from $INFRA_PODMAN_ROOT if set, else the repo's .state/podman (where
`make demo` keeps it; made there once if missing, during the warm-up). Everything else is removed
at the end (`infra local down`, the state folder, the instance).
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

import yaml

from benchmarks import Result
from infra_assets.paths import REPO_ROOT

ROUNDS = 5
INFRA = str(Path(sys.executable).parent / "infra")
TARGET_S = 30.0


def run() -> list[Result]:
    from infra_assets.local_site.site import LocalSite
    from infra_assets.model import load_topology
    from infra_assets.sites import ProcessSite

    state = REPO_ROOT / ".state" / f"bench-push-{os.getpid()}"
    home = Path(tempfile.mkdtemp(prefix="bench-push-dagster-"))
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    state.mkdir(parents=True)
    data = yaml.safe_load((REPO_ROOT / "topology.local.yaml").read_text())
    data["apps"]["hello"]["repo"] = str(state / "git" / "hello.git")
    topology = state / "topology.yaml"
    topology.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {
        **os.environ,
        "INFRA_STATE_DIR": str(state),
        "INFRA_TOPOLOGY": str(topology),
        "INFRA_PODMAN_ROOT": os.environ.get("INFRA_PODMAN_ROOT")
        or str(REPO_ROOT / ".state" / "podman"),
        "DAGSTER_HOME": str(home),
    }
    for key in ("INFRA_SECRETS_FILE", "INFRA_SALT_MASTER_CONFIG", "INFRA_REGISTRY_URL"):
        env.pop(key, None)
    site = LocalSite(topology, root=state / "local")
    topo = load_topology(topology)
    try:
        started = time.monotonic()
        out = subprocess.run(
            [INFRA, "demo", "--topology", str(topology)],
            capture_output=True,
            text=True,
            env=env,
            cwd=home,
            timeout=1800,
        )
        if out.returncode != 0:
            raise RuntimeError(f"infra demo failed:\n{(out.stdout + out.stderr)[-4000:]}")
        setup_s = time.monotonic() - started
        totals, builds, starts = _rounds(topology, topo, site, env)
    finally:
        subprocess.run(
            [INFRA, "local", "down", "--topology", str(topology)],
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        link = ProcessSite(topo, root=site.root).hosts_dir()
        if link.is_symlink():
            link.unlink()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)

    total = statistics.median(totals)
    ours = [t - b - s for t, b, s in zip(totals, builds, starts, strict=True)]
    rounds = ", ".join(f"{t:.1f}" for t in totals)
    return [
        Result(
            f"push to live on the local site (git push -> staging answers the sha), median of"
            f" {ROUNDS}",
            total,
            "s",
            f"<= {TARGET_S:g} s",
            total <= TARGET_S,
            f"rounds: {rounds} s; sensors every 5 s; site set-up (infra demo) {setup_s:.0f} s",
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


def _rounds(topology: Path, topo, site, env: dict[str, str]) -> tuple[list, list, list]:
    """ROUNDS pushes, each followed until live; (totals, build times, container starts)."""
    import dagster as dg

    from infra_assets import demo_loop
    from infra_assets.local_site.site import site_environment
    from infra_assets.releases import staging_job_name
    from infra_assets.sites import ProcessSite

    totals, builds, starts = [], [], []
    keys = ("DAGSTER_HOME", "INFRA_STATE_DIR", "INFRA_TOPOLOGY", "INFRA_PODMAN_ROOT")
    with site_environment({k: env[k] for k in keys}):
        repo = demo_loop.ensure_repo(topology, topo, "hello", site.root)
        url = ProcessSite(topo, root=site.root).app_url("web-staging-1", "hello", "staging")
        health = topo.apps["hello"].health
        for n in range(ROUNDS):
            sha = repo.commit(f"bench: round {n + 1}", {"BENCH.md": f"round {n + 1}\n"})
            pushed = time.time()
            repo.push()
            total = demo_loop.wait_live(
                url,
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
