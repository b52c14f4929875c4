"""SaltResource: the salt master, with typed results, through one of two transports.

- salt-api (`api_url` set): HTTPS to rest_cherrypy with an eauth account of its own, as an
  operator's machine reaches the co-op's master (resources/salt_api.py; the server side is
  salt/salt/api.sls). Runs stream per minion from the api's event stream; keys and the pillar go
  through the wheel client, so nothing needs the master's filesystem.
- a local master config FILE (`master_config`): salt's Python API in a worker process of the
  resource's own (`resources/salt_worker.py`, started on first use, stopped when the run ends):
  importing salt replaces the interpreter's logger class and excepthook, which breaks Dagster's
  loggers. The worker holds one `LocalClient` and one `WheelClient` and streams each minion's
  return back as it arrives. Dagster beside the master on the co-op's support server uses it.

Which master a site has (this machine, a lab, a cloud) is `topology/sites.py`'s business.

    salt = SaltResource(api_url="https://10.127.1.1:8000", api_user="dagster",
                        api_password=dg.EnvVar("INFRA_SALT_API_PASSWORD"), api_ca_file="ca.pem")
    salt = SaltResource(master_config="/etc/salt/master")     # the master on this server
    salt.list_keys()                              # KeyList(accepted=..., pending=..., ...)
    salt.accept_keys(minion_ids=["web-staging-1"])
    salt.ping(minions=["web-staging-1"])          # PingResult(answered=..., silent=...)
    run = salt.apply(minions=[...], sls=["web"], test=True)   # ApplyResult
    run.failed_states()                           # [StateResult(minion, state_id, ...), ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.lab_link import listening, read_secret_file, route_problem
from resources.salt_api import SaltApi, SaltError

# The master beside Dagster: `master_config`, else this setting, else the support server's own.
MASTER_CONFIG_ENV = "INFRA_SALT_MASTER_CONFIG"
DEFAULT_MASTER_CONFIG = Path("/etc/salt/master")

__all__ = ["SaltError", "SaltResource"]  # and the typed results below

LogSink = Callable[[str], Any]

API_ENV = {
    "api_url": "INFRA_SALT_API_URL",
    "api_user": "INFRA_SALT_API_USER",
    "api_password": "INFRA_SALT_API_PASSWORD",
    "api_ca_file": "INFRA_SALT_API_CA_FILE",
}
# Characters that make a key id a glob for the wheel's key functions: refused, never sent.
GLOB_CHARS = set("*?[]!,")


# --- typed results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyList:
    accepted: tuple[str, ...]
    pending: tuple[str, ...]
    rejected: tuple[str, ...]
    denied: tuple[str, ...]

    def all(self) -> set[str]:
        return {*self.accepted, *self.pending, *self.rejected, *self.denied}

    def state_of(self, minion_id: str) -> str:
        for name in ("accepted", "pending", "rejected", "denied"):
            if minion_id in getattr(self, name):
                return name
        return "no key"


@dataclass(frozen=True)
class PingResult:
    answered: tuple[str, ...]
    silent: tuple[str, ...]  # targeted, but no answer within the timeout
    duration_s: float

    @property
    def ok(self) -> bool:
        return not self.silent


@dataclass(frozen=True)
class StateResult:
    """One state of a `state.apply` on one minion, as salt reports it."""

    minion: str
    state_id: str  # the ID in the SLS file (`__id__`)
    function: str  # `file.managed`
    name: str  # the state's name argument (often a path)
    sls: str
    result: bool | None  # None: test=True, would change
    changes: dict[str, Any]
    comment: str
    duration_ms: float
    run_num: int

    @property
    def failed(self) -> bool:
        return self.result is False

    @property
    def changed(self) -> bool:
        return bool(self.changes) or self.result is None

    @property
    def label(self) -> str:
        """How a person names the state: `web: nginx-config (file.managed)`."""
        return f"{self.sls}: {self.state_id} ({self.function})"

    @property
    def detail(self) -> str:
        """The comment's first line, and for a command its last lines of output: the why."""
        text = _first_line(self.comment)
        output = ""
        if isinstance(self.changes, dict):
            output = str(self.changes.get("stderr") or self.changes.get("stdout") or "")
        tail = [line for line in output.splitlines() if line.strip()][-3:]
        return " | ".join([text, *tail]) if tail else text


