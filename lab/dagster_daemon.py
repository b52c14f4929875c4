"""The Dagster daemon of `make demo`: `dagster-daemon run` on the repo's instance.

`make demo` starts it (`infra demo`), so that the sensors tick and the runs they ask for run, as
they would on the co-op's support server: a push becomes a build, a new image a staging release.
It stays up with the lab until `infra lab down`. `infra lab up` alone does not start it.

One instance must never have two daemons: `make dev` (`infra dev`) starts only the webserver while
this one runs, and `start` does not start a second one when another process already runs a daemon
on the same instance (`dagster dev`, say): it says which, and the demo uses that one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.processes import Supervisor, command_lines
from resources.paths import REPO_ROOT

PROCESS = "dagster-daemon"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class DaemonProcess:
    pid: int
    command: str


def same_instance(pid: int, dagster_home: Path) -> bool:
    """Whether process `pid` works on the Dagster instance at `dagster_home` (its DAGSTER_HOME,
    else its working folder, which is where Dagster looks without one)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except (FileNotFoundError, PermissionError, ProcessLookupError, OSError):
        return False
    prefix = b"DAGSTER_HOME="
    home = next((e[len(prefix) :].decode() for e in environ if e.startswith(prefix)), None)
    return Path(home or cwd).resolve() == Path(dagster_home).resolve()


def running_daemons(dagster_home: Path) -> list[DaemonProcess]:
    """Every process that runs the Dagster daemon on this instance: `dagster-daemon run`, or
    `dagster dev` (which runs one of its own)."""
    found = []
    for pid, words in command_lines():
        names = [Path(w).name for w in words[:3]]
        is_daemon = "dagster-daemon" in names and "run" in words
        is_dev = "dagster" in names and "dev" in words[1:4]
        if (is_daemon or is_dev) and same_instance(pid, dagster_home):
            found.append(DaemonProcess(pid, " ".join(words)))
    return sorted(found, key=lambda d: d.pid)


class DagsterDaemon:
    """The demo's daemon, recorded under `run_dir` (a lab's state folder: `infra lab down` of
    that lab, and only that lab, stops it)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.supervisor = Supervisor(self.run_dir)
        self.log = self.run_dir / "dagster-daemon.log"
        self._home_file = self.run_dir / "dagster-home"

    def start(
        self, *, dagster_home: Path, env: dict[str, str], timeout_s: float = 120
    ) -> tuple[int, bool]:
        """Start the daemon on `dagster_home` unless one runs there: (pid, started by us)."""
        ours = self.supervisor.get(PROCESS)
        if ours is not None:
            return ours.pid, True
        others = running_daemons(dagster_home)
        if others:
            return others[0].pid, False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")  # `ready` reads this run's lines only
        record = self.supervisor.start(
            PROCESS,
            [BIN / "dagster-daemon", "run", "-w", REPO_ROOT / "workspace.yaml"],
            log=self.log,
            cwd=dagster_home,
            env={**env, "DAGSTER_HOME": str(dagster_home)},
            ready=lambda: "Instance is configured" in self.log.read_text(errors="replace"),
            ready_timeout_s=timeout_s,
        )
        self._home_file.write_text(str(dagster_home) + "\n")
        return record.pid, True

    def stop(self) -> int | None:
        """Stop it if this place started it: its pid, or None. `dagster-daemon run` stops its own
        children on SIGTERM; SIGKILL after 30 s."""
        record = self.supervisor.get(PROCESS)
        self.supervisor.stop(PROCESS, timeout_s=30)
        self._home_file.unlink(missing_ok=True)
        return record.pid if record else None

    def status(self) -> dict[str, Any]:
        record = self.supervisor.get(PROCESS)
        try:
            home = self._home_file.read_text().strip()
        except FileNotFoundError:
            home = None
        return {
            "daemon_running": record is not None,
            "pid": record.pid if record else None,
            "dagster_home": home if record else None,
            "log": str(self.log),
            "started_by": "infra demo (make demo)",
        }
