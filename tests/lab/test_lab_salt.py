"""Salt on the lab's real servers (the session's lab, tests/lab_env.py), with the states every
server runs: keys made ahead and never accepted by name (an impostor minion on a lab host), each minion's
pillar holding only its own secrets, the services the states start answering at their planned
addresses (checked from the machine through the lab's link, or from inside another lab host),
a dry run that changes nothing, and a failing state that names its minion and state.

Nothing here sends to a 10.x address but through the lab driver (`probe_tcp`, `exec`) or after
`route_into_lab` said the machine routes it into the lab."""

from __future__ import annotations

import base64
import json
import logging
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import dagster as dg
import pytest
import yaml
from lab_env import LAB_NUMBER, LabEnv

from infra_assets.configuration.salt_keys import KeyStore
from infra_assets.topology.model import load_topology
from infra_assets.topology.roles import role_catalogue
from infra_assets.topology.secrets import Secrets, load_secrets
from resources.lab import LabNetwork, container_name
from resources.lab_egress import IDLE_S

pytestmark = [pytest.mark.slow, pytest.mark.lab]

# A free address of the lab's /16 for a stranger's container (no type 200 in the topology).
STRANGER_ADDRESS = f"10.{LAB_NUMBER}.200.1"
STRANGER = f"lab{LAB_NUMBER}-stranger-test"  # not labelled as the lab's: its plans ignore it
# Where an impostor minion runs: a declared host, as if it were compromised.
IMPOSTOR_HOST = "web-staging-1"
NEW_HOST = "web-staging-2"  # declared in a copy of the topology only, and never created here


# --- helpers -------------------------------------------------------------------------------------


def _lab(lab_env: LabEnv):
    """The lab driver (resources/lab.py `Lab`: exec, probe_tcp, podman in the lab's namespace)."""
    return lab_env.lab().lab()


def _secrets(lab_env: LabEnv) -> Secrets:
    return load_secrets(lab_env.site.secrets_file(), lab_env.topo)


def _wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s: {what}"
        time.sleep(1)


def _materialization(result, key: str):
    events = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey.from_user_string(key)
    ]
    assert events, f"{key} was not materialised"
    return events[-1].step_materialization_data.materialization


def _failure(result) -> str:
    return "\n".join(
        str(e.event_specific_data.error.message)
        for e in result.all_events
        if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
    )


def _highstate_op(role: str) -> str:
    return "highstate__" + role.replace("-", "_")


def _roles(lab_env: LabEnv) -> list[str]:
    return sorted({r for h in lab_env.topo.hosts.values() for r in h.roles})


def _with_new_host(lab_env: LabEnv, tmp_path) -> LabEnv:
    """The session's lab with NEW_HOST declared (a web-staging host at instance 2): the same
    location and number, so the same lab, keys folder and secrets."""
    data = yaml.safe_load(lab_env.topology_file.read_text())
    location = lab_env.topo.hosts["web-staging-1"].location
    data["hosts"][NEW_HOST] = {"location": location, "instance": 2, "roles": ["web-staging"]}
    path = tmp_path / "topology.lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return LabEnv(path, lab_env.dagster_home, load_topology(path))


@contextmanager
def _impostor(lab_env: LabEnv, minion_id: str) -> Iterator[None]:
    """A second salt-minion on web-staging-1 (as if that host were compromised) that says it is
    `minion_id`, with a key it makes itself (a folder of its own), pointed at the master: from a
    planned address, so the master's firewall lets it in and its key is what the master judges.
    Stopped (its process group, its folder, every key under that name but the accepted one) when
    done. A machine at an address the plan does not give is refused before it can say anything
    (`test_a_machine_at_an_unplanned_address_cannot_reach_the_master`)."""
    lab = _lab(lab_env)
    master = lab_env.address(lab_env.site.master_host(), "salt-master")
    root = "/tmp/coop-impostor"
    config = f"root_dir: {root}\nmaster: {master}\nid: {minion_id}\nlog_level: info\n"
    stop = f"kill -TERM -- -$(cat {root}/var/run/salt-minion.pid) 2>/dev/null; rm -rf {root}"
    lab.exec(LAB_NUMBER, IMPOSTOR_HOST, ["sh", "-c", stop], check=False)
    start = (
        f"mkdir -p {root}/etc && printf '{config}' > {root}/etc/minion"
        f" && exec setsid /opt/salt/bin/salt-minion -c {root}/etc"
    )
    lab.podman(
        LAB_NUMBER,
        ["exec", "--detach", container_name(LAB_NUMBER, IMPOSTOR_HOST), "sh", "-c", start],
    )
    try:
        yield
    finally:
        lab.exec(LAB_NUMBER, IMPOSTOR_HOST, ["sh", "-c", stop], check=False)
        with lab_env.salt() as salt:
            salt.delete_keys(minion_ids=[minion_id], states=["pending", "denied", "rejected"])


