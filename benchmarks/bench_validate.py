"""Validating a generated topology of 2,000 hosts and 200 apps (target: at most 0.5 s), from the
file on disk to the address plan, as `infra check` does it."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import Result
from infra_assets.topology.model import address_plan, load_topology

RUNS = 5
TYPES = {
    "salt-master": 1,
    "salt-minion": 2,
    "jenkins-master": 3,
    "jenkins-agent": 4,
    "web-staging": 5,
    "web-production": 6,
    "postgres-staging": 7,
    "postgres-production": 8,
    "docker-registry": 9,
    "npm-cache": 10,
}


def generate(hosts: int = 2000, apps: int = 200) -> dict:
    """Ten locations, every type in each, instances numbered up to fill `hosts`."""
    locations = {f"loc-{n}": {"number": n, "cloud": "catalyst"} for n in range(1, 11)}
    host_entries: dict[str, dict] = {}
    roles = [r for r in TYPES if r != "salt-master"]
    i = 0
    while len(host_entries) < hosts:
        location = f"loc-{i % 10 + 1}"
        role = roles[(i // 10) % len(roles)]
        instance = i // (10 * len(roles)) + 1
        host_entries[f"{role}-{location}-{instance}"] = {
            "location": location,
            "instance": instance,
            "roles": [role],
            "flavor": "c1.c2r4",
        }
        i += 1
    host_entries["support-1"] = {
        "location": "loc-1",
        "instance": 1,
        "roles": ["salt-master", "dns"],
    }
    app_entries = {
        f"app-{n}": {
            "repo": f"https://git.example.coop/app-{n}.git",
            "branch": "main",
            "port": 8000 + 2 * n,  # two loopback ports each: apps' ports at least two apart
            "health": "/health",
            "domains": {
                "staging": f"app-{n}.staging.example.coop",
                "production": f"app-{n}.example.coop",
            },
        }
        for n in range(apps)
    }
    return {"locations": locations, "types": TYPES, "hosts": host_entries, "apps": app_entries}


def run() -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "topology.yaml"
        path.write_text(yaml.safe_dump(generate(), sort_keys=False))
        times = []
        for _ in range(RUNS):
            started = time.perf_counter()
            topo = load_topology(path)
            address_plan(topo)
            times.append(time.perf_counter() - started)
    took = statistics.median(times)
    return [
        Result(
            f"validate a topology of {len(topo.hosts)} hosts and {len(topo.apps)} apps",
            took,
            "s",
            "<= 0.5 s",
            took <= 0.5,
            f"median of {RUNS}, from the file to the address plan",
        )
    ]
