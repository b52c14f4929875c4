"""The lab (topology.lab.yaml, here at location number 125, its own state and Dagster instance).

1. Warm: from built images to every minion answering (the network, the key pairs, the plan, the
   containers booting their role images, the master's bootstrap, the minions authenticating).
   Target: at most 30 s.
2. Warm: from built images to everything highstated (the whole `main` job). Target: 120 s.
3. The whole lab's memory, PSS (every process of every container, conmon included), once up.
   Target: 4 GiB.
4. Cold: the same `main` job on an empty podman storage and state folder (the debootstrap'd
   base, the salt wheelhouse, every role image built by Packer, then the lab). Target: 10 min.
   Set BENCH_LAB_COLD=0 to skip it (it takes most of that time).

Each lab is taken down at the end; only its `unreachable` route stays, as `infra lab down` leaves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks import Result
from resources.paths import REPO_ROOT

NUMBER = 125


def run() -> list[Result]:
    results: list[Result] = []
    with _lab_env(cold=False) as (topology, env):
        results += _warm(topology, env)
    if os.environ.get("BENCH_LAB_COLD", "1") != "0":
        with _lab_env(cold=True) as (topology, env):
            started = time.monotonic()
            env.up()
            took = time.monotonic() - started
        results.append(
            Result(
                "lab cold: empty storage -> base, wheelhouse, 4 images, everything highstated",
                took,
                "s",
                "<= 600 s",
                took <= 600,
            )
        )
    return results


def _warm(topology: Path, env: _Env) -> list[Result]:
    from infra_assets.topology.model import load_topology

    topo = load_topology(topology)
    hosts = sorted(topo.hosts)
    env.run(["images/support", "images/builder", "images/web", "images/postgres"])  # built once
    started = time.monotonic()
    env.run(["network/lab", "minion_keys", "plan/instances/lab", "instances/lab"])
    salt = env.definitions().resources["salt"]
    with salt:
        ping = salt.wait_for(minions=hosts, timeout_s=180)
    answering = time.monotonic() - started
    env.up()
    highstated = time.monotonic() - started
    memory = env.definitions().resources["lab"].lab().memory(NUMBER)
    pss_gib = sum(m.pss_bytes + m.conmon_pss_bytes for m in memory) / 2**30
    return [
        Result(
            "lab warm: built images -> every minion answering",
            answering,
            "s",
            "<= 30 s",
            answering <= 30 and ping.ok,
            f"{len(ping.answered)} of {len(hosts)} answered",
        ),
        Result(
            "lab warm: built images -> everything highstated",
            highstated,
            "s",
            "<= 120 s",
            highstated <= 120,
        ),
        Result(
            "lab memory, PSS (6 hosts, highstated, idle)",
            pss_gib,
            "GiB",
            "<= 4 GiB",
            pss_gib <= 4,
            ", ".join(f"{m.host} {m.pss_bytes / 2**20:.0f} MiB" for m in memory),
        ),
    ]


class _Env:
    def __init__(self, topology: Path):
        self.topology = topology

    def definitions(self):
        from infra_assets.definitions import build_definitions
        from infra_assets.topology.model import load_topology

        return build_definitions(load_topology(self.topology))

    def up(self) -> None:
        from lab import site

        site.up(self.topology)

    def run(self, keys: list[str]) -> None:
        import dagster as dg

        from lab import site

        site.lab_secrets(site.lab_site(self.topology))
        job = self.definitions().resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            asset_selection=[dg.AssetKey.from_user_string(k) for k in ["topology", *keys]],
            instance=dg.DagsterInstance.get(),
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        )
        assert result.success, site._failure_text(result)


@contextmanager
def _lab_env(*, cold: bool) -> Iterator[tuple[Path, _Env]]:
    """A lab topology at NUMBER with a state folder and a Dagster instance of its own (and, cold,
    an empty podman storage); the lab taken down and the folder removed afterwards."""
    from lab import site

    folder = Path(tempfile.mkdtemp(prefix="bench-lab-", dir=REPO_ROOT / ".state"))
    topology = site.write_lab_topology(folder, NUMBER)
    home = folder / "dagster"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    # warm: the project's podman storage, where `make demo` and the tests keep the images
    podman = folder / "podman" if cold else REPO_ROOT / ".state" / "podman"
    variables = {
        "DAGSTER_HOME": str(home),
        "INFRA_TOPOLOGY": str(topology),  # what the `topology` asset reads
        "INFRA_STATE_DIR": str(folder / "state"),
        "INFRA_PODMAN_ROOT": str(podman),
        "INFRA_SECRETS_FILE": None,
    }
    try:
        with site.environment(home, **variables):
            try:
                yield topology, _Env(topology)
            finally:
                site.down(topology)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