def test_a_machine_at_an_unplanned_address_cannot_reach_the_master(lab_env: LabEnv):
    """A container of its own in the lab's network, at an address the plan gives no host: the
    salt master's firewall resets its connections to 4505/4506, while a planned host's go
    through (the catalogue's `only_from: [hosts]`)."""
    lab = _lab(lab_env)
    master = lab_env.address(lab_env.site.master_host(), "salt-master")
    lab.podman(LAB_NUMBER, ["rm", "--force", "--ignore", STRANGER], quiet=True)
    probe = (
        f"for p in 4505 4506; do (: <>/dev/tcp/{master}/$p) 2>/dev/null && echo open $p"
        " || echo refused $p; done"
    )
    try:
        done = lab.podman(
            LAB_NUMBER,
            [
                "run", "--rm", "--name", STRANGER, "--network", f"coop-lab-{LAB_NUMBER}",
                "--ip", STRANGER_ADDRESS, "--dns", "none", "--pull", "never",
                "--entrypoint", "timeout", "localhost/coop-web:lab", "20", "bash", "-c", probe,
            ],
            check=False,
        )  # fmt: skip
    finally:
        lab.podman(LAB_NUMBER, ["rm", "--force", "--ignore", STRANGER], check=False, quiet=True)
    assert done.returncode == 0, done.output  # the stranger ran and asked
    assert done.lines[-2:] == ["refused 4505", "refused 4506"], done.output
    assert _connects(lab, "web-staging-1", master, 4506)


def _http(url: str, *, context: ssl.SSLContext | None = None, headers: dict | None = None):
    """GET `url` (no proxy: straight through the machine's route into the lab)."""
    handlers: list = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    return opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10)


def _dns_a(server: str, name: str) -> tuple[int, list[str]]:
    """Ask server:53 for the A records of `name` (a plain DNS query over UDP)."""
    query = struct.pack(">HHHHHH", 0x2B2B, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(query, (server, 53))
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
    return rcode, sorted(addresses)


# --- keys ----------------------------------------------------------------------------------------


def test_an_impostor_under_a_declared_name_is_never_accepted_and_fails_the_keys_check(
    lab_env: LabEnv,
):
    """A second minion on web-staging-1 (a compromised host, at a planned address the master's
    firewall lets in) presents itself as web-production-1 with a key of its own: the master
    denies that key (it holds web-production-1's, made ahead); `minions` names it and
    warns, and the blocking keys check fails. Gone again, the check passes."""
    host = "web-production-1"
    salt = lab_env.salt()
    instance = dg.DagsterInstance.ephemeral()
    with salt, _impostor(lab_env, host):
        _wait_until(lambda: host in salt.list_keys().denied, 120, f"{host}'s key denied")
        result = lab_env.run("minions", instance=instance)
        keys_check = {c.check_name: c for c in result.get_asset_check_evaluations()}[
            "minion_keys_match_topology"
        ]
        assert not keys_check.passed
        assert f"a key under a declared host's name was refused: {host}" in keys_check.description
        assert keys_check.metadata["refused_under_declared_names"].value == [host]
        md = _materialization(result, "minions").metadata
        assert md["denied_keys"].value == [host]
        assert f"| {host} | web-production | accepted + **denied** | yes |" in md["minions"].value
        warnings = [
            e.user_message
            for e in instance.all_logs(result.run_id)
            if e.level == logging.WARNING and host in e.user_message
        ]
        assert any("a key under its name was denied" in w for w in warnings), warnings
        # The impostor's key stays denied: nothing accepted it.
        keys = salt.list_keys()
        assert host in keys.denied and keys.pending == ()
    # Cleaned up (container gone, the denied key deleted): the genuine host answers, and the
    # check passes again.
    with salt:
        keys = salt.list_keys()
        assert host in keys.accepted and host not in keys.denied
        assert salt.ping(minions=[host]).ok
    result = lab_env.run("minions", instance=instance)
    assert result.success, _failure(result)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"minion_keys_match_topology": True, "declared_minions_answer": True}


