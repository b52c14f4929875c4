#!/usr/bin/env python3
"""The asset graph as a reviewer reads it: for the co-op's topology (topology.yaml) and the lab's
(topology.lab.yaml), every asset key with its dependencies, group, kinds and checks, and the
jobs, sensors and schedules, as YAML sorted by key. A change to the graph is then a visible diff
in a pull request (tests/test_asset_graph.py compares the code with the committed snapshot).

    uv run python scripts/asset_graph.py           # print it
    uv run python scripts/asset_graph.py --write   # write tests/snapshots/asset_graph.yaml
                                                   # (`make snapshot`: the only writer)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = REPO / "tests" / "snapshots" / "asset_graph.yaml"
TOPOLOGIES = ("topology.yaml", "topology.lab.yaml")


def graph_of(topology_file: Path) -> dict[str, Any]:
    """The graph of the code location `topology_file` makes."""
    from infra_assets.definitions import build_definitions
    from infra_assets.topology.model import load_topology

    defs = build_definitions(load_topology(topology_file))
    graph = defs.resolve_asset_graph()
    assets: dict[str, Any] = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "checks": sorted(c.name for c in node.check_keys),
        }
    repo = defs.get_repository_def()
    return {
        "assets": assets,
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        # what each starts, how often, and whether it runs when a Dagster first loads it
        "sensors": {
            s.name: {
                "jobs": sorted(t.job_name for t in s.targets) if s.has_jobs else [],
                "interval_s": s.minimum_interval_seconds,
                "default": s.default_status.value,
            }
            for s in repo.sensor_defs
        },
        "schedules": {
            s.name: {
                "job": s.job_name,
                "cron": s.cron_schedule,
                "timezone": s.execution_timezone,
                "default": s.default_status.value,
            }
            for s in repo.schedule_defs
        },
    }


def snapshot() -> dict[str, Any]:
    """Both topologies' graphs, read with the repo's files and none of the caller's settings
    (`$INFRA_*`: a Jenkins URL, for one, changes the builder an app_image asset names)."""
    saved = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("INFRA_")]}
    try:
        return {name: graph_of(REPO / name) for name in TOPOLOGIES}
    finally:
        os.environ.update(saved)


def render(data: dict[str, Any]) -> str:
    header = (
        "# The asset graph of the co-op's topology and the lab's: written by `make snapshot`\n"
        "# (scripts/asset_graph.py), compared by tests/test_asset_graph.py. Never edit by hand.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=True, default_flow_style=None, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {SNAPSHOT.relative_to(REPO)}")
    args = parser.parse_args(argv)
    text = render(snapshot())
    if args.write:
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(text)
        sys.stdout.write(f"wrote {SNAPSHOT.relative_to(REPO)}\n")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
