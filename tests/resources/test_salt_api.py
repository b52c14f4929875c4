"""SaltResource through salt-api, against the real thing: a salt-master, salt-api (rest_cherrypy,
TLS with a CA made here, sharedsecret eauth) and two salt-minions as processes on 127.0.0.1,
each with a root_dir of its own and free ports, started once for this module and stopped by pid.

The api's settings are the ones salt/salt/api.sls writes on a server: the state is rendered
masterless (state.show_sls, a server's pillar) and its `api.conf` dataset becomes the test
master's, with only the address, port and certificate paths of this machine.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from resources.paths import REPO_ROOT
from resources.salt import SaltError, SaltResource
from resources.salt_api import SaltApi

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
USER = "dagster"  # infra_assets/configuration/pillar.py SALT_API_USER
MINIONS = ("api-m1", "api-m2")
SLOW = "api-m2"  # its state sleeps 3 s


# --- a CA and the api's certificate ------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(ca_key, ca_cert: x509.Certificate, address: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("salt-api"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.2)


# --- api.sls, rendered as on a server ------------------------------------------------------------


def render_api_sls(work: Path, pillar: dict) -> dict:
    """`state.show_sls salt.api` with salt-call --local on the repo's salt/ tree and `pillar`."""
    (work / "pillar").mkdir(parents=True, exist_ok=True)
    (work / "pillar" / "top.sls").write_text("base:\n  '*':\n    - data\n")
    (work / "pillar" / "data.sls").write_text("#!json\n" + json.dumps(pillar))
    (work / "minion").write_text(
        yaml.safe_dump(
            {
                "root_dir": str(work / "root"),
                "id": "support-1",
                "file_client": "local",
                "file_roots": {"base": [str(REPO_ROOT / "salt")]},
                "pillar_roots": {"base": [str(work / "pillar")]},
                "enable_fqdns_grains": False,
                "enable_gpu_grains": False,
            }
        )
    )
    out = subprocess.run(
        [str(BIN / "salt-call"), "--local", "-c", str(work), "--out=json"]
        + ["state.show_sls", "salt.api"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rendered = json.loads(out.stdout)["local"]
    assert isinstance(rendered, dict), rendered  # a list: salt's render errors
    return rendered


def state_arg(rendered: dict, state_id: str, arg: str):
    chunk = rendered[state_id]
    module = next(k for k in chunk if not k.startswith("__"))
    return next(item[arg] for item in chunk[module] if isinstance(item, dict) and arg in item)


def server_pillar(password: str, cert: str, key: str, interface: str = "10.127.1.1") -> dict:
    return {
        "roles": ["salt-master"],
        "salt": {
            "master": {"interface": interface},
            "api": {
                "listen": interface,
                "port": 8000,
                "user": USER,
                "password": password,
                "tls": {"cert": cert, "key": key},
            },
        },
    }


# --- the salt site -------------------------------------------------------------------------------

STATES = {
    "slow.sls": """
{%- if grains['id'] == '"""
    + SLOW
    + """' %}
slow-sleep:
  cmd.run:
    - name: sleep 3
{%- endif %}

slow-done:
  test.succeed_without_changes:
    - name: done on {{ grains['id'] }}
""",
    "secret.sls": """
secret-echo:
  cmd.run:
    - name: echo "the secret is {{ pillar.get('secret', 'none') }}"
""",
}


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path):
        self.name, self.log = name, log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        """SIGTERM to the daemon; its children (same session, ours) are killed if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # the session this test started
        except ProcessLookupError:
            pass
        self.popen.wait()


class ApiSite:
    def __init__(self, work: Path):
        self.work = work
        self.procs: dict[str, Proc] = {}
        self.password = "api-" + os.urandom(12).hex()
        ca_key, ca = make_ca("coop-infra test salt-api CA")
        cert, key = make_server_cert(ca_key, ca, "127.0.0.1")
        self.ca_file = work / "ca.pem"
        self.ca_file.write_text(pem(ca))
        _, other_ca = make_ca("some other CA")
        self.other_ca_file = work / "other-ca.pem"
        self.other_ca_file.write_text(pem(other_ca))
        tls = work / "master" / "etc" / "salt" / "pki" / "api"
        tls.mkdir(parents=True)
        (tls / "api.crt").write_text(cert)
        (tls / "api.key").write_text(key)
        (tls / "api.key").chmod(0o600)

        # The api part of the master's config: what salt/salt/api.sls writes on a server.
        self.rendered = render_api_sls(
            work / "render", server_pillar(self.password, cert, key, interface="127.0.0.1")
        )
        api_conf = state_arg(self.rendered, "salt-api-config", "dataset")
        self.api_port = free_port()
        api_conf["rest_cherrypy"].update(
            port=self.api_port, ssl_crt=str(tls / "api.crt"), ssl_key=str(tls / "api.key")
        )
        self.url = f"https://127.0.0.1:{self.api_port}"

        self.publish_port, self.ret_port = free_port(), free_port()
        self.states = work / "states"
        self.states.mkdir()
        for name, text in STATES.items():
            (self.states / name).write_text(text)
        self.pillar_root = work / "pillar"
        self.pillar_root.mkdir(mode=0o700)
        master = {
            "root_dir": str(work / "master"),
            "user": "root",
            "interface": "127.0.0.1",
            "ipv6": False,
            "publish_port": self.publish_port,
            "ret_port": self.ret_port,
            "worker_threads": 2,
            "auto_accept": False,
            "open_mode": False,
            "file_roots": {"base": [str(self.states)]},
            "pillar_roots": {"base": [str(self.pillar_root)]},
            "fileserver_backend": ["roots"],
            "log_level_logfile": "warning",
            "enable_gpu_grains": False,
            "hash_type": "sha256",
            **api_conf,
        }
        self.master_dir = work / "master" / "etc" / "salt"
        (self.master_dir / "master").write_text(yaml.safe_dump(master))
        (self.master_dir / "master").chmod(0o600)

    def start_master(self) -> None:
        log = self.work / "master" / "master.out"
        self.procs["master"] = Proc(
            "master", [str(BIN / "salt-master"), "-c", str(self.master_dir)], log
        )
        wait_until(lambda: port_open(self.ret_port), 60, f"salt-master (see {log})")
        self.start_api()

    def start_api(self) -> None:
        log = self.work / "master" / "api.out"
        self.procs["api"] = Proc("api", [str(BIN / "salt-api"), "-c", str(self.master_dir)], log)
        wait_until(lambda: port_open(self.api_port), 60, f"salt-api (see {log})")

    def minion_dir(self, minion: str) -> Path:
        return self.work / minion / "etc" / "salt"

    def start_minion(self, minion: str) -> None:
        cfg = self.minion_dir(minion)
        cfg.mkdir(parents=True, exist_ok=True)
        (cfg / "minion").write_text(
            yaml.safe_dump(
                {
                    "id": minion,
                    "root_dir": str(self.work / minion),
                    "master": "127.0.0.1",
                    "master_port": self.ret_port,
                    "publish_port": self.publish_port,
                    "ipv6": False,
                    "acceptance_wait_time": 1,
                    "acceptance_wait_time_max": 5,
                    "random_reauth_delay": 0,
                    "enable_fqdns_grains": False,
                    "enable_gpu_grains": False,
                    "log_level_logfile": "warning",
                    "hash_type": "sha256",
                }
            )
        )
        self.procs[minion] = Proc(
            minion, [str(BIN / "salt-minion"), "-c", str(cfg)], self.work / minion / "minion.out"
        )

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc:
            proc.stop()

    def stop_all(self) -> None:
        for name in [*MINIONS, "api", "master"]:
            self.stop(name)

    def salt(self, **overrides) -> SaltResource:
        config = {
            "api_url": self.url,
            "api_user": USER,
            "api_password": self.password,
            "api_ca_file": str(self.ca_file),
            **overrides,
        }
        return SaltResource(**config)


@pytest.fixture(scope="module")
def site():
    # A short path: salt's unix sockets live under each root_dir (108 bytes at most).
    work = Path(tempfile.mkdtemp(prefix="salt-api-", dir="/tmp"))
    site = ApiSite(work)
    try:
        site.start_master()
        for minion in MINIONS:
            site.start_minion(minion)
        yield site
    finally:
        site.stop_all()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def accepted(site: ApiSite) -> ApiSite:
    """Both minions' keys accepted through salt-api, and both answering."""
    with site.salt() as salt:
        wait_until(lambda: set(salt.list_keys().pending) >= set(MINIONS), 60, "minion keys")
        assert salt.accept_keys(minion_ids=list(MINIONS)) == sorted(MINIONS)
        ping = salt.wait_for(minions=list(MINIONS), timeout_s=60)
        assert ping.ok, ping
    return site


def finger(pub: Path) -> str:
    """A public key's fingerprint as the master's key.finger (and `salt-key -F`) gives it in salt
    3008.4: sha256 of the whole PEM text, its BEGIN/END lines included. (The minion's own
    `key.finger`, and its check of `master_finger`, hash the file without those lines: the two
    differ for the same key.)"""
    digest = hashlib.sha256(pub.read_bytes().strip()).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


# --- the state ------------------------------------------------------------------------------------


def test_api_sls_renders_for_a_server_and_to_nothing_locally_or_in_a_bake(tmp_path):
    pillar = server_pillar("the-api-secret", "CERT PEM", "KEY PEM")
    rendered = render_api_sls(tmp_path / "server", pillar)
    assert {k for k in rendered} == {
        "salt-api-tls-dir",
        "salt-api-tls-cert",
        "salt-api-tls-key",
        "salt-api-config",
        "salt-api-master-restart",
        "salt-api-service",
    }
    conf = state_arg(rendered, "salt-api-config", "dataset")
    assert conf == {
        "rest_cherrypy": {
            "host": "10.127.1.1",  # the master's address, not every address
            "port": 8000,
            "ssl_crt": "/etc/salt/pki/api/api.crt",
            "ssl_key": "/etc/salt/pki/api/api.key",
        },
        "netapi_enable_clients": ["local", "local_async", "runner", "wheel"],
        "external_auth": {"sharedsecret": {USER: [".*", "@wheel", "@runner", "@jobs"]}},
        "sharedsecret": "the-api-secret",
    }
    assert state_arg(rendered, "salt-api-config", "name") == "/etc/salt/master.d/api.conf"
    # The files that hold a secret: root's only, and no diff of them in a state's output.
    for state in ("salt-api-config", "salt-api-tls-key"):
        assert state_arg(rendered, state, "mode") == "0600"
        assert state_arg(rendered, state, "user") == "root"
        assert state_arg(rendered, state, "show_changes") is False
    assert state_arg(rendered, "salt-api-tls-key", "contents_pillar") == "salt:api:tls:key"
    assert state_arg(rendered, "salt-api-service", "name") == "salt-api"
    assert state_arg(rendered, "salt-api-service", "enable") is True
    assert {next(iter(w.values())) for w in state_arg(rendered, "salt-api-service", "watch")} == {
        # salt-api reaches the master at the address the master's own settings name
        "salt-master-config",
        "salt-api-config",
        "salt-api-tls-cert",
        "salt-api-tls-key",
    }
    assert state_arg(rendered, "salt-api-master-restart", "onchanges") == [
        {"file": "salt-api-config"}
    ]
    # An image bake writes nothing host-specific.
    assert render_api_sls(tmp_path / "bake", {"image_bake": True, "roles": ["salt-master"]}) == {}
    # salt.master includes it.
    master = (REPO_ROOT / "salt" / "salt" / "master.sls").read_text()
    assert "\n  - salt.api\n" in master.split("include:", 1)[1]


# --- the transport --------------------------------------------------------------------------------


def test_a_wrong_password_is_refused_and_not_shown(site):
    wrong = "not-the-" + site.password
    with site.salt(api_password=wrong) as salt, pytest.raises(SaltError) as err:
        salt.list_keys()
    text = str(err.value)
    assert f"salt-api at {site.url} refused the login for user '{USER}'" in text
    assert wrong not in text and site.password not in text
    assert site.password not in repr(site.salt()) + str(site.salt())  # repr=False


def test_a_certificate_from_another_ca_names_the_ca_file(site):
    with site.salt(api_ca_file=str(site.other_ca_file)) as salt, pytest.raises(SaltError) as err:
        salt.list_keys()
    text = str(err.value)
    assert f"salt-api at {site.url}: its TLS certificate could not be verified" in text
    assert f"with the CA file {site.other_ca_file}" in text
    assert "certificate verify failed" in text
    # No CA file: the system's trust store ($REQUESTS_CA_BUNDLE here), which does not know it.
    with site.salt(api_ca_file="") as salt, pytest.raises(SaltError, match="system's trust"):
        salt.list_keys()
    missing = site.work / "no-such-ca.pem"
    with site.salt(api_ca_file=str(missing)) as salt, pytest.raises(SaltError) as err:
        salt.list_keys()
    assert f"its CA file {missing} does not exist (api_ca_file)" in str(err.value)


def test_an_unreachable_api_names_the_url_and_what_to_check(site):
    url = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with site.salt(api_url=url, api_ready_wait_s=3) as salt, pytest.raises(SaltError) as err:
        salt.ping(minions=list(MINIONS))
    # a master that is starting is waited for (api_ready_wait_s), then the error is said
    assert 3 <= time.monotonic() - started < 30
    text = str(err.value)
    assert f"salt-api at {url} is unreachable" in text
    assert "systemctl status salt-api" in text and "Connection refused" in text


def test_keys_through_the_wheel_client(accepted):
    site = accepted
    extra = "api-m3"
    site.start_minion(extra)
    try:
        with site.salt() as salt:
            wait_until(lambda: extra in salt.list_keys().pending, 60, f"{extra}'s key")
            keys = salt.list_keys()
            assert set(MINIONS) <= set(keys.accepted) and keys.state_of(extra) == "pending"
            # key.finger: what the master holds is the minion's own public key.
            fingers = salt.key_fingers(minion_ids=[extra, *MINIONS])
            pub = site.minion_dir(extra) / "pki" / "minion" / "minion.pub"
            assert fingers["pending"] == {extra: finger(pub)}
            assert set(fingers["accepted"]) == set(MINIONS)
            # Exact ids only: a glob is refused, never sent to the wheel.
            with pytest.raises(SaltError, match="glob"):
                salt.accept_keys(minion_ids=["api-m*"])
            assert salt.accept_keys(minion_ids=[extra, "no-such-minion"]) == [extra]
            assert salt.list_keys().state_of(extra) == "accepted"
            # key.reject with include_accepted: an accepted key can be rejected.
            assert salt.reject_keys(minion_ids=[extra]) == [extra]
            assert salt.list_keys().state_of(extra) == "rejected"
            assert salt.delete_keys(minion_ids=[extra], states=["accepted"]) == []
            assert salt.list_keys().state_of(extra) == "rejected"
            # The minion goes first: a running one sends its key again (pending) once the
            # master has none (seen in a full run).
            site.stop(extra)
            assert salt.delete_keys(minion_ids=[extra]) == [extra]
            keys = salt.list_keys()
            assert keys.state_of(extra) == "no key" and set(MINIONS) <= set(keys.accepted)
    finally:
        site.stop(extra)


def test_ping_answers_per_minion_and_its_round_trip(accepted, record_property):
    with accepted.salt() as salt:
        salt.ping(minions=list(MINIONS))  # logged in, connection open
        times = []
        for _ in range(5):
            ping = salt.ping(minions=list(MINIONS))
            assert ping.answered == tuple(sorted(MINIONS)) and ping.ok, ping
            times.append(ping.duration_s)
        one = [salt.ping(minions=[MINIONS[0]]).duration_s for _ in range(5)]
    median, median_one = sorted(times)[2], sorted(one)[2]
    record_property("ping_2_minions_median_s", round(median, 3))
    record_property("ping_1_minion_median_s", round(median_one, 3))
    print(
        f"salt-api ping round trip: median {median * 1000:.0f} ms for 2 minions,"
        f" {median_one * 1000:.0f} ms for 1 (all: {[round(t, 3) for t in times + one]})"
    )
    assert median < 2.0, times


def test_a_state_run_streams_each_minion_as_it_finishes(accepted):
    lines: list[tuple[float, str]] = []
    with accepted.salt() as salt:
        rendered = salt.show_sls(minion=SLOW, sls=["slow"])
        assert set(rendered) == {"slow-sleep", "slow-done"}
        started = time.monotonic()
        result = salt.apply(
            minions=list(MINIONS),
            sls=["slow"],
            log=lambda line: lines.append((time.monotonic() - started, line)),
        )
    assert result.ok, result.problems()
    assert result.jid and result.sls == ("slow",)
    when = {m: next(t for t, line in lines if line.startswith(f"{m}: ")) for m in MINIONS}
    fast = next(m for m in MINIONS if m != SLOW)
    # The fast minion's result is logged when it finishes, not when the slow one does.
    assert when[fast] < 2.0 and when[SLOW] >= 3.0, lines
    assert when[SLOW] - when[fast] >= 2.0, lines
    assert [s.state_id for s in result.minions[SLOW].states] == ["slow-sleep", "slow-done"]
    assert result.minions[SLOW].states[0].changed
    assert [s.state_id for s in result.minions[fast].states] == ["slow-done"]
    print(f"state.apply: {fast} logged at {when[fast]:.2f} s, {SLOW} at {when[SLOW]:.2f} s")


def test_the_pillar_is_written_through_the_wheel_client(accepted):
    site = accepted
    with site.salt() as salt:
        assert salt.pillar_root() == site.pillar_root
        first = salt.write_pillar(
            pillars={m: {"coop": {"host": m}, "secret": f"s3cret-of-{m}"} for m in MINIONS}
        )
        assert first.root == site.pillar_root
        assert first.written == tuple(sorted(MINIONS)) and not first.unchanged
        for m in MINIONS:
            assert salt.pillar(minion=m, unmask=True)["secret"] == f"s3cret-of-{m}"
        assert salt.pillar(minion=MINIONS[0])["secret"] != f"s3cret-of-{MINIONS[0]}"  # masked
        again = salt.write_pillar(
            pillars={m: {"coop": {"host": m}, "secret": f"s3cret-of-{m}"} for m in MINIONS}
        )
        assert again.unchanged == tuple(sorted(MINIONS)) and not again.written
        # A minion that is no longer given: no top entry, and its file holds nothing.
        gone = MINIONS[1]
        third = salt.write_pillar(pillars={MINIONS[0]: {"secret": "changed"}})
        assert third.written == (MINIONS[0],) and third.removed == (gone,)
        assert "secret" not in salt.pillar(minion=gone, unmask=True)
        assert "s3cret" not in (site.pillar_root / "hosts" / f"{gone}.sls").read_text()
        assert salt.write_pillar(pillars={MINIONS[0]: {"secret": "changed"}}).removed == ()
    top = yaml.safe_load((site.pillar_root / "top.sls").read_text())
    assert top == {"base": {MINIONS[0]: [f"hosts.{MINIONS[0]}"]}}
    mode = (site.pillar_root / "hosts").stat().st_mode & 0o777
    print(
        f"pillar files written by the wheel: hosts/ mode {mode:o}, root mode"
        f" {site.pillar_root.stat().st_mode & 0o777:o}"
    )


def test_secrets_are_scrubbed_from_a_state_run(accepted):
    secret = "t0p-" + os.urandom(6).hex()
    lines: list[str] = []
    with accepted.salt() as salt:
        salt.write_pillar(pillars={m: {"secret": secret} for m in MINIONS})
        result = salt.apply(
            minions=list(MINIONS), sls=["secret"], log=lines.append, redact=[secret]
        )
    assert result.ok, result.problems()
    assert secret not in repr(result) and secret not in "\n".join(lines)
    for m in MINIONS:
        (state,) = result.minions[m].states
        assert state.changes["stdout"] == "the secret is ***"  # the minion had it: *** here
        assert state.name == 'echo "the secret is ***"'


def test_a_restarted_api_is_logged_into_again_and_a_broken_stream_falls_back_to_the_job_cache(
    accepted, monkeypatch
):
    site = accepted
    # Which returns came from the master's job cache (the real lookup, recorded on the way).
    from_cache: list[str] = []
    real = SaltApi._cached_returns

    def recording(self, jid, minions):
        found = real(self, jid, minions)
        from_cache.extend(found)
        return found

    monkeypatch.setattr(SaltApi, "_cached_returns", recording)
    lines: list[tuple[float, str]] = []
    with site.salt() as salt:
        assert salt.ping(minions=list(MINIONS)).ok
        outcome: dict = {}
        started = time.monotonic()

        def run() -> None:
            outcome["result"] = salt.apply(
                minions=list(MINIONS),
                sls=["slow"],
                log=lambda line: lines.append((time.monotonic() - started, line)),
            )

        thread = threading.Thread(target=run)
        thread.start()
        fast = next(m for m in MINIONS if m != SLOW)
        wait_until(
            lambda: any(line.startswith(f"{fast}: ") for _, line in lines),
            10,
            "the fast minion's return",
        )
        # salt-api goes away mid-run, before the slow minion returns (its sessions with it),
        # and comes back.
        stopping = time.monotonic() - started
        site.stop("api")
        site.start_api()
        thread.join(timeout=60)
        result = outcome["result"]
        assert stopping < 2.5, stopping  # the slow minion sleeps 3 s
        assert result.ok, result.problems()
        assert from_cache == [SLOW]  # its return: from the job cache, once the api was back
        assert [s.state_id for s in result.minions[SLOW].states] == ["slow-sleep", "slow-done"]
        # The session died with the old api: the next request logs in again, by itself.
        assert salt.ping(minions=list(MINIONS)).ok


def test_a_stopped_minion_is_reported_as_not_returned_within_the_timeout(accepted):
    site = accepted
    site.stop(SLOW)
    fast = next(m for m in MINIONS if m != SLOW)
    with site.salt(timeout_s=4) as salt:
        started = time.monotonic()
        ping = salt.ping(minions=list(MINIONS), timeout_s=3)
        took = time.monotonic() - started
        assert ping.answered == (fast,) and ping.silent == (SLOW,)
        assert 3 <= took < 6, took
        result = salt.apply(minions=list(MINIONS), sls=["slow"])
    assert not result.ok
    assert result.minions[fast].ok and not result.minions[SLOW].returned
    assert result.problems() == [f"{SLOW}: did not answer (is the minion running and accepted?)"]
    assert result.duration_s < 8, result.duration_s


def test_from_env_takes_the_api_from_the_environment_and_never_shows_the_password(monkeypatch):
    import dagster as dg

    monkeypatch.setenv("INFRA_SALT_API_URL", "https://127.0.0.1:8000")
    monkeypatch.setenv("INFRA_SALT_API_USER", USER)
    monkeypatch.setenv("INFRA_SALT_API_PASSWORD", "pw-from-the-environment")
    monkeypatch.setenv("INFRA_SALT_API_CA_FILE", "/etc/coop/salt-api-ca.pem")
    resource = SaltResource.from_env()
    assert "pw-from-the-environment" not in repr(resource)
    with dg.build_resources({"salt": resource}) as built:
        assert built.salt.through_api and built.salt.api_url == "https://127.0.0.1:8000"
        assert built.salt.api_password == "pw-from-the-environment"
        assert built.salt.api_ca_file == "/etc/coop/salt-api-ca.pem"
    for name in ("URL", "USER", "PASSWORD", "CA_FILE"):
        monkeypatch.delenv(f"INFRA_SALT_API_{name}")
    assert not SaltResource.from_env().through_api  # the local master, as before