def test_a_pending_key_is_never_accepted_not_even_a_declared_host_s(lab_env: LabEnv, tmp_path):
    """A minion (a second one on web-staging-1) says it is web-staging-2 before that host
    exists. Undeclared, its key is listed
    and left pending; declared in the topology (but not created: `minion_keys` has not handed
    the master its key), `minions` still never accepts a pending key, and the keys check fails
    on the missing host."""
    bigger = _with_new_host(lab_env, tmp_path)
    salt = lab_env.salt()
    instance = dg.DagsterInstance.ephemeral()
    with salt, _impostor(lab_env, NEW_HOST):
        _wait_until(lambda: NEW_HOST in salt.list_keys().pending, 120, f"{NEW_HOST} pending")
        # Not a host of the topology: left unaccepted and listed.
        result = lab_env.run("minions", instance=instance)
        assert result.success, _failure(result)
        md = _materialization(result, "minions").metadata
        assert md["undeclared_keys"].value == [NEW_HOST]
        assert f"| {NEW_HOST} | (not in the topology) | pending | - | left unaccepted |" in (
            md["minions"].value
        )
        # Declared: still never accepted by name; the blocking check fails and says why.
        result = bigger.run("minions", "highstate/web-staging", instance=instance)
        md = _materialization(result, "minions").metadata
        assert md["missing_keys"].value == [NEW_HOST]
        keys_check = {c.check_name: c for c in result.get_asset_check_evaluations()}[
            "minion_keys_match_topology"
        ]
        assert not keys_check.passed
        assert f"a host of the topology without an accepted key: {NEW_HOST} (pending)" in (
            keys_check.description
        )
        started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
        assert _highstate_op("web-staging") not in started, "highstate ran past the keys check"
        keys = salt.list_keys()
        assert NEW_HOST in keys.pending and NEW_HOST not in keys.accepted
        # A person accepts that key by hand: `minions` on the lab's own topology, where it is no
        # host, deletes it again (an accepted stranger never stays).
        salt.accept_keys(minion_ids=[NEW_HOST])
        result = lab_env.run("minions", instance=instance)
        assert result.success, _failure(result)
        assert _materialization(result, "minions").metadata["deleted_keys"].value == [NEW_HOST]
        assert NEW_HOST not in salt.list_keys().accepted
    with salt:
        assert NEW_HOST not in salt.list_keys().all()
    result = lab_env.run("minions", instance=instance)
    assert result.success, _failure(result)
    assert all(c.passed for c in result.get_asset_check_evaluations())


# --- the pillar ----------------------------------------------------------------------------------


def test_each_real_minion_holds_only_its_own_secrets(lab_env: LabEnv):
    secrets = _secrets(lab_env)
    apps = sorted(lab_env.topo.apps)
    production = [secrets.get("postgres", app, "production") for app in apps]
    staging = [secrets.get("postgres", app, "staging") for app in apps]
    registry = dict(secrets.get("registry", "users"))
    salt_api = secrets.get("salt", "api", "password")
    registry_key = secrets.get("registry", "tls", "key")
    with lab_env.salt() as salt:
        pillars = {h: salt.pillar(minion=h, unmask=True) for h in sorted(lab_env.topo.hosts)}
        # Unmasked on request only: salt masks pillar values by default.
        masked = salt.pillar(minion="web-staging-1")
        assert masked["apps"]["hello"]["database"]["password"] == "**********"
    # support-1 runs Dagster (the dagster role), which renders every host's pillar: it holds the
    # whole secrets file, in its `dagster` block and nowhere else; the rest of its pillar is held
    # to the same rule as every host's.
    whole = pillars["support-1"].pop("dagster")
    assert yaml.safe_load(whole["secrets"]) == yaml.safe_load(
        lab_env.site.secrets_file().read_text()
    )
    dumps = {h: json.dumps(p) for h, p in pillars.items()}

    def has(host: str, value: str) -> bool:  # as it appears in the JSON (a PEM's \n escaped)
        return json.dumps(value)[1:-1] in dumps[host]

    def holds(host: str, values) -> list[int]:
        return [i for i, v in enumerate(values) if has(host, v)]

    # Web hosts: their environment's database passwords and the pull account, nothing else.
    assert pillars["web-staging-1"]["apps"]["hello"]["database"]["password"] == staging[0]
    assert holds("web-staging-1", production) == []
    assert pillars["web-production-1"]["apps"]["hello"]["database"]["password"] == production[0]
    assert holds("web-production-1", staging) == []
    for web in ("web-staging-1", "web-production-1"):
        assert pillars[web]["registry_client"]["user"] == "deploy"
        assert registry["deploy"] in dumps[web] and registry["ci"] not in dumps[web]
    # PostgreSQL hosts: their environment's passwords only.
    assert holds("pg-staging-1", staging) == list(range(len(apps)))
    assert holds("pg-staging-1", production) == []
    assert holds("pg-production-1", production) == list(range(len(apps)))
    assert holds("pg-production-1", staging) == []
    # The build agent: the push account, no database password.
    assert pillars["support-2"]["registry_client"]["user"] == "ci"
    assert registry["deploy"] not in dumps["support-2"]
    # The registry host: bcrypt hashes of the accounts, never a password; no database password.
    assert not [u for u, pw in registry.items() if pw in dumps["support-1"]]
    doors = pillars["support-1"]["registry"]
    assert (doors["htpasswd"] + doors["htpasswd_push"]).count("$2b$") == len(registry)
    assert holds("support-1", production + staging) == []
    # salt-api's password and the registry's TLS key: the master's host and the registry's only.
    for host in dumps:
        assert has(host, salt_api) == (host == "support-1"), host
        assert has(host, registry_key) == (host == "support-1"), host
    # Every minion's pillar names it and its roles, and the planned addresses.
    for host, pillar in pillars.items():
        assert pillar["roles"] == list(lab_env.topo.hosts[host].roles), host
    assert pillars["support-1"]["coop"]["addresses"]["docker-registry"] == lab_env.address(
        "support-1", "docker-registry"
    )


