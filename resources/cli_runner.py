"""The one way this project runs a command-line tool (in the shape of dagster_dbt's invocation).

Output (stderr folded into stdout) is read line by line and each line goes to the log as it
arrives; JSON lines are parsed where the tool offers them (`terraform -json`, salt's `--out=json`);
a cancelled run forwards SIGINT to the tool; a failure raises `CliError` with the command, the
exit code and the last lines. Secrets passed as `redact` never reach the log or the error.
Each tool's resource raises its own error, a `ToolError` (a CliError too): in its own words,
keeping the failed command's facts and raised `from` the CliError.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

LogSink = Callable[[str], Any]
TAIL_LINES = 40


class CliError(RuntimeError):
    """A tool exited non-zero (or could not start, or ran out of time)."""

    def __init__(self, command: str, returncode: int | None, tail: Sequence[str], why: str = ""):
        self.command = command
        self.returncode = returncode
        self.tail = list(tail)
        status = why or f"exited with status {returncode}"
        text = f"`{command}` {status}"
        if self.tail:
            text += "; last lines:\n" + "\n".join("  " + line for line in self.tail)
        super().__init__(text)


class ToolError(CliError):
    """A tool's own error (each tool's resource subclasses it), in the tool's own words.

    From a failed command (`from_cli`, raised `from` the CliError): that command, its exit code
    and its last lines. From an API (HTTP) that answered badly: `command` names the request that
    was made (never a secret), no exit code, no lines. Else (a setting, an answer that cannot be
    read): `command` is empty."""

    def __init__(
        self,
        message: str,
        *,
        command: str = "",
        returncode: int | None = None,
        tail: Sequence[str] = (),
    ):
        RuntimeError.__init__(self, message)
        self.command = command
        self.returncode = returncode
        self.tail = list(tail)

    @classmethod
    def from_cli(cls, message: str, failed: CliError | CliResult) -> Self:
        """This tool's error with `message`, keeping the failed command's facts."""
        return cls(message, command=failed.command, returncode=failed.returncode, tail=failed.tail)


@dataclass
class CliResult:
    command: str
    returncode: int
    lines: list[str]
    events: list[dict[str, Any]] = field(default_factory=list)  # parsed JSON lines
    duration_s: float = 0.0

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def tail(self) -> list[str]:
        """The last lines, as a CliError keeps them."""
        return self.lines[-TAIL_LINES:]


def discard(_line: str) -> None:
    """A log that keeps nothing: the command's output goes to its result (and its error) only."""


def default_log() -> LogSink:
    """The Dagster log inside a run (get_dagster_logger), Python logging outside one."""
    try:
        import dagster as dg

        return dg.get_dagster_logger("cli").info
    except ImportError:  # pragma: no cover - the model and CLI work without Dagster
        return logging.getLogger("coop-infra.cli").info


def run_cli(
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    log: LogSink | None = None,
    json_lines: bool = False,
    redact: Sequence[str] = (),
    timeout_s: float | None = None,
    check: bool = True,
    stdin: str | bytes | None = None,
    sigint_grace_s: float = 20.0,
) -> CliResult:
    """Run `args`, streaming each output line to `log`. Raises `CliError` on failure if `check`."""
    argv = [os.fspath(a) for a in args]
    hide = _redactor(redact)
    command = hide(shlex.join(argv))
    sink = log or default_log()
    full_env = {**(os.environ if inherit_env else {}), **(env or {})}
    started = time.monotonic()
    proc = _start(argv, command, cwd=cwd, env=full_env, stdin=stdin)
    timed_out = threading.Event()
    timer = _stop_after(proc, timeout_s, timed_out)
    try:
        if stdin is not None and proc.stdin:
            _feed(proc, stdin)
        lines, events = _read_lines(proc, hide, sink, json_lines=json_lines)
        returncode = proc.wait()
    except BaseException:
        # A cancelled Dagster run interrupts this thread: let the tool stop cleanly (terraform
        # releases its state lock on SIGINT), then make sure it is gone.
        _interrupt(proc, sigint_grace_s=sigint_grace_s)
        raise
    finally:
        if timer is not None:
            timer.cancel()
    duration = time.monotonic() - started
    tail = lines[-TAIL_LINES:]
    if timed_out.is_set():
        raise CliError(command, returncode, tail, why=f"timed out after {timeout_s:g} s")
    if check and returncode != 0:
        raise CliError(command, returncode, tail)
    return CliResult(command, returncode, lines, events, duration)


def _redactor(redact: Sequence[str]) -> Callable[[str], str]:
    """What replaces each secret of `redact` in a text with ***."""
    secrets = [s for s in redact if s]

    def hide(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return hide


def _feed(proc: subprocess.Popen, stdin: str | bytes) -> None:
    """Write `stdin` to the tool (bytes, an archive for `podman cp -`, as they are). A tool that
    exits without reading it all is judged by its exit status, as subprocess.run judges it."""
    try:
        (proc.stdin.buffer if isinstance(stdin, bytes) else proc.stdin).write(stdin)
        proc.stdin.close()
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def _start(
    argv: list[str],
    command: str,
    *,
    cwd: str | Path | None,
    env: Mapping[str, str],
    stdin: str | bytes | None,
) -> subprocess.Popen:
    """The tool started, its stderr folded into its stdout (CliError when it cannot start)."""
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except OSError as exc:
        raise CliError(command, None, [], why=f"could not start: {exc}") from None


def _stop_after(
    proc: subprocess.Popen, timeout_s: float | None, timed_out: threading.Event
) -> threading.Timer | None:
    """A timer that interrupts the tool after `timeout_s` and sets `timed_out` (None: no limit)."""
    if timeout_s is None:
        return None

    def _expire() -> None:
        timed_out.set()
        _interrupt(proc, sigint_grace_s=5)

    timer = threading.Timer(timeout_s, _expire)
    timer.daemon = True
    timer.start()
    return timer


def _read_lines(
    proc: subprocess.Popen, hide: Callable[[str], str], sink: LogSink, *, json_lines: bool
) -> tuple[list[str], list[dict[str, Any]]]:
    """Each output line (secrets hidden) to `sink` as it arrives, until the tool closes its
    output: the lines, and those that are JSON parsed (with `json_lines`)."""
    lines: list[str] = []
    events: list[dict[str, Any]] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = hide(raw.rstrip("\n"))
        lines.append(line)
        if json_lines and line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        sink(line)
    return lines, events


def _interrupt(proc: subprocess.Popen, *, sigint_grace_s: float) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=sigint_grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass
