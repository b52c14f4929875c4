"""coop_health: the health probes a host runs on itself, for Dagster's `health/<host>` assets
(infra_assets/operations/health.py), which call `coop_health.probe` on every minion in one salt job.

A check is a service of the host: its systemd unit active, and then its answer where it has
one (an HTTP status, a TCP connection, DNS answers for the plan's names, `pg_isready`, an app's
health path on its live container). Everything runs here, on the host, with the standard
library: what is checked is the service as the host's own neighbours reach it, wherever
Dagster runs.

    probe(plan) -> {check: {"ok": bool, "detail": str, "ms": float}}

`plan` maps each minion id to its checks (one salt job sends the same arguments to every
minion; each takes its own), each check a dict of:

    unit      a systemd unit that must be active
    http      a URL that must answer with a status in `expect` (any status when absent);
              https without certificate checks (the question is whether it answers)
    tcp       [address, port] that must take a connection
    dns       {"server": address, "port": 53, "names": {name: address}}: each name, asked of
              the server (UDP), must answer with its address
    postgres  [address, port]: `pg_isready` must say it accepts connections
    app       {"record": path, "path": "/health"}: the app's release record names the live
              container's port; its health path there must answer 200 (no record: nothing
              released on this host yet, which passes and says so)
    worker    the release record's path: its live container must be running
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request

TIMEOUT_S = 5.0

__virtualname__ = "coop_health"


def __virtual__():
    return __virtualname__


def _stale(module_sha256: str) -> dict | None:
    """{"stale_module": <this copy's sha256>} when the caller's module is another one."""
    if not module_sha256:
        return None
    with open(__file__, "rb") as handle:
        mine = hashlib.sha256(handle.read()).hexdigest()
    return None if mine == module_sha256 else {"stale_module": mine}


class Unhealthy(Exception):
    pass


def _unit(name: str) -> str:
    out = subprocess.run(
        ["systemctl", "is-active", name], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    state = out.stdout.strip() or out.stderr.strip() or f"exit {out.returncode}"
    if state != "active":
        raise Unhealthy(f"unit {name} is {state}")
    return f"unit {name} active"


def _http(url: str, expect: list[int] | None) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, headers={"User-Agent": "coop-health"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as answer:
            status = answer.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (urllib.error.URLError, OSError) as err:
        raise Unhealthy(f"{url}: {getattr(err, 'reason', err)}") from None
    if expect and status not in expect:
        raise Unhealthy(f"{url} -> {status} (expected {' or '.join(map(str, expect))})")
    return f"{url} -> {status}"


def _tcp(address: str, port: int) -> str:
    try:
        with socket.create_connection((address, int(port)), timeout=TIMEOUT_S):
            pass
    except OSError as err:
        raise Unhealthy(f"{address}:{port}: {err.strerror or err}") from None
    return f"{address}:{port} takes connections"


def _dns_query(server: str, name: str, port: int = 53) -> list[str]:
    """The A records `server` answers for `name` (one UDP query, recursion not asked)."""
    ident = random.randrange(1 << 16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", ident, 0, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.sendto(packet, (server, port))
        data, _ = sock.recvfrom(4096)
    got, flags, qd, an = struct.unpack(">HHHH", data[:8])
    if got != ident:
        raise Unhealthy(f"{server} answered another question")
    if flags & 0xF:
        raise Unhealthy("no such name" if flags & 0xF == 3 else f"rcode {flags & 0xF}")
    if not flags & 0x8000:
        raise Unhealthy(f"{server} sent a question, not an answer")
    if flags & 0x0200:
        raise Unhealthy(f"{server}'s answer was cut short (truncated)")
    at = 12
    for _ in range(qd):  # skip the question
        at = _skip_name(data, at) + 4
    found = []
    for _ in range(an):
        at = _skip_name(data, at)
        kind, _cls, _ttl, length = struct.unpack(">HHIH", data[at : at + 10])
        at += 10
        if kind == 1 and length == 4:
            found.append(socket.inet_ntoa(data[at : at + 4]))
        at += length
    return found


def _skip_name(data: bytes, at: int) -> int:
    """Where the name at `at` ends: labels, then a zero byte or a compression pointer."""
    while True:
        length = data[at]
        if length == 0:
            return at + 1
        if length & 0xC0 == 0xC0:
            return at + 2
        at += length + 1


def _dns(server: str, names: dict[str, str], port: int = 53) -> str:
    wrong = []
    for name, address in sorted(names.items()):
        try:
            found = _dns_query(server, name, port)
        except OSError as err:
            raise Unhealthy(f"{server}:{port} did not answer for {name}: {err}") from None
        except Unhealthy as err:
            wrong.append(f"{name}: {err}")
            continue
        if address not in found:
            wrong.append(f"{name} -> {', '.join(found) or 'nothing'} (planned {address})")
    if wrong:
        raise Unhealthy(f"{server} answers wrong: " + "; ".join(wrong[:5]))
    return f"{server} answers the plan's {len(names)} names"


def _postgres(address: str, port: int) -> str:
    out = subprocess.run(
        ["pg_isready", "-h", address, "-p", str(port), "-t", str(int(TIMEOUT_S))],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S + 2,
    )
    said = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        raise Unhealthy(said or f"pg_isready exited {out.returncode}")
    return said


def _live(record: str) -> dict | None:
    """The live release a web host's record names (None: nothing released here yet)."""
    try:
        with open(record, encoding="utf-8") as handle:
            return json.load(handle).get("current") or None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise Unhealthy(f"{record} cannot be read: {err}") from None


def _worker(record: str) -> str:
    live = _live(record)
    if live is None:
        return "nothing released on this host yet"
    name = str(live.get("container") or "")
    out = subprocess.run(
        ["podman", "container", "inspect", "--format", "{{.State.Status}}", name],
        capture_output=True, text=True, timeout=TIMEOUT_S * 2,
    )  # fmt: skip
    status = out.stdout.strip() or "gone"
    if status != "running":
        raise Unhealthy(f"{name} is {status}")
    return f"{name} runs"


def _app(record: str, path: str) -> str:
    live = _live(record)
    if live is None:
        return "nothing released on this host yet"
    port = live.get("port")
    if not isinstance(port, int):
        raise Unhealthy(f"{record} names no live port")
    return _http(f"http://127.0.0.1:{port}{path}", [200])


def check(spec: dict) -> dict:
    """One check: each of its parts in turn, the first failure ends it."""
    started = time.monotonic()
    said = []
    try:
        if spec.get("unit"):
            said.append(_unit(spec["unit"]))
        if spec.get("http"):
            said.append(_http(spec["http"], spec.get("expect")))
        if spec.get("tcp"):
            said.append(_tcp(*spec["tcp"]))
        if spec.get("dns"):
            dns = spec["dns"]
            said.append(_dns(dns["server"], dns["names"], int(dns.get("port", 53))))
        if spec.get("postgres"):
            said.append(_postgres(*spec["postgres"]))
        if spec.get("app"):
            said.append(_app(spec["app"]["record"], spec["app"]["path"]))
        if spec.get("worker"):
            said.append(_worker(spec["worker"]))
        ok = True
    except Unhealthy as err:
        said.append(str(err))
        ok = False
    except Exception as err:  # noqa: BLE001 - a probe's own bug is a failed check, said
        said.append(f"the probe failed: {type(err).__name__}: {err}")
        ok = False
    return {"ok": ok, "detail": "; ".join(said), "ms": round((time.monotonic() - started) * 1000)}


def probe(plan: dict, module_sha256: str = "") -> dict:
    """This minion's checks of `plan` ({minion id: {check: spec}}), each run."""
    stale = _stale(module_sha256)
    if stale:
        return stale
    mine = plan.get(__opts__["id"]) or {}  # noqa: F821 - salt's loader gives __opts__
    return {name: check(spec) for name, spec in sorted(mine.items())}
