"""Salt against the real thing: a salt master and minions on 127.0.0.1, started once for this module
by the local site's own code (`LocalSite.up()`, what `infra local up` runs), shared by every test
here, and stopped by pid at the end.

The site is tests/data/topology.salt.yaml: every role of the co-op on four minions, plus one
minion whose id is no host of the topology ("intruder-1"). States that are safe on this machine
are applied for real (files under each host's root in .state/, services on loopback ports);
the others (Jenkins, the npm cache) are rendered and dry-run.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from infra_assets.definitions import build_definitions
from infra_assets.highstate import role_states
from infra_assets.local_site.salt import minion_opts, salt_binary
from infra_assets.local_site.site import LocalSite
from infra_assets.model import load_topology
from infra_assets.paths import REPO_ROOT
from infra_assets.sites import ProcessSite
from resources.salt import SaltResource

pytestmark = pytest.mark.slow

TOPOLOGY = REPO_ROOT / "tests" / "data" / "topology.salt.yaml"
INTRUDER = "intruder-1"
INFRA = str(Path(sys.executable).parent / "infra")


class SaltSite:
    def __init__(self, state: Path):
        self.state = state
        self.site = LocalSite(TOPOLOGY, root=state / "local")
        self.topo = load_topology(TOPOLOGY)
        self.ps = ProcessSite(self.topo, root=self.site.root)
        self.env = {"INFRA_STATE_DIR": str(state), "INFRA_TOPOLOGY": str(TOPOLOGY)}

    def salt(self) -> SaltResource:
        return SaltResource(master_config=str(self.ps.salt_master_config()))

    def status(self) -> dict:
        out = subprocess.run(
            [INFRA, "local", "status", "--json", "--topology", str(TOPOLOGY)],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def secrets(self) -> dict:
        return yaml.safe_load(self.ps.secrets_file().read_text())

    def port(self, host: str, service: str) -> int:
        return self.ps.port(host, service)


# Module scope: only this module uses this site; its master and minions stop when it is done.
@pytest.fixture(scope="module")
def salt_site() -> SaltSite:
    state = REPO_ROOT / ".state" / f"pytest-salt-{os.getpid()}"
    shutil.rmtree(state, ignore_errors=True)
    site = SaltSite(state)
    old = {k: os.environ.pop(k, None) for k in ("INFRA_SECRETS_FILE", "INFRA_SALT_MASTER_CONFIG")}
    try:
        site.site.up()
        # A minion whose id is no host of the topology: its key must never be accepted.
        cfg = Path(site.ps.host_root(INTRUDER)) / "etc" / "salt" / "minion"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(minion_opts(site.ps, INTRUDER)))
        site.site.supervisor.start(
            "test-intruder-minion",  # not salt-minion-*: `infra local up` leaves it alone
            [salt_binary("salt-minion"), "-c", cfg.parent],
            log=cfg.parent / "minion.out",
            ready=(cfg.parent / "pki" / "minion" / "minion.pub").exists,
        )
        with site.salt() as salt:
            salt.accept_keys(minion_ids=list(site.topo.hosts))
            ping = salt.wait_for(minions=list(site.topo.hosts), timeout_s=60)
            assert ping.ok, f"minions did not answer: {ping.silent}"
            _wait_until(lambda: INTRUDER in salt.list_keys().pending, 30)
        yield site
    finally:
        site.site.down()
        link = site.ps.hosts_dir()
        if link.is_symlink():
            link.unlink()
        shutil.rmtree(state, ignore_errors=True)
        for key, value in old.items():
            if value is not None:
                os.environ[key] = value


@pytest.fixture
def on_site(salt_site: SaltSite, monkeypatch: pytest.MonkeyPatch) -> SaltSite:
    """Dagster works on the test site: its topology and its state folder."""
    for key, value in salt_site.env.items():
        monkeypatch.setenv(key, value)
    return salt_site


def run_assets(
    *keys: str,
    topology: Path = TOPOLOGY,
    run_config: dict | None = None,
    instance: dg.DagsterInstance | None = None,
):
    defs = build_definitions(load_topology(topology))
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        asset_selection=[dg.AssetKey.from_user_string(k) for k in ("topology", *keys)],
        instance=instance or dg.DagsterInstance.ephemeral(),
        run_config=run_config or {},
        raise_on_error=False,
    )


def materialization(result, key: str):
    events = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey.from_user_string(key)
    ]
    assert events, f"{key} was not materialised"
    return events[-1].step_materialization_data.materialization


def _wait_until(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def _restart_minion(site: SaltSite, host: str) -> None:
    """Stop a minion and bring it back with `up` (as a server reboots): it authenticates again,
    and a key the master no longer knows shows up pending."""
    site.site.supervisor.stop(f"salt-minion-{host}")
    site.site.up()


def _highstate_op(role: str) -> str:
    return "highstate__" + role.replace("-", "_")


# --- the local site ------------------------------------------------------------------------------


def test_status_json_reports_the_master_and_every_minion(salt_site):
    data = salt_site.status()
    salt = data["salt"]
    assert salt["master_config"] == str(salt_site.ps.salt_master_config())
    assert Path(salt["master_config"]).is_file()
    assert isinstance(salt["publish_port"], int) and isinstance(salt["ret_port"], int)
    assert salt["running"] is True
    minions = {m["id"]: m for m in salt["minions"]}
    assert set(minions) == set(salt_site.topo.hosts)
    assert all(m["running"] for m in minions.values())
    # Where each web host's nginx listens (its own port on loopback), before and after it runs.
    http = data["hosts"]["web-staging-1"]["services"]["http"]
    assert http["url"] == f"http://127.0.0.1:{salt_site.port('web-staging-1', 'http')}"


def test_up_twice_changes_nothing(salt_site):
    before = {r.name: r.pid for r in salt_site.site.supervisor.running()}
    out = subprocess.run(
        # --no-registry: the salt processes only (starting the registry is test_registry's).
        [INFRA, "local", "up", "--no-registry", "--topology", str(TOPOLOGY)],
        capture_output=True,
        text=True,
        env={**os.environ, **salt_site.env},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    after = {r.name: r.pid for r in salt_site.site.supervisor.running()}
    assert after == before


def test_master_runs_as_configured(salt_site):
    with salt_site.salt() as salt:
        opts = salt.opts()
    assert opts["interface"] == "127.0.0.1"
    assert opts["auto_accept"] is False and opts["open_mode"] is False
    assert opts["file_roots"] == {"base": [str(REPO_ROOT / "salt")]}
    assert opts["pillar_roots"] == {"base": [str(salt_site.ps.pillar_root())]}


# --- keys gated by the topology ------------------------------------------------------------------


def test_minions_accepts_exactly_the_declared_hosts(on_site):
    with on_site.salt() as salt:
        # support-2 comes up as a new server would: its key pending. The intruder has been
        # pending all along.
        salt.delete_keys(minion_ids=["support-2"])
        _restart_minion(on_site, "support-2")
        _wait_until(lambda: "support-2" in salt.list_keys().pending, 60)
        result = run_assets("minions")
        assert result.success
        md = materialization(result, "minions").metadata
        assert md["accepted_this_run"].value == ["support-2"]
        assert md["undeclared_keys"].value == [INTRUDER]
        assert sorted(md["answering"].value) == sorted(on_site.topo.hosts)
        assert f"| {INTRUDER} | (not in the topology) | pending | - | left unaccepted |" in (
            md["minions"].value
        )
        keys = salt.list_keys()
        assert set(keys.accepted) == set(on_site.topo.hosts)
        assert INTRUDER in keys.pending
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"minion_keys_match_topology": True, "declared_minions_answer": True}


def test_a_host_removed_from_the_topology_loses_its_key(on_site, tmp_path, monkeypatch):
    data = yaml.safe_load(TOPOLOGY.read_text())
    del data["hosts"]["support-2"]
    smaller = tmp_path / "topology.yaml"
    smaller.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("INFRA_TOPOLOGY", str(smaller))
    result = run_assets("minions", topology=smaller)
    assert result.success
    md = materialization(result, "minions").metadata
    assert md["deleted_keys"].value == ["support-2"]
    with on_site.salt() as salt:
        assert "support-2" not in salt.list_keys().accepted
        # Back in the topology (and its minion started again): accepted again.
        _restart_minion(on_site, "support-2")
        try:
            _wait_until(lambda: "support-2" in salt.list_keys().pending, 60)
        except AssertionError:
            print(salt.list_keys())
            print(on_site.status()["salt"]["minions"])
            log = Path(on_site.ps.host_root("support-2"), "var/log/salt/minion")
            print(log.read_text()[-3000:])
            raise
        monkeypatch.setenv("INFRA_TOPOLOGY", str(TOPOLOGY))
        result = run_assets("minions")
        assert result.success
        assert materialization(result, "minions").metadata["accepted_this_run"].value == [
            "support-2"
        ]
        assert salt.ping(minions=["support-2"]).ok


def test_the_keys_check_fails_on_a_stranger(on_site):
    with on_site.salt() as salt:
        salt.accept_keys(minion_ids=[INTRUDER])
        try:
            result = run_assets("minions")
            assert result.success
            md = materialization(result, "minions").metadata
            # The asset itself deletes an accepted key that is no host of the topology ...
            assert md["deleted_keys"].value == [INTRUDER]
            assert INTRUDER not in salt.list_keys().accepted
        finally:
            salt.delete_keys(minion_ids=[INTRUDER])
    # ... and the blocking check compares what the master accepts with the topology.
    from infra_assets.minions import check_keys
    from resources.salt import KeyList

    bad = check_keys(KeyList((INTRUDER, "support-1"), (), (), ()), on_site.topo)
    assert not bad.passed
    assert "accepted, but not a host of the topology: intruder-1" in bad.description
    assert "a host of the topology without an accepted key: support-2 (no key)" in bad.description


def test_the_keys_check_blocks_the_highstate_while_a_declared_host_has_no_key(
    on_site, tmp_path, monkeypatch
):
    # ghost-1 is declared but no minion of that id ever started: no key at all.
    data = yaml.safe_load(TOPOLOGY.read_text())
    data["hosts"]["ghost-1"] = {"location": "local", "instance": 2, "roles": ["web-staging"]}
    bigger = tmp_path / "topology.yaml"
    bigger.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("INFRA_TOPOLOGY", str(bigger))
    # highstate/salt-minion runs on support-2 only, whose key is accepted: were it not blocked,
    # it would materialise.
    result = run_assets("minions", "highstate/salt-minion", topology=bigger)
    assert materialization(result, "minions").metadata["missing_keys"].value == ["ghost-1"]
    check = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not check["minion_keys_match_topology"].passed
    assert "a host of the topology without an accepted key: ghost-1 (no key)" in (
        check["minion_keys_match_topology"].description
    )
    op = _highstate_op("salt-minion")
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert op not in started, "the highstate ran although the keys check failed"
    assert not [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["highstate", "salt-minion"])
    ]
    assert not result.success


def test_a_denied_key_under_a_declared_name_is_reported(on_site):
    """Another machine presents itself as support-2 with a key of its own (an impostor, or the
    server rebuilt): the master denies that key; `minions` names it and warns, and the blocking
    keys check fails."""
    root = Path(tempfile.mkdtemp(prefix="impostor-"))  # short: salt's sockets live under it
    cfg = root / "etc" / "salt" / "minion"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(yaml.safe_dump({**minion_opts(on_site.ps, "support-2"), "root_dir": str(root)}))
    sup = on_site.site.supervisor
    instance = dg.DagsterInstance.ephemeral()
    with on_site.salt() as salt:
        try:
            sup.start(
                "test-impostor-minion",
                [salt_binary("salt-minion"), "-c", cfg.parent],
                log=root / "minion.out",
                ready=(cfg.parent / "pki" / "minion" / "minion.pub").exists,
            )
            _wait_until(lambda: "support-2" in salt.list_keys().denied, 60)
            result = run_assets("minions", instance=instance)
            # `minions` is recorded, and its blocking keys check fails: a machine presents a
            # declared host's name with another key, so no state may be applied until it is
            # found (the check's failure stops every highstate/<role> downstream).
            checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
            keys_check = checks["minion_keys_match_topology"]
            assert not keys_check.passed
            assert "a key under a declared host's name was refused: support-2" in (
                keys_check.description
            )
            assert keys_check.metadata["refused_under_declared_names"].value == ["support-2"]
            md = materialization(result, "minions").metadata
            assert md["denied_keys"].value == ["support-2"]
            assert md["rejected_keys"].value == []
            assert "| support-2 | salt-minion, jenkins-agent | accepted + **denied** | yes |" in (
                md["minions"].value
            )
            warnings = [
                e.user_message
                for e in instance.all_logs(result.run_id)
                if e.level == logging.WARNING and "support-2" in e.user_message
            ]
            assert any("a key under its name was denied" in w for w in warnings), warnings
        finally:
            sup.stop("test-impostor-minion")
            shutil.rmtree(root, ignore_errors=True)
            salt.delete_keys(minion_ids=["support-2"], states=["denied"])
        # The genuine support-2 keeps its accepted key and answers.
        assert "support-2" in salt.list_keys().accepted
        assert "support-2" not in salt.list_keys().denied
        assert salt.ping(minions=["support-2"]).ok


# --- the pillar ----------------------------------------------------------------------------------


def test_each_minion_sees_only_its_own_secrets(on_site):
    result = run_assets("salt_pillar")
    assert result.success
    secrets = on_site.secrets()
    production = [secrets["postgres"][app]["production"] for app in ("hello", "shop-front")]
    staging = [secrets["postgres"][app]["staging"] for app in ("hello", "shop-front")]
    registry = list(secrets["registry"]["users"].values())
    with on_site.salt() as salt:
        pillars = {host: salt.pillar(minion=host, unmask=True) for host in on_site.topo.hosts}
        # Salt masks pillar values by default: what the minion returns here is the real thing.
        assert salt.pillar(minion="web-staging-1")["apps"]["hello"]["database"]["password"] == (
            "**********"
        )
    dumps = {host: json.dumps(p) for host, p in pillars.items()}
    # A web-staging minion never receives production database passwords ...
    assert not any(pw in dumps["web-staging-1"] for pw in production)
    assert pillars["web-staging-1"]["apps"]["hello"]["database"]["password"] == staging[0]
    # ... and the other way round.
    assert not any(pw in dumps["web-production-1"] for pw in staging)
    # The build agent and the support server get no database password at all.
    for host in ("support-1", "support-2"):
        assert not any(pw in dumps[host] for pw in production + staging), host
    # The registry host holds bcrypt hashes of the registry's passwords, never the passwords.
    assert not any(pw in dumps["support-1"] for pw in registry)
    assert pillars["support-1"]["registry"]["htpasswd"].count("$2b$") == 2
    # Pull account on web hosts, push account on the agent.
    assert pillars["web-production-1"]["registry_client"]["user"] == "deploy"
    assert pillars["support-2"]["registry_client"]["user"] == "ci"
    # Each minion's pillar names it and its roles, from the topology.
    assert pillars["web-staging-1"]["roles"] == ["web-staging", "postgres-staging"]
    assert pillars["support-1"]["coop"]["addresses"]["docker-registry"] == "10.127.9.1"
    # The metadata names the secrets each minion gets, never their values.
    md = materialization(result, "salt_pillar").metadata
    text = json.dumps({k: str(v.value) for k, v in md.items()})
    assert not any(pw in text for pw in production + staging + registry)
    granted = md["secrets_by_minion"].value
    assert "apps.hello.database.password" in granted["web-staging-1"]
    assert not any("production" in name for name in granted["web-staging-1"])


# --- every role's states -------------------------------------------------------------------------


def test_every_role_renders_with_the_pillar_from_the_topology(on_site):
    roles = role_states()
    assert set(roles) == set(on_site.topo.types) | {"dns"}
    with on_site.salt() as salt:
        for role, states in roles.items():
            host = sorted(on_site.topo.hosts_with_role(role))[0]
            rendered = salt.show_sls(minion=host, sls=states)
            assert rendered, role
            assert "common-host-record" in rendered, role
            # Every file a state manages is under the host's root on the local site.
            for state_id, name in _file_names(rendered):
                assert name.startswith(on_site.ps.host_root(host) + "/"), (role, state_id, name)


def test_dry_run_of_every_role_reports_what_would_change(on_site):
    roles = sorted({r for h in on_site.topo.hosts.values() for r in h.roles})
    run_config = {"ops": {_highstate_op(r): {"config": {"dry_run": True}} for r in roles}}
    result = run_assets(*[f"highstate/{r}" for r in roles], run_config=run_config)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    # A dry run is an observation, never a materialisation.
    materialised = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialised == {"topology"}
    observed = {
        e.asset_key.to_user_string(): e.event_specific_data.asset_observation.metadata
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    }
    assert set(observed) == {f"highstate/{r}" for r in roles}
    for key, md in observed.items():
        assert md["dry_run"].value is True and md["failed"].value == 0, key
    # The npm cache is never applied here: its dry run says what it would do, and did nothing.
    npm = observed["highstate/npm-cache"]
    assert "| support-1 | npm-cache: npm-cache-install | cmd.run | would change |" in (
        npm["results"].value
    )
    assert not Path(on_site.ps.host_root("support-1"), "etc/verdaccio/config.yaml").exists()


# --- real applies --------------------------------------------------------------------------------


def test_web_role_runs_nginx_on_its_own_loopback_port(on_site):
    result = run_assets("highstate/web-staging")
    assert result.success, _failure(result)
    md = materialization(result, "highstate/web-staging").metadata
    assert md["failed"].value == 0 and md["dry_run"].value is False
    url = on_site.status()["hosts"]["web-staging-1"]["services"]["http"]["url"]
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
        assert response.read() == b"web-staging-1 staging ok\n"
    root = Path(on_site.ps.host_root("web-staging-1"))
    assert (root / "etc/nginx/nginx.conf").is_file()
    assert (root / "etc/containers/auth.json").stat().st_mode & 0o777 == 0o600
    # Applied again: nothing changes.
    again = run_assets("highstate/web-staging")
    assert again.success
    assert materialization(again, "highstate/web-staging").metadata["changed"].value == 0


def test_a_failing_state_fails_the_materialisation_and_names_the_state(on_site):
    port = on_site.port("web-production-1", "http")
    pid = _daemon_pid(on_site, "web-production-1", "http")
    if pid:  # make sure this host's nginx has to start (it is stopped again below)
        os.kill(pid, 15)
        _wait_until(lambda: not _daemon_pid(on_site, "web-production-1", "http"), 15)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        result = run_assets("highstate/web-production")
    finally:
        squatter.close()
    assert not result.success
    message = _failure(result)
    assert "highstate/web-production" in message
    assert "web-production-1: state web: web-nginx-running (cmd.run) failed" in message
    assert "Address already in use" in message
    assert not [
        e for e in result.get_asset_materialization_events() if "highstate" in str(e.asset_key)
    ]
    # With the port free again, the same asset succeeds.
    result = run_assets("highstate/web-production")
    assert result.success, _failure(result)


def test_support_roles_serve_dns_and_the_registry(on_site):
    result = run_assets("highstate/dns", "highstate/docker-registry", "highstate/salt-master")
    assert result.success, _failure(result)
    # dnsmasq answers the address plan, and nothing else (it forwards nothing off this machine).
    dns_port = on_site.port("support-1", "dns")
    assert _dns_a(dns_port, "web-staging-1.local.coop.internal") == (0, ["10.127.5.1"])
    assert _dns_a(dns_port, "docker-registry.local.coop.internal") == (0, ["10.127.9.1"])
    assert _dns_a(dns_port, "example.com")[0] != 0
    # The registry: TLS with the certificate from the secrets, htpasswd auth.
    secrets = on_site.secrets()
    ctx = ssl.create_default_context(cadata=secrets["registry"]["tls"]["cert"])
    url = f"https://127.0.0.1:{on_site.port('support-1', 'registry')}/v2/"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(url, context=ctx, timeout=5)
    assert anonymous.value.code == 401
    auth = base64.b64encode(f"deploy:{secrets['registry']['users']['deploy']}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(request, context=ctx, timeout=5) as response:
        assert response.status == 200
    # The salt master's settings, as the state writes them for a server.
    master_d = Path(on_site.ps.host_root("support-1"), "etc/salt/master.d/coop.conf")
    written = yaml.safe_load(master_d.read_text())
    assert written["auto_accept"] is False and written["interface"] == "127.0.0.1"
    assert written["file_roots"] == {"base": [str(REPO_ROOT / "salt")]}


def test_postgres_role_gives_each_app_a_role_and_a_database(on_site):
    result = run_assets("highstate/postgres-staging")
    assert result.success, _failure(result)
    port = on_site.port("web-staging-1", "postgres")
    secrets = on_site.secrets()
    for app, db in (("hello", "hello_staging"), ("shop-front", "shop_front_staging")):
        out = _psql(port, db, secrets["postgres"][app]["staging"])
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{db}|{db}"
    assert _psql(port, "hello_staging", "wrong").returncode != 0
    again = run_assets("highstate/postgres-staging")
    assert materialization(again, "highstate/postgres-staging").metadata["changed"].value == 0


def test_down_stops_what_up_and_the_states_started_and_nothing_else(salt_site):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        running = salt_site.status()["hosts"]["web-staging-1"]["services"]["http"]
        assert running["running"] is True
        salt_site.site.down()
        status = salt_site.status()
        assert status["salt"]["running"] is False
        assert not any(m["running"] for m in status["salt"]["minions"])
        assert not any(
            s["running"] for h in status["hosts"].values() for s in h["services"].values()
        )
        assert not salt_site.site.supervisor.running()
        assert bystander.poll() is None
        salt_site.site.down()  # safe twice
    finally:
        bystander.kill()
        bystander.wait()


# --- helpers -------------------------------------------------------------------------------------


def _failure(result) -> str:
    return "\n".join(
        str(e.event_specific_data.error.message)
        for e in result.all_events
        if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
    )


def _file_names(rendered: dict) -> list[tuple[str, str]]:
    """(id, path) of every file a file.* state manages, in `state.show_sls` high data."""
    found = []
    for state_id, body in rendered.items():
        for module, args in body.items():
            if module != "file" or not isinstance(args, list):
                continue
            names = [a["name"] for a in args if isinstance(a, dict) and "name" in a]
            # `names:` (one state per path; an item may be a path or {path: [args]})
            for a in args:
                if isinstance(a, dict) and "names" in a:
                    names += [next(iter(n)) if isinstance(n, dict) else n for n in a["names"]]
            found += [(state_id, str(name)) for name in names or [state_id]]
    return found


def _daemon_pid(site: SaltSite, host: str, service: str) -> int | None:
    from infra_assets.local_site.hosts import daemon_pid

    return daemon_pid(site.ps, host, service)


def _dns_a(port: int, name: str) -> tuple[int, list[str]]:
    """Ask 127.0.0.1:port for the A records of `name` (a plain DNS query over UDP)."""
    query = struct.pack(">HHHHHH", 0x2B2B, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(query, ("127.0.0.1", port))
        data, _ = sock.recvfrom(1500)
    rcode = data[3] & 0x0F
    answers = struct.unpack(">H", data[6:8])[0]
    offset = len(query)
    addresses = []
    for _ in range(answers):
        offset += 2  # a compressed pointer to the name
        rtype, _cls, _ttl, length = struct.unpack(">HHIH", data[offset : offset + 10])
        offset += 10
        if rtype == 1:
            addresses.append(socket.inet_ntoa(data[offset : offset + length]))
        offset += length
    return rcode, addresses


def _psql(port: int, db: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            db,
            db,
            "-Atc",
            "select current_user, current_database()",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
        timeout=30,
    )
