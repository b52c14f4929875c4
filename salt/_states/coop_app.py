"""The release of one app on a web host, blue/green: the `coop_app.released` state.

salt/app/init.sls declares it with the release from the pillar; the `release/<environment>/<app>`
assets apply that state (state.apply app pillar={"release": {...}}). Salt syncs this module to
the minions (`saltutil.sync_states`; a highstate does it too). In order, each step checking
before it acts:

 1. ready: the host's nginx runs and podman is configured (the `web` state did both);
 2. certificate, for an app with a domain in this environment: certbot over ACME's HTTP-01,
    unless a certificate from the same directory is valid for 30 days more;
 3. pull <registry>/<app>@<digest> with the registry's pull account and CA (from `web`);
 4. release phase: the image's release command (label org.coop-infra.release, from Procfile's
    `release:`) in a one-off container of the new image, with the app's environment, once per
    release (the asset asks it of the environment's first host, and never for a rollback). If it
    fails, nothing else happens: the live release keeps serving and the run fails with its output;
 5. start the new container in the slot the live release is not in (each app has two loopback
    ports, `apps.<app>.slots`), hardened (see `_run_argv`);
 6. healthy: its health path answers 200 within the timeout. A container that exits fails the
    release at once, with its exit code and last lines; either way the new container goes and
    nothing else is touched. A worker (`kind: worker`: no port, no site) instead stays up
    `up_s` seconds, and steps 7 and the wait of 8 are not there;
 7. the app's nginx site with the upstream on the new container (/etc/nginx/conf.d/app-<app>.conf,
    checked by `nginx -t` before it replaces the old one), reload, and wait until nginx serves
    the new release (its X-Coop-Release header);
 8. nginx's workers from before the reload finish their requests, then the old container stops:
    it stays, stopped, with its image, as the release to roll back to;
 9. record the live and the previous release (/var/lib/coop/releases/<app>.json), and remove
    this app's older images.

Applying the live release again changes nothing. A rollback is a release of the previous digest,
whose image is still on the host. The state's `changes` list each step that changed something,
with its seconds (the release asset's metadata reads them); a failure's comment names the step
and carries its output. Values from the pillar never pass through a shell: each command is an
argument vector.
"""

import hashlib
import hmac
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

DIGEST_RE = re.compile(r"\Asha256:[0-9a-f]{64}\Z")
SHA_RE = re.compile(r"\A([0-9a-f]{40})?\Z")
RECORDS = "/var/lib/coop/releases"
NGINX_PID = "/run/nginx.pid"
CONF_DIR = "/etc/nginx/conf.d"
ACME_WEBROOT = "/var/lib/coop/acme"
ACME_CA = "/etc/coop/acme/ca.pem"
AUTH_FILE = "/etc/containers/auth.json"
RELEASE_LABEL = "org.coop-infra.release"
# podman reads /etc/containers/containers.conf (salt/web) where it always does; pulls
# authenticate with the registry's pull account.
PODMAN_ENV = {"REGISTRY_AUTH_FILE": AUTH_FILE}
LOG_LINES = 30
STATE_FMT = "{{.State.Status}} {{.State.ExitCode}}"  # podman inspect: `exited 3`
# Well inside the salt job's own timeout (resources/salt.py: 600 s for the whole release).
RELEASE_PHASE_TIMEOUT_S = 300
CERT_MIN_VALID_S = 30 * 86400

# Salt's loader offers only these as states (`coop_app.released`); the rest is this module's own.
__load__ = ["released"]


class Failed(Exception):
    """A step that could not do its work: what went wrong (one line) and the output behind it."""

    def __init__(self, comment: str, output: str = "") -> None:
        super().__init__(comment)
        self.comment = comment
        self.output = output


@dataclass
class Done:
    """What a step did: whether it changed something, in a line."""

    changed: bool
    comment: str
    output: str = ""


