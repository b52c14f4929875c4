"""Start, find and stop the machine-side processes of the lab's commands (the Dagster daemon of
`make demo`; the tests' webservers and daemons), by pid, safely twice.

Each process is started in a session of its own (so its children go with it), its output goes to
a log file, and a record `<state>/run/<name>.json` keeps its pid and its kernel start time, so a
reused pid is never taken for it and `stop` only ever signals what this project started.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from resources.lab_link import listening


class ProcessError(RuntimeError):
    pass


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a reused pid apart
    argv: list[str]
    log: str
    started_at: float

    def as_json(self) -> dict:
        return asdict(self)


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie is gone for our purposes
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class Supervisor:
    """The processes of one site, recorded under `run_dir`."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def _record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def get(self, name: str) -> ProcessRecord | None:
        """The record of `name` if that process is still running, else None."""
        path = self._record_path(name)
        try:
            record = ProcessRecord(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None
        _reap(record.pid)
        if _start_ticks(record.pid) != record.start_ticks:
            return None
        return record

    def running(self) -> list[ProcessRecord]:
        if not self.run_dir.is_dir():
            return []
        records = (self.get(p.stem) for p in sorted(self.run_dir.glob("*.json")))
        return [r for r in records if r is not None]

    def start(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout_s: float = 60.0,
    ) -> ProcessRecord:
        """Start `name` unless it already runs; wait until `ready()` is true."""
        existing = self.get(name)
        if existing is not None:
            return existing
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        args = [os.fspath(a) for a in argv]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                # A parent that ignores SIGINT (make, nohup) would pass that on: undo it.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        ticks = _start_ticks(proc.pid)
        record = ProcessRecord(name, proc.pid, ticks or 0, args, str(log), time.time())
        self._record_path(name).write_text(json.dumps(record.as_json(), indent=2))
        deadline = time.monotonic() + ready_timeout_s
        while ready is not None:
            if proc.poll() is not None:
                self._record_path(name).unlink(missing_ok=True)
                raise ProcessError(
                    f"{name} exited with status {proc.returncode} while starting;"
                    f" its log {log} ends:\n{_tail(log)}"
                )
            if ready():
                break
            if time.monotonic() > deadline:
                self.stop(name)
                raise ProcessError(
                    f"{name} was not ready after {ready_timeout_s:g} s; its log {log} ends:\n"
                    + _tail(log)
                )
            time.sleep(0.1)
        return record

    def stop(self, name: str, *, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> bool:
        """Stop `name` and its session's processes. True if it was running."""
        record = self.get(name)
        self._record_path(name).unlink(missing_ok=True)
        if record is None:
            return False
        try:
            os.killpg(record.pid, sig)  # the session we created: pgid == pid
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _reap(record.pid)
            if _start_ticks(record.pid) != record.start_ticks and not _group_alive(record.pid):
                return True
            time.sleep(0.1)
        try:
            os.killpg(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _start_ticks(record.pid) == record.start_ticks:
            _reap(record.pid)
            time.sleep(0.05)
        return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    # killpg(0) succeeds while zombies of the group are unreaped; look for a live member.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def command_lines() -> list[tuple[int, list[str]]]:
    """Every process on this machine that can be read, as (pid, argv): for finding the ones a
    site started when no pid file names them (a daemon started by another command, say)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found.append((int(proc.name), [a.decode(errors="replace") for a in argv if a]))
    return found


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# Ports for the site's services come from below the kernel's ephemeral range: a port in that
# range can be taken at any moment as the source port of an outgoing connection, or handed to
# another program's bind(0), between the moment it is chosen and the moment a service binds it.
SERVICE_PORTS_FROM = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds right now, outside the ephemeral range."""
    try:
        ephemeral_low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    if ephemeral_low - SERVICE_PORTS_FROM >= 1000:
        for _ in range(100):
            port = random.randrange(SERVICE_PORTS_FROM, ephemeral_low)
            if _bindable(port):
                return port
    with socket.socket() as sock:  # a crowded or unusual range: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    return listening(host, port)
