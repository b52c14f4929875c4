"""The co-op's chat, through an incoming webhook: Slack's JSON (`{"text": ...}`), which
Mattermost and Rocket.Chat take as well.

The webhook's URL is a secret (whoever has it can post to the channel): it is never put in an
error, a log line or metadata; an error says what answered, not where. Posting is one HTTP
request with a short timeout; the caller (a sensor) decides what to do when it fails.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse

import dagster as dg

from resources.cli_runner import ToolError

# Slack cuts a message's text at 40,000 characters; a notice is short, its details are in the
# run's page.
MAX_TEXT = 3000
# What a failed post names as its command: the request, never the webhook's URL.
POST = "POST <the chat's webhook>"


class ChatError(ToolError):
    """The chat did not take a message (its answer, or why there was none; never the URL)."""


class ChatResource(dg.ConfigurableResource):
    """Posts to one incoming webhook. `webhook_url` empty: no chat; `post` says so. `proxy`: an
    HTTP proxy (`http://<host>:<port>`) the webhook is reached through, as a CONNECT tunnel for an
    http:// webhook too (the lab's egress proxy opens tunnels alone)."""

    webhook_url: str = ""
    username: str = "coop-infra"
    timeout_s: float = 5.0
    proxy: str = ""

    def post(self, text: str) -> None:
        if not self.webhook_url:
            raise ChatError("no chat webhook is configured")
        url = urllib.parse.urlsplit(self.webhook_url)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ChatError("the chat's webhook URL is not an http(s) URL")
        if len(text) > MAX_TEXT:
            text = text[: MAX_TEXT - 1] + "…"
        body = json.dumps({"text": text, "username": self.username}).encode()
        try:
            port = url.port or (443 if url.scheme == "https" else 80)
        except ValueError:  # its message would quote the URL
            raise ChatError("the chat's webhook URL is not an http(s) URL") from None
        conn = self._connection(url.scheme, url.hostname, port)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        headers = {"Content-Type": "application/json", "User-Agent": "coop-infra"}
        try:
            conn.request("POST", path, body=body, headers=headers)
            answer = conn.getresponse()
            said = answer.read(4096)
        except http.client.InvalidURL:  # its message quotes the URL
            raise ChatError("the chat's webhook URL is not an http(s) URL", command=POST) from None
        except http.client.HTTPException as err:  # some quote what they read: the name alone
            raise ChatError(
                f"the chat's webhook answered badly ({type(err).__name__})", command=POST
            ) from None
        except OSError as err:  # names the host or the proxy's answer at most
            raise ChatError(f"the chat's webhook cannot be reached: {err}", command=POST) from None
        finally:
            conn.close()
        if not 200 <= answer.status < 300:
            said = said[:300].decode("utf-8", "replace").strip()
            raise ChatError(
                f"the chat's webhook answered {answer.status} {answer.reason}"
                + (f": {said}" if said else ""),
                command=POST,
            )

    def _connection(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        """A connection to the webhook's host, or to the proxy with a tunnel to it."""
        proxy = urllib.parse.urlsplit(self.proxy) if self.proxy else None
        try:
            where = (proxy.hostname, proxy.port or 80) if proxy else (host, port)
        except ValueError:  # a port that is none
            where = (None, 0)
        if proxy is not None and not (proxy.scheme == "http" and where[0]):
            raise ChatError("the chat's proxy is not an http URL with a host and a port")
        if scheme == "https":
            conn = http.client.HTTPSConnection(*where, timeout=self.timeout_s)
        else:
            conn = http.client.HTTPConnection(*where, timeout=self.timeout_s)
        if proxy:
            conn.set_tunnel(host, port)
        return conn