# --- services, for real, at their planned addresses ----------------------------------------------


def test_nginx_answers_on_each_web_host_s_planned_address(lab_env: LabEnv):
    lab = _lab(lab_env)
    for host, env in (("web-staging-1", "staging"), ("web-production-1", "production")):
        address = lab_env.address(host, f"web-{env}")
        lab.route_into_lab(address)
        with _http(f"http://{address}/healthz") as response:
            assert response.read() == f"{host} {env} ok\n".encode()
        # The states' files on the server's real paths.
        mode = lab.exec(LAB_NUMBER, host, ["stat", "-c", "%a", "/etc/containers/auth.json"])
        assert mode.output.strip() == "600"
        active = lab.exec(LAB_NUMBER, host, ["systemctl", "is-active", "nginx"], check=False)
        assert active.output.strip() == "active", (host, active.output)
        # On its planned address only: not the image's stock config (every address, port 80).
        sockets = lab.exec(LAB_NUMBER, host, ["ss", "-Hltn", "sport = :80"]).output.split()
        assert f"{address}:80" in sockets and "0.0.0.0:80" not in sockets, (host, sockets)


def test_dnsmasq_on_support_1_answers_the_address_plan(lab_env: LabEnv):
    site = lab_env.site
    lab = _lab(lab_env)
    dns_host = sorted(lab_env.topo.hosts_with_role("dns"))[0]
    server = lab_env.address(dns_host, "dns")
    lab.route_into_lab(server)
    planned = {
        name: a.address
        for host in ("support-1", "web-staging-1", "pg-production-1")
        for a in site.plan.for_host(host)
        for name in a.names
    }
    assert "support-1.lab.coop.internal" in planned and "docker-registry.lab.coop.internal" in (
        planned
    )
    # From the machine, through the link.
    for name, address in planned.items():
        rcode, found = _dns_a(server, name)
        assert rcode == 0 and address in found, (name, rcode, found)
    # From inside a lab host, through the resolver every container was given (--dns).
    resolv = lab.exec(LAB_NUMBER, "web-staging-1", ["cat", "/etc/resolv.conf"]).output
    assert f"nameserver {lab_env.address(dns_host)}" in resolv, resolv
    for name in ("support-1.lab.coop.internal", "docker-registry.lab.coop.internal"):
        out = lab.exec(LAB_NUMBER, "web-staging-1", ["getent", "hosts", name], check=False)
        assert out.returncode == 0, (name, out.output)
        assert out.output.split()[0] == planned[name], (name, out.output)
    # A name of the domain that the plan does not have: no such name (never forwarded).
    assert _dns_a(server, "nobody.lab.coop.internal")[0] == 3  # NXDOMAIN


@contextmanager
def _answering_server(address: str) -> Iterator[tuple[int, list[str]]]:
    """A TCP server on `address` that answers every connection with an HTTP 200; yields its
    port and the list of peers that connected."""
    import threading

    server = socket.create_server((address, 0))
    connected: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, peer = server.accept()
            except OSError:
                return
            connected.append(peer[0])
            with conn:
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1], connected
    finally:
        server.close()