@dataclass(frozen=True)
class Release:
    """One release on this host, worked out from the pillar and the host's record (pure data)."""

    app: str
    digest: str
    sha: str
    image: str
    registry: str
    slot: str
    port: int
    health_url: str
    served_url: str
    host_header: str
    resolve: str
    domain: str
    acme: dict
    environment: str
    record: dict
    new_record: dict
    env: dict = field(default_factory=dict)
    # NAME -> value: given to the container as files it reads into its environment (never on a
    # command line, in a label or in `podman inspect`); never in a comment or an output.
    secrets: dict = field(default_factory=dict, repr=False)
    config: str = ""  # the fingerprint of env and secrets (an HMAC with this host's own key)
    kind: str = "web"  # or "worker": no port, no site; it must stay up `up_s` seconds
    up_s: int = 10

    @property
    def worker(self) -> bool:
        return self.kind == "worker"

    @property
    def container(self) -> str:
        return f"app-{self.app}-{self.slot}"

    @property
    def old(self) -> str:
        return f"app-{self.app}-{_other(self.slot)}"

    @property
    def conf(self) -> str:
        return f"{CONF_DIR}/app-{self.app}.conf"

    @property
    def record_file(self) -> str:
        return f"{RECORDS}/{self.app}.json"

    @property
    def live_already(self) -> bool:
        """This digest with these settings is the live release."""
        return _same(self.record.get("current") or {}, self.digest, self.config)

    @property
    def keep(self) -> str:
        """The digest kept beside the live one: the previous release's."""
        return (self.new_record.get("previous") or {}).get("digest") or self.digest


def _other(slot: str) -> str:
    return "green" if slot == "blue" else "blue"


def _same(entry: dict, digest: str, config: str) -> bool:
    return entry.get("digest") == digest and entry.get("config", "") == config


def config_fingerprint(key: bytes, env: dict, secrets: dict) -> str:
    """Which settings a release runs with, without saying them: an HMAC of env and secrets
    with a key of this host's own (a changed setting is a new release; the label and record
    it goes in give nothing to guess a secret from)."""
    if not env and not secrets:
        return ""
    text = json.dumps({"env": env, "secrets": secrets}, sort_keys=True)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:24]


def _check_release(digest: Any, sha: Any) -> None:
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise Failed(f"digest {digest!r} is not sha256:<64 hex digits>")
    if not isinstance(sha, str) or not SHA_RE.match(sha):
        raise Failed(f"sha {sha!r} is not a commit (40 hex digits, or empty)")


def plan(
    pillar: dict, app: str, digest: str, sha: str, record: dict, config_key: bytes = b""
) -> Release:
    """The release of `app` at `digest` on this host: its slot, port, URLs and the record it
    leaves. Raises Failed for a release the pillar cannot carry."""
    _check_release(digest, sha)
    apps = pillar.get("apps") or {}
    web, client = pillar.get("web"), pillar.get("registry_client")
    if app not in apps or not web or not client:
        raise Failed(
            f"{app!r} is not an app of this host's pillar (apps: {', '.join(apps) or 'none'}),"
            " or the host has no registry to pull from: is it a web host of the topology?"
        )
    spec = apps[app]
    env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
    secrets = {str(k): str(v) for k, v in (spec.get("secrets") or {}).items()}
    config = config_fingerprint(config_key, env, secrets)
    current = record.get("current") or {}
    live = _same(current, digest, config)
    if live:
        slot = current.get("slot", "blue")
    else:
        slot = "green" if current.get("slot") == "blue" else "blue"
    worker = spec.get("kind") == "worker"
    port = 0 if worker else int(spec["slots"][slot])
    domain = "" if worker else spec.get("domain") or ""
    image = f"{client['address']}/{app}@{digest}"
    this = {
        "digest": digest,
        "sha": sha,
        "image": image,
        "slot": slot,
        "port": port,
        "container": f"app-{app}-{slot}",
        **({"config": config} if config else {}),
    }
    if current.get("digest") == digest:
        # Live already, or the same image with other settings: what to roll back to stays
        # the release of another image (whose image is kept).
        new_record = {"current": this, "previous": record.get("previous")}
    else:
        new_record = {"current": this, "previous": current or None}
    if worker:
        served = ""
    elif domain:
        served = f"https://{domain}:{web['https_port']}{spec['health']}"
    else:
        served = f"http://{web['listen']}:{web['port']}{spec['health']}"
    return Release(
        app=app,
        digest=digest,
        sha=sha,
        image=image,
        registry=client["address"],
        slot=slot,
        port=port,
        health_url="" if worker else f"http://127.0.0.1:{port}{spec['health']}",
        served_url=served,
        host_header=domain or app,
        resolve=f"{domain}:{web['https_port']}:{web['listen']}" if domain else "",
        domain=domain,
        acme=web.get("acme") or {},
        environment=web.get("environment", ""),
        record=record,
        new_record=new_record,
        env=env,
        secrets=secrets,
        config=config,
        kind="worker" if worker else "web",
        up_s=int(spec.get("up_s") or 10),
    )


