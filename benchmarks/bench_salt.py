"""Salt on the local site (topology.local.yaml: a master and three minions on 127.0.0.1).

1. From `infra local up` until every minion answers test.ping: cold (a fresh state folder: keys
   generated, then accepted through the resource as the `minions` asset does) and warm (the site
   restarted with its keys accepted).
2. A highstate of the N minions through SaltResource against the `salt` CLI on the same master,
   interleaved, in one run: the ratio of the medians (target: at most 1.1). Both start from
   nothing (the resource's worker process, the CLI's interpreter), as a Dagster step does.
3. The memory of the master and the minions (PSS: shared pages counted once).

Runs in a state folder of its own (.state/bench-salt-<pid>), removed at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

from benchmarks import Result
from infra_assets.paths import REPO_ROOT

TOPOLOGY = REPO_ROOT / "topology.local.yaml"
ROUNDS = 5
INFRA = str(Path(sys.executable).parent / "infra")
SALT = str(Path(sys.executable).parent / "salt")


def run() -> list[Result]:
    from infra_assets.local_site.site import LocalSite
    from infra_assets.model import load_topology
    from infra_assets.sites import ProcessSite
    from resources.salt import SaltResource

    state = REPO_ROOT / ".state" / f"bench-salt-{os.getpid()}"
    env = {**os.environ, "INFRA_STATE_DIR": str(state), "INFRA_TOPOLOGY": str(TOPOLOGY)}
    env.pop("INFRA_SECRETS_FILE", None)
    topo = load_topology(TOPOLOGY)
    minions = sorted(topo.hosts)
    site = LocalSite(TOPOLOGY, root=state / "local")
    ps = ProcessSite(topo, root=site.root)
    results: list[Result] = []
    try:
        # 1. cold: nothing exists yet.
        started = time.monotonic()
        _infra("local", "up", "--no-registry", env=env)
        up_s = time.monotonic() - started
        with SaltResource(master_config=str(ps.salt_master_config())) as salt:
            _wait_pending(salt, minions)
            salt.accept_keys(minion_ids=minions)
            ping = salt.wait_for(minions=minions, timeout_s=60)
        cold = time.monotonic() - started
        assert ping.ok, ping.silent
        results.append(
            Result(
                f"infra local up --no-registry until {len(minions)} minions answer"
                " (cold: new keys)",
                cold,
                "s",
                "<= 30 s",
                cold <= 30,
                f"up {up_s:.1f} s, then keys accepted and pinged",
            )
        )
        # warm: stop and start again; the keys are accepted already.
        _infra("local", "down", env=env)
        started = time.monotonic()
        _infra("local", "up", "--no-registry", env=env)
        with SaltResource(master_config=str(ps.salt_master_config())) as salt:
            ping = salt.wait_for(minions=minions, timeout_s=60)
        warm = time.monotonic() - started
        assert ping.ok, ping.silent
        results.append(
            Result(
                f"infra local up --no-registry until {len(minions)} minions answer (warm)",
                warm,
                "s",
                "<= 30 s",
                warm <= 30,
            )
        )

        # 1b. the whole `infra local up`: salt, then the registry host's role through Dagster
        # (an instance of the benchmark's own), until the registry answers over TLS.
        _infra("local", "down", env=env)
        home = state / "dagster"
        home.mkdir()
        shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
        started = time.monotonic()
        _infra("local", "up", env={**env, "DAGSTER_HOME": str(home)})
        registry = site.status()["registry"]
        answer = requests.get(f"{registry['url']}/v2/", verify=registry["ca_file"], timeout=10)
        full = time.monotonic() - started
        assert answer.status_code == 401, answer.status_code
        results.append(
            Result(
                "infra local up with the registry (warm) until the registry answers",
                full,
                "s",
                "(reported)",
                True,
                "salt, then `dagster asset materialize` of highstate/docker-registry and its"
                " upstream",
            )
        )

        # 2. highstate through the resource vs the salt CLI.
        config = str(ps.salt_master_config())

        def through_resource() -> float:
            t = time.monotonic()
            with SaltResource(master_config=config) as salt:
                result = salt.highstate(minions=minions, log=lambda line: None)
            elapsed = time.monotonic() - t
            assert result.ok, result.problems()
            return elapsed

        def through_cli() -> float:
            t = time.monotonic()
            out = subprocess.run(
                [SALT, "-c", str(Path(config).parent), "-L", ",".join(minions)]
                + ["state.highstate", "queue=True", "--out=json", "--static"],
                capture_output=True,
                text=True,
                timeout=600,
            )
            elapsed = time.monotonic() - t
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
            return elapsed

        through_resource()  # the first highstate starts the services; then both find no change
        ours, cli = [], []
        for _ in range(ROUNDS):
            ours.append(through_resource())
            cli.append(through_cli())
        ratio = statistics.median(ours) / statistics.median(cli)
        results.append(
            Result(
                f"highstate of {len(minions)} minions: SaltResource / salt CLI",
                ratio,
                "x",
                "<= 1.1",
                ratio <= 1.1,
                f"median of {ROUNDS}: resource {statistics.median(ours):.2f} s,"
                f" CLI {statistics.median(cli):.2f} s",
            )
        )

        # 3. memory
        pss = _pss_mb([r.pid for r in site.supervisor.running()])
        results.append(
            Result(
                f"memory of the salt master and {len(minions)} minions (PSS)",
                pss,
                "MB",
                "(reported)",
                True,
                "worker_threads: 2",
            )
        )
    finally:
        _infra("local", "down", env=env, check=False)
        link = ps.hosts_dir()
        if link.is_symlink():
            link.unlink()
        shutil.rmtree(state, ignore_errors=True)
    return results


def _infra(*args: str, env: dict, check: bool = True) -> None:
    out = subprocess.run(
        [INFRA, *args, "--topology", str(TOPOLOGY)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"infra {' '.join(args)} failed: {out.stderr}")


def _wait_pending(salt, minions: list[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not set(minions) <= set(salt.list_keys().pending) | set(salt.list_keys().accepted):
        if time.monotonic() > deadline:
            raise RuntimeError(f"keys did not arrive: {salt.list_keys()}")
        time.sleep(0.2)


def _pss_mb(leaders: list[int]) -> float:
    """The PSS of every process in the sessions of `leaders` (each supervised process)."""
    total_kb = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            sid = int(text[text.rindex(")") + 2 :].split()[3])
            if sid not in leaders:
                continue
            rollup = (stat.parent / "smaps_rollup").read_text()
        except (OSError, ValueError):
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024