def test_the_npm_cache_goes_out_through_the_egress_proxy_and_nothing_else_goes_out(
    lab_env: LabEnv,
):
    """The lab's only way out: verdaccio on support-1 (the npm cache) fetches from
    registry.npmjs.org through the egress proxy on the lab's link; a web host is refused, the
    cache host is refused anything but its registry, and without the proxy nothing leaves."""
    from lab import site

    lab = _lab(lab_env)
    with lab_env.env():
        egress = site.status(lab_env.topology_file)["egress"][str(LAB_NUMBER)]
    support = {a.address for a in lab_env.site.plan.for_host("support-1")}
    assert egress["running"] and egress["url"] == f"http://169.254.{LAB_NUMBER}.1:3128"
    uplinks = ["files.pythonhosted.org:443", "pypi.org:443", "registry.npmjs.org:443"]
    assert egress["allow"] == {a: uplinks for a in support}
    proxy = lab_env.site.egress(LAB_NUMBER)
    before, first = time.time(), len(proxy.log())

    def curl(host: str, *args: str):
        argv = ["curl", "-sS", "--max-time", "60", *args]
        return lab.exec(LAB_NUMBER, host, argv, check=False)

    npm = lab_env.address("support-1", "npm-cache")
    # Not in the cache yet (a kept lab may have it): verdaccio must ask the registry.
    lab.exec(LAB_NUMBER, "support-1", ["rm", "-rf", "/var/lib/verdaccio/storage/left-pad"])
    out = curl("support-2", f"http://{npm}:4873/left-pad")  # a build agent asks the cache
    assert out.returncode == 0, out.output
    assert json.loads(out.output)["name"] == "left-pad"
    time.sleep(IDLE_S + 1)  # a tunnel is logged when it closes (the proxy closes idle ones)
    fetched = proxy.tunnels_since(before)
    assert fetched and all(e["target"] == "registry.npmjs.org:443" for e in fetched), fetched
    assert all(e["client"] in support and e["received"] > 0 for e in fetched), fetched

    # The PyPI cache (proxpi) the same way: a project's index, from pypi.org through the proxy.
    pypi = lab_env.address("support-1", "pypi-cache")
    since = time.time()
    index = curl("support-2", f"http://{pypi}:3141/index/six/")
    assert index.returncode == 0 and "six-1." in index.output, index.output
    time.sleep(IDLE_S + 1)  # proxpi keeps its connection: the proxy closes it when idle, and logs
    fetched = proxy.tunnels_since(since)
    assert fetched and {e["target"] for e in fetched} <= {"pypi.org:443"}, fetched
    assert all(e["client"] in support and e["received"] > 0 for e in fetched), fetched
    # Only the build agents may ask it (only_from: jenkins-agent).
    assert curl("web-staging-1", "--max-time", "5", f"http://{pypi}:3141/index/").returncode != 0

    web = curl("web-staging-1", "-x", egress["url"], "https://registry.npmjs.org/")
    assert web.returncode != 0 and "403" in web.output, web.output
    other = curl("support-1", "-x", egress["url"], "https://example.com/")
    assert other.returncode != 0 and "403" in other.output, other.output
    # No route off the lab but the proxy: a public address by number (no name to resolve)
    # cannot be connected to (7) or times out (28).
    direct = curl("support-1", "--max-time", "5", "https://1.1.1.1/")
    assert direct.returncode in (7, 28), direct.output
    # Nothing else the machine listens on at the link's address is reachable from the lab: a
    # server of the test's own there, which answers whoever connects, is never connected to.
    with _answering_server(f"169.254.{LAB_NUMBER}.1") as (port, connected):
        probe = curl("support-2", "--max-time", "3", f"http://169.254.{LAB_NUMBER}.1:{port}/")
    assert probe.returncode == 28 and not connected, probe.output  # dropped by the link rules
    # Nor does the lab's namespace itself start anything towards the machine (the ACME server
    # runs there, and its validations follow redirects).
    netns = f"--net={LabNetwork(LAB_NUMBER).netns_path}"
    with _answering_server(f"169.254.{LAB_NUMBER}.1") as (port, connected):
        argv = ["nsenter", netns, "curl", "-s", "--max-time", "3"]
        from_ns = subprocess.run(
            [*argv, f"http://169.254.{LAB_NUMBER}.1:{port}/"], capture_output=True, text=True
        )
    assert from_ns.returncode == 28 and not connected, from_ns.stderr
    refused = [e for e in proxy.log()[first:] if e["result"] == "refused"]
    assert [e["target"] for e in refused] == ["registry.npmjs.org:443", "example.com:443"]
    assert refused[0]["client"] == lab_env.address("web-staging-1")
    assert refused[0]["why"] == (
        f"{refused[0]['client']} may not go out of the lab (no cache host, and no chat client)"
    )
    assert refused[1]["client"] in support


def test_the_registry_serves_tls_with_the_generated_certificate_and_asks_for_an_account(
    lab_env: LabEnv,
):
    secrets = _secrets(lab_env)
    address = lab_env.address("support-1", "docker-registry")
    _lab(lab_env).route_into_lab(address)
    context = ssl.create_default_context(cadata=secrets.get("registry", "tls", "cert"))
    url = f"https://{address}:5000/v2/"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        _http(url, context=context)
    assert anonymous.value.code == 401
    account = f"deploy:{secrets.get('registry', 'users', 'deploy')}"
    auth = base64.b64encode(account.encode()).decode()
    with _http(url, context=context, headers={"Authorization": f"Basic {auth}"}) as response:
        assert response.status == 200
    wrong = base64.b64encode(b"deploy:wrong").decode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        _http(url, context=context, headers={"Authorization": f"Basic {wrong}"})
    assert refused.value.code == 401
    # Another CA's client does not trust it: the certificate is the generated one.
    with pytest.raises(urllib.error.URLError):
        _http(url, context=ssl.create_default_context())


def _connects(lab, host: str, address: str, port: int) -> bool:
    """Whether `host` (a lab guest) opens a TCP connection to address:port within 5 s."""
    return lab.probe_tcp_from(LAB_NUMBER, host, address, port)


