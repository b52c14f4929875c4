"""The parts of configuration management that need no running salt: the sites seam, the secrets
file, the pillar generated from the topology, the pillar tree on disk, parsing salt's answers
(recorded from a real master: tests/data/salt/), and the Dagster graph."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.parse
from pathlib import Path

import bcrypt
import dagster as dg
import pytest
import yaml
from cryptography import x509

from infra_assets.configuration.pillar import render_pillars, secret_paths
from infra_assets.topology.model import TopologyError, load_topology
from infra_assets.topology.secrets import SecretsError, ensure_secrets, load_secrets, required_keys
from infra_assets.topology.sites import CloudSite, LabSite, SiteError, site_for
from resources.salt import ApplyResult, MinionRun, parse_state_return, write_pillar_tree

DATA = Path(__file__).parents[1] / "data"


@pytest.fixture
def coop(repo_root):
    return load_topology(repo_root / "topology.yaml")


@pytest.fixture
def coop_secrets(tmp_path, coop, monkeypatch):
    """A secrets file for the co-op's topology, as a person would write it (values made up)."""
    path = tmp_path / "secrets.yaml"
    secrets = ensure_secrets(path, coop, tls_names=["docker-registry.nz-por-1.coop.internal"])
    monkeypatch.setenv("INFRA_SECRETS_FILE", str(path))
    return secrets


# --- sites ---------------------------------------------------------------------------------------


def test_the_topology_picks_the_site(coop, repo_root, tmp_path):
    cloud = site_for(coop)
    assert isinstance(cloud, CloudSite)
    assert cloud.salt_master_config() == Path("/etc/salt/master")
    assert cloud.listen("pg-staging-1", "postgres-staging") == "10.100.7.1"
    assert cloud.listen("support-1", "docker-registry") == "10.100.9.1"  # its service address
    assert cloud.port("web-staging-1", "http") == 80
    lab = site_for(load_topology(repo_root / "topology.lab.yaml"), root=tmp_path)
    assert isinstance(lab, LabSite)
    # The lab's hosts are servers: planned addresses, standard ports.
    assert lab.listen("web-staging-1", "web-staging") == "10.127.5.1"
    assert lab.port("web-staging-1", "http") == 80
    with pytest.raises(SiteError, match="reaches it through salt-api at https://10.127.1.1:8000"):
        lab.salt_master_config()


def test_only_the_lab_s_cache_hosts_go_out_and_only_through_its_egress_proxy(
    coop, coop_secrets, repo_root, tmp_path
):
    lab = site_for(load_topology(repo_root / "topology.lab.yaml"), root=tmp_path)
    support = {a.address for a in lab.plan.for_host("support-1")}  # the npm cache's host
    uplinks = ["files.pythonhosted.org:443", "pypi.org:443", "registry.npmjs.org:443"]
    assert lab.egress_allow(127) == {a: uplinks for a in support}
    assert lab.egress_proxy("support-1") == "http://169.254.127.1:3128"
    assert lab.egress_proxy("web-staging-1") is None
    ensure_secrets(tmp_path / "secrets.yaml", lab.topo, tls_names=["x"])
    pillar = render_pillars(lab, load_secrets(tmp_path / "secrets.yaml", lab.topo))
    assert pillar["support-1"]["npm_cache"]["https_proxy"] == "http://169.254.127.1:3128"
    # A cloud's cache host goes out through its router: no proxy in its pillar.
    cloud = render_pillars(site_for(coop), coop_secrets)
    assert "https_proxy" not in cloud["support-1"]["npm_cache"]


def test_the_registry_notifies_the_webhook_endpoint_with_a_token_of_its_own(
    coop, coop_secrets, repo_root, tmp_path, monkeypatch
):
    """The lab's registry tells the demo's webhook endpoint (on the lab's link) of each push,
    with a bearer token derived from webhooks.secret (never the secret itself; hidden from logs
    like a secret); a cloud's only when $INFRA_WEBHOOKS_URL says where the endpoint is."""
    from infra_assets.topology.secrets import registry_notify_token

    lab = site_for(load_topology(repo_root / "topology.lab.yaml"), root=tmp_path)
    secrets = ensure_secrets(tmp_path / "secrets.yaml", lab.topo, tls_names=["x"])
    notify = render_pillars(lab, secrets)["support-1"]["registry"]["notify"]
    secret = secrets.get("webhooks", "secret")
    assert notify == {
        "url": "http://169.254.127.1:8700/registry",
        "token": registry_notify_token(secret.encode()),
    }
    assert notify["token"] != secret and notify["token"] in secrets.values()
    monkeypatch.delenv("INFRA_WEBHOOKS_URL", raising=False)
    assert "notify" not in render_pillars(site_for(coop), coop_secrets)["support-1"]["registry"]


def test_a_topology_mixing_the_lab_and_a_cloud_is_refused(write_topology):
    def edit(data):
        data["locations"]["lab"] = {"number": 101, "cloud": "lab"}

    # Refused when the topology is read, before any site is picked (tests/topology/test_topology_model.py).
    with pytest.raises(TopologyError, match=r"locations\.lab\.cloud: 'lab' \(this machine\)"):
        load_topology(write_topology(edit=edit))


def test_the_gone_local_site_is_a_clear_error(write_topology):
    def edit(data):
        data["locations"]["nz-por-1"]["cloud"] = "local"

    with pytest.raises(TopologyError, match=r"'local' \(the process-based local site\) is gone"):
        load_topology(write_topology(edit=edit))


def test_the_cloud_site_wants_the_secrets_file_from_the_environment(coop, monkeypatch):
    monkeypatch.delenv("INFRA_SECRETS_FILE", raising=False)
    with pytest.raises(SiteError, match=r"\$INFRA_SECRETS_FILE is not set"):
        site_for(coop).secrets_file()


