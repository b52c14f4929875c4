"""TopologyResource (`topology_file`): the topology file Dagster works on, read once per run.

The resource reads the file; `infra_assets/topology` parses and checks it
(`infra_assets.topology.assets.read`): a run's assets, checks and sensors all see the text
that its first read found, even if the file changes while the run goes on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.cli_runner import CliError
from resources.git import run_git
from resources.paths import default_topology


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
    # The file's text, once read in a run (set up by Dagster for each run or sensor tick; a
    # resource used outside Dagster reads the file at each call).
    _run_text: str | None = PrivateAttr(default=None)
    _in_run: bool = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._in_run, self._run_text = True, None

    def file(self) -> Path:
        return Path(self.path).absolute() if self.path else default_topology()

    def text(self) -> str:
        """The file's text: read once per run. Raises OSError or UnicodeDecodeError."""
        if self._run_text is not None:
            return self._run_text
        text = self.file().read_text(encoding="utf-8")
        if self._in_run:
            self._run_text = text
        return text

    def source(self) -> TopologySource:
        file = self.file()
        digest = hashlib.sha256(self.text().encode("utf-8")).hexdigest()
        commit, dirty = _git_state(file)
        return TopologySource(path=file, sha256=digest, commit=commit, dirty=dirty)


def _git_state(file: Path) -> tuple[str | None, bool]:
    def git(*args: str) -> str | None:
        try:
            return run_git(file.parent, *args, env=None, timeout_s=30).output
        except CliError:
            return None

    head = git("rev-parse", "--verify", "-q", "HEAD")
    if head is None:
        return None, False
    status = git("status", "--porcelain", "--", file.name) or ""
    return head.strip(), bool(status.strip())
