"""The lab's only way out: an allow-list HTTPS proxy for its cache hosts (and the hosts that post
to the co-op's chat), on the machine's side of the lab's link.

The lab's hosts have no route off the machine (the lab's namespace forwards nothing out, and the
machine keeps its own `ip_forward` as it is). The cache hosts (the npm cache's verdaccio, later a
PyPI cache) need the package registries, as their servers reach them through the cloud's router.
In the lab they reach them through this proxy: `CONNECT host:443` to 169.254.N.1:3128 (the
machine's end of lab N's veth link, and nowhere else), allowed only when the client's address is
a cache host's and the target is one of the registries its role needs, or a host's that posts to
the chat (the lab's Dagster, a chat-ops bot's web host) and the target is the chat's host from
the lab's secrets (infra_assets/topology/sites.py, `LabSite.egress_allow`; `allow.json` in the
proxy's folder, read on every request: {client address: ["host:port", ...]}). Anything else is
answered `403` and logged. The tunnel carries the client's own TLS end to end; nothing is
decrypted here.

Every request is one line of the log (`egress.log`): time, client, target, `allowed` or
`refused` and why, and for a tunnel, when it was opened and the bytes each way, written when it
closes. A tunnel idle for IDLE_S (nothing either way) is closed: the caches' HTTP clients keep
connections open to reuse them, and a tunnel kept open could carry a later fetch that no new
line would show. So what the lab fetched from upstream in a window is measured from the log:
the tunnels opened in it, read once IDLE_S has passed after it.

The proxy is started and stopped by its pid (a file in the folder, checked against the
process's command line), never by name; `infra lab down` stops it before the link goes. Nothing
from the project but its link helpers (resources/lab_link.py) and the tools' error base
(resources/cli_runner.py) is imported here: the number, the folder and the allow-list are passed
in.

    python -m resources.lab_egress --listen 169.254.127.1 --port 3128 --folder DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from resources.cli_runner import ToolError
from resources.lab_link import LinkDaemonError, PidFileDaemon, command_line, start_daemon

EGRESS_PORT = 3128
MAX_HEADER = 16 * 1024
IDLE_S = 5.0  # a tunnel with nothing either way for this long is closed (see the top)


class LabEgressError(ToolError):
    """The egress proxy could not be started (or is not the one it should be)."""


@dataclass(frozen=True)
class LabEgressProxy(PidFileDaemon):
    """The egress proxy of lab `number`, its allow-list, pid and log under `folder`."""

    number: int
    folder: Path
    listen: str = ""  # empty: the lab's link (tests give 127.0.0.1)
    port: int = EGRESS_PORT

    @property
    def address(self) -> str:
        """The machine's end of the lab's link (resources/lab.py, LabNetwork.machine_address)."""
        return self.listen or f"169.254.{self.number}.1"

    @property
    def url(self) -> str:
        """What a cache host sets as its HTTPS proxy."""
        return f"http://{self.address}:{self.port}"

    @property
    def allow_file(self) -> Path:
        return Path(self.folder) / "allow.json"

    @property
    def pid_file(self) -> Path:
        return Path(self.folder) / "egress.pid"

    @property
    def log_file(self) -> Path:
        return Path(self.folder) / "egress.log"

    def allow(self, clients: Mapping[str, Sequence[str]]) -> None:
        """Make the allow-list exactly `clients` ({address: ["host:port", ...]}), written whole
        (the proxy reads it on every request: no restart)."""
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        data = {client: sorted(set(targets)) for client, targets in sorted(clients.items())}
        tmp = self.allow_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.allow_file)

    def pid(self) -> int | None:
        """The pid of the proxy on this lab's link address, when one runs: the one its pid file
        names, else any `resources.lab_egress` listening there (one whose folder was removed
        from under it still holds the port: it is found, so it can be stopped)."""
        recorded = self.recorded_pid()
        candidates = [recorded] if recorded else []
        candidates += [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
        for pid in candidates:
            argv = command_line(pid) or []
            mine = f"--listen={self.address}" in argv and f"--port={self.port}" in argv
            if "resources.lab_egress" in argv and mine:
                return pid
        return None

    @staticmethod
    def _folder_of(pid: int) -> Path | None:
        folders = [
            a[len("--folder=") :] for a in command_line(pid) or [] if a.startswith("--folder=")
        ]
        return Path(folders[0]) if folders else None

    def start(self, *, timeout_s: float = 10.0) -> int:
        """Start the proxy unless it runs; returns its pid. The lab's link must be up."""
        pid = self.pid()
        if pid is not None and self._folder_of(pid) == Path(self.folder):
            return pid
        if pid is not None:  # another folder's (removed from under it): this one's now
            self.stop()
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        if not self.allow_file.exists():
            self.allow({})
        argv = [
            sys.executable,
            "-m",
            "resources.lab_egress",
            f"--listen={self.address}",
            f"--port={self.port}",
            f"--folder={self.folder}",
        ]
        try:
            return start_daemon(
                argv,
                what="egress proxy",
                address=self.address,
                port=self.port,
                pid_file=self.pid_file,
                log_file=Path(self.folder) / "egress.out",
                cwd=Path(__file__).resolve().parent.parent,
                timeout_s=timeout_s,
            )
        except LinkDaemonError as err:
            raise LabEgressError.from_cli(f"lab {self.number}: {err}", err) from err

    def log(self) -> list[dict]:
        """The log's entries (one JSON object per request), oldest first."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def tunnels_since(self, since: float) -> list[dict]:
        """The tunnels opened since `since` (epoch seconds) that have closed (a tunnel is
        logged when it closes, at the latest IDLE_S after its last byte)."""
        return [
            e for e in self.log() if e.get("result") == "allowed" and e.get("opened_at", 0) >= since
        ]

    def status(self) -> dict:
        pid = self.pid()
        try:
            allowed = json.loads(self.allow_file.read_text())
        except (OSError, ValueError):
            allowed = {}
        return {
            "url": self.url,
            "running": pid is not None,
            "pid": pid,
            "allow": allowed,
            "log": str(self.log_file),
        }


# --- the proxy itself (run as `python -m resources.lab_egress`) --------------------------------


class _Proxy:
    def __init__(self, folder: Path, idle_s: float = IDLE_S):
        self.allow_file = folder / "allow.json"
        self.log_file = folder / "egress.log"
        self.idle_s = idle_s

    def record(self, **entry: object) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}
        with open(self.log_file, "a") as out:
            out.write(json.dumps(entry) + "\n")

    def allowed(self, client: str, target: str) -> str | None:
        """None when `client` may reach `target`, else why not."""
        try:
            allow = json.loads(self.allow_file.read_text())
        except (OSError, ValueError) as err:
            return f"no allow-list ({err})"
        if client not in allow:
            return f"{client} may not go out of the lab (no cache host, and no chat client)"
        if target not in allow[client]:
            return f"{target} is not a registry {client}'s roles need, nor the chat"
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (ConnectionError, OSError) as err:  # the client went away mid-request
            self.record(client=_peer(writer), result="failed", why=str(err))
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _peer(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.close()
            return
        words = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(words) != 3 or words[0] != "CONNECT":
            self.record(client=client, request=" ".join(words[:2]), result="refused",
                        why="only CONNECT is served")  # fmt: skip
            await self._answer(writer, 405, "only CONNECT host:port")
            return
        target = words[1].lower()
        why = self.allowed(client, target)
        if why:
            self.record(client=client, target=target, result="refused", why=why)
            await self._answer(writer, 403, why)
            return
        host, _, port = target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port)), timeout=15
            )
        except (OSError, ValueError, TimeoutError) as err:
            self.record(client=client, target=target, result="failed", why=str(err))
            await self._answer(writer, 502, f"cannot reach {target}")
            return
        opened = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        tunnel = _Tunnel(self.idle_s)
        watch = asyncio.ensure_future(tunnel.close_when_idle([writer, up_writer]))
        try:
            sent, received = await asyncio.gather(
                tunnel.pipe(reader, up_writer), tunnel.pipe(up_reader, writer)
            )
        finally:
            watch.cancel()
        self.record(client=client, target=target, result="allowed", opened=opened,
                    opened_at=tunnel.opened_at, sent=sent, received=received)  # fmt: skip

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, code: int, why: str) -> None:
        reason = {403: "Forbidden", 405: "Method Not Allowed", 502: "Bad Gateway"}[code]
        body = f"coop lab egress: {why}\n".encode()
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        try:
            await writer.drain()
        finally:
            writer.close()


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if peer else "?"


class _Tunnel:
    """One CONNECT tunnel's two pipes, and when anything last went through either."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.opened_at = time.time()  # epoch seconds: what a measurement's window compares
        self.last = time.monotonic()

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        total = 0
        try:
            while data := await reader.read(65536):
                self.last = time.monotonic()
                total += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            _close(writer)
        return total

    async def close_when_idle(self, writers: list[asyncio.StreamWriter]) -> None:
        while time.monotonic() - self.last < self.idle_s:
            await asyncio.sleep(min(1.0, self.idle_s / 5))
        for writer in writers:
            _close(writer)


def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except RuntimeError:
        pass


async def _serve(listen: str, port: int, folder: Path, idle_s: float = IDLE_S) -> None:
    proxy = _Proxy(folder, idle_s)
    server = await asyncio.start_server(proxy.handle, listen, port, limit=MAX_HEADER)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resources.lab_egress")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, default=EGRESS_PORT)
    parser.add_argument("--folder", required=True, type=Path)
    parser.add_argument("--idle-s", type=float, default=IDLE_S)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.listen, args.port, args.folder, args.idle_s))


if __name__ == "__main__":
    main()
