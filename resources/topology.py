"""TopologyResource (`topology_file`): the topology file Dagster works on, read once per run.

The resource reads the file; `infra_assets/topology` parses and checks it
(`infra_assets.topology.model.read_topology`). Dagster sets a resource up once for each run (our
steps share the run's process: `in_process_executor`) and for each sensor tick, so a run's
assets and checks all see the bytes that its first read found, even if the file changes while
the run goes on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.cli_runner import CliError
from resources.git import SHA_RE, run_git
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
    # The file's bytes, once read in a run (set up by Dagster for each run or sensor tick; a
    # resource used outside Dagster reads the file at each call).
    _run_bytes: bytes | None = PrivateAttr(default=None)
    _in_run: bool = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._in_run, self._run_bytes = True, None

    def file(self) -> Path:
        return Path(self.path).absolute() if self.path else default_topology()

    def content(self) -> bytes:
        """The file's bytes: read once per run. Raises OSError."""
        if self._run_bytes is not None:
            return self._run_bytes
        content = self.file().read_bytes()
        if self._in_run:
            self._run_bytes = content
        return content

    def text(self) -> str:
        """The file's text (UTF-8). Raises OSError or UnicodeDecodeError."""
        return self.content().decode("utf-8")

    def source(self) -> TopologySource:
        file = self.file()
        digest = hashlib.sha256(self.content()).hexdigest()
        commit, dirty = _git_state(file)
        return TopologySource(path=file, sha256=digest, commit=commit, dirty=dirty)


def _git_state(file: Path) -> tuple[str | None, bool]:
    def git(*args: str) -> str | None:
        try:
            return run_git(file.parent, *args, env=None, timeout_s=30).output
        except CliError:
            return None

    # git's warnings (stderr) come in the same output: only a sha, and only status lines, count.
    said = (git("rev-parse", "--verify", "-q", "HEAD") or "").split()
    head = next((word for word in reversed(said) if SHA_RE.fullmatch(word)), None)
    if head is None:
        return None, False
    status = (git("status", "--porcelain", "--", file.name) or "").splitlines()
    return head, any(line[:2].strip() and line[2:3] == " " for line in status)
