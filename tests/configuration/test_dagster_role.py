"""The `dagster` role's data (salt/dagster; infra_assets/configuration/pillar.py): what support-1's pillar gives
the Dagster it runs, its instance's database on the production postgres host, the UI's accounts,
and what an app with `dagster: true` (a chat-ops bot) is given. The role running for real is
tests/lab/test_lab_dagster.py's."""

from __future__ import annotations

import subprocess

import bcrypt
import dagster as dg
import pytest
import yaml

from infra_assets.configuration.pillar import bcrypt_htpasswd_line, render_pillars
from infra_assets.topology.model import parse_topology
from infra_assets.topology.secrets import SecretsError, ensure_secrets, load_secrets, required_keys
from infra_assets.topology.sites import SiteError, site_for


def _coop(repo_root, **app_settings):
    data = yaml.safe_load((repo_root / "topology.yaml").read_text())
    if app_settings:
        data["apps"]["deploybot"] = {
            "repo": "https://git.example.coop/deploybot.git",
            "port": 8010,
            "health": "/health",
            **app_settings,
        }
    return parse_topology(yaml.safe_dump(data), file="topology.yaml")


def test_support_1_runs_dagster_on_the_production_postgres_behind_a_login(repo_root, tmp_path):
    topo = _coop(repo_root)
    secrets = ensure_secrets(tmp_path / "secrets.yaml", topo)
    pillars = render_pillars(site_for(topo), secrets)
    dg = pillars["support-1"]["dagster"]
    assert (dg["listen"], dg["port"]) == ("10.100.12.1", 443)
    # the commit this Dagster runs (it applies it), never what main holds when it highstates
    head = subprocess.run(["git", "-C", str(repo_root), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert (dg["repo"], dg["rev"]) == ("https://git.example.coop/coop-infra.git", head)
    password = secrets.get("dagster", "postgres_password")
    assert dg["env"]["DAGSTER_PG_URL"] == (
        f"postgresql+psycopg2://dagster:{password}@10.100.8.1:5432/dagster?sslmode=require"
    )
    assert dg["env"]["INFRA_RUNS_ON"] == "support-1"
    assert dg["env"]["INFRA_SALT_API_URL"] == "https://10.100.1.1:8000"
    # nginx's htpasswd holds bcrypt hashes, with a salt keyed by a secret of the site's (not
    # derived from the password alone); the passwords are in the secrets file this Dagster reads
    [(name, value)] = secrets.get("dagster", "accounts").items()
    [line] = dg["htpasswd"].splitlines()
    user, hashed = line.split(":", 1)
    assert user == name and bcrypt.checkpw(value.encode(), hashed.encode())
    assert value not in dg["htpasswd"]
    assert hashed != bcrypt_htpasswd_line(name, value, purpose="dagster").split(":", 1)[1]
    assert yaml.safe_load(dg["secrets"]) == secrets.data
    # its database on pg-production-1, for the Dagster host alone
    db = pillars["pg-production-1"]["postgres"]["databases"]["dagster"]
    assert db["owner"] == "dagster" and db["password"] == password
    assert db["clients"] == ["10.100.8.1", "10.100.1.1"]
    assert "dagster" not in pillars["pg-staging-1"]["postgres"]["databases"]
    # nobody else gets the secrets file or the database's password
    for host, pillar in pillars.items():
        if host not in ("support-1", "pg-production-1"):
            assert password not in yaml.safe_dump(pillar), host


def test_dagster_s_highstate_comes_after_its_database_s(repo_root):
    """A fresh site: the webserver cannot start before its database exists (the catalogue's
    `after`), so the main job applies postgres-production's states first."""
    from infra_assets.definitions import build_definitions

    defs = build_definitions(_coop(repo_root))
    graph = defs.resolve_asset_graph()
    parents = graph.get(dg.AssetKey(["highstate", "dagster"])).parent_keys
    assert dg.AssetKey(["highstate", "postgres-production"]) in parents
    web = graph.get(dg.AssetKey(["highstate", "web-production"])).parent_keys
    assert dg.AssetKey(["highstate", "postgres-production"]) not in web


def test_a_topology_with_the_role_and_no_production_postgres_is_a_clear_error(repo_root, tmp_path):
    data = yaml.safe_load((repo_root / "topology.yaml").read_text())
    del data["hosts"]["pg-production-1"]
    topo = parse_topology(yaml.safe_dump(data), file="topology.yaml")
    secrets = ensure_secrets(tmp_path / "secrets.yaml", topo)
    with pytest.raises(SiteError, match="support-1 has the role dagster, whose instance is a"):
        render_pillars(site_for(topo), secrets)


def test_a_cloud_topology_with_the_role_names_its_repository(repo_root, tmp_path):
    data = yaml.safe_load((repo_root / "topology.yaml").read_text())
    del data["infra_repo"]
    topo = parse_topology(yaml.safe_dump(data), file="topology.yaml")
    secrets = ensure_secrets(tmp_path / "secrets.yaml", topo)
    with pytest.raises(SiteError, match="set `infra_repo` in the topology"):
        render_pillars(site_for(topo), secrets)


def test_an_app_with_dagster_true_gets_the_api_an_account_and_the_way_there(repo_root, tmp_path):
    topo = _coop(repo_root, dagster=True)
    assert ("dagster", "app_accounts", "deploybot") in required_keys(topo)
    secrets = ensure_secrets(tmp_path / "secrets.yaml", topo)
    pillars = render_pillars(site_for(topo), secrets)
    # production's alone: the account can start any job, and staging runs what is not yet trusted
    assert "DAGSTER_PASSWORD" not in pillars["web-staging-1"]["apps"]["deploybot"]["secrets"]
    given = pillars["web-production-1"]["apps"]["deploybot"]["secrets"]
    assert given["DAGSTER_URL"] == "https://10.100.12.1"
    assert given["DAGSTER_ACCOUNT"] == "app-deploybot"
    assert given["DAGSTER_PASSWORD"] == secrets.get("dagster", "app_accounts", "deploybot")
    assert given["DAGSTER_CA"] == secrets.get("dagster", "tls", "cert")
    assert "DAGSTER_URL" not in pillars["web-production-1"]["apps"]["hello"]["secrets"]
    # its account opens the UI (a bcrypt line of its own), and its containers may reach it
    lines = dict(line.split(":", 1) for line in pillars["support-1"]["dagster"]["htpasswd"].split())
    assert bcrypt.checkpw(given["DAGSTER_PASSWORD"].encode(), lines["app-deploybot"].encode())
    for host in ("web-staging-1", "web-production-1"):
        reach = pillars[host]["firewall"]["containers_reach"]
        assert {"role": "dagster", "address": "10.100.12.1", "port": 443} in reach, host
    assert not any(
        r["role"] == "dagster" for r in pillars["support-2"]["firewall"]["containers_reach"]
    )
    # without such an app, no web host's containers reach it
    plain = render_pillars(site_for(_coop(repo_root)), ensure_secrets(tmp_path / "s2.yaml",
                                                                        _coop(repo_root)))  # fmt: skip
    assert not any(
        r["role"] == "dagster" for r in plain["web-staging-1"]["firewall"]["containers_reach"]
    )


def test_a_person_s_account_may_not_take_an_app_s_name(repo_root, tmp_path):
    topo = _coop(repo_root)
    path = tmp_path / "secrets.yaml"
    ensure_secrets(path, topo)
    data = yaml.safe_load(path.read_text())
    data["dagster"]["accounts"] = {"app-deploybot": "a-password", "Bad Name": "x", "ok": ""}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SecretsError) as err:
        load_secrets(path, topo)
    text = str(err.value)
    assert "dagster.accounts: 'app-deploybot': names starting with app- are the apps'" in text
    assert "dagster.accounts: 'Bad Name' is not an account name" in text
    assert "dagster.accounts.ok: must be a non-empty string" in text
    assert "a-password" not in text


def test_an_app_with_dagster_true_needs_the_role(repo_root, tmp_path):
    data = yaml.safe_load((repo_root / "topology.yaml").read_text())
    data["hosts"]["support-1"]["roles"].remove("dagster")
    data["apps"]["hello"]["dagster"] = True
    topo = parse_topology(yaml.safe_dump(data), file="topology.yaml")
    secrets = ensure_secrets(tmp_path / "secrets.yaml", topo)
    with pytest.raises(SiteError, match="app 'hello' has `dagster: true`, and no host has the"):
        render_pillars(site_for(topo), secrets)


def test_on_the_lab_the_chat_s_clients_go_out_through_the_egress_proxy(repo_root, tmp_path):
    """The lab's only way out is its egress proxy: once the lab's secrets name a chat, the
    Dagster host (its notices) and the production web host of an app with `dagster: true` (the
    bot's later answers) may reach the chat's host through it, and are told the proxy; nobody
    else, and nothing without a chat."""
    from infra_assets.topology.sites import LabSite
    from resources.topology import TopologyResource
    from sensors.notifications import chat_for

    data = yaml.safe_load((repo_root / "topology.lab.yaml").read_text())
    data["apps"]["deploybot"] = {"repo": "git/deploybot.git", "port": 8010, "health": "/health",
                                 "dagster": True}  # fmt: skip
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(data))
    topo = parse_topology(topo_file.read_text(), file=str(topo_file))
    site = LabSite(topo, root=tmp_path / "lab")
    site.root.mkdir()
    secrets_file = site.secrets_file()
    secrets = ensure_secrets(secrets_file, topo)
    caches = {"files.pythonhosted.org:443", "pypi.org:443", "registry.npmjs.org:443"}
    support_1, web_production_1 = (
        site.plan.for_host("support-1"),
        site.plan.for_host("web-production-1"),
    )

    def bot_env(pillars):
        return pillars["web-production-1"]["apps"]["deploybot"]["env"]

    # no chat: the caches alone go out, and nobody is told a proxy for the chat
    allow = site.egress_allow(127)
    assert set(allow) == {a.address for a in support_1}
    assert all(set(targets) == caches for targets in allow.values())
    assert "HTTPS_PROXY" not in bot_env(render_pillars(site, secrets))

    data = yaml.safe_load(secrets_file.read_text())
    data["chat"] = {"webhook_url": "https://chat.example.coop/hooks/s3cr3t-token"}
    secrets_file.write_text(yaml.safe_dump(data))
    allow = site.egress_allow(127)
    assert set(allow) == {a.address for a in [*support_1, *web_production_1]}
    for address in support_1:
        assert set(allow[address.address]) == {*caches, "chat.example.coop:443"}
    for address in web_production_1:
        assert allow[address.address] == ["chat.example.coop:443"]
    pillars = render_pillars(site, load_secrets(secrets_file, topo))
    assert bot_env(pillars)["HTTPS_PROXY"] == "http://169.254.127.1:3128"
    assert "HTTPS_PROXY" not in pillars["web-staging-1"]["apps"]["deploybot"]["env"]
    assert "HTTPS_PROXY" not in pillars["web-production-1"]["apps"]["hello"]["env"]
    # the lab's Dagster (on support-1) posts its notices through the proxy; this machine's
    # Dagster reaches the chat directly
    resource = TopologyResource(path=str(topo_file))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INFRA_SECRETS_FILE", str(secrets_file))
        assert chat_for(resource).resource.proxy == ""
        patch.setenv("INFRA_RUNS_ON", "support-1")
        assert chat_for(resource).resource.proxy == "http://169.254.127.1:3128"
