"""salt-api (rest_cherrypy, HTTPS) as a client: how SaltResource reaches a salt master over the
network, as an operator's machine reaches the co-op's master.

    api = SaltApi("https://10.127.1.1:8000", user="coop-dagster", password=..., ca_file="ca.pem")
    api.wheel("key.list_all")                          # {"minions": [...], "minions_pre": ...}
    for kind, *rest in api.run(["web-staging-1"], "test.ping", timeout_s=5):
        ...                                            # ("pub", jid, [minions]), ("ret", id, ret)

- Login: `POST /login {username, password, eauth}` gives a token (a salt-api session), sent as
  `X-Auth-Token`. Sessions live in salt-api's memory: after its restart (or the session's expiry)
  the api answers 401, and the client logs in again once.
- Runs stream per minion: the client subscribes to `GET /events` (server-sent events; the token in
  the header, never in the URL) BEFORE it publishes the job with `local_async`, then yields each
  `salt/job/<jid>/ret/<minion>` as it arrives. The stream is read in a thread of its own, so a
  quiet bus never blocks the deadline. If the stream breaks (salt-api restarted by a state run),
  the rest of the returns are polled from the master's job cache (`jobs.list_job`) until the
  deadline; a minion that never returns is simply not yielded.
- Keys and the pillar go through the wheel client; several calls can share one request.
- TLS: the api's certificate is verified with `ca_file` on every request (`verify=`:
  REQUESTS_CA_BUNDLE, when set, overrides a Session's own `verify`).

The password never appears in a message, a repr or a log line.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import requests

from resources.cli_runner import ToolError

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
# How long the event stream may take to say it is subscribed (its first line, `retry:`).
SUBSCRIBE_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 1.0


class SaltError(ToolError):
    """The master could not be used, or a minion's answer could not be read."""


