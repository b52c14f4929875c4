"""The one way this project runs a command-line tool (in the shape of dagster_dbt's invocation).

Output (stderr folded into stdout) is read line by line and each line goes to the log as it
arrives; JSON lines are parsed where the tool offers them (`terraform -json`, salt's `--out=json`);
a cancelled run forwards SIGINT to the tool; a failure raises `CliError` with the command, the
exit code and the last lines. Secrets passed as `redact` never reach the log or the error.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    stdin: str | None = None,
    sigint_grace_s: float = 20.0,
) -> CliResult:
    """Run `args`, streaming each output line to `log`. Raises `CliError` on failure if `check`."""
    argv = [os.fspath(a) for a in args]
    secrets = [s for s in redact if s]

    def hide(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    command = hide(shlex.join(argv))
    sink = log or default_log()
    full_env = {**(os.environ if inherit_env else {}), **(env or {})}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    lines: list[str] = []
    events: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except OSError as exc:
        raise CliError(command, None, [], why=f"could not start: {exc}") from None

    timed_out = threading.Event()
    timer = None
    if timeout_s is not None:

        def _expire() -> None:
            timed_out.set()
            _interrupt(proc, sigint_grace_s=5)

        timer = threading.Timer(timeout_s, _expire)
        timer.daemon = True
        timer.start()
    try:
        if stdin is not None and proc.stdin:
            proc.stdin.write(stdin)
            proc.stdin.close()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = hide(raw.rstrip("\n"))
            lines.append(line)
            tail.append(line)
            if json_lines and line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
            sink(line)
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
    if timed_out.is_set():
        raise CliError(command, returncode, list(tail), why=f"timed out after {timeout_s:g} s")
    if check and returncode != 0:
        raise CliError(command, returncode, list(tail))
    return CliResult(command, returncode, lines, events, duration)


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
