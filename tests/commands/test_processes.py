"""The process supervisor of the lab's command side (lab/processes.py), with real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest

from lab.processes import ProcessError, Supervisor, free_port, port_open


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def http_server(port: int, root) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(root)]


def test_start_is_safe_twice_and_stop_stops_only_what_it_started(tmp_path):
    sup = Supervisor(tmp_path / "run")
    port = free_port()
    (tmp_path / "index.html").write_text("hello")
    first = sup.start(
        "web", http_server(port, tmp_path), log=tmp_path / "web.log", ready=lambda: port_open(port)
    )
    try:
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html").read() == b"hello"
        again = sup.start("web", http_server(port, tmp_path), log=tmp_path / "web.log")
        assert again.pid == first.pid
        assert [r.name for r in sup.running()] == ["web"]
    finally:
        assert sup.stop("web") is True
    assert not port_open(port)
    assert sup.get("web") is None
    assert sup.stop("web") is False  # safe twice


def test_a_reused_pid_is_not_taken_for_the_recorded_process(tmp_path):
    sup = Supervisor(tmp_path / "run")
    rec = sup.start(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], log=tmp_path / "s.log"
    )
    sup.stop("sleeper")
    # Someone else's process now holds a pid; a record that names it is not ours.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = tmp_path / "run" / "sleeper.json"
        record.write_text(json.dumps({**rec.as_json(), "pid": other.pid}))
        assert sup.get("sleeper") is None
        assert sup.stop("sleeper") is False
        assert other.poll() is None, "a process we did not start is never signalled"
    finally:
        other.kill()
        other.wait()


def test_children_stop_with_their_parent(tmp_path):
    sup = Supervisor(tmp_path / "run")
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "p.log"
    sup.start(
        "parent",
        [sys.executable, "-c", script],
        log=log,
        ready=lambda: log.exists() and log.read_text().strip() != "",
    )
    child = int(log.read_text().split()[0])
    sup.stop("parent")
    assert not alive(child)


def test_a_process_that_ignores_sigterm_is_killed(tmp_path):
    sup = Supervisor(tmp_path / "run")
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)"
    log = tmp_path / "stubborn.log"
    rec = sup.start(
        "stubborn", [sys.executable, "-c", script], log=log, ready=lambda: "up" in log.read_text()
    )
    assert sup.stop("stubborn", timeout_s=1) is True
    assert not alive(rec.pid)


def test_a_process_that_dies_while_starting_reports_its_log(tmp_path):
    sup = Supervisor(tmp_path / "run")
    with pytest.raises(ProcessError, match=r"exited with status 3 while starting(.|\n)*bad config"):
        sup.start(
            "broken",
            [sys.executable, "-c", "print('bad config'); raise SystemExit(3)"],
            log=tmp_path / "broken.log",
            ready=lambda: False,
        )
    assert sup.running() == []


def test_sigint_is_not_inherited_as_ignored(tmp_path):
    """`dagster dev` started from a shell that ignores SIGINT hangs on stop (TOOLING.md)."""
    sup = Supervisor(tmp_path / "run")
    script = "import signal, time\nprint(signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)\ntime.sleep(60)"
    log = tmp_path / "i.log"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sup.start(
            "int",
            [sys.executable, "-c", script],
            log=log,
            ready=lambda: log.read_text().strip() != "",
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert log.read_text().strip() == "True"
    sup.stop("int", sig=signal.SIGINT)


def test_free_ports_are_outside_the_kernels_ephemeral_range_and_free():
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = {free_port() for _ in range(50)}
    assert all(20000 <= p < low for p in ports)
    for port in ports:
        assert not port_open(port)
