"""The health probes (salt/_modules/coop_health.py) run here for real, against services the
test starts on loopback (an HTTP server, a closed port, a DNS server that answers as dnsmasq
does) and systemd as this machine has it. The lab runs them on its hosts
(tests/lab/test_lab_health.py)."""

from __future__ import annotations

import importlib.util
import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lab.processes import free_port

MODULE = Path(__file__).resolve().parents[2] / "salt" / "_modules" / "coop_health.py"


def _load():
    spec = importlib.util.spec_from_file_location("coop_health", MODULE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


health = _load()


@pytest.fixture(scope="module")
def web():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            status = 401 if self.path == "/v2/" else 200 if self.path == "/health" else 404
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_an_http_check_passes_on_an_expected_status_and_says_what_else_it_got(web):
    url = f"http://127.0.0.1:{web}/v2/"
    assert health.check({"http": url, "expect": [401]}) == {
        "ok": True, "detail": f"{url} -> 401", "ms": pytest.approx(0, abs=1000)
    }  # fmt: skip
    wrong = health.check({"http": url, "expect": [200]})
    assert not wrong["ok"] and wrong["detail"] == f"{url} -> 401 (expected 200)"
    assert health.check({"http": f"http://127.0.0.1:{web}/anything"})["ok"]  # any status


def test_a_closed_port_fails_the_tcp_and_http_checks_with_the_reason():
    port = free_port()
    tcp = health.check({"tcp": ["127.0.0.1", port]})
    assert not tcp["ok"] and tcp["detail"] == f"127.0.0.1:{port}: Connection refused"
    http = health.check({"http": f"http://127.0.0.1:{port}/"})
    assert not http["ok"] and "Connection refused" in http["detail"]


def test_a_unit_that_is_not_running_fails_first_and_the_rest_is_not_asked(web):
    result = health.check({"unit": "coop-no-such-unit", "http": f"http://127.0.0.1:{web}/health"})
    assert not result["ok"]
    assert result["detail"].startswith("unit coop-no-such-unit is ")
    assert "->" not in result["detail"]


def test_an_app_is_checked_on_the_port_its_release_record_names(web, tmp_path):
    record = tmp_path / "hello.json"
    assert health.check({"app": {"record": str(record), "path": "/health"}}) == {
        "ok": True, "detail": "nothing released on this host yet", "ms": pytest.approx(0, abs=100)
    }  # fmt: skip
    record.write_text(json.dumps({"current": {"port": web, "slot": "blue"}}))
    ok = health.check({"app": {"record": str(record), "path": "/health"}})
    assert ok["ok"] and ok["detail"] == f"http://127.0.0.1:{web}/health -> 200"
    failing = health.check({"app": {"record": str(record), "path": "/missing"}})
    assert not failing["ok"] and failing["detail"].endswith("-> 404 (expected 200)")


def _dns_server(records: dict[str, str]):
    """A DNS server on a port of the test's own (port 53 is not ours to take), answering A
    records as dnsmasq does (a compressed name pointer in each answer). The lab's dnsmasq is
    asked by tests/lab/test_lab_health.py."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                data, peer = sock.recvfrom(512)
            except OSError:
                return
            ident = data[:2]
            at, labels = 12, []
            while data[at]:
                labels.append(data[at + 1 : at + 1 + data[at]].decode())
                at += data[at] + 1
            question = data[12 : at + 5]
            name = ".".join(labels)
            address = records.get(name)
            if address is None:
                sock.sendto(ident + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0) + question, peer)
                continue
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 0, 4) + socket.inet_aton(address)
            sock.sendto(ident + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0) + question + answer, peer)

    threading.Thread(target=serve, daemon=True).start()
    return sock


def test_the_dns_probe_asks_each_name_and_compares_with_the_plan():
    server = _dns_server({"support-1.lab.coop.internal": "10.127.1.1"})
    at = {"server": "127.0.0.1", "port": server.getsockname()[1]}
    try:
        good = health.check({"dns": {**at, "names": {"support-1.lab.coop.internal": "10.127.1.1"}}})
        assert good["ok"], good
        assert good["detail"] == "127.0.0.1 answers the plan's 1 names"
        bad = health.check({"dns": {**at, "names": {
            "support-1.lab.coop.internal": "10.127.1.2", "gone.lab.coop.internal": "10.127.9.9"}}})  # fmt: skip
        assert not bad["ok"]
        assert bad["detail"] == (
            "127.0.0.1 answers wrong: gone.lab.coop.internal: no such name;"
            " support-1.lab.coop.internal -> 10.127.1.1 (planned 10.127.1.2)"
        )
    finally:
        server.close()


def test_a_minion_with_another_copy_of_the_module_says_so_instead_of_probing(web):
    """infra_assets/configuration/salt_modules.py syncs the modules to a minion that answers so."""
    from infra_assets.configuration.salt_modules import STALE, module_sha256

    mine = module_sha256("coop_health")
    assert health.probe({}, module_sha256="0" * 64) == {STALE: mine}
    health.__opts__ = {"id": "web-1"}
    try:
        plan = {"web-1": {"nginx": {"http": f"http://127.0.0.1:{web}/health"}}}
        got = health.probe(plan, module_sha256=mine)
    finally:
        del health.__opts__
    assert got["nginx"]["ok"] and got["nginx"]["detail"].endswith("-> 200")
