"""The shared runner that every tool's resource uses to run a command-line tool."""

from __future__ import annotations

import importlib
import io
import pkgutil
import sys
import tarfile
import threading
import time

import pytest

import resources
from resources.chat import ChatError, ChatResource
from resources.cli_runner import CliError, CliResult, ToolError, run_cli
from resources.git import GitError, GitResource
from resources.infra_repo import InfraRepoResource

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


def _error_classes() -> list[type[Exception]]:
    """Every exception class defined in a module of resources/."""
    found = []
    for info in pkgutil.iter_modules(resources.__path__):
        module = importlib.import_module(f"resources.{info.name}")
        found += [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, Exception)
            and value.__module__ == module.__name__
        ]
    return found


def test_every_tool_error_is_a_cli_error():
    classes = _error_classes()
    assert {c.__name__ for c in classes} >= {"GitError", "TerraformError", "SaltError", "ChatError"}
    assert [c.__qualname__ for c in classes if not issubclass(c, CliError)] == []


def test_a_tool_error_from_a_failed_command_keeps_its_facts(tmp_path):
    with pytest.raises(GitError) as err:
        InfraRepoResource(path=str(tmp_path)).head()  # not a repository
    error = err.value
    assert error.returncode == 128 and "rev-parse" in error.command
    assert any("not a git repository" in line for line in error.tail)
    assert isinstance(error.__cause__, CliError) and error.__cause__.tail == error.tail
    assert str(error) == str(error.__cause__)  # infra_repo's message: the runner's own


def test_a_tool_error_in_its_own_words_keeps_the_command_it_came_from(tmp_path):
    with pytest.raises(GitError) as err:
        GitResource().head(repo=str(tmp_path / "none"), branch="main")
    error = err.value
    assert "ls-remote" in error.command and error.returncode == 128 and error.tail
    assert type(error.__cause__) is CliError and str(error) != str(error.__cause__)
    failed = CliResult("tool --flag", 2, [f"line {i}" for i in range(100)])
    made = ToolError.from_cli("the tool failed", failed)
    assert (str(made), made.command, made.returncode) == ("the tool failed", "tool --flag", 2)
    assert made.tail == [f"line {i}" for i in range(60, 100)]


def test_an_api_error_names_the_request_without_an_exit_code():
    chat = ChatResource(webhook_url="http://127.0.0.1:1/hooks/s3cret", timeout_s=2)
    with pytest.raises(ChatError, match="cannot be reached") as err:
        chat.post("hello")
    assert err.value.command == "POST <the chat's webhook>" and "s3cret" not in err.value.command
    assert err.value.returncode is None and err.value.tail == []
    assert ChatError("no chat webhook is configured").command == ""


def test_binary_stdin_reaches_the_tool_as_it_is(tmp_path):
    """What the lab writes into a container (`podman cp -`): a tar archive, byte for byte."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("etc/coop/first-boot")
        data = bytes(range(256))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    run_cli(["tar", "-x", "-C", str(tmp_path)], stdin=archive.getvalue(), log=lambda line: None)
    assert (tmp_path / "etc" / "coop" / "first-boot").read_bytes() == bytes(range(256))


def test_a_tool_that_reads_none_of_its_stdin_is_judged_by_its_exit():
    """A tool that exits before reading what it was given: its status, not a broken pipe."""
    big = b"x" * (8 << 20)  # more than a pipe holds
    assert run_cli(["true"], stdin=big, log=lambda line: None).returncode == 0
    with pytest.raises(CliError) as failed:
        run_cli(["false"], stdin=big, log=lambda line: None)
    assert failed.value.returncode == 1