def test_postgres_gives_each_app_a_role_and_a_database(lab_env: LabEnv):
    secrets = _secrets(lab_env)
    lab = _lab(lab_env)
    for host, env in (("pg-staging-1", "staging"), ("pg-production-1", "production")):
        address = lab_env.address(host, f"postgres-{env}")
        # The environment's web host reaches it across the lab's network, as its apps do; the
        # other environment's web host and this machine are refused (the host's firewall).
        web, other = f"web-{env}-1", f"web-{'production' if env == 'staging' else 'staging'}-1"
        assert _connects(lab, web, address, 5432), (web, address)
        assert not _connects(lab, other, address, 5432), (other, address)
        assert not lab.probe_tcp(address, 5432, timeout_s=5), address
        for app in sorted(lab_env.topo.apps):
            db = f"{app.replace('-', '_')}_{env}"

            def psql(password: str, sslmode="require", host=host, address=address, db=db):
                # Over TCP to the planned address, as an app connects (pg_hba: password, TLS).
                query = (
                    "select current_user, current_database(), ssl, version"
                    " from pg_stat_ssl where pid = pg_backend_pid()"
                )
                return lab.exec(
                    LAB_NUMBER,
                    host,
                    ["env", f"PGPASSWORD={password}", "PGCONNECT_TIMEOUT=5",
                     f"PGSSLMODE={sslmode}", "psql", "-h", address, "-U", db, db, "-Atc", query],
                    check=False,
                )  # fmt: skip

            if not lab_env.topo.apps[app].database:
                continue
            ok = psql(secrets.get("postgres", app, env))
            assert ok.returncode == 0, (host, db, ok.output)
            assert ok.output.strip().splitlines()[-1].startswith(f"{db}|{db}|t|TLSv1.")
            refused = psql("wrong")
            assert refused.returncode != 0
            assert "password authentication failed" in refused.output, refused.output
            # Without TLS, not even the right password gets in (pg_hba: hostssl only).
            plain = psql(secrets.get("postgres", app, env), sslmode="disable")
            assert plain.returncode != 0 and "no encryption" in plain.output, plain.output


def test_the_salt_master_binds_to_its_planned_address(lab_env: LabEnv):
    master = lab_env.site.master_host()
    address = lab_env.address(master, "salt-master")
    lab = _lab(lab_env)
    with lab_env.salt() as salt:
        text = salt.call(minions=[master], fun="file.read", args=["/etc/salt/master.d/coop.conf"])
    written = yaml.safe_load(text[master])
    assert written["interface"] == address
    assert written["auto_accept"] is False and written["open_mode"] is False
    assert written["file_roots"] == {"base": ["/srv/coop/salt"]}
    assert written["pillar_roots"] == {"base": ["/srv/pillar"]}
    for port in (4505, 4506):
        # every host of the topology reaches it; anything else (this machine) is refused
        assert _connects(lab, "web-staging-1", address, port), port
        assert not lab.probe_tcp(address, port, timeout_s=5), port
    # It listens there and nowhere else (not on the host's primary address, nor on all).
    listening = lab.exec(LAB_NUMBER, master, ["ss", "-Hltn", "sport = :4506"]).output.split()
    assert f"{address}:4506" in listening and "0.0.0.0:4506" not in listening, listening


# --- dry runs and failures -----------------------------------------------------------------------


# Places in a running guest that change whatever salt does, each for its reason. Everything else
# on the guest's root filesystem is compared before and after a dry run.
VOLATILE = {
    "/proc": "the kernel's",
    "/sys": "the kernel's",
    "/dev": "devices",
    "/run": "runtime state on tmpfs (and the snapshot itself)",
    "/tmp": "scratch",
    "/var/tmp": "scratch",
    "/var/log": "logs: the journal, salt's own log, the services'",
    "/var/cache": "caches: the minion's job and file cache (every salt call writes it, a dry"
    " run too), apt's, man-db's",
    "/var/lib/systemd": "timer stamps, the random seed",
    "/var/lib/apt/lists": "apt's package lists (apt-daily)",
    "/var/lib/dhcp": "DHCP leases",
    "/var/lib/postgresql": "the databases' own writes",
    "/var/lib/containers": "podman's records of the running app containers (health checks)",
    "/var/lib/dagster": "Dagster's instance folder: its runs' logs and artifacts (the dagster role)",
    "/srv/coop-infra": "the dagster role's checkout: Python's bytecode caches, the code"
    " location's state folder (a run writes them)",
    "/root/.npm/_logs": "npm's debug log of each of its runs: salt's npm module runs `npm"
    " --version` as salt loads it, at every salt call (npm keeps the last 10)",
}

