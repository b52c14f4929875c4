"""The lab's egress proxy (resources/lab_egress.py), run for real on 127.0.0.1 with an upstream of
the test's own: a CONNECT from an allowed client to an allowed target is tunnelled byte for byte;
anything else is refused with a reason and logged. On the lab itself (169.254.N.1, the npm
cache's verdaccio fetching through it): tests/lab/test_lab_salt.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.processes import free_port
from resources.lab_egress import LabEgressProxy

pytestmark = pytest.mark.slow  # the proxy, a process of its own


@pytest.fixture
def upstream() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that answers each line with the line upper-cased."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                for line in conn.makefile("rb"):
                    conn.sendall(line.upper())

    threading.Thread(target=serve, daemon=True).start()
    yield port
    server.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "resources.lab_egress", "--listen=127.0.0.1",
         f"--port={port}", f"--folder={tmp_path}", "--idle-s=1"],
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the proxy did not listen"
            time.sleep(0.05)
    yield port, tmp_path
    proc.terminate()
    assert proc.wait(timeout=10) == 0  # SIGTERM: a clean stop


def _connect(proxy_port: int, target: str) -> tuple[str, socket.socket]:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head.decode("latin-1"), sock


def _allow(folder: Path, allow: dict) -> None:
    proxy = LabEgressProxy(0, folder)  # only its allow-list and log: nothing started
    proxy.allow(allow)


def test_an_allowed_client_gets_a_tunnel_to_an_allowed_target(proxy, upstream):
    port, folder = proxy
    _allow(folder, {"127.0.0.1": [f"127.0.0.1:{upstream}"]})
    head, sock = _connect(port, f"127.0.0.1:{upstream}")
    assert head.startswith("HTTP/1.1 200 Connection established"), head
    with sock:
        sock.sendall(b"hello registry\n")
        assert sock.recv(100) == b"HELLO REGISTRY\n"
    deadline = time.monotonic() + 5
    while not [e for e in LabEgressProxy(0, folder).log() if e["result"] == "allowed"]:
        assert time.monotonic() < deadline, "no log line for the tunnel"
        time.sleep(0.05)
    [entry] = LabEgressProxy(0, folder).log()
    assert entry["client"] == "127.0.0.1" and entry["target"] == f"127.0.0.1:{upstream}"
    assert entry["sent"] == 15 and entry["received"] == 15


def test_an_idle_tunnel_is_closed_and_logged_with_when_it_opened(proxy, upstream):
    """A client that keeps its tunnel open (an HTTP client's pool) is cut after the idle time
    (1 s here), so each fetch in a window shows as a tunnel opened in it."""
    port, folder = proxy
    _allow(folder, {"127.0.0.1": [f"127.0.0.1:{upstream}"]})
    before = time.time()
    head, sock = _connect(port, f"127.0.0.1:{upstream}")
    assert head.startswith("HTTP/1.1 200 Connection established"), head
    with sock:
        sock.sendall(b"one\n")
        assert sock.recv(100) == b"ONE\n"
        time.sleep(0.5)
        sock.sendall(b"two\n")  # still open after 0.5 s of quiet
        assert sock.recv(100) == b"TWO\n"
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(100) == b""  # then closed by the proxy, 1 s after the last byte
        assert 0.8 < time.monotonic() - started < 3
    deadline = time.monotonic() + 5
    while not LabEgressProxy(0, folder).log():
        assert time.monotonic() < deadline, "no log line for the tunnel"
        time.sleep(0.05)
    [entry] = LabEgressProxy(0, folder).log()
    assert entry["result"] == "allowed" and entry["sent"] == 8 and entry["received"] == 8
    assert before <= entry["opened_at"] <= time.time()


def test_everything_else_is_refused_with_its_reason_and_logged(proxy, upstream):
    port, folder = proxy
    _allow(folder, {"127.0.0.1": ["registry.npmjs.org:443"]})
    head, sock = _connect(port, f"127.0.0.1:{upstream}")
    sock.close()
    assert head.startswith("HTTP/1.1 403 Forbidden")
    assert f"127.0.0.1:{upstream} is not a registry 127.0.0.1's roles need, nor the chat" in head
    # Not a cache host (the allow-list is read on every request: no restart).
    _allow(folder, {"10.127.1.1": ["registry.npmjs.org:443"]})
    head, sock = _connect(port, "registry.npmjs.org:443")
    sock.close()
    assert (
        head.startswith("HTTP/1.1 403")
        and "127.0.0.1 may not go out of the lab (no cache host" in head
    )
    # Only CONNECT: no plain HTTP forwarding.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert plain.recv(200).startswith(b"HTTP/1.1 405")
    results = [(e["result"], e.get("target") or e.get("request")) for e in
               LabEgressProxy(0, folder).log()]  # fmt: skip
    assert results == [
        ("refused", f"127.0.0.1:{upstream}"),
        ("refused", "registry.npmjs.org:443"),
        ("refused", "GET http://example.com/"),
    ]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_start_twice_stop_by_pid_and_an_orphan_is_found_and_replaced(tmp_path):
    """The proxy's own life: started once (a second start finds it), stopped by its pid; one
    whose folder was removed from under it still holds the port, so it is found by its command
    line and replaced by the next start, never left behind."""
    port = free_port()
    first = LabEgressProxy(0, tmp_path / "one", listen="127.0.0.1", port=port)
    pid = first.start()
    try:
        assert first.start() == pid and first.status()["running"]
        # The folder goes (a state folder removed while the lab was up): the proxy is still
        # found by its command line, and the next one's start replaces it.
        shutil.rmtree(tmp_path / "one")
        second = LabEgressProxy(0, tmp_path / "two", listen="127.0.0.1", port=port)
        assert second.pid() == pid
        new = second.start()
        assert new != pid and not _alive(pid)
        assert second.stop() == new and not _alive(new)
        assert second.pid() is None and second.stop() is None
    finally:
        for proc in (first, LabEgressProxy(0, tmp_path / "two", listen="127.0.0.1", port=port)):
            proc.stop()


def test_the_chat_is_posted_to_through_a_tunnel_and_refused_elsewhere(proxy, chat_receiver):
    """What the lab's Dagster and a chat-ops bot do (resources/chat.py): an http:// webhook
    through the proxy as a CONNECT tunnel (the proxy opens tunnels alone); a client the
    allow-list does not name for the chat's host gets the proxy's refusal, and nothing arrives."""
    from resources.chat import ChatError, ChatResource

    port, folder = proxy
    target = f"127.0.0.1:{chat_receiver.url.split(':')[2].split('/')[0]}"
    chat = ChatResource(webhook_url=chat_receiver.url, proxy=f"http://127.0.0.1:{port}")
    _allow(folder, {"127.0.0.1": [target]})
    chat.post("through the tunnel")
    assert [m.body["text"] for m in chat_receiver.messages] == ["through the tunnel"]
    deadline = time.monotonic() + 5  # a tunnel's line is written when it closes

    def tunnelled() -> bool:
        log = LabEgressProxy(0, folder).log()
        return any(e["target"] == target and e["result"] == "allowed" for e in log)

    while not tunnelled():
        assert time.monotonic() < deadline, LabEgressProxy(0, folder).log()
        time.sleep(0.1)

    _allow(folder, {"127.0.0.1": ["registry.npmjs.org:443"]})
    with pytest.raises(ChatError, match="cannot be reached: Tunnel connection failed: 403"):
        chat.post("not allowed")
    assert len(chat_receiver.messages) == 1