# --- the state -------------------------------------------------------------------------------


def released(name, digest, sha="", health_timeout_s=30, release_phase=True, web_state=""):
    """`name` (the app) live on this host at `digest`, built from commit `sha`.

    health_timeout_s: how long the new container has to answer 200 on its health path.
    release_phase: run the image's release command when this digest is new here (the release
    asset asks it of one host per environment, and not for a rollback).
    web_state: what to apply when the host is not ready (named in the error)."""
    ret: dict[str, Any] = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        _check_release(digest, sha or "")  # before anything is read or written
        record = _read_record(name)
        release = plan(__pillar__, name, digest, sha or "", record, _config_key())  # noqa: F821
    except Failed as err:
        ret["comment"] = err.comment
        return ret
    if __opts__.get("test"):  # noqa: F821
        ret["result"] = None if not release.live_already else True
        ret["comment"] = (
            f"{name}: {digest} is live already"
            if release.live_already
            else f"{name}: would release {digest} in slot {release.slot}"
        )
        return ret
    steps = _steps(release, int(health_timeout_s), bool(release_phase), web_state)
    done: list[dict] = []
    for step, action in steps:
        started = time.monotonic()
        try:
            result = action()
        except Exception as err:  # noqa: BLE001 - every failure is the step's, with its reason
            if not isinstance(err, Failed):
                err = Failed(f"{type(err).__name__}: {err}")
            ret["comment"] = f"{step}: {err.comment}" + (f"\n{err.output}" if err.output else "")
            ret["changes"] = {
                "steps": done,
                "failed": {"step": step, "comment": err.comment, "output": err.output},
            }
            return ret
        done.append(
            {
                "step": step,
                "changed": result.changed,
                "comment": result.comment,
                "seconds": round(time.monotonic() - started, 3),
                **({"output": result.output} if result.output else {}),
            }
        )
    ret["result"] = True
    ret["comment"] = "\n".join(f"{d['step']}: {d['comment']}" for d in done)
    if any(d["changed"] for d in done):
        ret["changes"] = {"steps": done}
    return ret


def _steps(release: Release, timeout: int, release_phase: bool, web_state: str) -> list:
    steps = [("ready", lambda: ready(web_state))]
    if release.domain:
        steps.append(("certificate", lambda: certificate(release)))
    steps.append(("pull", lambda: pull(release)))
    if release_phase and not release.live_already:
        steps.append(("release-phase", lambda: run_release_phase(release)))
    workers: list[str] = []
    steps.append(("start", lambda: start(release)))
    if release.worker:  # no HTTP, no site: up for `up_s` seconds, then the old one goes
        steps.append(("up", lambda: stays_up(release)))
    else:
        steps += [
            ("healthy", lambda: healthy(release, timeout)),
            ("nginx", lambda: switch(release, workers)),
        ]
    steps += [
        # Recorded as soon as it serves: the next release's slot is the other one.
        ("record", lambda: write_record(release)),
        ("stop-old", lambda: stop_old(release, workers)),
        ("prune", lambda: prune(release)),
    ]
    return steps


# --- the steps -------------------------------------------------------------------------------


def ready(web_state: str) -> Done:
    then = f": apply the web state first ({web_state or 'highstate'})"
    if not _nginx_master():
        raise Failed(f"nginx is not running on this host ({NGINX_PID}){then}")
    for path in ("/etc/containers/containers.conf", AUTH_FILE):
        if not os.path.isfile(path):
            raise Failed(f"{path} is missing{then}")
    os.makedirs(CONF_DIR, exist_ok=True)
    os.makedirs(RECORDS, exist_ok=True)
    return Done(False, "nginx runs; podman is configured")


def pull(release: Release) -> Done:
    if _ok(["podman", "image", "exists", release.image]):
        return Done(False, f"{release.image} is here already")
    started = time.monotonic()
    certs = f"/etc/containers/certs.d/{release.registry}"
    _check(["podman", "pull", "-q", "--cert-dir", certs, release.image], f"pull {release.image}",
           timeout=300)  # fmt: skip
    return Done(True, f"pulled {release.image} in {time.monotonic() - started:.1f} s")