# Run in a guest by its own python (salt's, /opt/salt): `save FILE ROOT SKIP_JSON` records every
# file, link and folder under ROOT outside SKIP (a file: mode, owner, size, mtime, ctime and the
# sha256 of its content; a link: its target; a folder: mode and owner); `diff FILE ROOT
# SKIP_JSON` prints what differs from the record, as JSON. A folder's mtime is left out: some
# services make and remove files of their own in folders they own.
GUEST_SNAPSHOT = r"""
import hashlib, json, os, stat, sys

mode, record, root, skip = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

def skipped(path):
    return any(path == s or path.startswith(s.rstrip("/") + "/") for s in skip)

def entry(path):
    st = os.lstat(path)
    found = [oct(st.st_mode), st.st_uid, st.st_gid]
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        found += [st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest.hexdigest()]
    elif stat.S_ISLNK(st.st_mode):
        found.append(os.readlink(path))
    return found

def snapshot():
    tree = {}
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not skipped(os.path.join(top, d))]
        for name in dirs + files:
            path = os.path.join(top, name)
            if skipped(path):
                continue
            try:
                tree[path] = entry(path)
            except FileNotFoundError:
                pass
    return tree

if mode == "save":
    with open(record, "w") as f:
        json.dump(snapshot(), f)
    print(json.dumps({"saved": len(json.load(open(record)))}))
else:
    before, after = json.load(open(record)), snapshot()
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    print(json.dumps({
        "compared": len(after),
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": {p: [before[p], after[p]] for p in changed},
    }))
"""
SNAPSHOT_FILE = "/run/coop-test-dry-run-snapshot.json"


def _guest_snapshots(lab, hosts: list[str], mode: str) -> dict[str, dict]:
    """Save (`save`) or compare with (`diff`) the record of each host's whole tree
    (GUEST_SNAPSHOT), the hosts at once."""
    argv = ["/opt/salt/bin/python3", "-c", GUEST_SNAPSHOT, mode, SNAPSHOT_FILE, "/"]

    def one(host: str) -> dict:
        out = lab.exec(LAB_NUMBER, host, [*argv, json.dumps(sorted(VOLATILE))])
        return json.loads(out.lines[-1])

    with ThreadPoolExecutor(len(hosts)) as pool:
        return dict(zip(hosts, pool.map(one, hosts), strict=True))


def test_a_dry_run_of_every_role_changes_nothing_and_is_an_observation(lab_env: LabEnv):
    """Every role's highstate with test=True, after a managed file went missing on a web host:
    the dry run says it would write it, and does not; a real apply writes it. On every host,
    the whole tree (every file's content, mtime and ctime; outside VOLATILE) is as it was."""
    lab = _lab(lab_env)
    path = "/etc/containers/containers.conf"
    lab.exec(LAB_NUMBER, "web-staging-1", ["rm", "-f", path])
    hosts = sorted(lab_env.topo.hosts)
    try:
        saved = _guest_snapshots(lab, hosts, "save")
        assert all(s["saved"] > 1000 for s in saved.values()), saved  # a whole tree, not a folder
        roles = _roles(lab_env)
        run_config = {"ops": {_highstate_op(r): {"config": {"dry_run": True}} for r in roles}}
        started = time.monotonic()
        result = lab_env.run(
            *[f"highstate/{r}" for r in roles],
            run_config=run_config,
            instance=dg.DagsterInstance.ephemeral(),
        )
        print(f"dry run of {len(roles)} roles: {time.monotonic() - started:.1f} s")
        assert result.success, _failure(result)
        materialised = {
            e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
        }
        assert materialised == {"topology"}
        observed = {
            e.asset_key.to_user_string(): e.event_specific_data.asset_observation.metadata
            for e in result.all_events
            if e.event_type_value == "ASSET_OBSERVATION"
        }
        # Known and left: a role whose highstate comes `after` another's (the dagster role, after
        # postgres-production's) is skipped in a dry run of every role, as Dagster skips a step
        # whose upstream made no materialisation, and a dry run makes none.
        after = {r for r in roles if role_catalogue().roles[r].after}
        assert set(observed) == {f"highstate/{r}" for r in roles if r not in after}
        for key, md in observed.items():
            assert md["dry_run"].value is True and md["failed"].value == 0, key
        web = observed["highstate/web-staging"]
        assert "| web-staging-1 | web: web-containers-conf | file.managed | would change |" in (
            web["results"].value
        )
        assert web["changed"].value == 1, web["results"].value
        # Every other role: a highstated lab has nothing to change.
        for key, md in observed.items():
            if key != "highstate/web-staging":
                assert md["changed"].value == 0, (key, md["results"].value)
        gone = lab.exec(LAB_NUMBER, "web-staging-1", ["test", "-e", path], check=False)
        assert gone.returncode != 0, "the dry run wrote the file"
        diffs = _guest_snapshots(lab, hosts, "diff")
        for host, diff in diffs.items():
            assert diff["compared"] > 1000, (host, diff["compared"])
            written = {k: len(diff[k]) for k in ("added", "removed", "changed") if diff[k]}
            shown = {k: list(diff[k])[:20] for k in written}  # the first few of each
            before_after = dict(list(diff["changed"].items())[:5])
            assert not written, (host, written, shown, before_after)
    finally:
        for host in hosts:
            lab.exec(LAB_NUMBER, host, ["rm", "-f", SNAPSHOT_FILE], check=False)
        # The real thing puts it back (also when an assertion above failed).
        result = lab_env.run("highstate/web-staging", instance=dg.DagsterInstance.ephemeral())
    assert result.success, _failure(result)
    assert _materialization(result, "highstate/web-staging").metadata["changed"].value == 1
    assert lab.exec(LAB_NUMBER, "web-staging-1", ["test", "-s", path], check=False).returncode == 0


