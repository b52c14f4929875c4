"""TopologyResource: the topology file Dagster works on, read and validated on demand."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from infra_assets.model import Topology, load_topology
from infra_assets.paths import default_topology


@dataclass(frozen=True)
class TopologySource:
    """Where a topology came from: the file, its content hash and the git commit holding it."""

    path: Path
    sha256: str
    commit: str | None  # HEAD of the repo holding the file, None outside git
    dirty: bool  # the file differs from that commit


class TopologyResource(dg.ConfigurableResource):
    """The topology file: `path`, else `$INFRA_TOPOLOGY`, else `topology.yaml` at the repo root.

    `make demo` and `make dev` point it at the lab (`topology.lab.yaml`).
    """

    path: str = Field(
        default="",
        description="The topology file. Empty: $INFRA_TOPOLOGY, else the repo's topology.yaml.",
    )

    def file(self) -> Path:
        return Path(self.path).absolute() if self.path else default_topology()

    def load(self) -> Topology:
        """The validated topology. Raises `TopologyError` listing every problem in the file."""
        return load_topology(self.file())

    def source(self) -> TopologySource:
        file = self.file()
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        commit, dirty = _git_state(file)
        return TopologySource(path=file, sha256=digest, commit=commit, dirty=dirty)


def _git_state(file: Path) -> tuple[str | None, bool]:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(file.parent), *args], capture_output=True, text=True, check=False
        )

    head = git("rev-parse", "--verify", "-q", "HEAD")
    if head.returncode != 0:
        return None, False
    status = git("status", "--porcelain", "--", file.name)
    return head.stdout.strip(), bool(status.stdout.strip())