def run_release_phase(release: Release) -> Done:
    command = _image_labels(release.image).get(RELEASE_LABEL, "").strip()
    if not command:
        return Done(False, f"no release command (no Procfile release:, no {RELEASE_LABEL} label)")
    name = f"app-{release.app}-release"
    _run(["podman", "rm", "-f", "-i", "-t", "2", name])
    argv = _run_argv(release, name, detach=False, command=["/bin/sh", "-c", command])
    started = time.monotonic()
    try:
        proc = _run(argv, timeout=RELEASE_PHASE_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        _run(["podman", "rm", "-f", "-i", "-t", "2", name])
        raise Failed(
            f"release command {command!r} did not finish in {RELEASE_PHASE_TIMEOUT_S} s;"
            " the live release keeps serving",
            _tail(_text(err.output)),
        ) from None
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise Failed(
            f"release command {command!r} failed (exit {proc.returncode}) in {took:.1f} s;"
            " the live release keeps serving",
            _tail(proc.stdout),
        )
    return Done(True, f"ran the release command {command!r} in {took:.1f} s", _tail(proc.stdout))


def start(release: Release) -> Done:
    fmt = (
        '{{.ImageDigest}}|{{.State.Running}}|{{index .Config.Labels "coop.port"}}'
        '|{{index .Config.Labels "coop.config"}}'
    )
    if _runs_as(release, _inspect(release.container, fmt)):
        return Done(False, f"{release.container} runs {release.digest} on port {release.port}")
    _run(["podman", "rm", "-f", "-i", "-t", "5", release.container])
    argv = _run_argv(release, release.container, detach=True)
    _check(argv, f"start {release.container}")
    return Done(True, f"started {release.container} on 127.0.0.1:{release.port}")


def _runs_as(release: Release, inspected: str) -> bool:
    """Whether `podman container inspect` says the slot's container runs this release (digest,
    port and settings): then it is not started again."""
    return inspected == f"{release.digest}|true|{release.port}|{release.config}"


def healthy(release: Release, timeout: int) -> Done:
    """200 on the health path within `timeout`; a container that stops fails at once."""
    started = time.monotonic()
    code, body = "", ""
    while True:
        code, body = _get(release.health_url)
        waited = time.monotonic() - started
        if code == "200":
            return Done(False, f"healthy: {release.health_url} answers 200")
        state = _inspect(release.container, STATE_FMT)
        if not state.startswith("running"):
            why = _stopped(release, state, waited) + ", before its health path answered"
            break
        if waited >= timeout:
            why = (
                f"health check failed: {release.health_url} -> {code or 'no answer'}"
                f" within {timeout} s" + (f": {body[:300]}" if body else "")
            )
            break
        time.sleep(0.2)
    answer = f"GET {release.health_url} -> {code or 'no answer'}" + (f": {body}" if body else "")
    if release.live_already:  # the live release itself: reported, never removed
        why += " (the live release itself)"
    raise _start_failed(release, why, f"--- the last answer: {answer}\n")


def stays_up(release: Release) -> Done:
    """A worker's container still running `up_s` seconds after it started; one that exits
    fails at once, with its exit code and last lines, and goes (the live one is untouched)."""
    started = time.monotonic()
    while True:
        state = _inspect(release.container, STATE_FMT)
        waited = time.monotonic() - started
        if not state.startswith("running"):
            why = _stopped(release, state, waited)
            raise _start_failed(release, f"{why} (a worker must stay up {release.up_s} s)")
        if waited >= release.up_s or release.live_already:
            return Done(False, f"up: {release.container} runs ({waited:.0f} s after its start)")
        time.sleep(0.2)


def _stopped(release: Release, state: str, waited: float) -> str:
    """What became of a new container that no longer runs: `app-x-blue exited with code 3
    0.4 s after it started`."""
    # podman says `stopped` until it has recorded the exit: wait for `exited` (2 s)
    for _ in range(20):
        if not state.startswith("stopped"):
            break
        time.sleep(0.1)
        state = _inspect(release.container, STATE_FMT)
    status, _, exit_code = state.partition(" ")
    return (
        f"{release.container} {status or 'is gone'}"
        + (f" with code {exit_code}" if status == "exited" else "")
        + f" {waited:.1f} s after it started"
    )


def _start_failed(release: Release, why: str, before: str = "") -> Failed:
    """The failure of a new container: its last lines, and the container removed (the live
    release itself is left as it is)."""
    logs = _run(["podman", "logs", "--tail", str(LOG_LINES), release.container]).stdout
    if release.live_already:
        outcome = f"--- {release.container} is the live release: left as it is"
    else:
        _run(["podman", "rm", "-f", "-t", "2", release.container])
        outcome = f"--- removed {release.container}; the live release is untouched"
    return Failed(
        why,
        f"{before}--- {release.container} ({release.image}), its last lines:\n"
        f"{logs.rstrip()}\n{outcome}",
    )


def switch(release: Release, workers: list[str]) -> Done:
    """The site on the new container, reloaded, and nginx serving it. `workers` gets the pids of
    nginx's workers from before the reload (they still hold the old upstream). Whatever fails
    puts the old site back (reloaded) and removes the new container: the live release keeps
    serving."""
    text = site_conf(release)
    try:
        with open(release.conf, encoding="utf-8") as f:
            before: str | None = f.read()
    except FileNotFoundError:
        before = None
    changed = before != text
    try:
        if changed:
            _write(release.conf, text)
            test = _run(["nginx", "-t", "-q"])
            if test.returncode != 0:
                raise Failed("nginx -t refuses the new site", _tail(test.stdout))
            master = _nginx_master()
            workers += _run(["pgrep", "-P", master]).stdout.split() if master else []
            _check(["systemctl", "reload", "nginx"], "reload nginx")
        for _ in range(76):
            if _serves(release):
                return Done(changed, f"nginx serves {release.digest} (slot {release.slot}, port"
                                     f" {release.port})")  # fmt: skip
            time.sleep(0.2)
        raise Failed(
            f"nginx does not serve {release.digest} after 15 s",
            "nginx's error log ends:\n" + _tail(_read("/var/log/nginx/error.log"), 20),
        )
    except Exception as err:
        if changed:  # the old site back, as nginx served it
            if before is None:
                os.unlink(release.conf)
            else:
                _write(release.conf, before)
            _run(["systemctl", "reload", "nginx"])
        if not release.live_already:
            _run(["podman", "rm", "-f", "-t", "2", release.container])
        if isinstance(err, Failed):
            err.comment += "; the old site is back, the new container removed"
        raise


def stop_old(release: Release, workers: list[str]) -> Done:
    if _inspect(release.old, "{{.State.Running}}") != "true":
        return Done(False, f"{release.old} is not running")
    # nginx's workers from before the reload finish the requests they hold with the old
    # upstream (at most 10 s), then the old release stops. It stays, stopped, for a rollback.
    master = _nginx_master()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_parent(pid) == master for pid in workers):
        time.sleep(0.1)
    _check(["podman", "stop", "-t", "10", release.old], f"stop {release.old}")
    return Done(True, f"stopped {release.old} (kept for a rollback)")