def test_a_failing_state_fails_the_materialisation_and_names_minion_and_state(lab_env: LabEnv):
    """nginx stopped on web-production-1 and its planned address:80 taken by another program:
    the web state cannot start it; the run fails naming the minion and the state, and nothing
    is materialised. With the port free, the same asset succeeds and nginx answers again."""
    host = "web-production-1"
    address = lab_env.address(host, "web-production")
    lab = _lab(lab_env)
    squat = (
        "import socket, time\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(({address!r}, 80))\n"
        "s.listen()\n"
        "time.sleep(600)\n"
    )
    lab.exec(LAB_NUMBER, host, ["systemctl", "stop", "nginx"])
    try:
        lab.exec(
            LAB_NUMBER,
            host,
            ["systemd-run", "--unit", "coop-test-squatter", "/opt/salt/bin/python3", "-c", squat],
        )
        _wait_until(lambda: lab.probe_tcp(address, 80), 30, "the squatter listening")
        result = lab_env.run("highstate/web-production", instance=dg.DagsterInstance.ephemeral())
    finally:
        lab.exec(LAB_NUMBER, host, ["systemctl", "stop", "coop-test-squatter"], check=False)
    assert not result.success
    message = _failure(result)
    print(message)
    assert "highstate/web-production" in message
    assert f"{host}: state web: web-nginx-running (service.running) failed" in message
    assert not [
        e for e in result.get_asset_materialization_events() if "highstate" in str(e.asset_key)
    ]
    try:
        result = lab_env.run("highstate/web-production", instance=dg.DagsterInstance.ephemeral())
        assert result.success, _failure(result)
        with _http(f"http://{address}/healthz") as response:
            assert response.read() == f"{host} production ok\n".encode()
    finally:
        lab.exec(LAB_NUMBER, host, ["systemctl", "start", "nginx"], check=False)


# --- a host added to the running lab, and removed again ------------------------------------------


def _main(env: LabEnv, run_config: dict | None = None):
    """The `main` job (what `infra lab up` runs) on `env`'s topology, on the lab's instance."""
    with env.env():
        job = env.definitions().resolve_job_def("main")
        return job.execute_in_process(
            instance=dg.DagsterInstance.get(), run_config=run_config or {}, raise_on_error=False
        )


def test_a_host_added_to_the_running_lab_boots_answering_with_its_key_made_ahead(
    lab_env: LabEnv, tmp_path
):
    """web-staging-2 added to the topology of the running lab: `minion_keys` makes its pair and
    hands its public key to the running master as accepted, the container boots with its pair,
    and the minion answers with no pending key ever accepted; its web state serves /healthz at
    its planned address. Removed again (allow_destroy), the lab is as before."""
    bigger = _with_new_host(lab_env, tmp_path)
    address = bigger.address(NEW_HOST, "web-staging")
    lab = _lab(lab_env)
    started = time.monotonic()
    try:
        result = _main(bigger)
        print(f"{NEW_HOST} added, main job: {time.monotonic() - started:.1f} s")
        assert result.success, _failure(result)
        keys_md = _materialization(result, "minion_keys").metadata
        assert keys_md["created"].value == [NEW_HOST]
        assert keys_md["pre_accepted_on_the_running_master"].value == [NEW_HOST]
        minions = _materialization(result, "minions").metadata
        assert NEW_HOST in minions["answering"].value
        with bigger.salt() as salt:
            keys = salt.list_keys()
            assert NEW_HOST in keys.accepted and keys.pending == () and keys.denied == ()
            # The key the master holds is the one made ahead (the container's own pair).
            pub = lab.exec(LAB_NUMBER, NEW_HOST, ["cat", "/etc/salt/pki/minion/minion.pub"])
            made = KeyStore(bigger.site.keys_dir()).minion(NEW_HOST).public_pem
            assert pub.output.strip() == made.strip()
        lab.route_into_lab(address)
        with _http(f"http://{address}/healthz") as response:
            assert response.read() == f"{NEW_HOST} staging ok\n".encode()
    finally:
        started = time.monotonic()
        result = _main(
            lab_env, {"ops": {"instances__lab": {"config": {"allow_destroy": [NEW_HOST]}}}}
        )
        print(f"{NEW_HOST} removed, main job: {time.monotonic() - started:.1f} s")
    assert result.success, _failure(result)
    assert NEW_HOST not in {c.host for c in lab.status(LAB_NUMBER, systemd=False)}
    with lab_env.salt() as salt:
        assert NEW_HOST not in salt.list_keys().all()
        assert salt.ping(minions=sorted(lab_env.topo.hosts)).ok
