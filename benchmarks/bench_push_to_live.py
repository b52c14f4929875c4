"""Push to live on the lab: from `git push` until web-staging-1 answers the new commit.

The lab is the one `make demo` makes (topology.lab.yaml, here at location number 124, with a
state folder and a Dagster instance of the benchmark's own; the images are the project's, built
once in .state/podman), brought up by `infra demo` itself, whose two pushes are the warm-up.
Then ROUNDS more commits are pushed, one at a time; each push runs the bare repo's post-receive
hook, which calls the webhook endpoint, which launches `deliver_hello` through the webserver's
GraphQL API; the real `dagster-daemon` starts it from the queue (the build on the jenkins agent
through salt, then the release on web-staging-1), and the round ends when
`GET https://<the app's staging domain>/health` at web-staging-1's address answers with its sha
(the certificate checked against the lab's ACME root; through the lab's link, after the route
check).

Reported: the median total (target: 10 s, issue 11), and the median of each stage as the
release's metadata times it from the push (`stage_*_s`): the hook and the launch request, the
queue and the run's launch (a new process that loads the code location), the build step, the
release until nginx serves it. Everything is removed at the end (`infra lab down`, the state
folder, the instance); only the lab's `unreachable` route stays.
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
from resources.paths import REPO_ROOT

NUMBER = 124
ROUNDS = 5
INFRA = str(Path(sys.executable).parent / "infra")
TARGET_S = 10.0
STAGES = (
    ("stage_push_to_run_s", "push to run (the hook, the launch request)"),
    ("stage_launch_s", "queue and launch (to the run's first step)"),
    ("stage_build_s", "build (app_image step: checkout, podman build, push)"),
    ("stage_release_s", "release until nginx serves it"),
)


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
        totals, stages = _rounds(topology, env)
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
    rounds = ", ".join(f"{t:.1f}" for t in totals)
    results = [
        Result(
            f"push to live on the lab (git push -> web-staging-1 answers the sha), median of"
            f" {ROUNDS}",
            total,
            "s",
            f"<= {TARGET_S:g} s",
            total <= TARGET_S,
            f"rounds: {rounds} s; the post-receive hook starts deliver_hello; lab up and two"
            f" warm-up pushes (infra demo) {setup_s:.0f} s",
        )
    ]
    for key, label in STAGES:
        values = stages[key]
        results.append(
            Result(
                f"  {label}, median",
                statistics.median(values),
                "s",
                "(reported)",
                True,
                "rounds: " + ", ".join(f"{v:.2f}" for v in values) + " s",
            )
        )
    return results


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


RELEASES = """{ assetOrError(assetKey: {path: ["release", "staging", "hello"]}) {
  ... on Asset { assetMaterializations(limit: 20) { metadataEntries { label
    ... on TextMetadataEntry { text } ... on FloatMetadataEntry { floatValue } } } } } }"""


def _metadata_api(api, sha: str, name: str) -> float:
    """`name` from the lab's Dagster's release of commit `sha` (through its GraphQL API)."""
    data = api.query("the releases", RELEASES, {})
    for mat in data["assetOrError"]["assetMaterializations"]:
        meta = {e["label"]: e for e in mat["metadataEntries"]}
        if (meta.get("sha") or {}).get("text") == sha:
            return float(meta[name]["floatValue"])
    raise RuntimeError(f"no release of {sha[:12]} in the lab's Dagster")


def _rounds(topology: Path, env: dict[str, str]) -> tuple[list[float], dict[str, list[float]]]:
    """ROUNDS pushes, each followed until live; (totals, each stage's seconds per round)."""
    import dagster as dg

    from infra_assets.delivery.app_images import deliver_job_name
    from lab import demo_loop
    from lab.demo import staging_site
    from lab.lab_dagster import lab_dagster
    from lab.site import environment, lab_site

    totals: list[float] = []
    stages: dict[str, list[float]] = {key: [] for key, _ in STAGES}
    keys = ("DAGSTER_HOME", "INFRA_STATE_DIR", "INFRA_TOPOLOGY", "INFRA_PODMAN_ROOT")
    with environment(Path(env["DAGSTER_HOME"]), **{k: env[k] for k in keys}):
        site = lab_site(topology)
        topo = site.topo
        repo = demo_loop.ensure_repo(topology, topo, "hello", site.root)
        dagster = lab_dagster(site)  # the lab's own drives it, once it has one
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
                release_job=deliver_job_name("hello"),
                timeout_s=300,
                dagster=dagster,
            )
            totals.append(total)
            if dagster is not None:
                api = dagster.api()
                for name in stages:
                    stages[name].append(_metadata_api(api, sha, name))
                continue
            with demo_loop.instance() as inst:
                key = dg.AssetKey(["release", "staging", "hello"])
                for name in stages:
                    stages[name].append(_metadata(inst, key, sha, name))
    return totals, stages