def write_record(release: Release) -> Done:
    if release.record == release.new_record:
        return Done(False, f"{release.record_file} records {release.digest} live")
    _write(release.record_file, json.dumps(release.new_record, indent=2, sort_keys=True) + "\n")
    return Done(True, f"{release.record_file} records {release.digest} live")


def prune(release: Release) -> Done:
    """The live and the previous release stay; this app's older images go."""
    listed = _run(
        [
            "podman",
            "images",
            "--noheading",
            "--format",
            "{{.Repository}}@{{.Digest}}",
            "--filter",
            f"reference={release.registry}/{release.app}",
        ]
    ).stdout
    keep = {f"@{release.digest}", f"@{release.keep}"}
    older = sorted({ref for ref in listed.split() if not ref.endswith(tuple(keep))})
    if not older:
        return Done(False, "no older image")
    removed = [ref for ref in older if _ok(["podman", "rmi", ref])]
    return Done(
        bool(removed),
        f"older images of {release.app}: {len(removed)} removed,"
        f" {len(older) - len(removed)} kept (in use)",
    )


def certificate(release: Release) -> Done:
    """A certificate for the app's domain from the ACME directory the pillar names."""
    domain, directory = release.domain, release.acme.get("directory", "")
    renewal = f"/etc/letsencrypt/renewal/{domain}.conf"
    # From the directory the topology names now (a certificate from another is replaced).
    recorded = _read(renewal)
    same_server = not recorded or f"server = {directory}" in recorded.splitlines()
    if same_server and _cert_valid(domain, CERT_MIN_VALID_S):
        return Done(False, f"the certificate for {domain} is valid for 30 days more")
    _serve_challenges(release)
    argv = ["certbot", "certonly", "--non-interactive", "--agree-tos"]
    email = release.acme.get("email") or ""
    argv += ["--email", email] if email else ["--register-unsafely-without-email"]
    argv += [] if same_server else ["--force-renewal"]
    argv += [
        "--server",
        directory,
        "--webroot",
        "--webroot-path",
        ACME_WEBROOT,
        "--cert-name",
        domain,
        "--domains",
        domain,
        "--key-type",
        "ecdsa",
        "--deploy-hook",
        "systemctl reload nginx",
    ]
    env = {"REQUESTS_CA_BUNDLE": ACME_CA} if release.acme.get("ca_cert") else {}
    started = time.monotonic()
    for _ in range(6):  # certbot's lock: another certbot at work (the timer's) is waited for
        got = _run(argv, env=env, timeout=300)
        if got.returncode == 0 or "Another instance of Certbot" not in got.stdout:
            break
        time.sleep(5)
    if got.returncode == 0:
        took = time.monotonic() - started
        return Done(True, f"certificate for {domain} from {directory} in {took:.0f} s")
    why = [
        line.strip()
        for line in got.stdout.splitlines()
        if re.match(r"^ *(Detail|An unexpected error occurred|Error)|.*Error:", line)
    ]
    if _cert_valid(domain, 0):
        # Valid still (due for renewal, or from a directory named before): the release goes on
        # with it, and the timer or the next release tries again.
        return Done(False, f"no new certificate; the one for {domain} is still valid, kept")
    raise Failed(
        f"no certificate for {domain} from {directory}: "
        f"{why[-1][:300] if why else 'see the output'} (is {domain} served by this host on port"
        " 80?)",
        _tail(got.stdout, 15),
    )