class SaltApi:
    """One salt-api endpoint and one eauth account."""

    def __init__(
        self,
        url: str,
        *,
        user: str,
        password: str,
        ca_file: str = "",
        eauth: str = "sharedsecret",
        read_timeout_s: float = READ_TIMEOUT_S,
    ):
        self.url = url.rstrip("/")
        self.user = user
        self._password = password
        self.ca_file = ca_file
        self.eauth = eauth
        self.read_timeout_s = read_timeout_s
        self._session = requests.Session()
        self._token: str | None = None
        self._lock = threading.Lock()
        if not self.url.startswith(("https://", "http://")):
            raise SaltError(f"salt-api URL {url!r}: expected https://ADDRESS:PORT")
        if not user:
            raise SaltError(f"salt-api at {self.url}: no user (api_user) to log in as")
        if not password:
            raise SaltError(
                f"salt-api at {self.url}: no password for user {user!r} (api_password,"
                " e.g. from $INFRA_SALT_API_PASSWORD)"
            )
        if ca_file and not Path(ca_file).is_file():
            raise SaltError(
                f"salt-api at {self.url}: its CA file {ca_file} does not exist (api_ca_file): give"
                " the PEM file of the CA that signed the api's TLS certificate"
            )

    def __repr__(self) -> str:
        return f"SaltApi({self.url!r}, user={self.user!r}, eauth={self.eauth!r})"

    # --- HTTP ---------------------------------------------------------------------------------
    def _verify(self) -> str | bool:
        return self.ca_file or True

    def _http(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        stream: bool = False,
        auth: bool = True,
        read_timeout_s: float | None = None,
    ) -> requests.Response:
        headers = {"Accept": "application/json"}
        if auth and self._token:
            headers["X-Auth-Token"] = self._token
        try:
            return self._session.request(
                method,
                self.url + path,
                json=body,
                headers=headers,
                verify=self._verify(),  # per request: REQUESTS_CA_BUNDLE beats Session.verify
                stream=stream,
                timeout=(CONNECT_TIMEOUT_S, read_timeout_s or self.read_timeout_s),
            )
        except requests.exceptions.SSLError as err:
            trust = (
                f"the CA file {self.ca_file}"
                if self.ca_file
                else "the system's trust store (no api_ca_file given)"
            )
            raise SaltError(
                f"salt-api at {self.url}: its TLS certificate could not be verified with {trust}:"
                f" {_reason(err)}. Give the CA that signed the api's certificate (salt:api:tls"
                " in the master's pillar) as api_ca_file, and check that the certificate names"
                " the address in the URL",
                command=f"{method} {path}",
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise SaltError(
                f"salt-api at {self.url} does not answer (no connection within"
                f" {CONNECT_TIMEOUT_S:g} s): check the address and port, that this machine has a"
                " route to the master, and that salt-api runs there (systemctl status salt-api)",
                command=f"{method} {path}",
            ) from None
        except requests.exceptions.ReadTimeout:
            raise SaltError(
                f"salt-api at {self.url}: {method} {path} got no answer within"
                f" {read_timeout_s or self.read_timeout_s:g} s (is the master overloaded or"
                " stopped? systemctl status salt-master salt-api)",
                command=f"{method} {path}",
            ) from None
        except requests.exceptions.ConnectionError as err:
            raise SaltError(
                f"salt-api at {self.url} is unreachable ({_reason(err)}): check the address and"
                " port, that salt-api runs on the master (systemctl status salt-api) and listens"
                " on that address (rest_cherrypy host/port in /etc/salt/master.d/api.conf)",
                command=f"{method} {path}",
            ) from None

    def login(self, *, wait_s: float = 0.0) -> None:
        """Log in with the eauth account; raises SaltError if refused (never with the password).

        `wait_s`: a master that is (re)starting (salt-api answers 503 "Salt Master is not
        available", or salt-api itself is not listening yet) is waited for that long."""
        self._token = None
        deadline = time.monotonic() + wait_s
        while True:
            try:
                resp = self._http(
                    "POST",
                    "/login",
                    body={"username": self.user, "password": self._password, "eauth": self.eauth},
                    auth=False,
                )
            except SaltError as err:
                if "unreachable" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
                continue
            if resp.status_code == 503 and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            break
        if resp.status_code in (401, 403):
            raise SaltError(
                f"salt-api at {self.url} refused the login for user {self.user!r} (eauth"
                f" {self.eauth}): check the password (api_password) and that the master's"
                f" external_auth lists this user",
                command="POST /login",
            )
        body = _json(resp, f"login at {self.url}")
        try:
            self._token = str(body["return"][0]["token"])
        except (KeyError, IndexError, TypeError):
            raise SaltError(f"salt-api at {self.url}: login gave no token: {body!r:.300}") from None

    def close(self) -> None:
        self._token = None
        self._session.close()

    def lowstate(self, chunks: Sequence[dict[str, Any]]) -> list[Any]:
        """POST chunks of low data to `/` (one request, run in order): their returns, in order.
        Logs in first, and again once if the session is gone (401)."""
        with self._lock:
            for attempt in (1, 2):
                if not self._token:
                    self.login()
                resp = self._http("POST", "/", body=list(chunks))
                if resp.status_code == 401 and attempt == 1:
                    self._token = None  # salt-api restarted, or the session expired
                    continue
                break
        what = ", ".join(f"{c.get('client')} {c.get('fun')}" for c in chunks)
        if resp.status_code == 401:
            raise SaltError(
                f"salt-api at {self.url}: user {self.user!r} may not run {what} (401 after a"
                " fresh login): check the master's external_auth for this user",
                command="POST /",
            )
        body = _json(resp, what)
        ret = body.get("return") if isinstance(body, dict) else None
        if not isinstance(ret, list) or len(ret) != len(chunks):
            raise SaltError(f"salt-api at {self.url}: {what}: unexpected answer {body!r:.300}")
        return ret

    # --- clients ------------------------------------------------------------------------------
    def wheel(self, fun: str, **kwargs: Any) -> Any:
        """One wheel function on the master (keys, pillar_roots, ...): its return."""
        return self.wheel_many([(fun, kwargs)])[0]

    def wheel_many(self, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Several wheel functions in one request: their returns, in order."""
        if not calls:
            return []
        rets = self.lowstate([{"client": "wheel", "fun": fun, **kw} for fun, kw in calls])
        out = []
        for (fun, _), ret in zip(calls, rets, strict=True):
            data = ret.get("data") if isinstance(ret, dict) else None
            if not isinstance(data, dict):
                raise SaltError(f"wheel {fun}: unexpected answer {ret!r:.300}")
            if data.get("success") is False:
                raise SaltError(f"wheel {fun} failed on the master: {data.get('return')!r:.500}")
            out.append(data.get("return"))
        return out

    def runner(self, fun: str, **kwargs: Any) -> Any:
        return self.lowstate([{"client": "runner", "fun": fun, **kwargs}])[0]

    def local_async(
        self,
        tgt: Sequence[str],
        fun: str,
        arg: Sequence[Any] = (),
        kwarg: dict[str, Any] | None = None,
    ) -> tuple[str, list[str]]:
        """Publish `fun` to exactly the minions `tgt` (a list target): (jid, the minions the
        master sent it to: those with an accepted key). ("", []) when none is."""
        low: dict[str, Any] = {
            "client": "local_async",
            "tgt": list(tgt),
            "tgt_type": "list",
            "fun": fun,
            "arg": list(arg),
        }
        if kwarg:
            low["kwarg"] = dict(kwarg)
        pub = self.lowstate([low])[0]
        if not pub:  # no minion matched: nothing was published
            return "", []
        if not isinstance(pub, dict) or "jid" not in pub:
            raise SaltError(f"{fun} on {', '.join(tgt)}: salt-api did not publish it: {pub!r:.300}")
        return str(pub["jid"]), sorted(pub.get("minions") or [])

    def events(self) -> EventStream:
        """The master's event bus (`GET /events`), subscribed once this returns."""
        for attempt in (1, 2):
            with self._lock:
                if not self._token:
                    self.login()
            resp = self._http("GET", "/events", stream=True, read_timeout_s=None)
            if resp.status_code == 401 and attempt == 1:
                resp.close()
                self._token = None
                continue
            if resp.status_code != 200:
                text = resp.text[:300]
                resp.close()
                raise SaltError(
                    f"salt-api at {self.url}: GET /events: HTTP {resp.status_code} {text}"
                )
            return EventStream(resp, self.url)
        raise AssertionError("unreachable")

    def run(
        self,
        tgt: Sequence[str],
        fun: str,
        arg: Sequence[Any] = (),
        kwarg: dict[str, Any] | None = None,
        *,
        timeout_s: float = 30,
    ) -> Iterator[tuple[Any, ...]]:
        """Run `fun` on exactly `tgt`; yield ("pub", jid, minions) once published, then
        ("ret", minion, full_return) as each minion finishes, until all have or `timeout_s`
        passes. A full return is {"ret": ..., "retcode": ..., "success": ..., "jid": ...}."""
        with self.events() as stream:
            jid, minions = self.local_async(tgt, fun, arg, kwarg)
            if not jid:
                return
            yield ("pub", jid, minions)
            deadline = time.monotonic() + timeout_s
            waiting = set(minions)
            prefix = f"salt/job/{jid}/ret/"
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                item = stream.next(timeout_s=left)
                if item is None:
                    break  # the deadline
                if item is EventStream.END:
                    break  # the stream broke: the job cache has the rest
                tag, data = item
                if tag.startswith(prefix) and tag[len(prefix) :] in waiting:
                    minion = tag[len(prefix) :]
                    waiting.discard(minion)
                    yield ("ret", minion, _full_return(jid, data))
        # What the stream did not bring (it broke, or a return came before it was subscribed):
        # the master's job cache, until the deadline.
        while waiting:
            for minion, ret in self._cached_returns(jid, waiting).items():
                waiting.discard(minion)
                yield ("ret", minion, ret)
            if not waiting or time.monotonic() + POLL_INTERVAL_S > deadline:
                break
            time.sleep(POLL_INTERVAL_S)

    def _cached_returns(self, jid: str, minions: set[str]) -> dict[str, dict[str, Any]]:
        try:
            job = self.runner("jobs.list_job", jid=jid)
        except SaltError:
            return {}
        result = job.get("Result") if isinstance(job, dict) else None
        if not isinstance(result, dict):
            return {}
        return {
            m: _full_return(jid, r if isinstance(r, dict) else {"return": r})
            for m, r in sorted(result.items())
            if m in minions
        }


class EventStream:
    """`GET /events`, read line by line in a thread of its own; `next()` waits with a timeout.
    Subscribed once constructed (salt-api connects to the bus before its first line, `retry:`)."""

    END = object()

    def __init__(self, resp: requests.Response, url: str):
        self._resp = resp
        self._url = url
        self._queue: queue.Queue[Any] = queue.Queue()
        self._subscribed = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="salt-api-events", daemon=True)
        self._thread.start()
        if not self._subscribed.wait(SUBSCRIBE_TIMEOUT_S):
            self.close()
            raise SaltError(
                f"salt-api at {url}: the event stream (GET /events) said nothing within"
                f" {SUBSCRIBE_TIMEOUT_S:g} s"
            )

    def _read(self) -> None:
        tag, data = "", []
        try:
            for line in self._resp.iter_lines(chunk_size=None, decode_unicode=True):
                if line.startswith("retry:"):
                    self._subscribed.set()
                elif line.startswith("tag:"):
                    tag = line[4:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    try:
                        event = json.loads("\n".join(data))
                    except ValueError:
                        event = {}
                    body = event.get("data") if isinstance(event, dict) else None
                    self._queue.put((event.get("tag", tag), body if isinstance(body, dict) else {}))
                    tag, data = "", []
        except Exception:  # noqa: BLE001 - closed under it, or the api went away: END says so
            pass
        finally:
            self._subscribed.set()
            self._queue.put(self.END)

    def next(self, timeout_s: float) -> tuple[str, dict[str, Any]] | object | None:
        """The next event (tag, data), END once the stream is over, None after `timeout_s`."""
        try:
            return self._queue.get(timeout=max(timeout_s, 0))
        except queue.Empty:
            return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Wake the reader thread, which is blocked in a read: shut the socket down under it.
        conn = getattr(self._resp.raw, "connection", None) or getattr(
            self._resp.raw, "_connection", None
        )
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._resp.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _full_return(jid: str, data: dict[str, Any]) -> dict[str, Any]:
    """A `salt/job/<jid>/ret/<minion>` event's data as LocalClient's full return."""
    return {
        "ret": data.get("return"),
        "retcode": data.get("retcode"),
        "success": data.get("success"),
        "jid": jid,
    }


def _json(resp: requests.Response, what: str) -> Any:
    if resp.status_code != 200:
        raise SaltError(f"salt-api: {what}: HTTP {resp.status_code}: {_body_text(resp)}")
    try:
        return resp.json()
    except ValueError:
        raise SaltError(f"salt-api: {what}: not JSON: {resp.text[:300]!r}") from None


def _body_text(resp: requests.Response) -> str:
    """The gist of an error page: cherrypy's HTML says it in <p>."""
    text = resp.text
    if "<p>" in text:
        text = text.split("<p>", 1)[1].split("</p>", 1)[0]
    return " ".join(text.split())[:500]


def _reason(err: Exception) -> str:
    """The innermost cause of a requests error, in a few words (its repr is a wall of text)."""
    inner: BaseException | None = err
    while inner is not None and inner.__context__ is not None:
        inner = inner.__context__
    reason = inner if inner is not None else err
    text = str(reason) or type(reason).__name__
    for noise in ("<urllib3.connection.HTTPSConnection object at", "<urllib3.connection.HTTP"):
        if noise in text and ">:" in text:
            text = text.split(">:", 1)[1]
    return " ".join(text.split())[:300]
