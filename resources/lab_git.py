"""The lab's git daemon: app repositories that are paths on this machine, served read-only to
the lab's hosts from the machine's side of the lab's link.

A topology may name an app's repo by a path on the machine (topology.lab.yaml: `.state/lab/git/
hello.git`). The lab's hosts cannot read this machine's files, so the build agent clones such a
repo from `git://169.254.N.1/<app>.git`: a `git daemon` listening on the machine's end of lab N's
veth link (169.254.N.1, port 9418) and nowhere else, exporting one folder of links
(`<folder>/<app>.git` -> the repo), upload-pack only (no push: receive-pack is off and no repo
may turn it on).

The daemon is started and stopped by its pid (a file in the folder, checked against the
process's command line before it is trusted or signalled), never by name. `infra lab down` stops
it before the link goes.

Nothing from the project but its link helpers (resources/lab_link.py) is imported here: the lab's
number, the folder and the repos are passed in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from resources.cli_runner import ToolError
from resources.lab_link import LinkDaemonError, PidFileDaemon, command_line, start_daemon

GIT_PORT = 9418


class LabGitError(ToolError):
    """The git daemon could not be started (or is not the one it should be)."""


@dataclass(frozen=True)
class LabGitDaemon(PidFileDaemon):
    """The git daemon of lab `number`, its export folder and pid file under `folder`."""

    number: int
    folder: Path

    @property
    def address(self) -> str:
        """The machine's end of the lab's link (resources/lab.py, LabNetwork.machine_address)."""
        return f"169.254.{self.number}.1"

    @property
    def export_dir(self) -> Path:
        return Path(self.folder) / "export"

    @property
    def pid_file(self) -> Path:
        return Path(self.folder) / "git-daemon.pid"

    @property
    def log_file(self) -> Path:
        return Path(self.folder) / "git-daemon.log"

    def url(self, app: str) -> str:
        """Where the lab's hosts clone `app` from."""
        return f"git://{self.address}/{app}.git"

    # --- the export --------------------------------------------------------------------------

    def export(self, repos: Mapping[str, str]) -> dict[str, str]:
        """Make the export folder exactly `repos` ({app: path of its repo on the machine}):
        a link `<app>.git` per app, stale links removed. Returns {app: git:// URL}."""
        self.export_dir.mkdir(parents=True, exist_ok=True)
        wanted = {f"{app}.git": Path(path).absolute() for app, path in repos.items()}
        for entry in self.export_dir.iterdir():
            if entry.name not in wanted and entry.is_symlink():
                entry.unlink()
        for name, target in wanted.items():
            link = self.export_dir / name
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)
        return {app: self.url(app) for app in repos}

    # --- the process -------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The daemon's pid when it runs (its pid file names a live `git daemon` of this lab)."""
        pid = self.recorded_pid()
        if pid is None:
            return None
        args = command_line(pid) or []
        mine = f"--listen={self.address}" in args and f"--base-path={self.export_dir}" in args
        daemon = any(a.endswith("git-daemon") or a == "daemon" for a in args)
        return pid if mine and daemon else None

    def start(self, *, timeout_s: float = 10.0) -> int:
        """Start the daemon unless it runs; returns its pid. The address must be on the
        machine (the lab's link is up)."""
        pid = self.pid()
        if pid is not None:
            return pid
        self.export_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={self.export_dir}",
            f"--listen={self.address}",
            f"--port={GIT_PORT}",
            # Read-only: upload-pack (fetch, clone) only; no repo's config may enable a push.
            "--forbid-override=receive-pack",
            "--disable=receive-pack",
            "--informative-errors",
            "--verbose",
            "--log-destination=stderr",
            str(self.export_dir),
        ]
        try:
            return start_daemon(
                argv,
                what="git daemon",
                address=self.address,
                port=GIT_PORT,
                pid_file=self.pid_file,
                log_file=self.log_file,
                env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"},
                timeout_s=timeout_s,
            )
        except LinkDaemonError as err:
            raise LabGitError.from_cli(f"lab {self.number}: {err}", err) from err

    def status(self) -> dict:
        pid = self.pid()
        return {
            "url": f"git://{self.address}:{GIT_PORT}/",
            "running": pid is not None,
            "pid": pid,
            "export_dir": str(self.export_dir),
            "repos": sorted(p.name for p in self.export_dir.glob("*.git"))
            if self.export_dir.is_dir()
            else [],
        }