@dataclass(frozen=True)
class MinionRun:
    """What one minion answered to a state run."""

    minion: str
    returned: bool  # False: no answer within the timeout
    states: tuple[StateResult, ...] = ()
    errors: tuple[str, ...] = ()  # render or compile errors: no state ran
    retcode: int | None = None

    @property
    def ok(self) -> bool:
        return self.returned and not self.errors and not any(s.failed for s in self.states)


@dataclass(frozen=True)
class ApplyResult:
    sls: tuple[str, ...]  # empty for a highstate
    test: bool
    minions: dict[str, MinionRun]
    duration_s: float
    jid: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.minions) and all(run.ok for run in self.minions.values())

    def states(self) -> list[StateResult]:
        return [s for run in self.minions.values() for s in run.states]

    def failed_states(self) -> list[StateResult]:
        return [s for s in self.states() if s.failed]

    def changed_states(self) -> list[StateResult]:
        return [s for s in self.states() if s.changed and not s.failed]

    def problems(self) -> list[str]:
        """Every failure, one line each, naming the minion and the state."""
        lines = []
        for run in self.minions.values():
            if not run.returned:
                lines.append(f"{run.minion}: did not answer (is the minion running and accepted?)")
            lines += [f"{run.minion}: {error}" for error in run.errors]
            lines += [
                f"{run.minion}: state {s.label} failed: {s.detail}" for s in run.states if s.failed
            ]
        return lines


@dataclass(frozen=True)
class PillarWrite:
    root: Path  # on the master (through salt-api: a path on the master's machine)
    written: tuple[str, ...]  # minion ids whose pillar file changed
    unchanged: tuple[str, ...]
    removed: tuple[str, ...]  # pillar files of minions no longer given


# --- transports: what SaltResource needs from a master -------------------------------------------
#   wheel(fun, kwargs) -> the wheel function's return
#   run(request) -> events {"event": "pub", "jid"} / {"event": "ret", "minion", "ret": full return}
#                   / {"event": "done"} (a minion that does not return in time is not in it)


