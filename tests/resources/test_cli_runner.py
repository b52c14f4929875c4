"""The shared runner that every tool's resource uses to run a command-line tool."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from resources.cli_runner import CliError, run_cli

PY = sys.executable


def test_streams_every_line_as_it_arrives_and_parses_json_lines():
    seen: list[tuple[float, str]] = []
    script = (
        "import json, sys, time\n"
        "print('first', flush=True)\n"
        "time.sleep(0.5)\n"
        "print(json.dumps({'type': 'done', 'n': 2}), flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
    )
    result = run_cli(
        [PY, "-c", script], log=lambda line: seen.append((time.monotonic(), line)), json_lines=True
    )
    assert [line for _, line in seen] == ["first", '{"type": "done", "n": 2}', "to stderr"]
    assert seen[1][0] - seen[0][0] > 0.3, "lines reach the log while the tool runs"
    assert result.events == [{"type": "done", "n": 2}]
    assert result.returncode == 0


def test_failure_carries_command_exit_code_and_last_lines():
    script = "import sys\nfor i in range(100): print('line', i)\nsys.exit(3)"
    with pytest.raises(CliError) as err:
        run_cli([PY, "-c", script], log=lambda _: None)
    assert err.value.returncode == 3
    assert "exited with status 3" in str(err.value)
    assert err.value.tail[-1] == "line 99" and len(err.value.tail) == 40
    assert PY in err.value.command


def test_secrets_are_redacted_from_log_command_and_error():
    logged: list[str] = []
    secret = "s3cret-Passw0rd"
    with pytest.raises(CliError) as err:
        run_cli(
            [PY, "-c", f"print('token={secret}'); raise SystemExit(1)", secret],
            log=logged.append,
            redact=[secret],
        )
    assert logged == ["token=***"]
    assert secret not in str(err.value) and secret not in err.value.command


def test_a_tool_that_cannot_start_is_a_clear_error(tmp_path):
    with pytest.raises(CliError, match="could not start"):
        run_cli([str(tmp_path / "no-such-tool")], log=lambda _: None)


def test_timeout_stops_the_tool():
    started = time.monotonic()
    with pytest.raises(CliError, match="timed out after 0.5 s"):
        run_cli([PY, "-c", "import time; time.sleep(30)"], log=lambda _: None, timeout_s=0.5)
    assert time.monotonic() - started < 10


def test_an_interrupted_run_sends_sigint_to_the_tool(tmp_path):
    marker = tmp_path / "got-sigint"
    script = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGINT, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(130)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )

    class Cancelled(BaseException):
        pass

    def log(line: str) -> None:
        if line == "ready":
            raise Cancelled  # what a cancelled Dagster run does to the step's thread

    with pytest.raises(Cancelled):
        run_cli([PY, "-c", script], log=log)
    assert marker.exists()


def test_stdin_is_passed():
    result = run_cli(
        [PY, "-c", "import sys; print(sys.stdin.read().upper())"], stdin="hi", log=lambda _: None
    )
    assert result.lines == ["HI"]


def test_check_false_returns_the_exit_code():
    result = run_cli([PY, "-c", "raise SystemExit(4)"], check=False, log=lambda _: None)
    assert result.returncode == 4


def test_runs_in_threads_side_by_side():
    results = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(
                run_cli([PY, "-c", f"print({i})"], log=lambda _: None)
            )
        )
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.lines[0] for r in results) == ["0", "1", "2", "3"]