def _serve_challenges(release: Release) -> None:
    """A site written before its domain had TLS sends the ACME server's challenges to the app:
    let nginx answer them from the webroot first (this release rewrites the site)."""
    text = _read(release.conf)
    if not text or "acme-challenge" in text:
        return
    location = (
        "\n    location /.well-known/acme-challenge/ "
        f"{{ root {ACME_WEBROOT}; default_type text/plain; }}"
    )
    patched = re.sub(r"server_name [^;]*;", lambda m: m.group(0) + location, text, count=1)
    _write(release.conf, patched)
    if _ok(["nginx", "-t", "-q"]):
        _run(["systemctl", "reload", "nginx"])
        time.sleep(0.5)
    else:
        _write(release.conf, text)


def _cert_valid(domain: str, seconds: int) -> bool:
    cert = f"/etc/letsencrypt/live/{domain}/fullchain.pem"
    if not os.path.isfile(cert):
        return False
    if not _ok(["openssl", "x509", "-in", cert, "-noout", "-checkend", str(seconds)]):
        return False
    out = _run(["openssl", "x509", "-in", cert, "-noout", "-checkhost", domain]).stdout
    return "does match" in out and "NOT" not in out


# --- the container and the site --------------------------------------------------------------


def _run_argv(
    release: Release, name: str, *, detach: bool, command: list[str] | None = None
) -> list[str]:
    """`podman run` of the app's image, hardened: a network namespace of its own (podman's
    bridge), published on the host's loopback only (nginx proxies to it); no capability, no
    privilege gained by exec, a read-only root with a tmpfs for scratch, a user that is not
    root. The host's firewall (common.firewall) drops what it forwards to the cloud's metadata
    service and the private network but the services its role lists (`containers_reach`).
    `command`: instead of the image's own. The plain settings are `-e`; the secret ones are
    files in /run/secrets (a tmpfs), read into the environment by /bin/sh before the command
    (so the image needs /bin/sh when the app has secrets)."""
    port = release.port
    argv = ["podman", "run", "--init", "--pull=never", "--name", name, "--network", "bridge"]
    if not detach:
        argv += ["--rm"]
    elif release.worker:
        argv += ["-d"]  # a worker publishes nothing
    else:
        argv += ["-d", "--publish", f"127.0.0.1:{port}:{port}"]
    argv += [
        "--cap-drop=all", "--security-opt=no-new-privileges",
        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m",
        "--user", "65534:65534",
        "--label", f"coop.app={release.app}", "--label", f"coop.digest={release.digest}",
        "--label", f"coop.sha={release.sha}", "--label", f"coop.slot={release.slot}",
        "--label", f"coop.port={port}", "--label", f"coop.config={release.config}",
    ]  # fmt: skip
    if not release.worker:
        argv += ["-e", f"PORT={port}", "-e", "HOST=0.0.0.0"]
    for key, value in sorted(release.env.items()):
        argv += ["-e", f"{key}={value}"]
    if not release.secrets:
        if command is None:
            return [*argv, release.image]
        return [*argv, "--entrypoint", command[0], release.image, *command[1:]]
    argv += _secret_args(release)
    if command is None:
        command = _image_command(release.image)
    return [*argv, "--entrypoint", "/bin/sh", release.image, "-c", READ_SECRETS, "sh", *command]