# --- secrets -------------------------------------------------------------------------------------


def test_required_secrets_follow_the_topology(coop, repo_root):
    keys = {".".join(k) for k in required_keys(coop)}
    assert keys == {
        "registry.http_secret",
        "registry.users.ci",
        "registry.users.deploy",
        "registry.tls.cert",
        "registry.tls.key",
        "postgres.hello.staging",
        "postgres.hello.production",
        "jenkins.admin_password",
        # how Dagster reaches the master from outside its host (salt/salt/api.sls)
        "salt.api.password",
        "salt.api.tls.cert",
        "salt.api.tls.key",
        # the dagster role (salt/dagster); and dagster.accounts, a mapping, checked apart
        "dagster.postgres_password",
        "dagster.tls.cert",
        "dagster.tls.key",
    }
    lab = load_topology(repo_root / "topology.lab.yaml")  # no jenkins master
    # no jenkins master; hello's secret (SESSION_KEY) for each environment with web hosts
    assert {k[0] for k in required_keys(lab)} == {
        "registry", "postgres", "salt", "apps", "dagster"
    }  # fmt: skip
    assert {k for k in required_keys(lab) if k[0] == "apps"} == {
        ("apps", "hello", "staging", "SESSION_KEY"),
        ("apps", "hello", "production", "SESSION_KEY"),
    }


def test_a_bad_secrets_file_lists_every_problem_and_no_value(tmp_path, coop):
    path = tmp_path / "secrets.yaml"
    path.write_text("registry:\n  http_secret: s3cret-value\n  users: {ci: ''}\njenkins: {}\n")
    path.chmod(0o644)
    with pytest.raises(SecretsError) as err:
        load_secrets(path, coop)
    text = str(err.value)
    assert text.startswith(f"{path}: 15 problems in the secrets")
    assert "dagster.accounts: missing: the topology needs it (a host has the role dagster" in text
    assert "registry.users.ci: must be a non-empty string" in text
    assert "registry.users.deploy: missing: the topology needs it" in text
    assert (
        "postgres.hello.production: missing: the topology needs it (app 'hello' (database: true)"
        " and a host" in text
    )
    assert f"readable by others (mode 0o644): chmod 600 {path}" in text
    assert "s3cret-value" not in text
    with pytest.raises(SecretsError, match="no such file"):
        load_secrets(tmp_path / "missing.yaml", coop)


