"""The release state's own logic (salt/_states/coop_app.py, which salt syncs to the web hosts):
which slot a release takes, what it records, the container it starts and the nginx site it
writes, checked by the real nginx. The release itself, on real web hosts, is tested on the lab:
tests/lab/test_lab_releases.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

STATE = Path(__file__).resolve().parents[2] / "salt" / "_states" / "coop_app.py"
D1, D2, D3 = (f"sha256:{c * 64}" for c in "abc")
SHA = "f" * 40
PILLAR = {
    "web": {"listen": "10.1.3.1", "port": 80, "https_port": 443, "environment": "staging"},
    "registry_client": {"address": "10.1.10.1:5000"},
    "apps": {
        "hello": {
            "port": 8000,
            "health": "/health",
            "domain": "",
            "slots": {"blue": 9100, "green": 9101},
            "env": {"GREETING": "hi $(whoami); `id`", "MODE": "x y"},
        },
        "shop": {
            "port": 3000,
            "health": "/",
            "domain": "shop.example.coop",
            "slots": {"blue": 9102, "green": 9103},
        },
        "ticker": {"kind": "worker", "up_s": 7, "env": {"EVERY": "60"}},
    },
}


def _load():
    """The module as salt's loader gives it to a minion: with its pillar and options."""
    spec = importlib.util.spec_from_file_location("coop_app_under_test", STATE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    module.__pillar__ = PILLAR
    module.__opts__ = {"test": False}
    return module


app_state = _load()


def test_salt_offers_only_the_release_as_a_state():
    assert app_state.__load__ == ["released"]


def test_the_first_release_takes_blue_and_records_no_previous():
    release = app_state.plan(PILLAR, "hello", D1, SHA, {})
    assert (release.slot, release.port, release.container) == ("blue", 9100, "app-hello-blue")
    assert release.image == f"10.1.10.1:5000/hello@{D1}"
    assert release.health_url == "http://127.0.0.1:9100/health"
    assert release.served_url == "http://10.1.3.1:80/health"
    assert release.new_record == {
        "current": {
            "digest": D1,
            "sha": SHA,
            "image": release.image,
            "slot": "blue",
            "port": 9100,
            "container": "app-hello-blue",
            # its settings' fingerprint (hello has env; no host key given here)
            "config": app_state.config_fingerprint(
                b"", {"GREETING": "hi $(whoami); `id`", "MODE": "x y"}, {}
            ),
        },
        "previous": None,
    }
    assert not release.live_already and release.old == "app-hello-green"


def test_a_new_release_takes_the_other_slot_and_the_live_one_becomes_previous():
    first = app_state.plan(PILLAR, "hello", D1, SHA, {}).new_record
    second = app_state.plan(PILLAR, "hello", D2, "", first)
    assert (second.slot, second.port, second.old) == ("green", 9101, "app-hello-blue")
    assert second.new_record["previous"] == first["current"]
    assert second.keep == D1  # the previous release's image stays on the host
    third = app_state.plan(PILLAR, "hello", D3, "", second.new_record)
    assert third.slot == "blue" and third.new_record["previous"]["digest"] == D2


def test_the_live_release_again_keeps_its_slot_and_its_previous():
    first = app_state.plan(PILLAR, "hello", D1, SHA, {}).new_record
    second = app_state.plan(PILLAR, "hello", D2, SHA, first).new_record
    again = app_state.plan(PILLAR, "hello", D2, SHA, second)
    assert again.live_already and again.slot == "green"
    assert again.new_record == second  # nothing to record: the state changes nothing


@pytest.mark.parametrize(
    ("app", "digest", "sha", "error"),
    [
        ("hello", "latest", "", "digest 'latest' is not sha256:<64 hex digits>"),
        ("hello", D1 + "\n", "", "is not sha256:<64 hex digits>"),
        ("hello", D1, "x; touch /tmp/pwned", "sha 'x; touch /tmp/pwned' is not a commit"),
        ("hello", D1, SHA.upper(), "is not a commit"),
        ("nope", D1, "", "'nope' is not an app of this host's pillar (apps: hello, shop, ticker)"),
    ],
)
def test_a_release_the_pillar_cannot_carry_is_refused(app, digest, sha, error):
    with pytest.raises(app_state.Failed) as failed:
        app_state.plan(PILLAR, app, digest, sha, {})
    assert error in failed.value.comment


def test_a_bad_release_fails_the_state_before_anything_runs(monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(app_state, "_run", lambda argv, **kw: ran.append(argv))
    monkeypatch.setattr(app_state, "RECORDS", str(tmp_path / "releases"))
    for digest, sha, said in (
        ("sha256:nope", "", "digest 'sha256:nope' is not sha256:<64 hex digits>"),
        (D1, "HEAD", "sha 'HEAD' is not a commit (40 hex digits, or empty)"),
    ):
        ret = app_state.released("hello", digest, sha=sha)
        assert ret["result"] is False and ret["changes"] == {}
        assert ret["comment"] == said
    assert ran == []  # no command ran,
    assert not (tmp_path / "releases").exists()  # and nothing was read or written (no key)


def test_the_container_is_hardened_and_its_environment_passed_as_arguments():
    release = app_state.plan(PILLAR, "hello", D1, SHA, {})
    argv = app_state._run_argv(release, release.container, detach=True)
    assert argv[:3] == ["podman", "run", "--init"] and argv[-1] == release.image
    for flag in ("--cap-drop=all", "--security-opt=no-new-privileges", "--read-only"):
        assert flag in argv
    assert argv[argv.index("--user") + 1] == "65534:65534"
    assert argv[argv.index("--publish") + 1] == "127.0.0.1:9100:9100"
    # Each value is one argument, as written: no shell ever sees it.
    assert "GREETING=hi $(whoami); `id`" in argv and "MODE=x y" in argv
    assert "PORT=9100" in argv
    one_off = app_state._run_argv(
        release, "app-hello-release", detach=False, command=["/bin/sh", "-c", "migrate"]
    )
    assert "--rm" in one_off and "--publish" not in one_off and "-d" not in one_off
    assert one_off[-5:] == ["--entrypoint", "/bin/sh", release.image, "-c", "migrate"]


def test_a_worker_publishes_nothing_stays_up_instead_of_a_health_check_and_has_no_site():
    release = app_state.plan(PILLAR, "ticker", D1, SHA, {})
    assert release.worker and release.up_s == 7
    assert (release.slot, release.port, release.container) == ("blue", 0, "app-ticker-blue")
    assert release.health_url == "" and release.served_url == "" and release.domain == ""
    argv = app_state._run_argv(release, release.container, detach=True)
    assert "--publish" not in argv and "-d" in argv
    assert not [a for a in argv if a.startswith(("PORT=", "HOST="))]
    assert "EVERY=60" in argv and "--cap-drop=all" in argv
    steps = [name for name, _ in app_state._steps(release, 30, True, "highstate/web-staging")]
    assert steps == ["ready", "pull", "release-phase", "start", "up", "record", "stop-old", "prune"]
    web = app_state.plan(PILLAR, "hello", D1, SHA, {})
    steps = [name for name, _ in app_state._steps(web, 30, True, "highstate/web-staging")]
    assert "healthy" in steps and "nginx" in steps and "up" not in steps


def test_podman_never_gets_the_minion_s_notify_socket(monkeypatch):
    """Under systemd the minion has NOTIFY_SOCKET; a podman given it makes the container's
    conmon the minion's main pid (and a restart of the minion then kills the app)."""
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    shown = app_state._run(["sh", "-c", 'echo "${NOTIFY_SOCKET-unset} $REGISTRY_AUTH_FILE"'])
    assert shown.stdout.split() == ["unset", app_state.AUTH_FILE]


def test_a_changed_setting_is_a_new_release_and_its_fingerprint_says_nothing_of_it():
    key = b"k" * 32
    first = app_state.plan(PILLAR, "hello", D1, SHA, {}, key)
    assert first.config and first.new_record["current"]["config"] == first.config
    again = app_state.plan(PILLAR, "hello", D1, SHA, first.new_record, key)
    assert again.live_already and again.slot == first.slot
    changed = {**PILLAR, "apps": {**PILLAR["apps"]}}
    changed["apps"]["hello"] = {**PILLAR["apps"]["hello"], "secrets": {"SESSION_KEY": "new"}}
    moved = app_state.plan(changed, "hello", D1, SHA, first.new_record, key)
    assert not moved.live_already and moved.slot != first.slot  # blue/green, as a new image
    assert len(moved.config) == 24 and moved.config != first.config
    # What to roll back to stays the release of another image (here: none yet).
    assert moved.new_record["previous"] is None and moved.keep == D1
    second = app_state.plan(PILLAR, "hello", D2, SHA, first.new_record, key)
    resettled = app_state.plan(changed, "hello", D2, SHA, second.new_record, key)
    assert resettled.new_record["previous"]["digest"] == D1 and resettled.keep == D1
    # Another host's key, another fingerprint: nothing to compare a guess with across hosts.
    assert app_state.plan(changed, "hello", D1, SHA, {}, b"o" * 32).config != moved.config
    # An app with no settings has none (and its record is as before).
    assert app_state.plan(PILLAR, "shop", D1, SHA, {}, key).config == ""


def test_a_running_container_is_left_alone_only_when_it_is_this_release():
    with_settings = app_state.plan(PILLAR, "hello", D1, SHA, {}, b"k" * 32)
    plain = app_state.plan(PILLAR, "shop", D1, SHA, {}, b"k" * 32)  # no settings: config ""
    assert plain.config == ""
    assert app_state._runs_as(plain, f"{D1}|true|9102|")
    assert app_state._runs_as(with_settings, f"{D1}|true|9100|{with_settings.config}")
    assert not app_state._runs_as(with_settings, f"{D1}|true|9100|")  # other settings
    assert not app_state._runs_as(plain, f"{D1}|false|9102|")  # stopped
    assert not app_state._runs_as(plain, f"{D2}|true|9102|")  # another image
    assert not app_state._runs_as(plain, "")  # no such container


def test_the_secrets_are_read_into_the_environment_by_the_shell_before_the_command(tmp_path):
    """READ_SECRETS as the container runs it (/bin/sh, each file of the folder a variable),
    with a folder of this test's own for /run/secrets."""
    (tmp_path / "SESSION_KEY").write_text("s3cr3t with spaces $(id)")
    (tmp_path / "DATABASE_URL").write_text("postgresql://u:p%40@h:5432/d?sslmode=require\n")
    script = app_state.READ_SECRETS.replace("/run/secrets", str(tmp_path))
    ran = subprocess.run(
        ["/bin/sh", "-c", script, "sh", "sh", "-c", 'printf "%s|%s" "$SESSION_KEY" "$DATABASE_URL"'],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert ran.stdout == "s3cr3t with spaces $(id)|postgresql://u:p%40@h:5432/d?sslmode=require"


def _nginx_accepts(tmp_path: Path, site: str, domain: str = "") -> subprocess.CompletedProcess:
    """`nginx -t` of a config that includes the site, as the web hosts' nginx.conf does; the
    listen addresses made loopback ones (nginx -t binds nothing, but resolves them)."""
    site = site.replace("10.1.3.1:", "127.0.0.1:")
    if domain:
        live = tmp_path / "live"
        live.mkdir()
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-subj", f"/CN={domain}", "-days", "1",
             "-keyout", str(live / "privkey.pem"), "-out", str(live / "fullchain.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
        site = site.replace(f"/etc/letsencrypt/live/{domain}", str(live))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path};\n"
        f"  include {tmp_path}/site.conf;\n}}\n"
    )
    return subprocess.run(
        ["nginx", "-t", "-q", "-p", str(tmp_path), "-e", f"{tmp_path}/error.log",
         "-c", str(tmp_path / "nginx.conf")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_the_site_of_an_app_without_a_domain_is_valid_nginx(tmp_path):
    release = app_state.plan(PILLAR, "hello", D1, SHA, {})
    site = app_state.site_conf(release)
    assert "server 127.0.0.1:9100;" in site and f"add_header X-Coop-Release {D1} always;" in site
    assert "listen 10.1.3.1:80;" in site and "ssl" not in site
    checked = _nginx_accepts(tmp_path, site)
    assert checked.returncode == 0, checked.stderr


def test_the_site_of_an_app_with_a_domain_is_https_with_hsts_and_valid_nginx(tmp_path):
    release = app_state.plan(PILLAR, "shop", D1, SHA, {})
    site = app_state.site_conf(release)
    assert "listen 10.1.3.1:443 ssl http2;" in site
    assert "return 301 https://shop.example.coop$request_uri;" in site
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in site
    assert "location /.well-known/acme-challenge/" in site
    assert release.resolve == "shop.example.coop:443:10.1.3.1"
    checked = _nginx_accepts(tmp_path, site, "shop.example.coop")
    assert checked.returncode == 0, checked.stderr


def test_nginx_refuses_a_broken_site_which_shows_the_check_can_fail(tmp_path):
    release = app_state.plan(PILLAR, "hello", D1, SHA, {})
    broken = app_state.site_conf(release).replace("keepalive 8;", "keepalive;")
    assert _nginx_accepts(tmp_path, broken).returncode != 0


def test_salt_s_own_loader_loads_the_module_and_the_state_refuses_a_bad_release(tmp_path):
    """The `app` state applied by real masterless salt (salt-call --local) on the repo's salt/
    tree, the module synced as a release syncs it (sync_mods=states): salt's loader, which
    does not register the module in sys.modules as an import does, loads it, and the state
    refuses a digest that is not one before anything runs."""
    config = {
        "id": "web-staging-1",
        "file_client": "local",
        "root_dir": str(tmp_path / "root"),
        "file_roots": {"base": [str(STATE.parents[1])]},
        "pillar_roots": {"base": [str(tmp_path / "pillar")]},
        "enable_fqdns_grains": False,
        "enable_gpu_grains": False,
    }
    (tmp_path / "pillar").mkdir()
    (tmp_path / "pillar" / "top.sls").write_text("base: {'*': [web]}\n")
    (tmp_path / "pillar" / "web.sls").write_text("#!json\n" + json.dumps(PILLAR))
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "minion").write_text(json.dumps(config))
    release = {"release": {"app": "hello", "digest": "sha256:nope", "sha": ""}}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "salt-call"), "--local", "-c", str(tmp_path / "etc"),
         "--out=json", "--log-level=quiet", "state.apply", "app", "sync_mods=states",
         f"pillar={json.dumps(release)}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    [state] = json.loads(out.stdout)["local"].values()
    assert state["result"] is False and state["changes"] == {}, state
    assert state["comment"] == "digest 'sha256:nope' is not sha256:<64 hex digits>", state
    assert (tmp_path / "root" / "var/cache/salt/minion/extmods/states/coop_app.py").is_file()