# Each file of /run/secrets into the environment, then the command.
READ_SECRETS = (
    'for f in /run/secrets/*; do [ -f "$f" ] || continue; v=$(/bin/cat "$f") || exit 70;'
    ' export "${f##*/}=$v"; done; exec "$@"'
)


def _secret_args(release: Release) -> list[str]:
    """The app's secrets as podman secrets of this release's slot (made again each time: a
    changed value is the one the container gets), mounted read-only for the app's user."""
    args = ["--tmpfs", "/run/secrets:rw,nosuid,nodev,noexec,size=256k,mode=0755"]
    prefix = f"coop-{release.app}-{release.slot}-"
    listed = _run(["podman", "secret", "ls", "--noheading", "--format", "{{.Name}}"]).stdout
    for stale in sorted(set(listed.split()) - {prefix + key for key in release.secrets}):
        if stale.startswith(prefix):  # a secret the app no longer has
            _run(["podman", "secret", "rm", stale])
    for key, value in sorted(release.secrets.items()):
        secret = f"coop-{release.app}-{release.slot}-{key}"
        _run(["podman", "secret", "rm", secret])
        made = _run(["podman", "secret", "create", secret, "-"], stdin=value)
        if made.returncode != 0:
            # (podman's message names the secret, never its value)
            raise Failed(f"podman secret create {secret} failed", _tail(made.stdout))
        args += ["--secret", f"{secret},type=mount,target=/run/secrets/{key},uid=65534,"
                             "gid=65534,mode=0400"]  # fmt: skip
    return args


def _image_command(image: str) -> list[str]:
    """What the image runs: its entrypoint and command."""
    data = _image_inspect(image)
    config = data.get("Config") or {}
    command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    if not command:
        raise Failed(f"{image} names no command to run (no ENTRYPOINT, no CMD)")
    return command


def site_conf(release: Release) -> str:
    """The app's nginx site: its upstream on the release's container, HTTPS for a domain."""
    head = (
        f"# Managed by salt (salt/_states/coop_app.py): the live release of {release.app} on"
        f" this host ({release.environment}).\n"
        f"# {release.digest}{f' (commit {release.sha})' if release.sha else ''},"
        f" slot {release.slot}\n"
        f"upstream app-{release.app} {{\n"
        f"    server 127.0.0.1:{release.port};\n"
        "    keepalive 8;\n"
        "}\n"
    )
    web = __pillar__["web"]  # noqa: F821
    listen, port, https_port = web["listen"], web["port"], web["https_port"]
    domain = release.domain
    if not domain:
        return head + (
            f"\n# No domain for {release.environment}: the host's own address, HTTP (not a"
            " public site).\n"
            f"server {{\n    listen {listen}:{port};\n    server_name {release.app};\n"
            f"{_proxy(release, hsts=False)}}}\n"
        )
    to = f"https://{domain}" + (f":{https_port}" if https_port != 443 else "")
    return head + (
        f"\n# {domain}: HTTPS, with the certificate certbot got over ACME; HTTP answers the ACME\n"
        "# server's challenges and sends everything else to HTTPS.\n"
        f"server {{\n    listen {listen}:{port};\n    server_name {domain};\n\n"
        "    location /.well-known/acme-challenge/ {\n"
        f"        root {ACME_WEBROOT};\n        default_type text/plain;\n    }}\n"
        f"    location / {{\n        return 301 {to}$request_uri;\n    }}\n}}\n\n"
        f"server {{\n    listen {listen}:{https_port} ssl http2;\n    server_name {domain};\n"
        f"    ssl_certificate /etc/letsencrypt/live/{domain}/fullchain.pem;\n"
        f"    ssl_certificate_key /etc/letsencrypt/live/{domain}/privkey.pem;\n"
        f"{_proxy(release, hsts=True)}}}\n"
    )