def test_throwaway_secrets_are_made_once_and_kept(tmp_path, coop):
    path = tmp_path / "local" / "secrets.yaml"
    first = ensure_secrets(path, coop, tls_names=["registry.example", "127.0.0.1"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ensure_secrets(path, coop, tls_names=["registry.example", "127.0.0.1"])
    assert again.data == first.data
    cert = x509.load_pem_x509_certificate(first.get("registry", "tls", "cert").encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["registry.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # A PEM key counts as a secret line by line too (a diff would show it so).
    key_lines = first.get("registry", "tls", "key").splitlines()
    assert key_lines[1] in first.values()


# A lab number no other test or developer uses: nothing may start on it.
UNUSED_LAB = 121


def _infra_lab_up(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    from lab.site import write_lab_topology

    topology = write_lab_topology(tmp_path, UNUSED_LAB)
    return subprocess.run(
        [str(Path(sys.executable).parent / "infra"), "lab", "up", "--topology", str(topology)],
        capture_output=True,
        text=True,
        env={**env, "INFRA_STATE_DIR": str(tmp_path / "state")},
        timeout=120,
    )


def _nothing_started() -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"coop-lab-{UNUSED_LAB}" not in netns.split()
    assert not Path(f"/run/coop-infra/lab-{UNUSED_LAB}.owner").exists()


def test_lab_up_refuses_a_bad_secrets_file_before_starting_anything(tmp_path):
    bad = tmp_path / "secrets.yaml"
    bad.write_text("registry: {users: {ci: x}}\n")
    bad.chmod(0o600)
    out = _infra_lab_up(tmp_path, {**os.environ, "INFRA_SECRETS_FILE": str(bad)})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert f"{bad}: " in out.stderr and "problems in the secrets" in out.stderr
    assert "registry.users.deploy: missing: the topology needs it" in out.stderr
    _nothing_started()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'registry:\n  http_secret: "S3CRETVALUE\n  users: {ci: x}\n',
            "not valid YAML on line 2 (in or after the key registry.http_secret): found "
            "unexpected end of stream; the line is not shown (secrets)",
        ),
        (
            "registry:\n  http_secret: S3CRETVALUE: x\n",
            "not valid YAML on line 2 (in or after the key registry.http_secret): mapping values "
            "are not allowed here",
        ),
        ("registry: S3CRETVALUE\n", "registry: must be a mapping of http_secret, tls, users"),
        ("registry:\n  users: S3CRETVALUE\n", "registry.users: must be a mapping of ci, deploy"),
        # YAML's own message would quote the value: a password starting with ! or * reads as
        # a tag or an alias.
        (
            "registry:\n  http_secret: !S3CRETVALUE\n",
            "not valid YAML on line 2 (in or after the key registry.http_secret): could not"
            " determine a constructor for the tag '…'",
        ),
        (
            "registry:\n  http_secret: *S3CRETVALUE\n",
            "not valid YAML on line 2 (in or after the key registry.http_secret): found"
            " undefined alias '…'",
        ),
        # YAML parses these, then cannot convert them (its error would quote the value).
        ("registry:\n  http_secret: !!int S3CRETVALUE\n", "quote each secret value"),
        ("registry:\n  http_secret: 2024-13-45\n", "quote each secret value"),
    ],
    ids=[
        "unclosed-quote",
        "colon-in-value",
        "group-not-a-mapping",
        "users-not-a-mapping",
        "tag",
        "alias",
        "int-tag",
        "impossible-date",
    ],
)
def test_lab_up_refuses_a_broken_throwaway_secrets_file_without_showing_it(
    tmp_path, text, expected
):
    """The lab's own secrets file (no $INFRA_SECRETS_FILE), edited by hand and broken: a clear
    error that names the file, the line and the key, never the line's text."""
    secrets = tmp_path / "state" / "lab" / f"lab-{UNUSED_LAB}" / "secrets.yaml"
    secrets.parent.mkdir(parents=True)
    secrets.write_text(text)
    secrets.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "INFRA_SECRETS_FILE"}
    out = _infra_lab_up(tmp_path, env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert f"{secrets}: 1 problem in the secrets" in out.stderr
    assert expected in out.stderr
    assert "S3CRETVALUE" not in out.stdout + out.stderr
    assert secrets.read_text() == text  # not rewritten
    _nothing_started()


# --- the pillar ----------------------------------------------------------------------------------


def test_each_host_gets_only_the_secrets_its_roles_need(coop, coop_secrets):
    pillars = render_pillars(site_for(coop), coop_secrets)
    granted = {host: set(secret_paths(p, coop_secrets)) for host, p in pillars.items()}
    assert granted["web-staging-1"] == {
        "apps.hello.database.password",
        "apps.hello.secrets.DATABASE_URL",  # the password inside it
        "registry_client.password",
        "registry_client.ca_cert",
    }
    password = coop_secrets.get("postgres", "hello", "staging")
    assert pillars["web-staging-1"]["apps"]["hello"]["secrets"]["DATABASE_URL"] == (
        f"postgresql://hello_staging:{urllib.parse.quote(password, safe='')}@10.100.7.1:5432"
        "/hello_staging?sslmode=require"
    )
    assert pillars["web-staging-1"]["apps"]["hello"]["database"]["password"] == coop_secrets.get(
        "postgres", "hello", "staging"
    )
    assert pillars["web-production-1"]["apps"]["hello"]["database"]["password"] == (
        coop_secrets.get("postgres", "hello", "production")
    )
    assert granted["pg-staging-1"] == {"postgres.databases.hello_staging.password"}
    assert granted["pg-production-1"] == {
        "postgres.databases.hello_production.password",
        "postgres.databases.dagster.password",  # the instance of the Dagster on support-1
    }
    assert granted["support-2"] == {"registry_client.password", "registry_client.ca_cert"}
    assert pillars["support-2"]["registry_client"]["user"] == "ci"
    assert "jenkins.admin_password" in granted["support-1"]
    # The registry host: bcrypt hashes that verify, never the passwords.
    assert "registry.htpasswd" not in granted["support-1"]
    # The read-only door's htpasswd holds the pull account alone, the push door's the push
    # account alone: a pull account's password opens nothing that writes.
    registry = pillars["support-1"]["registry"]
    for key, users in (("htpasswd", ["deploy"]), ("htpasswd_push", ["ci"])):
        lines = dict(line.split(":", 1) for line in registry[key].split())
        assert sorted(lines) == users, key
        for user in users:
            password = coop_secrets.get("registry", "users", user).encode()
            assert bcrypt.checkpw(password, lines[user].encode())


def test_the_pillar_says_where_each_service_listens_on_a_server(coop, coop_secrets):
    pillars = render_pillars(site_for(coop), coop_secrets)
    assert pillars["web-staging-1"]["web"] == {
        "listen": "10.100.5.1",
        "port": 80,
        "environment": "staging",
        "url": "http://10.100.5.1:80",
        "https_port": 443,
        # a cloud's web hosts get certificates from Let's Encrypt, trusted by the host already
        "acme": {
            "directory": "https://acme-v02.api.letsencrypt.org/directory",
            "email": "",
            "ca_cert": "",
        },
    }
    assert pillars["web-staging-1"]["apps"]["hello"]["url"] == "https://hello.staging.example.coop/"
    assert pillars["web-staging-1"]["apps"]["hello"]["database"]["host"] == "10.100.7.1"
    assert pillars["pg-production-1"]["postgres"]["network"] == "10.100.0.0/16"
    master = pillars["support-1"]["salt"]["master"]
    assert master["interface"] == "10.100.1.1" and master["pillar_roots"] == ["/srv/pillar"]
    assert pillars["web-staging-1"]["salt"]["minion"]["master"] == "10.100.1.1"
    assert "site" not in pillars["support-1"]  # the states never ask where they run
    hosts = pillars["support-1"]["dns"]["hosts"].splitlines()
    assert any(h.startswith("10.100.5.1\tweb-staging-1.nz-por-1.coop.internal") for h in hosts)
    # The apps' domains: at their environment's web hosts (the lab's ACME server asks here).
    assert "10.100.5.1\thello.staging.example.coop" in hosts
    assert "10.100.6.1\thello.example.coop" in hosts
    # Pulls and pushes reach the registry by its address or any of its DNS names: the CA is
    # trusted under each (podman looks it up by the name in the image reference).
    client = pillars["web-staging-1"]["registry_client"]
    assert client["address"] == "10.100.9.1:5000" and client["url"] == "https://10.100.9.1:5000"
    assert {
        "10.100.9.1:5000",
        "docker-registry.nz-por-1.coop.internal:5000",
        "docker-registry-1.nz-por-1.coop.internal:5000",
    } <= set(client["trusted_as"])
    # The web hosts pull at the read-only door (5000), the build agent pushes at the push door
    assert (client["user"], pillars["support-2"]["registry_client"]["address"]) == (
        "deploy",
        "10.100.9.1:5001",
    )
    # The guarded ports and who may connect, written by hand from topology.yaml (primary
    # addresses: support-1 10.100.1.1, where Dagster runs too; support-2, the build agent,
    # 10.100.2.1; web-staging-1 .5.1; web-production-1 .6.1; pg-staging-1 .7.1; pg-production-1
    # .8.1), not derived from the code that writes the rules
    every_host = [
        "10.100.1.1",
        "10.100.2.1",
        "10.100.5.1",
        "10.100.6.1",
        "10.100.7.1",
        "10.100.8.1",
    ]
    matrix = {
        ("support-1", 4505): every_host,  # salt publish: every minion
        ("support-1", 4506): every_host,  # salt return
        ("support-1", 4873): ["10.100.2.1"],  # the npm cache: the build agent
        ("support-1", 3141): ["10.100.2.1"],  # the PyPI cache: the build agent
        # the registry's read-only door: Dagster, the agent, the two web hosts
        ("support-1", 5000): ["10.100.1.1", "10.100.2.1", "10.100.5.1", "10.100.6.1"],
        ("support-1", 5001): ["10.100.1.1", "10.100.2.1"],  # registry push: agent, Dagster
        ("support-1", 8000): ["10.100.1.1"],  # salt-api: Dagster
        ("support-1", 8080): ["10.100.1.1", "10.100.2.1"],  # Jenkins: agent, Dagster
        ("pg-staging-1", 5432): ["10.100.5.1"],  # the staging web host
        # the production web host, and Dagster's (its instance's database)
        ("pg-production-1", 5432): ["10.100.1.1", "10.100.6.1"],
    }
    guarded = {
        (host, rule["port"]): rule["from"]
        for host, pillar in pillars.items()
        for rule in pillar["firewall"]["rules"]
    }
    assert guarded == matrix
    # pg_hba: each database from its environment's web hosts and the database host itself;
    # Dagster's from its host
    hba = {
        name: db["clients"]
        for host in ("pg-staging-1", "pg-production-1")
        for name, db in pillars[host]["postgres"]["databases"].items()
    }
    assert hba == {
        "hello_staging": ["10.100.7.1", "10.100.5.1"],
        "hello_production": ["10.100.8.1", "10.100.6.1"],
        "dagster": ["10.100.8.1", "10.100.1.1"],  # the Dagster host (support-1)
    }
    # The same input gives the same pillar (the registry's hashes too): applies change nothing.
    assert render_pillars(site_for(coop), coop_secrets) == pillars


def test_the_pillar_tree_gives_each_minion_its_own_file(tmp_path):
    root = tmp_path / "pillar"
    first = write_pillar_tree(root, {"web-1": {"a": 1}, "web-2": {"b": "{{ not jinja }}"}})
    assert first.written == ("web-1", "web-2")
    top = yaml.safe_load((root / "top.sls").read_text())
    assert top == {"base": {"web-1": ["hosts.web-1"], "web-2": ["hosts.web-2"]}}
    text = (root / "hosts" / "web-2.sls").read_text()
    assert text.startswith("#!json\n") and json.loads(text.split("\n", 1)[1]) == {
        "b": "{{ not jinja }}"
    }
    assert stat.S_IMODE((root / "hosts" / "web-1.sls").stat().st_mode) == 0o600
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    second = write_pillar_tree(root, {"web-1": {"a": 2}})
    assert second.written == ("web-1",) and second.removed == ("web-2",)
    assert not (root / "hosts" / "web-2.sls").exists()
    assert write_pillar_tree(root, {"web-1": {"a": 2}}).unchanged == ("web-1",)


def test_the_jenkins_master_gets_its_password_from_a_root_only_file_and_no_plugin(
    coop, coop_secrets, tmp_path, repo_root
):
    """jenkins.master as a server gets it (no Jenkins here, so the server branch is rendered by
    real masterless salt, `state.show_sls`, with support-1's pillar from the topology)."""
    import shlex

    password = 'it\'s "x" \\ y $HOME'  # quotes, a backslash, a dollar: systemd must get it whole
    data = {**coop_secrets.data, "jenkins": {"admin_password": password}}
    path = coop_secrets.file
    path.write_text(yaml.safe_dump(data))
    secrets = load_secrets(path, coop)
    pillar = render_pillars(site_for(coop), secrets)["support-1"]
    states = _show_sls_as_a_server("support-1", pillar, "jenkins.master", tmp_path, repo_root)

    def args(state_id: str) -> dict:
        return _state_args(states, state_id)

    env = args("jenkins-admin-env")
    assert env["name"] == "/etc/jenkins/admin.env"
    assert (env["mode"], env["user"], env["group"], env["show_changes"]) == (
        "0600",
        "root",
        "root",
        False,
    )
    line = [x for x in env["contents"].splitlines() if x.startswith("JENKINS_ADMIN_PASSWORD=")]
    assert shlex.split(line[0]) == [f"JENKINS_ADMIN_PASSWORD={password}"]  # systemd's quoting
    unit = args("jenkins-environment")
    assert unit["name"] == "/etc/systemd/system/jenkins.service.d/coop.conf"
    assert "EnvironmentFile=/etc/jenkins/admin.env" in unit["contents"].splitlines()
    assert "JENKINS_ADMIN_PASSWORD" not in unit["contents"] and "$HOME" not in unit["contents"]
    # The account by core's init hook, reading the password from the environment: not in it.
    init = args("jenkins-init")
    assert init["name"] == "/var/lib/jenkins/init.groovy.d/coop.groovy"
    assert "System.getenv('JENKINS_ADMIN_PASSWORD')" in init["contents"]
    assert "new HudsonPrivateSecurityRealm(false)" in init["contents"]  # no sign-up
    assert password not in init["contents"]
    assert {"file": "jenkins-init"} in args("jenkins-restart")["onchanges"]
    assert {"file": "jenkins-admin-env"} in args("jenkins-restart")["onchanges"]
    # No plugin, so nothing is downloaded but the pinned repository's key and packages.
    assert not [state_id for state_id in states if "plugin" in state_id]
    pins = yaml.safe_load((repo_root / "salt" / "lib" / "pins.yaml").read_text())
    package = args("jenkins-package")
    assert (package["name"], package["version"], package["hold"]) == (
        "jenkins",
        pins["jenkins_apt_repository"]["version"],
        True,
    )
    assert "hold" not in args("jenkins-packages")  # Java keeps its security updates
    key = args("jenkins-key")
    assert pins["jenkins_apt_key"]["url"] in key["name"]
    assert pins["jenkins_apt_key"]["fingerprint"] in key["name"]
    assert {"cmd": "jenkins-key"} in args("jenkins-repo")["require"]


def _gpg_key(home: Path, name: str) -> tuple[str, str]:
    """A new public key (armoured) and its fingerprint, made by real gpg in `home`."""
    home.mkdir(mode=0o700, exist_ok=True)

    def gpg(*args: str) -> str:
        return subprocess.run(
            ["gpg", "--batch", *args],
            env={**os.environ, "GNUPGHOME": str(home)},
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    gpg("--passphrase", "", "--quick-gen-key", name, "default", "default", "1d")  # with a subkey
    listing = gpg("--with-colons", "--list-keys", name)
    fingerprint = next(x.split(":")[9] for x in listing.splitlines() if x.startswith("fpr:"))
    return gpg("--armor", "--export", name), fingerprint


def test_the_jenkins_key_check_takes_only_the_pinned_fingerprint(
    coop, coop_secrets, tmp_path, repo_root
):
    """The check the state runs before apt gets the key (its `unless`, rendered by real salt),
    run with real gpg on keys made here: the pinned key passes; another key, or a file with the
    pinned key and another, does not."""
    pillar = render_pillars(site_for(coop), load_secrets(coop_secrets.file, coop))["support-1"]
    states = _show_sls_as_a_server("support-1", pillar, "jenkins.master", tmp_path, repo_root)
    check = _state_args(states, "jenkins-key")["unless"]
    keyring = "/usr/share/keyrings/jenkins-keyring.asc"
    pinned = yaml.safe_load((repo_root / "salt" / "lib" / "pins.yaml").read_text())
    assert f"= '{pinned['jenkins_apt_key']['fingerprint']}'" in check and keyring in check
    ours, ours_fpr = _gpg_key(tmp_path / "gpg", "coop-test-ours")
    theirs, _ = _gpg_key(tmp_path / "gpg", "coop-test-theirs")
    # the agent gpg started for the keys: stopped now, not left running after the test
    subprocess.run(["gpgconf", "--homedir", str(tmp_path / "gpg"), "--kill", "gpg-agent"])
    check = check.replace(pinned["jenkins_apt_key"]["fingerprint"], ours_fpr)

    def passes(key_text: str) -> bool:
        key_file = tmp_path / "key.asc"
        key_file.write_text(key_text)
        command = check.replace(keyring, str(key_file))
        return subprocess.run(["sh", "-c", command], capture_output=True).returncode == 0

    assert passes(ours)
    assert not passes(theirs)
    assert not passes(ours + theirs)  # two primary keys: refused, whichever comes first
    assert not passes("not a key\n")

    # The install itself (the state's script), with a stand-in curl that "downloads" a file of
    # ours: the pinned key is installed as gpg exports it, anything else never reaches apt.
    script = _state_args(states, "jenkins-key")["name"]
    script = script.replace(pinned["jenkins_apt_key"]["fingerprint"], ours_fpr)
    script = script.replace(keyring, str(tmp_path / "keyring.asc"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(
        '#!/bin/sh\nwhile [ "$1" != -o ]; do shift; done\ncp "$SERVED" "$2"\n'
    )
    (bin_dir / "curl").chmod(0o755)

    def install(served: str) -> subprocess.CompletedProcess:
        (tmp_path / "keyring.asc").unlink(missing_ok=True)
        (tmp_path / "served.asc").write_text(served)
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "SERVED": str(tmp_path / "served.asc"),
        }
        return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)

    done = install(ours + "\ntrailing text that is not a key\n")
    assert done.returncode == 0, done.stderr
    installed = (tmp_path / "keyring.asc").read_text()
    assert "trailing text" not in installed and installed.startswith("-----BEGIN PGP PUBLIC")
    assert passes(installed)  # exactly the pinned key, which the state's check then finds
    for served in (theirs, ours + theirs, "not a key\n"):
        refused = install(served)
        assert refused.returncode == 1, refused.stderr
        assert f"pinned {ours_fpr} (salt/lib/pins.yaml): not installed" in refused.stderr
        assert not (tmp_path / "keyring.asc").exists()


# --- salt's answers, recorded from a real master -------------------------------------------------


@pytest.mark.parametrize("name", ["apply_web_dry_run", "apply_web_port_taken", "apply_missing_sls"])
def test_state_returns_parse_into_typed_results(name):
    raw = json.loads((DATA / "salt" / f"{name}.json").read_text())["web-production-1"]
    expected = json.loads((DATA / "salt" / f"{name}.expected.json").read_text())
    states, errors = parse_state_return("web-production-1", raw)
    assert errors == expected["errors"]
    assert [
        {
            "state_id": s.state_id,
            "function": s.function,
            "sls": s.sls,
            "result": s.result,
            "changed": s.changed,
            "run_num": s.run_num,
        }
        for s in states
    ] == expected["states"]


def test_a_web_server_trusts_the_registry_under_each_name_it_is_reached_by(
    coop, coop_secrets, tmp_path, repo_root
):
    """The web state as a server gets it: the registry's CA under every name and address the
    certificate covers, so a pull works by whichever name the image reference uses."""
    pillar = render_pillars(site_for(coop), coop_secrets)["web-staging-1"]
    states = _show_sls_as_a_server("web-staging-1", pillar, "web", tmp_path, repo_root)
    names = [
        next(iter(item.values())) if isinstance(item, dict) else item
        for item in _state_args(states, "web-registry-ca")["names"]
    ]
    assert names == [
        f"/etc/containers/certs.d/{name}/ca.crt" for name in pillar["registry_client"]["trusted_as"]
    ]
    assert "/etc/containers/certs.d/10.100.9.1:5000/ca.crt" in names


def test_the_registry_host_s_firewall_guards_its_ports_and_a_web_host_s_none(
    coop, coop_secrets, tmp_path, repo_root
):
    """The firewall rules as salt renders them for support-1 (a server's pillar), checked by
    this machine's nft (`nft -c`: parsed and validated by the kernel's nf_tables, not loaded):
    the push door takes new connections from the build agent and Dagster's host only, and is
    refused (a reset) to everyone else; a host that guards nothing gets an empty table."""
    import subprocess

    pillars = render_pillars(site_for(coop), coop_secrets)
    rendered = {}
    for host in ("support-1", "web-staging-1"):
        (tmp_path / host).mkdir()
        out = tmp_path / host / "firewall.nft"
        _salt_call_as_a_server(
            host,
            pillars[host],
            ["cp.get_template", "salt://common/files/firewall.nft.jinja", str(out)],
            tmp_path / host,
            repo_root,
        )
        text = out.read_text()
        check = subprocess.run(["nft", "-c", "-f", str(out)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        inbound = text.split("chain output", 1)[0]  # the input chain: the guarded ports
        rendered[host] = [line.strip() for line in inbound.splitlines() if "dport" in line]
        # every host: the metadata service (the user-data, the salt keys) for root alone
        metadata = [
            line.strip()
            for line in text.splitlines()
            if "169.254.169.254" in line or "fe80::a9fe:a9fe" in line
        ]
        assert metadata == [
            "ip daddr 169.254.169.254 meta skuid != 0 counter reject with icmp type"
            " admin-prohibited",
            "ip6 daddr fe80::a9fe:a9fe meta skuid != 0 counter reject with icmpv6 type"
            " admin-prohibited",
            "ip daddr 169.254.169.254 counter reject with icmp type admin-prohibited",
            "ip6 daddr fe80::a9fe:a9fe counter reject with icmpv6 type admin-prohibited",
        ], host
        # every host: its containers start nothing into the location's network but DNS, and
        # a web host's its environment's database (containers_reach)
        forward = [
            line.strip()
            for line in text.split("chain forward", 1)[1].splitlines()
            if "ip daddr 10.100." in line
        ]
        reach = ["ip daddr 10.100.7.1 tcp dport 5432 accept"] if host.startswith("web") else []
        assert forward == [
            "ip daddr 10.100.0.0/16 meta l4proto { tcp, udp } th dport 53 accept",
            *reach,
            "ip daddr 10.100.0.0/16 meta l4proto tcp ct state new counter reject with tcp reset",
            "ip daddr 10.100.0.0/16 ct state new counter drop",
        ], host
    assert rendered["support-1"][:2] == [
        "tcp dport 3141 ct state new ip saddr { 10.100.2.1 } accept",
        "tcp dport 3141 ct state new counter reject with tcp reset",
    ]
    assert rendered["support-1"][6:12] == [
        "tcp dport 4873 ct state new ip saddr { 10.100.2.1 } accept",
        "tcp dport 4873 ct state new counter reject with tcp reset",
        "tcp dport 5000 ct state new ip saddr { 10.100.1.1, 10.100.2.1, 10.100.5.1, 10.100.6.1 }"
        " accept",
        "tcp dport 5000 ct state new counter reject with tcp reset",
        "tcp dport 5001 ct state new ip saddr { 10.100.1.1, 10.100.2.1 } accept",
        "tcp dport 5001 ct state new counter reject with tcp reset",
    ]
    assert [line.split()[2] for line in rendered["support-1"]] == [
        p for p in ("3141", "4505", "4506", "4873", "5000", "5001", "8000", "8080") for _ in "ar"
    ]
    assert rendered["web-staging-1"] == []


def test_a_build_agent_s_containers_reach_the_npm_cache_and_nothing_else(
    coop, coop_secrets, tmp_path, repo_root
):
    """The jenkins agent's forward chain as salt renders it on a server (`nft -c` checks it):
    its containers (the builds' steps, on podman's bridges) reach DNS and the npm cache
    (`containers_reach`), and every other connection they start is refused, private or not;
    the pillar says the same."""
    import subprocess

    pillars = render_pillars(site_for(coop), coop_secrets)
    [agent] = sorted(coop.hosts_with_role("jenkins-agent"))
    assert pillars[agent]["firewall"]["containers_reach"] == [
        {"role": "npm-cache", "address": "10.100.10.1", "port": 4873},
        {"role": "pypi-cache", "address": "10.100.11.1", "port": 3141},
    ]
    assert pillars[agent]["firewall"]["containers_internet"] is False
    assert pillars[agent]["jenkins_agent"]["npm_registry"] == "http://10.100.10.1:4873"
    assert pillars[agent]["jenkins_agent"]["pip_index"] == "http://10.100.11.1:3141/index/"
    out = tmp_path / "firewall.nft"
    _salt_call_as_a_server(
        agent,
        pillars[agent],
        ["cp.get_template", "salt://common/files/firewall.nft.jinja", str(out)],
        tmp_path,
        repo_root,
    )
    check = subprocess.run(["nft", "-c", "-f", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    forward = out.read_text().split("chain forward", 1)[1]
    rules = [
        line.strip() for line in forward.splitlines() if "10.100." in line or "iifname" in line
    ]
    assert rules == [
        "ip daddr 10.100.0.0/16 meta l4proto { tcp, udp } th dport 53 accept",
        "ip daddr 10.100.10.1 tcp dport 4873 accept",
        "ip daddr 10.100.11.1 tcp dport 3141 accept",
        'iifname "podman*" meta l4proto tcp ct state new counter reject with tcp reset',
        'iifname "podman*" ct state new counter drop',
    ]


def test_the_npm_cache_allows_no_self_registration(coop, coop_secrets, tmp_path, repo_root):
    """verdaccio's config as the npm-cache state writes it on support-1 (real masterless salt):
    its htpasswd takes no new account (`npm adduser`), so nobody can publish; it only proxies."""
    pillar = render_pillars(site_for(coop), coop_secrets)["support-1"]
    states = _show_sls_as_a_server("support-1", pillar, "npm-cache", tmp_path, repo_root)
    config = _state_args(states, "npm-cache-config")
    assert config["name"] == "/etc/verdaccio/config.yaml"
    verdaccio = yaml.safe_load(config["contents"])
    assert verdaccio["auth"] == {
        "htpasswd": {"file": "/var/lib/verdaccio/htpasswd", "max_users": -1}
    }
    for package in verdaccio["packages"].values():
        assert (package["access"], package["publish"]) == ("$all", "$authenticated")


def _show_sls_as_a_server(host: str, pillar: dict, sls: str, tmp_path, repo_root) -> dict:
    """`state.show_sls` of `sls` by real masterless salt, with `pillar` (a server's: root "")."""
    return _salt_call_as_a_server(host, pillar, ["state.show_sls", sls], tmp_path, repo_root)


def _salt_call_as_a_server(host: str, pillar: dict, args: list[str], tmp_path, repo_root):
    """`salt-call --local <args>` on the repo's salt/ with `pillar`: its `local` return."""
    import subprocess
    import sys

    (tmp_path / "pillar").mkdir()
    (tmp_path / "pillar" / "top.sls").write_text(f"base: {{'*': [{host}]}}\n")
    (tmp_path / "pillar" / f"{host}.sls").write_text("#!json\n" + json.dumps(pillar))
    config = {
        "id": host,
        "file_client": "local",
        "root_dir": str(tmp_path / "root"),
        "file_roots": {"base": [str(repo_root / "salt")]},
        "pillar_roots": {"base": [str(tmp_path / "pillar")]},
        "enable_fqdns_grains": False,
        "enable_gpu_grains": False,
    }
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "minion").write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [str(Path(sys.executable).parent / "salt-call"), "--local", "-c", str(tmp_path / "etc")]
        + ["--out=json", "--log-level=quiet", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)["local"]


def _state_args(states: dict, state_id: str) -> dict:
    return {
        k: v
        for item in states[state_id][next(iter(states[state_id]))]
        if isinstance(item, dict)
        for k, v in item.items()
    }


def test_a_secret_with_a_slash_and_a_space_is_known_in_each_url_encoding(tmp_path):
    """A secret URL-quoted three ways: everything escaped, "/" kept (Jinja's urlencode, a URL's
    path) and a form's (spaces as "+"): each is one of the values never shown."""
    import urllib.parse

    from infra_assets.topology.secrets import Secrets

    secret = "pa/ss wo:rd@x"
    values = Secrets(file=tmp_path / "secrets.yaml", data={"db": {"password": secret}}).values()
    for form in (
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
    ):
        assert form in values, form
    assert "pa/ss%20wo%3Ard%40x" in values and "pa%2Fss+wo%3Ard%40x" in values


def test_secrets_and_their_encoded_forms_never_reach_the_log_the_table_or_the_error(tmp_path):
    """A state return recorded from real (masterless) salt, tests/data/salt/leaky/record.sh: the
    registry's pull account as base64 in an auth.json diff, a password JSON-escaped in a file
    diff, a failing command that prints a password in clear, the pull password URL-quoted in a
    URL (salt's `urlencode`) and the database password as plain base64 (`base64_encode`), each
    in a file diff."""
    import base64
    import urllib.parse

    from infra_assets.configuration.highstate import report
    from infra_assets.topology.secrets import Secrets
    from resources.salt import take_minion_return

    pull = 'pull-S3cret "quoted" \\ back'
    database = 'db S3cret/with spaces & "quotes"'
    secrets = Secrets(
        tmp_path / "secrets.yaml",
        {"registry": {"users": {"deploy": pull}}, "postgres": {"hello": {"staging": database}}},
    )
    leaked = {
        pull,
        database,
        base64.b64encode(f"deploy:{pull}".encode()).decode(),
        json.dumps(database)[1:-1],  # as the JSON file's diff shows it
        "S3cret",  # any part of a value
    }
    url_quoted = urllib.parse.quote(pull, safe="")
    plain_b64 = base64.b64encode(database.encode()).decode()
    leaked |= {url_quoted, plain_b64}
    raw = {"ret": json.loads((DATA / "salt" / "leaky.json").read_text())["local"], "retcode": 2}

    def seen(redact):
        log: list[str] = []
        run = take_minion_return("web-staging-1", raw, test=False, say=log.append, redact=redact)
        result = ApplyResult(("leaky",), False, {"web-staging-1": run}, 1.0)
        table = report(result)["results"].value
        return {"log": "\n".join(log), "table": table, "error": "\n".join(result.problems())}

    # Unscrubbed, each place shows a secret in some form: the test can fail.
    unscrubbed = seen(())
    for place, text in unscrubbed.items():
        assert any(form in text for form in leaked), place
    assert f"https://deploy:{url_quoted}@registry.example/" in unscrubbed["table"]
    assert f"password_b64: {plain_b64}" in unscrubbed["table"]
    scrubbed = seen(secrets.values())
    for place, text in scrubbed.items():
        assert "***" in text, place
        assert not [form for form in leaked if form in text], (place, text)
    assert '"auth": "***"' in scrubbed["table"]  # the auth.json diff
    assert '{"password": "***"}' in scrubbed["table"]  # the JSON-escaped password, in its diff
    assert "login deploy:*** refused" in scrubbed["error"]
    assert "https://deploy:***@registry.example/" in scrubbed["table"]  # the URL-quoted form
    assert "password_b64: ***" in scrubbed["table"]  # the plain base64 form
    assert "FAILED: leaky: leaky-login (cmd.run)" in scrubbed["log"]


def test_a_failed_run_names_the_minion_the_state_and_why():
    raw = json.loads((DATA / "salt" / "apply_web_port_taken.json").read_text())
    states, _ = parse_state_return("web-production-1", raw["web-production-1"])
    run = ApplyResult(
        ("web",),
        False,
        {
            "web-production-1": MinionRun("web-production-1", True, tuple(states)),
            "web-staging-1": MinionRun("web-staging-1", returned=False),
        },
        1.0,
    )
    assert not run.ok
    problems = run.problems()
    assert problems[0] == (
        "web-production-1: state web: web-nginx-running (cmd.run) failed: Command"
        ' "start-stop-daemon --quiet --pidfile /tmp/coop-infra-b7769b1256/web-production-1/run/'
        "nginx.pid --exec /usr/sbin/nginx --start -- -p /tmp/coop-infra-b7769b1256/"
        "web-production-1/etc/nginx/ -c /tmp/coop-infra-b7769b1256/web-production-1/etc/nginx/"
        'nginx.conf -e /tmp/coop-infra-b7769b1256/web-production-1/var/log/nginx/error.log" run'
        " | nginx: [emerg] bind() to 127.0.0.1:52609 failed (98: Address already in use)"
        " | nginx: [emerg] bind() to 127.0.0.1:52609 failed (98: Address already in use)"
        " | nginx: [emerg] still could not bind()"
    )
    assert "web-staging-1: did not answer (is the minion running and accepted?)" in problems


# --- the Dagster graph ---------------------------------------------------------------------------


def test_the_salt_part_of_the_graph(coop):
    from infra_assets.definitions import build_definitions

    defs = build_definitions(coop)
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey
    roles = {r for h in coop.hosts.values() for r in h.roles}
    for role in roles:
        node = graph.get(key(["highstate", role]))
        # (the dagster role's after its database's: the catalogue's `after`)
        after = {key(["highstate", "postgres-production"])} if role == "dagster" else set()
        assert node.parent_keys == {key("minions"), key("salt_pillar"), key("topology")} | after
        assert node.group_name == "salt" and "salt" in node.kinds
    # the minions come after the hosts exist, with the key pairs made for them
    assert graph.get(key("minions")).parent_keys == {
        key("topology"),
        key("minion_keys"),
        key(["instances", "nz-por-1"]),
    }
    assert graph.get(key("salt_pillar")).parent_keys == {
        key("topology"),
        key("ip_plan"),
        key(["instances", "nz-por-1"]),
    }
    checks = {c.name for c in graph.asset_check_keys}
    assert {"minion_keys_match_topology", "declared_minions_answer"} <= checks
    configure = defs.resolve_job_def("configure")
    assert {k.to_user_string() for k in configure.asset_layer.selected_asset_keys} >= {
        "topology",
        "minions",
        "salt_pillar",
        "highstate/web-staging",
    }
    dry = defs.resolve_job_def("configure_dry_run")
    assert dry.run_config["ops"]["highstate__web_staging"] == {"config": {"dry_run": True}}
    assert len(dry.run_config["ops"]) == len(roles)
    selected = {k.to_user_string() for k in dry.asset_layer.selected_asset_keys}
    assert "minions" not in selected and "highstate/dns" in selected


def test_a_missing_secrets_file_fails_the_pillar_clearly(coop, repo_root, tmp_path, monkeypatch):
    from infra_assets.definitions import build_definitions

    monkeypatch.setenv("INFRA_TOPOLOGY", str(repo_root / "topology.yaml"))
    monkeypatch.setenv("INFRA_SECRETS_FILE", str(tmp_path / "nowhere.yaml"))
    monkeypatch.setenv("INFRA_SALT_MASTER_CONFIG", str(tmp_path / "no-master"))
    job = build_definitions(coop).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        asset_selection=[dg.AssetKey("topology"), dg.AssetKey("salt_pillar")],
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("salt_pillar").error.message
    assert f"{tmp_path / 'nowhere.yaml'}: 1 problem in the secrets" in failure
    assert "no such file: write it (README, 'Secrets') or set $INFRA_SECRETS_FILE" in failure


def test_salt_is_never_imported_into_dagster(coop, repo_root):
    """salt replaces the interpreter's logger class on import, which breaks Dagster's loggers:
    the code location and the resource keep it in the worker process."""
    import subprocess
    import sys

    code = (
        "import sys, infra_assets.definitions as d, resources.salt;"
        "d.defs(); print('salt' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "INFRA_TOPOLOGY": str(repo_root / "topology.yaml")},
        timeout=120,
    )
    assert out.stdout.strip() == "False", out.stderr
