"""A chat's incoming webhook, for tests: a real HTTP server on 127.0.0.1 that takes what Slack,
Mattermost and Rocket.Chat take (POST, a JSON body with `text`) and keeps each message with the
time it arrived. `answer` sets the status it replies with (Slack says `no_service` with a 404
for a webhook that was removed)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Message:
    path: str
    content_type: str
    body: dict
    received: float


class ChatReceiver:
    def __init__(self) -> None:
        # The secret part of the URL, as Slack's /services/T.../B.../<token>
        self.token = secrets.token_hex(12)
        self.messages: list[Message] = []
        self.status = 200
        self.reply = b"ok"
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = {"unreadable": raw.decode("utf-8", "replace")}
                with receiver._lock:
                    receiver.messages.append(
                        Message(self.path, self.headers.get("Content-Type", ""), body, time.time())
                    )
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(receiver.reply)))
                self.end_headers()
                self.wfile.write(receiver.reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{self.token}"

    def texts(self) -> list[str]:
        with self._lock:
            return [m.body.get("text", "") for m in self.messages]

    def wait_for(self, needle: str, timeout_s: float = 30) -> Message:
        """The first message whose text holds `needle`, waited for."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for message in self.messages:
                    if needle in message.body.get("text", ""):
                        return message
            time.sleep(0.1)
        raise AssertionError(f"no message with {needle!r} within {timeout_s} s: {self.texts()}")

    def __enter__(self) -> ChatReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chat_receiver() -> Iterator[ChatReceiver]:
    with ChatReceiver() as receiver:
        yield receiver