class _Worker:
    """The salt worker process (resources/salt_worker.py): one request at a time."""

    def __init__(self, config: Path):
        self.config = config
        self.stderr: deque[str] = deque(maxlen=40)
        self.lock = threading.Lock()
        self.next_id = 1
        # Popen, not run_cli: the worker keeps running, answering one request after another.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resources.salt_worker", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        first = self._read()
        if first is None or first.get("event") != "ready":
            self.close()
            raise SaltError(f"the salt API could not start on {config}:\n{self.tail()}")

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def tail(self) -> str:
        time.sleep(0.1)  # let the last lines of a dying worker arrive
        return "\n".join(f"  {line}" for line in self.stderr) or "  (no output)"

    def _read(self) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def request(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Send one request; yield its events up to (and including) `done` or `error`."""
        with self.lock:
            rid = self.next_id
            self.next_id += 1
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({**payload, "id": rid}) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                raise SaltError(f"the salt API process has stopped:\n{self.tail()}") from None
            while True:
                event = self._read()
                if event is None:
                    raise SaltError(f"the salt API process has stopped:\n{self.tail()}")
                yield event
                if event.get("event") in ("done", "error"):
                    return

    def wheel(self, fun: str, kwargs: Mapping[str, Any]) -> Any:
        return _value(self.request({"op": "wheel", "fun": fun, "kwargs": dict(kwargs)}))

    def run(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self.request({"op": "run", **request})

    # Interrupted in the middle of an answer, the worker is out of step: replace it.
    restart_when_interrupted = True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.proc.kill()
                self.proc.wait()


class _ApiTransport:
    """salt-api as a transport (resources/salt_api.py)."""

    restart_when_interrupted = False  # a broken-off run only closes its own event stream

    def __init__(self, api: SaltApi):
        self.api = api

    def wheel(self, fun: str, kwargs: Mapping[str, Any]) -> Any:
        return self.api.wheel(fun, **kwargs)

    def run(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        items = self.api.run(
            request["tgt"],
            request["fun"],
            request.get("arg", []),
            request.get("kwarg") or {},
            timeout_s=float(request.get("timeout") or 30),
        )
        try:
            for item in items:
                if item[0] == "pub":
                    yield {"event": "pub", "jid": item[1], "minions": item[2]}
                else:
                    yield {"event": "ret", "minion": item[1], "ret": item[2]}
        finally:
            items.close()  # broken off: its event stream closes now, not when collected
        yield {"event": "done", "value": None}

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        self.api.close()


# --- the resource ----------------------------------------------------------------------------


class SaltResource(dg.ConfigurableResource):
    """The salt master that manages the site's hosts: keys, pings, state runs, the pillar.

    `api_url` set: through salt-api (HTTPS, eauth). Else a local master config file."""

    master_config: str = Field(
        default="",
        description="The salt master's config FILE (the local-master transport). Empty, with no"
        " api_url: $INFRA_SALT_MASTER_CONFIG, else /etc/salt/master (the support server's own;"
        " a lab's master is reached through salt-api, which infra_assets/site_resources.py"
        " sets).",
    )
    api_url: str = Field(
        default="",
        description="salt-api's URL, https://ADDRESS:PORT (rest_cherrypy; salt/salt/api.sls)."
        " Set: SaltResource talks to the master through it only.",
    )
    api_user: str = Field(default="", description="The eauth user salt-api logs Dagster in as.")
    api_password: str = Field(
        default="",
        repr=False,
        description="That user's password (the master's sharedsecret): set it with dg.EnvVar"
        " (INFRA_SALT_API_PASSWORD), never in plain config.",
    )
    api_ca_file: str = Field(
        default="",
        description="PEM file of the CA that signed salt-api's TLS certificate. Empty: the"
        " system's trust store.",
    )
    api_password_file: str = Field(
        default="",
        description="A file (mode 600, outside git) holding that password, read when the"
        " resource connects: the lab's way (its throwaway secrets), so no value is in config.",
    )
    api_route_device: str = Field(
        default="",
        description="The network device the route to salt-api's address must go through,"
        " checked (`ip -j route get`) before anything is sent: the lab's link, so that nothing"
        " for a lab address ever leaves the machine. Empty: no check.",
    )
    api_eauth: str = Field(default="sharedsecret", description="salt-api's eauth backend.")
    api_ready_wait_s: float = Field(
        default=120.0,
        description="How long to wait for a master that is starting (salt-api answers 503, or"
        " is not listening yet) before giving up.",
    )
    timeout_s: int = Field(
        default=600, description="How long a state run may take before it counts as failed."
    )

    _worker: _Worker | _ApiTransport | None = PrivateAttr(default=None)
    _opts: dict[str, Any] | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> SaltResource:
        """The resource with each salt-api field whose environment variable is set taken from it
        (INFRA_SALT_API_URL, INFRA_SALT_API_USER, INFRA_SALT_API_PASSWORD,
        INFRA_SALT_API_CA_FILE), as dg.EnvVar so the password is never shown; none set: the
        local master (master_config)."""
        return cls(**{k: dg.EnvVar(v) for k, v in API_ENV.items() if os.environ.get(v)})

    # --- configuration --------------------------------------------------------------------------
    @property
    def through_api(self) -> bool:
        return bool(self.api_url)

    def where(self) -> str:
        """The master, as a message names it: salt-api's URL or the config file."""
        return f"salt-api at {self.api_url}" if self.through_api else str(self.config_path())

    def config_path(self) -> Path:
        if self.through_api:
            raise SaltError(
                f"the salt master is reached through salt-api at {self.api_url}: it has no"
                " config file here"
            )
        if self.master_config:
            return Path(self.master_config).absolute()
        env = os.environ.get(MASTER_CONFIG_ENV)
        return Path(env).absolute() if env else DEFAULT_MASTER_CONFIG

    def _connect(self) -> _Worker | _ApiTransport:
        if self._worker is not None and self._worker.alive():
            return self._worker
        if self.through_api:
            if self.api_route_device:
                _check_route(self.api_url, self.api_route_device)
            api = SaltApi(
                self.api_url,
                user=self.api_user,
                password=self.api_password or _read_password(self.api_password_file),
                ca_file=self.api_ca_file,
                eauth=self.api_eauth,
            )
            # A wrong password or an unreachable api is said here, once; a master still
            # starting (a new site, a restart after a config change) is waited for.
            api.login(wait_s=self.api_ready_wait_s)
            self._worker = _ApiTransport(api)
            return self._worker
        path = self.config_path()
        if not path.is_file():
            raise SaltError(
                f"no salt master config at {path}: set $INFRA_SALT_MASTER_CONFIG or the"
                " resource's master_config (or salt-api: $INFRA_SALT_API_URL)"
            )
        worker = _Worker(path)
        opts = _value(worker.request({"op": "opts"}))
        host = opts.get("interface") or "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        if not listening(host, int(opts.get("ret_port") or 4506), timeout_s=2):
            worker.close()
            raise SaltError(
                f"the salt master of {path} is not running (nothing answers on"
                f" {host}:{opts.get('ret_port')}): start it (systemctl start salt-master)"
            )
        self._worker, self._opts = worker, opts
        return worker

    def close(self) -> None:
        """Stop the salt worker process, or log out of salt-api (both again on next use)."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def __enter__(self) -> SaltResource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def opts(self) -> dict[str, Any]:
        """The master's effective settings, as salt reads its config (a subset: paths, ports,
        interface, auto_accept, file_roots, pillar_roots). The local master only."""
        if self.through_api:
            raise SaltError(
                f"the master's settings are not readable through salt-api ({self.api_url})"
            )
        self._connect()
        assert self._opts is not None
        return self._opts

    # --- keys -------------------------------------------------------------------------------------
    def list_keys(self) -> KeyList:
        raw = self._wheel("key.list_all")
        return KeyList(
            accepted=tuple(sorted(raw.get("minions", []))),
            pending=tuple(sorted(raw.get("minions_pre", []))),
            rejected=tuple(sorted(raw.get("minions_rejected", []))),
            denied=tuple(sorted(raw.get("minions_denied", []))),
        )

    def accept_keys(self, *, minion_ids: Sequence[str]) -> list[str]:
        """Accept the pending keys of exactly these ids (no globbing). Returns those accepted."""
        pending = set(self.list_keys().pending)
        ids = sorted(set(_exact_ids(minion_ids)) & pending)
        if ids:
            # Only pending keys move (include_rejected/include_denied off); ids hold no glob.
            self._wheel("key.accept", match=ids, include_rejected=False, include_denied=False)
        return ids

    def reject_keys(self, *, minion_ids: Sequence[str], include_accepted: bool = True) -> list[str]:
        """Reject the keys of exactly these ids: pending ones, and accepted ones too unless
        `include_accepted` is False (salt's key.reject leaves an accepted key alone without it,
        and still says "success"). Returns the ids rejected."""
        keys = self.list_keys()
        movable = set(keys.pending) | (set(keys.accepted) if include_accepted else set())
        ids = sorted(set(_exact_ids(minion_ids)) & movable)
        if ids:
            self._wheel("key.reject", match=ids, include_accepted=include_accepted)
        return ids

    def delete_keys(
        self,
        *,
        minion_ids: Sequence[str],
        states: Sequence[str] = ("accepted", "pending", "rejected", "denied"),
    ) -> list[str]:
        """Delete the keys of exactly these ids, in these states only (default: all of them;
        `states=["denied"]` drops an impostor's key and keeps the accepted one)."""
        keys = self.list_keys()
        wanted = set(_exact_ids(minion_ids))
        match = {
            name: sorted(wanted & set(getattr(keys, state)))
            for state, name in [
                ("accepted", "minions"),
                ("pending", "minions_pre"),
                ("rejected", "minions_rejected"),
                ("denied", "minions_denied"),
            ]
            if state in states
        }
        match = {k: v for k, v in match.items() if v}
        if match:
            # key.delete_dict: exactly these ids in exactly these states (key.delete takes a
            # glob over every state).
            self._wheel("key.delete_dict", match=match)
        return sorted({i for ids in match.values() for i in ids})

    def key_fingers(self, *, minion_ids: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
        """The fingerprints of the keys the master holds (`key.finger`), by state then id
        (states as in KeyList: accepted, pending, rejected, denied); `minion_ids`: only
        these. Salt 3008.4's master hashes the whole PEM text here (as `salt-key -F` does),
        BEGIN/END lines included; a minion's `key.finger` and its `master_finger` check hash
        the body lines only: the same key has two fingerprints (measured)."""
        match: Any = list(_exact_ids(minion_ids)) if minion_ids is not None else "*"
        if match == []:
            return {}
        raw = self._wheel("key.finger", match=match) or {}
        names = {
            "minions": "accepted",
            "minions_pre": "pending",
            "minions_rejected": "rejected",
            "minions_denied": "denied",
        }
        return {names[k]: dict(v) for k, v in raw.items() if k in names and v}

    # --- running functions ------------------------------------------------------------------------
    def ping(self, *, minions: Sequence[str], timeout_s: float = 5) -> PingResult:
        started = time.monotonic()
        answers = self.call(
            minions=minions, fun="test.ping", timeout_s=timeout_s, gather_job_timeout_s=1
        )
        answered = tuple(sorted(m for m, ret in answers.items() if ret is True))
        silent = tuple(sorted(set(minions) - set(answered)))
        return PingResult(answered, silent, time.monotonic() - started)

    def wait_for(
        self, *, minions: Sequence[str], timeout_s: float = 30, log: LogSink | None = None
    ) -> PingResult:
        """Ping until every minion answers or `timeout_s` passes (a minion whose key was just
        accepted needs a moment to authenticate again)."""
        started = time.monotonic()
        said = -10.0
        while True:
            result = self.ping(minions=minions, timeout_s=1)
            elapsed = time.monotonic() - started
            if result.ok or elapsed > timeout_s:
                return PingResult(result.answered, result.silent, elapsed)
            if log and elapsed - said >= 5:
                log(f"waiting for {', '.join(result.silent)} to answer ({elapsed:.0f} s)")
                said = elapsed
            time.sleep(0.5)

    def call(
        self,
        *,
        minions: Sequence[str],
        fun: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        timeout_s: float = 30,
        gather_job_timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Run an execution function on exactly these minions: their returns, by id (a minion
        that does not answer is absent)."""
        out: dict[str, Any] = {}
        for minion, ret in self._iter(
            minions, fun, args, kwargs, timeout_s, gather_job_timeout_s=gather_job_timeout_s
        ):
            if isinstance(ret, dict) and "ret" in ret:
                out[minion] = ret["ret"]
        return out

    def apply(
        self,
        *,
        minions: Sequence[str],
        sls: Sequence[str] = (),
        test: bool = False,
        pillar: Mapping[str, Any] | None = None,
        log: LogSink | None = None,
        redact: Sequence[str] = (),
        sync_states: bool = False,
    ) -> ApplyResult:
        """`state.apply` of `sls` (all of them in one run; empty: the highstate) on `minions`.

        Each minion's result is logged as it arrives. `redact` values never reach the log or
        the result (a secret in a state's comment or diff shows as ***). `sync_states`: the
        custom state modules (`_states/`) are synced to the minions first, as a highstate does.
        """
        kwargs: dict[str, Any] = {"test": bool(test), "queue": True}
        if pillar:
            kwargs["pillar"] = dict(pillar)
        if sync_states:
            kwargs["sync_mods"] = "states"
        args = [",".join(sls)] if sls else []
        return self._run_states(minions, "state.apply", args, kwargs, sls, test, log, redact)

    def highstate(
        self,
        *,
        minions: Sequence[str],
        test: bool = False,
        log: LogSink | None = None,
        redact: Sequence[str] = (),
    ) -> ApplyResult:
        kwargs = {"test": bool(test), "queue": True}
        return self._run_states(minions, "state.highstate", [], kwargs, (), test, log, redact)

    def show_sls(self, *, minion: str, sls: Sequence[str], timeout_s: float = 60) -> dict:
        """The states `sls` renders to on `minion` with its pillar (`state.show_sls`), by ID.
        Raises SaltError with salt's render errors."""
        ret = self.call(
            minions=[minion], fun="state.show_sls", args=[",".join(sls)], timeout_s=timeout_s
        )
        if minion not in ret:
            raise SaltError(f"{minion} did not answer state.show_sls {','.join(sls)}")
        rendered = ret[minion]
        if not isinstance(rendered, dict):
            raise SaltError(f"{minion}: {','.join(sls)} does not render:\n" + _errors(rendered))
        return rendered

    def pillar(self, *, minion: str, unmask: bool = False, timeout_s: float = 30) -> dict:
        """The pillar the master compiles for `minion`, asked from the minion itself
        (`pillar.items`). Salt masks every value as ********** unless `unmask`."""
        kwargs = {"unmask": True} if unmask else {}
        ret = self.call(minions=[minion], fun="pillar.items", kwargs=kwargs, timeout_s=timeout_s)
        if minion not in ret:
            raise SaltError(f"{minion} did not answer pillar.items")
        return ret[minion]

    # --- the pillar -------------------------------------------------------------------------------
    def pillar_root(self) -> Path:
        """The master's first pillar root for base (a path on the master's machine)."""
        if self.through_api:
            return Path(self._api_pillar_tree()[0])
        roots = self.opts().get("pillar_roots", {}).get("base") or []
        if not roots:
            raise SaltError(f"{self.config_path()}: the master has no pillar_roots for base")
        return Path(roots[0])

    def write_pillar(self, *, pillars: Mapping[str, Mapping[str, Any]]) -> PillarWrite:
        """Make the master's pillar exactly `pillars`: one file per minion and a top file that
        gives each minion its own file and nothing else.

        Local master: files readable by root only, stale ones deleted. Through salt-api: the
        wheel client's `pillar_roots.write` (nothing needs the master's filesystem); it cannot
        delete, so a stale minion's file is emptied (no data, and no top entry points at it);
        the files get the master's umask, inside the pillar root the salt.master state makes
        0700."""
        if not self.through_api:
            return write_pillar_tree(self.pillar_root(), pillars)
        root, existing = self._api_pillar_tree()
        texts = pillar_texts(pillars)
        current = dict(
            zip(
                existing,
                self._wheel_many(
                    [("pillar_roots.read", {"path": f"hosts/{name}.sls"}) for name in existing]
                ),
                strict=True,
            )
        )

        def content(read: Any) -> str | None:  # pillar_roots.read: [{full path: text}] or []
            return next(iter(read[0].values()), None) if read else None

        writes, written, unchanged = [], [], []
        for minion, text in texts.items():
            if content(current.get(minion)) == text:
                unchanged.append(minion)
            else:
                written.append(minion)
                writes.append(("pillar_roots.write", {"path": f"hosts/{minion}.sls", "data": text}))
        removed = [m for m in existing if m not in texts and content(current[m]) != EMPTIED_PILLAR]
        writes += [
            ("pillar_roots.write", {"path": f"hosts/{m}.sls", "data": EMPTIED_PILLAR})
            for m in removed
        ]
        # The top file last: it never names a file that is not written yet.
        writes.append(("pillar_roots.write", {"path": "top.sls", "data": pillar_top(pillars)}))
        for (_, kw), answer in zip(writes, self._wheel_many(writes), strict=True):
            if not str(answer).startswith("Wrote data to file"):
                raise SaltError(f"{self.where()}: pillar_roots.write {kw['path']}: {answer}")
        return PillarWrite(Path(root), tuple(written), tuple(unchanged), tuple(removed))

    # --- internals -----------------------------------------------------------------------------
    def _wheel(self, fun: str, **kwargs: Any) -> Any:
        return self._connect().wheel(fun, kwargs)

    def _wheel_many(self, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
        transport = self._connect()
        if isinstance(transport, _ApiTransport):
            return transport.api.wheel_many(calls)  # one request
        return [transport.wheel(fun, kwargs) for fun, kwargs in calls]

    def _api_pillar_tree(self) -> tuple[str, list[str]]:
        """(the master's first pillar root for base, the minion ids of its hosts/*.sls)."""
        tree = self._wheel("pillar_roots.list_env", saltenv="base") or {}
        if not tree:
            raise SaltError(f"{self.where()}: the master has no pillar_roots for base")
        root = next(iter(tree))
        hosts = (tree[root] or {}).get("hosts") or {}
        return root, sorted(
            name.removesuffix(".sls")
            for name, kind in hosts.items()
            if name.endswith(".sls") and kind == "f"
        )

    def _iter(
        self,
        minions: Sequence[str],
        fun: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        timeout_s: float,
        on_jid: Callable[[str], None] | None = None,
        gather_job_timeout_s: float | None = None,
    ) -> Iterator[tuple[str, Any]]:
        """Run `fun` on exactly `minions`; yield (minion, full return) as each arrives. A minion
        that does not answer in time yields nothing (the local master: {"failed": True})."""
        if not minions:
            return
        request = {
            "tgt": list(minions),
            "fun": fun,
            "arg": list(args),
            "kwarg": dict(kwargs or {}),
            "timeout": timeout_s,
            "gather_job_timeout": gather_job_timeout_s,
        }
        transport = self._connect()
        finished = False
        events = transport.run(request)
        try:
            for event in events:
                kind = event.get("event")
                finished = kind in ("done", "error")
                if kind == "pub" and on_jid:
                    on_jid(event["jid"])
                elif kind == "ret":
                    yield event["minion"], event["ret"]
                elif kind == "error":
                    raise SaltError(f"{fun} on {', '.join(minions)}: {event.get('message')}")
        finally:
            if not finished:
                close = getattr(events, "close", None)
                if close:
                    close()  # the api's event stream goes with it
                if transport.restart_when_interrupted:
                    transport.close()
                    self._worker = None

    def _run_states(
        self,
        minions: Sequence[str],
        fun: str,
        args: list[Any],
        kwargs: dict[str, Any],
        sls: Sequence[str],
        test: bool,
        log: LogSink | None,
        redact: Sequence[str],
    ) -> ApplyResult:
        say = log or dg.get_dagster_logger("salt").info
        secrets = [s for s in redact if s]
        started = time.monotonic()
        runs: dict[str, MinionRun] = {}
        jid: list[str] = []
        what = f"{fun} {','.join(sls)}".strip() + (" test=True" if test else "")
        say(f"{what} on {', '.join(minions)}")
        try:
            for minion, ret in self._iter(
                minions, fun, args, kwargs, self.timeout_s, on_jid=jid.append
            ):
                if minion not in minions:
                    continue
                runs[minion] = take_minion_return(minion, ret, test=test, say=say, redact=secrets)
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
            # A cancelled run: stop the job on the minions too, then let the cancellation go on.
            if jid:
                try:
                    self.call(minions=minions, fun="saltutil.term_job", args=[jid[0]], timeout_s=5)
                except Exception:  # noqa: BLE001 - the cancellation matters more
                    pass
            raise
        for minion in minions:
            runs.setdefault(minion, MinionRun(minion, returned=False))
        return ApplyResult(
            tuple(sls), test, runs, time.monotonic() - started, jid[0] if jid else ""
        )


EMPTIED_PILLAR = "#!json\n{}\n"  # a stale minion's file, through salt-api (no wheel deletes)


def pillar_texts(pillars: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Each minion's pillar file: JSON (no Jinja), by minion id."""
    return {
        minion: "#!json\n" + json.dumps(data, indent=2, sort_keys=True) + "\n"
        for minion, data in sorted(pillars.items())
    }


def pillar_top(pillars: Mapping[str, Mapping[str, Any]]) -> str:
    """The pillar's top file: each minion gets `hosts.<its id>` and nothing else."""
    # Each minion id is a host name (a DNS label: no glob characters), matched exactly.
    top = [
        "# Generated by coop-infra from the topology: each minion gets its own file only.",
        "base:",
    ]
    for minion in sorted(pillars):
        top += [f"  '{minion}':", f"    - hosts.{minion}"]
    return "\n".join(top) + "\n"


def write_pillar_tree(root: Path, pillars: Mapping[str, Mapping[str, Any]]) -> PillarWrite:
    """Write `pillars` under `root`: `top.sls` and `hosts/<minion>.sls` (JSON, no Jinja), 0600."""
    root = Path(root)
    hosts = root / "hosts"
    hosts.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    os.chmod(hosts, 0o700)
    written, unchanged = [], []
    for minion, text in pillar_texts(pillars).items():
        if _write_if_changed(hosts / f"{minion}.sls", text):
            written.append(minion)
        else:
            unchanged.append(minion)
    _write_if_changed(root / "top.sls", pillar_top(pillars))
    removed = []
    for stale in sorted(hosts.glob("*.sls")):
        if stale.stem not in pillars:
            stale.unlink()
            removed.append(stale.stem)
    return PillarWrite(root, tuple(written), tuple(unchanged), tuple(removed))


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text() == text:
            os.chmod(path, 0o600)
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
    return True


def _value(events: Iterator[dict[str, Any]]) -> Any:
    for event in events:
        if event.get("event") == "done":
            return event.get("value")
        if event.get("event") == "error":
            raise SaltError(str(event.get("message")))
    raise SaltError("the salt API process gave no answer")


def _exact_ids(minion_ids: Sequence[str]) -> list[str]:
    """Minion ids for the wheel's key functions, which take globs: an id with a glob character
    is refused rather than matched."""
    bad = sorted(i for i in minion_ids if not i or set(i) & GLOB_CHARS)
    if bad:
        raise SaltError(f"not a minion id (glob characters or empty): {', '.join(map(repr, bad))}")
    return list(minion_ids)


def _read_password(path: str) -> str:
    try:
        return read_secret_file(path)
    except OSError as err:
        raise SaltError(
            f"salt-api's password file {path} cannot be read ({err.strerror}): on the lab, run"
            " `infra lab up`; elsewhere set the salt resource's api_password"
        ) from None


def _check_route(url: str, device: str) -> None:
    """Refuse to talk to `url` unless its route goes through `device` (the lab's link)."""
    problem = route_problem(url, device)
    if problem:
        raise SaltError(f"salt-api at {url}: {problem}")


# --- parsing salt's answers ------------------------------------------------------------------


def parse_state_return(minion: str, ret: Any) -> tuple[list[StateResult], list[str]]:
    """Salt's `state.apply` return for one minion: (states, errors).

    A dict keyed `<function-module>_|-<id>_|-<name>_|-<function>` is a run; a list of strings
    is a render or compile error (no state ran).
    """
    if isinstance(ret, list):
        return [], [str(e) for e in ret]
    if isinstance(ret, str):
        return [], [ret]
    if not isinstance(ret, dict):
        return [], [f"unexpected answer: {ret!r}"]
    states = []
    for key, value in ret.items():
        if not isinstance(value, dict):
            return [], [f"unexpected answer for {key}: {value!r}"]
        parts = key.split("_|-")
        module = parts[0] if parts else ""
        function = f"{module}.{parts[-1]}" if len(parts) >= 4 else key
        states.append(
            StateResult(
                minion=minion,
                state_id=value.get("__id__") or (parts[1] if len(parts) >= 2 else key),
                function=function,
                name=str(value.get("name", parts[2] if len(parts) >= 3 else "")),
                sls=str(value.get("__sls__", "")),
                result=value.get("result"),
                changes=value.get("changes") or {},
                comment=_comment(value.get("comment", "")),
                duration_ms=float(value.get("duration", 0) or 0),
                run_num=int(value.get("__run_num__", 0) or 0),
            )
        )
    states.sort(key=lambda s: s.run_num)
    return states, []


def take_minion_return(
    minion: str, ret: Any, *, test: bool, say: LogSink, redact: Sequence[str] = ()
) -> MinionRun:
    """One minion's answer to a state run: scrubbed of every `redact` value first, parsed, and
    said in the log (a summary, then each failed or changed state, then any error)."""
    run = _minion_run(minion, _scrub(ret, [s for s in redact if s]))
    say(_summary(run, test))
    for state in sorted(run.states, key=lambda s: s.run_num):
        if state.failed or state.changed:
            verdict = "FAILED" if state.failed else ("would change" if test else "changed")
            say(f"  {verdict}: {state.label}: {state.detail}")
    for error in run.errors:
        say(f"  ERROR: {error}")
    return run


def _minion_run(minion: str, ret: Any) -> MinionRun:
    if not isinstance(ret, dict) or (ret.get("failed") is True and "ret" not in ret):
        return MinionRun(minion, returned=False)
    states, errors = parse_state_return(minion, ret.get("ret"))
    return MinionRun(minion, True, tuple(states), tuple(errors), ret.get("retcode"))


def _comment(comment: Any) -> str:
    if isinstance(comment, list):
        return "\n".join(str(c) for c in comment)
    return str(comment)


def _scrub(value: Any, secrets: Sequence[str]) -> Any:
    """`value` with every secret replaced by `***`, in keys too (a state's key holds its name,
    which for a command is the command line). `secrets` longest first, with their encoded
    forms (`Secrets.values()`)."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, secrets) for v in value]
    return value


def _summary(run: MinionRun, test: bool) -> str:
    if not run.returned:
        return f"{run.minion}: no answer"
    if run.errors:
        return f"{run.minion}: {len(run.errors)} error(s), no state ran"
    failed = sum(s.failed for s in run.states)
    changed = sum(s.changed and not s.failed for s in run.states)
    seconds = sum(s.duration_ms for s in run.states) / 1000
    verb = "would change" if test else "changed"
    return (
        f"{run.minion}: {len(run.states)} states, {changed} {verb}, {failed} failed"
        f" ({seconds:.1f} s)"
    )


def _first_line(text: str) -> str:
    lines = [line for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[0] + (" ..." if len(lines) > 1 else "")


def _errors(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(f"  {v}" for v in value)
    return f"  {value}"
