"""The co-op's chat, through an incoming webhook: Slack's JSON (`{"text": ...}`), which
Mattermost and Rocket.Chat take as well.

The webhook's URL is a secret (whoever has it can post to the channel): it is never put in an
error, a log line or metadata; an error says what answered, not where. Posting is one HTTP
request with a short timeout; the caller (a sensor) decides what to do when it fails.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import dagster as dg

# Slack cuts a message's text at 40,000 characters; a notice is short, its details are in the
# run's page.
MAX_TEXT = 3000


class ChatError(RuntimeError):
    """The chat did not take a message (its answer, or why there was none; never the URL)."""


class ChatResource(dg.ConfigurableResource):
    """Posts to one incoming webhook. `webhook_url` empty: no chat; `post` says so."""

    webhook_url: str = ""
    username: str = "coop-infra"
    timeout_s: float = 5.0

    def post(self, text: str) -> None:
        if not self.webhook_url:
            raise ChatError("no chat webhook is configured")
        if not self.webhook_url.startswith(("https://", "http://")):
            raise ChatError("the chat's webhook URL is not an http(s) URL")
        if len(text) > MAX_TEXT:
            text = text[: MAX_TEXT - 1] + "…"
        body = json.dumps({"text": text, "username": self.username}).encode()
        request = urllib.request.Request(
            self.webhook_url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "coop-infra"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                answer.read(4096)
        except urllib.error.HTTPError as err:
            said = err.read(300).decode("utf-8", "replace").strip()
            raise ChatError(
                f"the chat's webhook answered {err.code} {err.reason}"
                + (f": {said}" if said else "")
            ) from None
        except urllib.error.URLError as err:  # its reason names the host at most
            raise ChatError(f"the chat's webhook cannot be reached: {err.reason}") from None
        except OSError as err:
            raise ChatError(f"the chat's webhook cannot be reached: {err}") from None
        except ValueError:  # urllib's message would quote the URL
            raise ChatError("the chat's webhook URL is not an http(s) URL") from None
