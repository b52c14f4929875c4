"""Where things are: the repo, its gitignored state folders, the default topology.

Computed, never created, at import: the functions that need a folder make it.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """The project's state on this machine (the lab's keys, secrets and plans, podman storage,
    builds' logs): `$INFRA_STATE_DIR` or `.state/`."""
    return Path(os.environ.get("INFRA_STATE_DIR") or REPO_ROOT / ".state").absolute()


def default_topology() -> Path:
    """The topology Dagster works on: `$INFRA_TOPOLOGY`, else the repo's `topology.yaml`."""
    return Path(os.environ.get("INFRA_TOPOLOGY") or REPO_ROOT / "topology.yaml").absolute()


def dagster_home() -> Path:
    """The Dagster instance: `$DAGSTER_HOME`, else the repo itself, whose `dagster.yaml` keeps
    the history in `.dagster/` (the Makefile sets DAGSTER_HOME to the repo)."""
    return Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT).absolute()
