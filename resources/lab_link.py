"""What the resources that work across a lab's link share:

- for the salt and registry resources, which may talk to a lab address: the machine's route to
  an address (it must go through the lab's link, or nothing is sent), and a secret read from a
  file (mode 600, outside git) when the resource connects, so no value is in its config. Each
  resource raises its own error with these texts;
- for the daemons on the machine's end of the link (the git daemon, resources/lab_git.py; the
  egress proxy, resources/lab_egress.py): starting one in a session of its own and waiting until
  it listens, and stopping it by its pid.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from resources.cli_runner import CliError, ToolError, discard, run_cli

# The webhook endpoint's port on the machine's side of a lab's link (webhooks/, started by
# `make demo`): the lab's registry posts its notifications there.
WEBHOOKS_PORT = 8700


def route_problem(url: str, device: str) -> str | None:
    """None when the machine's route to `url`'s address goes through `device` (the lab's link);
    else what is wrong, for the caller's error."""
    host = urlsplit(url).hostname or ""
    try:
        out = run_cli(["ip", "-j", "route", "get", host], log=discard, check=False, timeout_s=10)
        routes = json.loads(out.output or "[]") if out.returncode == 0 else []
    except (CliError, ValueError):  # no `ip`, or no answer in time; not JSON
        routes = []
    dev = routes[0].get("dev") if routes else None
    if dev == device:
        return None
    return (
        f"the route to {host} does not go through {device} (it goes"
        f" {'through ' + dev if dev else 'nowhere'}): the lab is not up; run `infra lab up`"
    )


def read_secret_file(path: str) -> str:
    """The secret in `path` ("" for no path); OSError when it cannot be read (or is not UTF-8
    text: its bytes are never shown)."""
    try:
        return Path(path).read_text(encoding="utf-8").strip() if path else ""
    except UnicodeDecodeError:
        raise OSError(errno.EINVAL, "not UTF-8 text") from None


# --- the machine-side daemons on a lab's link (its git daemon, its egress proxy) --------------


class LinkDaemonError(ToolError):
    """A daemon on the lab's link did not start (it exited, or did not listen in time)."""


def command_line(pid: int) -> list[str] | None:
    """Process `pid`'s argv, None when it is gone (or not ours to read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw if a]


def listening(address: str, port: int, *, timeout_s: float = 0.5) -> bool:
    """Whether something accepts a TCP connection on address:port."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class PidFileDaemon:
    """What the daemons on the link share: their pid file, `running` and `stop`. Each says in
    `pid` how it knows its own process (its command line checked, never its name alone)."""

    @property
    def pid_file(self) -> Path:
        raise NotImplementedError

    def pid(self) -> int | None:
        raise NotImplementedError

    def recorded_pid(self) -> int | None:
        """The pid in the pid file (not checked: `pid` does that), None without one."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self, *, timeout_s: float = 10.0) -> int | None:
        """Stop the daemon by its pid (with its process group: start_daemon's children go
        too); returns the pid stopped, None when it did not run."""
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is not None:
            stop_process(pid, timeout_s=timeout_s)
        return pid


def start_daemon(
    argv: Sequence[str],
    *,
    what: str,
    address: str,
    port: int,
    pid_file: Path,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 10.0,
) -> int:
    """Start `argv` in a session of its own (it outlives the run that started it; its children
    go with it), its output appended to `log_file`, its pid in `pid_file`; wait until it listens
    on address:port. LinkDaemonError (with the log's last lines) when it exits or does not
    listen in time."""
    log = open(log_file, "ab")  # noqa: SIM115 - handed to the daemon
    try:
        # Popen, not run_cli: a daemon keeps running after this returns (no exit to wait for).
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    finally:
        log.close()
    pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
            pid_file.unlink(missing_ok=True)
            raise LinkDaemonError(
                f"{what} on {address}:{port} exited ({proc.returncode}):"
                f" {' / '.join(tail) or 'no output'} (is the lab's link up?)",
                command=shlex.join(argv),
                returncode=proc.returncode,
                tail=tail,
            )
        if listening(address, port):
            return proc.pid
        time.sleep(0.1)
    stop_process(proc.pid)
    pid_file.unlink(missing_ok=True)
    raise LinkDaemonError(
        f"{what} on {address}:{port} did not listen within {timeout_s} s",
        command=shlex.join(argv),
    )


def stop_process(pid: int, *, timeout_s: float = 10.0) -> None:
    """SIGTERM to `pid`'s process group when it leads one (a daemon started by `start_daemon`
    does), else to `pid` alone; SIGKILL after `timeout_s`; reaped when it is our child. Gone
    already: nothing to do."""
    try:
        leads = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    kill = os.killpg if leads else os.kill
    try:
        kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:  # our child: reaped
                return
        except ChildProcessError:
            if not Path(f"/proc/{pid}").exists():
                return
        time.sleep(0.05)
    try:
        kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)  # our child: reaped
    except ChildProcessError:
        pass