def _proxy(release: Release, *, hsts: bool) -> str:
    lines = [
        "    location / {",
        f"        proxy_pass http://app-{release.app};",
        "        proxy_http_version 1.1;",
        '        proxy_set_header Connection "";',
        "        proxy_set_header Host $host;",
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "        proxy_set_header X-Forwarded-Proto $scheme;",
        f"        add_header X-Coop-Release {release.digest} always;",
    ]
    if hsts:
        lines += [
            "        # (a location's add_header replaces the server's: both are here)",
            '        add_header Strict-Transport-Security "max-age=31536000" always;',
        ]
    return "\n".join([*lines, "    }", ""])


def _serves(release: Release) -> bool:
    """Whether this host's nginx serves the release (asked of nginx itself; for a domain, its
    certificate checked against the issuer certbot got with it)."""
    argv = ["curl", "-s", "-D", "-", "-o", "/dev/null", "--max-time", "2"]
    if release.resolve:
        chain = f"/etc/letsencrypt/live/{release.domain}/chain.pem"
        argv += ["--resolve", release.resolve, "--cacert", chain]
    else:
        argv += ["-H", f"Host: {release.host_header}"]
    headers = _run([*argv, release.served_url]).stdout.lower()
    return f"x-coop-release: {release.digest}" in headers


# --- small helpers ---------------------------------------------------------------------------


def _run(
    argv: list[str],
    *,
    timeout: float | None = 120,
    env: dict | None = None,
    stdin: str | None = None,
):
    """The command, stderr folded into stdout, never through a shell, without the minion's
    NOTIFY_SOCKET (`_environ`)."""
    return subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        text=True,
        errors="replace",
        timeout=timeout,
        env=_environ(env),
        check=False,
    )


def _environ(env: dict | None = None) -> dict:
    """The environment of a command: the minion's, with podman's settings and `env`, and never
    NOTIFY_SOCKET. The minion is a systemd `Type=notify` service with `NotifyAccess=all`; given
    that socket, podman has conmon tell systemd its own pid as the service's main pid, and a
    `systemctl restart salt-minion` then kills the app's container and leaves the old minion
    running beside the new one (seen on the lab: MainPID was the container's conmon)."""
    base = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    return {**base, **PODMAN_ENV, **(env or {})}


def _ok(argv: list[str]) -> bool:
    return _run(argv).returncode == 0


def _check(argv: list[str], what: str, timeout: float = 120) -> str:
    proc = _run(argv, timeout=timeout)
    if proc.returncode != 0:
        raise Failed(
            f"{what}: `{shlex.join(argv[:3])} ...` exited {proc.returncode}", _tail(proc.stdout)
        )
    return proc.stdout


def _inspect(container: str, fmt: str) -> str:
    proc = _run(["podman", "container", "inspect", "-f", fmt, container])
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _image_inspect(image: str) -> dict:
    proc = _run(["podman", "image", "inspect", image])
    if proc.returncode != 0:
        raise Failed(f"podman image inspect {image} failed", _tail(proc.stdout))
    [data] = json.loads(proc.stdout)
    return data


def _image_labels(image: str) -> dict[str, str]:
    data = _image_inspect(image)
    return data.get("Labels") or (data.get("Config") or {}).get("Labels") or {}


def _config_key() -> bytes:
    """This host's key for the settings' fingerprints, made once (0600, root's)."""
    path = f"{RECORDS}/.config-key"
    try:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    os.makedirs(RECORDS, exist_ok=True)
    key = os.urandom(32)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    os.replace(path + ".tmp", path)
    return key


def _get(url: str) -> tuple[str, str]:
    """(status, the body's start) of a GET, ("", "") when nothing answers."""
    with tempfile.NamedTemporaryFile() as body:
        argv = ["curl", "-s", "-o", body.name, "-w", "%{http_code}", "--max-time", "2", url]
        code = _run(argv).stdout.strip()
        text = open(body.name, encoding="utf-8", errors="replace").read(300)  # noqa: SIM115
    return ("" if code in ("", "000") else code), text.strip()


def _nginx_master() -> str:
    pid = _read(NGINX_PID).strip()
    return pid if pid.isdigit() and os.path.exists(f"/proc/{pid}") else ""


def _parent(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return ""


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _read_record(app: str) -> dict:
    text = _read(f"{RECORDS}/{app}.json")
    try:
        record = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        raise Failed(f"{RECORDS}/{app}.json is not JSON: move it away to start afresh") from None
    return record if isinstance(record, dict) else {}


def _write(path: str, text: str) -> None:
    """Whole or not at all: a temporary file beside it, then renamed over it."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".coop-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _text(data: Any) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
