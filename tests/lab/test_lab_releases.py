"""Releases on the lab, for real: `release/<environment>/hello` carried out by the `app` salt state
on web-staging-1 and web-production-1 (podman inside the guest pulls by digest from the lab's
registry, nginx switches), read back through salt and over HTTP at the web host's planned address
with the app's domain as Host, through the lab's link.

The images are the sample app built with podman on this machine (FROM the project's base image)
and pushed to the lab's registry under tags of their own (`hello:t-<sha>`), not the branch tag the
registry sensor watches; the release jobs are run in process with the digest in their config, as
the sensor asks, all on one Dagster instance (the module's). A release takes only what
`app_image/hello` recorded: each image these tests push is recorded as app_image records a build
(`record_build`: a materialisation of `app_image/hello` in a run, with its digest, commit and
branch), except the foreign ones, which must be refused. tests/lab/test_lab_delivery.py runs the
real chain (a push, app_image's build on the agent, its record, the releases).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import socket
import ssl
import threading
import time
import warnings
from pathlib import Path

import dagster as dg
import pytest
import requests
import yaml
from cryptography import x509
from fixtures_delivery import HELLO, record_build
from lab_env import LAB_NUMBER, LabEnv

from infra_assets.delivery.provenance import our_build
from infra_assets.topology.model import load_topology
from infra_assets.topology.secrets import load_secrets
from lab.reach import Site, SiteSession
from resources.topology import TopologyResource
from sensors import notifications
from sensors.registry_images import REVISION_LABEL, poll

DBCHECK = Path(__file__).parents[1] / "apps" / "dbcheck" / "dbcheck.py"
RELEASE_LABEL = "org.coop-infra.release"  # what the standard build labels Procfile's release: with

pytestmark = [pytest.mark.slow, pytest.mark.lab]

APP = "hello"
RECORD = f"/var/lib/coop/releases/{APP}.json"
WORKER = "ticker"


class LabReleases:
    """The lab's web hosts, registry and release jobs, as these tests use them."""

    def __init__(self, lab_env: LabEnv, podman, tmp_path_factory):
        self.env = lab_env
        self.podman = podman
        self.tmp = tmp_path_factory.mktemp("releases")
        self.defs = lab_env.definitions()
        self.registry = self.defs.resources["registry"]
        self.driver = lab_env.lab().lab()
        self.instance = dg.DagsterInstance.ephemeral()

    def host(self, env: str) -> str:
        return sorted(self.env.topo.hosts_with_role(f"web-{env}"))[0]

    def app_site(self, env: str) -> Site:
        """The app on `env` as the machine opens it: HTTPS to its domain at the web host's
        address, checked against the lab's ACME root (lab/site.py, app_site)."""
        from lab.site import app_site

        return app_site(self.env.site, self.host(env), APP, env)

    def get(self, env: str, path: str = "", session: SiteSession | None = None):
        """GET the app on `env` (the route into the lab checked first)."""
        address = self.env.address(self.host(env), f"web-{env}")
        assert self.driver.route_into_lab(address)["dev"] == f"coop{LAB_NUMBER}-m"
        with self.app_site(env).session() if session is None else _borrowed(session) as http:
            return http.get("/" + path.lstrip("/"))

    def version(self, env: str) -> str | None:
        response = self.get(env, "health")
        return response.json()["version"] if response.status_code == 200 else None

    def guest(self, env: str, *argv: str) -> str:
        return self.driver.exec(LAB_NUMBER, self.host(env), list(argv)).output

    def record(self, env: str = "staging") -> str:
        return self.guest(env, "cat", RECORD)

    def image(
        self,
        version: str,
        *,
        healthy: bool = True,
        crashes: bool = False,
        release_command: str = "",
        dbcheck: bool = False,
        label: str | None = None,
        to: str = "",
        recorded: str | None = APP,
    ) -> str:
        """The sample app saying `version`, pushed as hello:t-<version> (or `to`) to the lab's
        registry: its digest. `label`: its revision label, if not `version`. `recorded`: the app
        whose app_image records it as built from `version` (None: a foreign image). `crashes`:
        the app exits as it starts; `release_command`: its release phase (the label the
        standard build writes from Procfile's `release:`); `dbcheck`: the image has
        /app/dbcheck.py (tests/apps/dbcheck: logs in to DATABASE_URL)."""
        context = self.tmp / f"app-{version}"
        shutil.copytree(HELLO, context)
        if not healthy:
            app = context / "app.py"
            app.write_text(
                app.read_text().replace(
                    '        path = self.path.split("?", 1)[0]\n',
                    '        path = self.path.split("?", 1)[0]\n'
                    '        if path == "/health":\n'
                    '            return self._send(503, "text/plain", "unhealthy on purpose\\n")\n',
                )
            )
        if crashes:
            app = context / "app.py"
            app.write_text(
                "import sys\n"
                'print("starting hello: DATABASE_URL is not set, giving up", flush=True)\n'
                "sys.exit(3)\n" + app.read_text()
            )
        if dbcheck:
            shutil.copy(DBCHECK, context / "dbcheck.py")
            dockerfile = context / "Dockerfile"
            dockerfile.write_text(
                dockerfile.read_text().replace(
                    "COPY app.py /app/app.py\n",
                    "COPY app.py /app/app.py\nCOPY dbcheck.py /app/dbcheck.py\n",
                )
            )
        labels = {REVISION_LABEL: version if label is None else label}
        if release_command:
            labels[RELEASE_LABEL] = release_command
        end = self.registry.endpoint()  # checks the route into the lab
        tag = to or end.image(APP, f"t-{version[:12]}")
        self.podman.build(
            context=context,
            tag=tag,
            build_args={"GIT_SHA": version},
            labels=labels,
            log=_quiet,
        )
        digest = self.podman.push(image=tag, destination=tag, registry=end, log=_quiet).digest
        if recorded:
            self.record_build(recorded, digest, version)
        return digest

    def record_build(self, app: str, digest: str, sha: str) -> None:
        """app_image/<app>'s record of `digest` built from `sha` of hello's branch, in this
        module's instance (the image itself was built here by podman)."""
        record_build(self.instance, app, digest, sha, self.env.topo.apps[APP].branch)

    def run(self, job: str, **config) -> dg.ExecuteInProcessResult:
        job_def = self.defs.resolve_job_def(job)
        run_config = {}
        if config:
            ops = [n for n in job_def.graph.node_dict if n.startswith("release__")]
            run_config = {"ops": {op: {"config": config} for op in ops}}
        with self.env.env():
            return job_def.execute_in_process(
                instance=self.instance,
                run_config=run_config,
                raise_on_error=False,
            )

    def release(self, digest: str, version: str, **config) -> dg.ExecuteInProcessResult:
        return self.run(f"release_staging_{APP}", digest=digest, sha=version, **config)


@pytest.fixture(scope="module")
def site(lab_env: LabEnv, podman, base_image, tmp_path_factory) -> LabReleases:
    return LabReleases(lab_env, podman, tmp_path_factory)


def _meta(result: dg.ExecuteInProcessResult, env: str = "staging") -> dict:
    [mat] = result.asset_materializations_for_node(f"release__{env}__{APP}")
    return {k: v.value for k, v in mat.metadata.items()}


def _failure(result: dg.ExecuteInProcessResult, env: str = "staging"):
    return result.failure_data_for_node(f"release__{env}__{APP}")


def _version(n: int) -> str:
    """A made-up commit: 40 lowercase hex digits, at least one a letter (so that its upper case
    is not a commit too)."""
    return f"f{time.time_ns():x}{n}".ljust(40, "0")[:40]


@contextlib.contextmanager
def _borrowed(session):
    yield session


def _quiet(_line: str) -> None:
    pass


def test_a_staging_release_serves_the_new_version_with_no_failed_request(site: LabReleases):
    v1, v2 = _version(1), _version(2)
    d1, d2 = site.image(v1), site.image(v2)

    first = site.release(d1, v1)
    assert first.success, _failure(first)
    assert site.version("staging") == v1
    meta = _meta(first)
    assert meta["digest"] == d1 and meta["sha"] == v1
    assert meta["health"].startswith("healthy: http://127.0.0.1:")
    assert meta["health"].endswith("answers 200")
    response = site.get("staging")
    assert response.text == f"hello from {v1}\n"
    assert response.headers["X-Coop-Release"] == d1  # nginx says which release served it

    # The next release, while four clients keep asking: every answer is a 200, from v1 or v2.
    # Each client is a browser on a keep-alive connection: once it has seen v2 it never sees
    # v1 again, and every request asked after the release returned is answered by v2. (Across
    # clients there is no such order: an nginx worker from before the reload finishes the
    # request it holds with the old upstream, while a new worker already answers another
    # client with v2.)
    answers: list[list[tuple[float, int, str]]] = [[] for _ in range(4)]  # (asked, status, v)
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(mine: list[tuple[float, int, str]]):
        try:
            ask(mine)
        except BaseException as exc:  # a failed route check, say: the test fails with it
            errors.append(exc)

    def ask(mine: list[tuple[float, int, str]]):
        with site.app_site("staging").session() as session:  # keep-alive, as a browser
            while not stop.is_set():
                asked = time.monotonic()
                try:
                    try:
                        r = site.get("staging", session=session)
                    except requests.ConnectionError as exc:
                        if not any(s in str(exc) for s in ("RemoteDisconnected", "reset by peer")):
                            raise
                        # An idle keep-alive connection that an old nginx worker closed (or
                        # reset) as it exited after the reload: nothing was answered, so a
                        # browser asks again on a new connection. So do we, once; a second
                        # failure counts.
                        r = site.get("staging", session=session)
                except requests.RequestException as exc:
                    mine.append((asked, 0, f"{type(exc).__name__}: {exc}"))
                    continue
                mine.append((asked, r.status_code, r.headers.get("X-App-Version", "")))

    clients = [threading.Thread(target=client, args=(mine,)) for mine in answers]
    for c in clients:
        c.start()
    try:
        time.sleep(0.3)
        second = site.release(d2, v2)
        released = time.monotonic()
        # ... until every client has had an answer to a request asked after it (10 s at most)
        while time.monotonic() < released + 10 and not all(
            mine and mine[-1][0] > released for mine in answers
        ):
            time.sleep(0.1)
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert not errors, errors
    assert second.success, _failure(second)
    every = [a for mine in answers for a in mine]
    assert len(every) > 50
    assert {status for _, status, _ in every} == {200}, [a for a in every if a[1] != 200][:5]
    assert {v for _, _, v in every} == {v1, v2}
    for mine in answers:
        versions = [v for _, _, v in mine]
        assert v2 in versions, versions  # each client saw the new release ...
        assert versions[versions.index(v2) :].count(v1) == 0, versions  # ... and kept it
    after = [v for asked, _, v in every if asked > released]
    assert after and set(after) == {v2}, after
    assert site.version("staging") == v2
    meta = _meta(second)
    assert meta["previous_digest"] == d1 and meta["changed"] is True
    assert meta["container_start_s"] > 0
    # The old release is stopped but kept (with its image) for a rollback; the new one runs.
    names = site.guest("staging", "podman", "ps", "-a", "--format", "{{.Names}}|{{.Status}}")
    mine = [line.split("|") for line in names.splitlines() if line.startswith(f"app-{APP}-")]
    assert len(mine) == 2, names
    assert sorted(status.split()[0] for _, status in mine) == ["Exited", "Up"], names


def test_app_containers_are_hardened_and_reach_neither_metadata_nor_private_network(
    site: LabReleases,
):
    """The live release's container: a network namespace of its own, published on the host's
    loopback only, no capability, no-new-privileges, a read-only root, not root; its traffic
    to the cloud's metadata service (169.254.169.254: a server's user-data, its salt keys) is
    refused by the host's firewall, which lets root on the host through."""
    v = _version(18)
    digest = site.image(v)
    assert site.release(digest, v).success
    live = json.loads(site.record())["current"]
    container = live["container"]
    fmt = (
        "{{.HostConfig.NetworkMode}}|{{.HostConfig.CapDrop}}|{{.HostConfig.CapAdd}}|"
        "{{.EffectiveCaps}}|{{.HostConfig.SecurityOpt}}|{{.HostConfig.ReadonlyRootfs}}|"
        "{{.Config.User}}|{{json .HostConfig.PortBindings}}"
    )
    inspected = site.guest("staging", "podman", "container", "inspect", "-f", fmt, container)
    network, drop, add, caps, opts, readonly, user, ports = inspected.strip().split("|")
    assert network == "bridge"
    assert "CAP_" in drop and add == "[]" and caps == "[]", (drop, add, caps)
    assert "no-new-privileges" in opts and readonly == "true" and user == "65534:65534"
    published = {k: v for k, v in json.loads(ports).items() if v}  # (EXPOSE'd ports: null)
    assert published == {
        f"{live['port']}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(live["port"])}]
    }
    # the process inside: uid 65534, no capability at all
    status = site.guest("staging", "podman", "exec", container, "cat", "/proc/1/status")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0" * 16 and fields["CapPrm"].strip() == "0" * 16
    probe = (
        "import socket,sys\ns=socket.socket();s.settimeout(3)\n"
        "try:\n s.connect(('169.254.169.254',80))\nexcept OSError as e:\n print(e.errno)\n"
    )

    def refused_counts() -> list[int]:
        listed = site.guest("staging", "nft", "list", "table", "inet", "coop_firewall")
        return [
            int(line.split("packets", 1)[1].split()[0])
            for line in listed.splitlines()
            if "169.254.169.254" in line
        ]

    def icmp_state() -> str:
        """What the web host's kernel says of the ICMP it sent and held back (rate limits),
        its neighbours on podman's bridge, and the firewall's counters."""
        snmp = site.guest("staging", "cat", "/proc/net/snmp").splitlines()
        names, values = [line.split()[1:] for line in snmp if line.startswith("Icmp:")][:2]
        icmp = dict(zip(names, values, strict=True))
        keep = ("OutMsgs", "OutDestUnreachs", "OutRateLimitGlobal", "OutRateLimitHost")
        neigh = site.guest("staging", "ip", "neigh", "show", "dev", "podman0")
        return f"icmp {[(k, icmp.get(k)) for k in keep]}; neighbours {neigh!r}; {refused_counts()}"

    before = refused_counts()
    # Right after a release, in a full run of the suite (never alone), the firewall's ICMP answer
    # has been seen not to reach the new container for a while: the connect times out (errno
    # None). Not explained yet (issue 10's note); asked again for up to a minute meanwhile, and
    # what the kernel says of it each time is shown as a warning, to find the cause.
    deadline = time.monotonic() + 60
    seen: list[str] = []
    while True:
        from_app = site.guest("staging", "podman", "exec", container, "python3", "-c", probe)
        if from_app.strip() != "None" or time.monotonic() > deadline:
            break
        seen.append(f"{time.monotonic():.1f}: timeout; {icmp_state()}")
        time.sleep(2)
    if seen:
        warnings.warn(
            "metadata probe timed out before it was refused: "
            + " | ".join(seen)
            + f" | then {from_app.strip()}; {icmp_state()}",
            stacklevel=1,
        )
    after_app = refused_counts()
    assert from_app.strip() == "113"  # EHOSTUNREACH: the firewall's admin-prohibited answer
    assert after_app[1] > before[1]  # ...from the forward rule: the container's traffic
    from_root = site.guest("staging", "python3", "-c", probe)
    assert refused_counts() == after_app  # root on the host is let through (no answer here)
    assert from_root.strip() != "113"

    # Nor into the private network: the salt master's publish port takes the web host (a
    # planned host), but not the app in it, whose traffic would reach it as the host's.
    master = site.env.topo.salt_master()
    port = site.env.site.port(master, "salt-publish")
    address = site.env.address(master, "salt-master")
    to_master = (
        "import socket\ns=socket.socket();s.settimeout(5)\n"
        f"try:\n s.connect(({address!r},{port}))\n print('open')\n"
        "except OSError as e:\n print(e.errno)\n"
    )

    def private_refusals(rule: str) -> int:
        listed = site.guest("staging", "nft", "list", "chain", "inet", "coop_firewall", "forward")
        line = next(x for x in listed.splitlines() if f"/16 {rule}" in x)
        return int(line.split("packets", 1)[1].split()[0])

    tcp_rule = "meta l4proto tcp ct state new counter"
    before = private_refusals(tcp_rule)
    from_app = site.guest("staging", "podman", "exec", container, "python3", "-c", to_master)
    assert from_app.strip() == "111"  # ECONNREFUSED: the forward rule's reset
    assert private_refusals(tcp_rule) > before
    assert site.guest("staging", "python3", "-c", to_master).strip() == "open"

    # Nor UDP: a listener on the master's host hears the web host, never the app in it (the
    # forward rule drops the datagram, its counter moves).
    seen = "/tmp/coop-udp-probe.seen"
    listener = (
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.bind(({address!r},5599));s.settimeout(15)\n"
        "try:\n while True:\n  d,a=s.recvfrom(64)\n"
        f"  open({seen!r},'a').write(d.decode()+'\\n')\nexcept OSError:\n pass\n"
    )
    number = site.env.site.number_of(master)
    site.driver.exec(number, master, ["rm", "-f", seen])
    site.driver.exec(
        number,
        master,
        ["sh", "-c", f"python3 -c {shlex.quote(listener)} >/dev/null 2>&1 &"],
    )
    send = (
        "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"time.sleep(1)\nfor i in range(3): s.sendto(sys.argv[1].encode(),({address!r},5599))\n"
    )
    drop_rule = "ct state new counter"
    before = private_refusals(drop_rule)
    site.guest("staging", "podman", "exec", container, "python3", "-c", send, "from-app")
    site.guest("staging", "python3", "-c", send, "from-host")
    heard: list[str] = []
    for _ in range(25):
        heard = site.driver.exec(number, master, ["cat", seen], check=False).output.split()
        if "from-host" in heard:
            break
        time.sleep(0.2)
    assert "from-host" in heard and "from-app" not in heard, heard
    assert private_refusals(drop_rule) > before


def test_releasing_the_live_digest_again_changes_nothing(site: LabReleases):
    v = _version(3)
    digest = site.image(v)
    assert site.release(digest, v).success
    again = site.release(digest, v)
    assert again.success
    meta = _meta(again)
    assert meta["changed"] is False and meta["digest"] == digest
    assert "nothing to do: this release was live already" in meta["what_happened"]
    assert site.version("staging") == v


def test_a_failing_health_check_leaves_the_old_version_serving(site: LabReleases):
    good, bad = _version(4), _version(5)
    d_good, d_bad = site.image(good), site.image(bad, healthy=False)
    assert site.release(d_good, good).success
    record_before = site.record()

    result = site.release(d_bad, bad, health_timeout_s=3)
    assert not result.success
    failure = _failure(result)
    message = failure.error.message
    assert f"release/staging/{APP}: {d_bad} failed on {site.host('staging')}" in message
    assert "health check failed: http://127.0.0.1:" in message and "-> 503 within 3 s" in message
    assert "The live release keeps serving; the new container was removed." in message
    log = failure.user_failure_data.metadata["output"].value
    assert "unhealthy on purpose" in log and '"GET /health HTTP/1.1" 503' in log
    assert not result.asset_materializations_for_node(f"release__staging__{APP}")
    # The app's own failure: reported once, not tried again.
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]

    # The old version keeps serving; the new container is gone; nothing was recorded.
    assert site.version("staging") == good
    assert site.get("staging").headers["X-Coop-Release"] == d_good
    labels = site.guest("staging", "podman", "ps", "-a", "--format", "{{.Labels}}")
    assert bad not in labels and good in labels
    assert site.record() == record_before


def test_a_release_whose_pull_fails_while_the_registry_is_down_is_tried_again_and_goes_through(
    site: LabReleases,
):
    """The registry's read door (what web hosts pull from) is down when a release starts: its
    pull fails, a passing failure; Dagster runs the step again with backoff
    (RELEASE_RETRY_POLICY), and once the door is back, some 12 s later, the release goes through
    in the same run, with no one asking again."""
    v = _version(30)
    digest = site.image(v)
    lab = site.driver
    lab.exec(LAB_NUMBER, "support-1", ["systemctl", "stop", "docker-registry"])
    back = threading.Timer(
        12, lambda: lab.exec(LAB_NUMBER, "support-1", ["systemctl", "start", "docker-registry"])
    )
    back.start()
    try:
        result = site.release(digest, v)
    finally:
        back.cancel()
        lab.exec(LAB_NUMBER, "support-1", ["systemctl", "start", "docker-registry"])
    assert result.success, [e.message for e in result.all_events if e.is_step_failure]
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retried, "the registry's read door was down: the first attempt cannot have passed"
    error = retried[0].event_specific_data.error  # RetryRequestedFromPolicy, from the Failure
    why = (error.cause or error).message
    assert f"failed on {site.host('staging')}: pull:" in why, why
    assert "tried again with backoff" in why
    assert site.version("staging") == v
    assert _meta(result)["digest"] == digest


def _minion_processes(site: LabReleases) -> tuple[int, dict[int, int]]:
    """salt-minion's MainPID, and each salt-minion process of the guest with its parent."""
    main = int(
        site.guest("staging", "systemctl", "show", "-p", "MainPID", "--value", "salt-minion")
    )
    table = [
        line.split(None, 2)
        for line in site.guest("staging", "ps", "-eo", "pid=,ppid=,args=").splitlines()
    ]
    parents = {int(pid): int(ppid) for pid, ppid, *_ in table}
    minions = {
        int(pid) for pid, _, *args in table if args and "/opt/salt/bin/salt-minion" in args[0]
    }
    return main, {pid: parents[pid] for pid in minions}


def _strays(main: int, minions: dict[int, int]) -> list[int]:
    """The salt-minion processes that are not the unit's main process or under it."""
    strays = []
    for pid, parent in minions.items():
        while parent not in (main, 0, 1) and parent in minions:
            parent = minions[parent]
        if pid != main and parent != main:
            strays.append(pid)
    return strays


def test_restarting_the_salt_minion_leaves_the_app_serving(site: LabReleases):
    """The minion started the app's container, and stays its service's main process: a restart
    of the minion (a salt upgrade, a changed config) restarts the minion alone, and the app goes
    on serving (before the fix, conmon had taken the main pid: the restart killed the app and
    left the old minion running beside the new one)."""
    v = _version(31)
    digest = site.image(v)
    assert site.release(digest, v).success
    old, minions = _minion_processes(site)
    assert old in minions and _strays(old, minions) == []
    site.guest("staging", "systemctl", "restart", "salt-minion")
    assert site.version("staging") == v
    # systemd hears "ready" from the minion's supervisor before it forks its worker: the tree
    # settles within seconds. Every salt-minion process left is the new one's or under it.
    deadline = time.monotonic() + 30
    while True:
        new, minions = _minion_processes(site)
        settled = new in minions and _strays(new, minions) == [] and len(minions) >= 2
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert new != old and old not in minions, (old, new, minions)
    assert _strays(new, minions) == [], (new, minions)
    again = site.release(digest, v)  # and it answers
    assert again.success and _meta(again)["changed"] is False


def test_a_container_that_exits_fails_the_release_at_once_with_its_last_lines(site: LabReleases):
    good, bad = _version(15), _version(16)
    d_good, d_bad = site.image(good), site.image(bad, crashes=True)
    assert site.release(d_good, good).success
    record_before = site.record()

    started = time.monotonic()
    result = site.release(d_bad, bad, health_timeout_s=120)
    took = time.monotonic() - started
    assert not result.success
    assert took < 60, took  # not the health check's 120 s
    message = _failure(result).error.message
    assert f"healthy: app-{APP}-" in message and "exited with code 3" in message
    assert "before its health path answered" in message
    assert "starting hello: DATABASE_URL is not set, giving up" in message  # its own last line
    assert "The live release keeps serving; the new container was removed." in message
    assert site.version("staging") == good
    assert bad not in site.guest("staging", "podman", "ps", "-a", "--format", "{{.Labels}}")
    assert site.record() == record_before


def test_the_release_phase_runs_once_before_the_switch_and_its_failure_keeps_the_old_release(
    site: LabReleases,
):
    """Procfile's `release:` (the image's label) runs in a one-off container of the new image,
    with the app's environment, before the new release starts; a failing one changes nothing."""
    v1, v2, v3 = _version(17), _version(18), _version(19)
    phase = 'echo "migrating for $APP_VERSION on port $PORT as $(id -u)"'
    d1 = site.image(v1, release_command=phase)
    first = site.release(d1, v1)
    assert first.success, _failure(first)
    meta = _meta(first)
    assert meta["release_phase"].startswith(f"ran the release command {phase!r} in ")
    assert f"migrating for {v1} on port " in meta["release_phase_output"]
    assert " as 65534" in meta["release_phase_output"]  # as the app runs: not root
    assert site.version("staging") == v1
    # The live release again: no second release phase.
    assert _meta(site.release(d1, v1))["release_phase"].startswith("(not run")
    # No one-off container is left behind.
    names = site.guest("staging", "podman", "ps", "-a", "--format", "{{.Names}}").split()
    assert f"app-{APP}-release" not in names

    d2 = site.image(v2, release_command="echo 'relation \"users\" does not exist' >&2; exit 4")
    failed = site.release(d2, v2)
    assert not failed.success
    message = _failure(failed).error.message
    assert "release-phase: release command" in message and "failed (exit 4)" in message
    assert 'relation "users" does not exist' in message
    assert "The live release keeps serving" in message
    assert site.version("staging") == v1  # the new release never started
    assert v2 not in site.guest("staging", "podman", "ps", "-a", "--format", "{{.Labels}}")

    d3 = site.image(v3)  # no release command: nothing runs
    third = site.release(d3, v3)
    assert third.success, _failure(third)
    assert _meta(third)["release_phase"].startswith("no release command")


def test_the_app_gets_its_settings_secrets_and_database_over_tls_and_no_secret_shows(
    site: LabReleases,
):
    """topology.lab.yaml gives hello plain settings (LOG_LEVEL; GREETING on staging only), a
    secret (SESSION_KEY, from the lab's secrets file) and a database (DATABASE_URL). The release
    phase logs in to the database from the release's container, over TLS; the app's process has
    every setting; `podman inspect`, the run's log and its metadata show no secret."""
    v = _version(20)
    # The release command also prints the secret, as an app's may: the run shows it as ***.
    command = 'python3 /app/dbcheck.py && echo "session key: $SESSION_KEY"'
    d = site.image(v, release_command=command, dbcheck=True)
    result = site.release(d, v)
    assert result.success, _failure(result)
    meta = _meta(result)
    login = "dbcheck: logged in as hello_staging to hello_staging over TLSv1.3"
    assert login in meta["release_phase_output"]
    assert "session key: ***" in meta["release_phase_output"]  # scrubbed, not absent

    secrets = load_secrets(site.env.site.secrets_file(), site.env.topo)
    hidden = [
        secrets.get("apps", APP, "staging", "SESSION_KEY"),
        secrets.get("postgres", APP, "staging"),
    ]
    live = json.loads(site.record())["current"]["container"]
    inspected = site.guest("staging", "podman", "inspect", live)
    assert '"LOG_LEVEL=info"' in inspected and '"GREETING=hello from staging"' in inspected
    assert not [h for h in hidden if h in inspected]
    environ = site.guest(
        "staging", "podman", "exec", live, "sh", "-c",
        'for p in /proc/[0-9]*; do tr "\\0" "\\n" < "$p/environ"; done 2>/dev/null',
    )  # fmt: skip
    assert f"SESSION_KEY={hidden[0]}" in environ
    assert "DATABASE_URL=postgresql://hello_staging:" in environ and "sslmode=require" in environ
    assert "LOG_LEVEL=info" in environ
    recorded = "\n".join(str(e) for e in site.instance.all_logs(result.run_id))
    assert not [h for h in hidden if h in recorded]
    assert not [h for h in hidden if h in json.dumps(meta, default=str)]
    # Production has no GREETING (set for staging only): its pillar says so.
    with site.env.env(), site.env.salt() as salt:
        pillar = salt.pillar(minion=site.host("production"), unmask=True)
    assert pillar["apps"][APP]["env"] == {"LOG_LEVEL": "info"}


def test_rollback_puts_back_the_previous_release(site: LabReleases):
    v1, v2 = _version(6), _version(7)
    d1, d2 = site.image(v1), site.image(v2)
    assert site.release(d1, v1).success
    assert site.release(d2, v2).success
    assert site.version("staging") == v2

    back = site.run("rollback_staging")
    assert back.success, _failure(back)
    assert site.version("staging") == v1
    meta = _meta(back)
    assert meta["digest"] == d1 and meta["previous_digest"] == d2
    assert meta["why"] == f"rollback to the previous release (was {d2})"
    assert "pulled" not in meta["what_happened"]  # the previous image was still on the host
    assert site.run("rollback_staging").success  # once more: the one rolled back is live again
    assert site.version("staging") == v2


def test_promote_sends_the_staging_digest_to_production(site: LabReleases):
    v1, v2 = _version(8), _version(9)
    d1, d2 = site.image(v1), site.image(v2)
    assert site.release(d1, v1).success
    first = site.run("promote")
    assert first.success, _failure(first, "production")
    assert site.version("production") == v1

    assert site.release(d2, v2).success
    assert site.version("production") == v1  # a staging release leaves production alone
    # A digest asked for by hand must be the one on staging: production never skips staging.
    bypass = site.run("promote", digest=d1)
    assert not bypass.success
    assert (
        f"release/production/{APP}: config digest {d1} is not the last release on staging"
        f" ({d2}): production only takes what staging released"
    ) in _failure(bypass, "production").error.message
    tags = site.registry.tags(repository=APP)
    promoted = site.run("promote")
    assert promoted.success, _failure(promoted, "production")
    meta = _meta(promoted, "production")
    assert meta["digest"] == d2 and meta["sha"] == v2 and meta["previous_digest"] == d1
    assert meta["why"] == "promoted: the last release on staging"
    assert site.version("production") == v2
    assert site.get("production").headers["X-Coop-Release"] == d2  # the very image staging runs
    assert site.registry.tags(repository=APP) == tags  # nothing was built or pushed

    back = site.run("rollback")
    assert back.success, _failure(back, "production")
    assert site.version("production") == v1 and site.version("staging") == v2


def test_the_chat_hears_of_each_release_promotion_rollback_and_failure(
    site: LabReleases, chat_receiver, tmp_path, monkeypatch
):
    """The notices of real runs on the lab, read by the real sensors from the module's
    instance and posted to a receiver of the test's own: a release on staging, a promotion, a
    rollback, a failed release (its health check), and nothing for a run that changed
    nothing."""
    lab_secrets = yaml.safe_load(site.env.site.secrets_file().read_text())
    secrets = tmp_path / "secrets.yaml"
    secrets.touch(mode=0o600)
    secrets.write_text(yaml.safe_dump({**lab_secrets, "chat": {"webhook_url": chat_receiver.url}}))
    monkeypatch.setenv("INFRA_SECRETS_FILE", str(secrets))
    monkeypatch.setattr(notifications, "spool_dir", lambda: tmp_path / "notices")  # its own
    monkeypatch.delenv(notifications.UI_URL_ENV, raising=False)
    topology_file = TopologyResource(path=str(site.env.topology_file))

    def notices(result: dg.ExecuteInProcessResult) -> list[str]:
        before = len(chat_receiver.texts())
        run = site.instance.get_run_by_id(result.run_id)
        kind = (
            dg.DagsterEventType.RUN_SUCCESS if result.success else dg.DagsterEventType.RUN_FAILURE
        )
        [entry] = site.instance.all_logs(result.run_id, of_type=kind)
        context = dg.build_run_status_sensor_context(
            sensor_name="notice",
            dagster_instance=site.instance,
            dagster_run=run,
            dagster_event=entry.dagster_event,
            resources={"topology_file": topology_file},
        )
        if result.success:
            notifications.release_notice(context)
        else:
            notifications.run_failure_notice(context.for_run_failure())
        return chat_receiver.texts()[before:]

    v1, v2 = _version(20), _version(21)
    d1, d2 = site.image(v1), site.image(v2, healthy=False)
    staging_url = site.env.site.app_url(site.host("staging"), APP, "staging")
    first = site.release(d1, v1)
    assert notices(first) == [
        f":rocket: *{APP}* is live on *staging*: commit {v1[:12]}\n{staging_url}\n"
        f"run {first.run_id}"
    ]
    assert notices(site.release(d1, v1)) == []  # live already: nothing changed, nothing said
    [promoted] = notices(site.run("promote"))
    assert promoted.startswith(f":rocket: *{APP}* promoted to *production*: commit {v1[:12]}\n")
    [failed] = notices(site.release(d2, v2, health_timeout_s=3))
    assert failed.startswith(f":x: *release_staging_{APP} failed* ({APP})\n")
    assert f"- release__staging__{APP}: release/staging/{APP}: {d2} failed on" in failed
    v3 = _version(22)
    d3 = site.image(v3)
    [live] = notices(site.release(d3, v3))
    assert live.startswith(f":rocket: *{APP}* is live on *staging*: commit {v3[:12]}\n")
    [back] = notices(site.run("rollback_staging"))
    assert back.startswith(
        f":leftwards_arrow_with_hook: *{APP}* rolled back on *staging*: commit {v1[:12]}\n"
    )


@pytest.fixture
def with_worker(site: LabReleases, tmp_path):
    """The session's lab topology with a worker app besides hello (`ticker`: no port, no
    site), its pillar written for the web hosts; the session's pillar put back after."""
    from infra_assets.definitions import build_definitions
    from lab.site import environment

    data = yaml.safe_load(site.env.topology_file.read_text())
    data["apps"][WORKER] = {"repo": data["apps"][APP]["repo"], "kind": "worker", "up_s": 5}
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(yaml.safe_dump(data, sort_keys=False))
    defs = build_definitions(load_topology(topology_file))

    def run(*keys: str, job: str | None = None, **config) -> dg.ExecuteInProcessResult:
        with environment(site.env.dagster_home, INFRA_TOPOLOGY=str(topology_file)):
            if job:
                ops = {f"release__staging__{WORKER}": {"config": config}} if config else {}
                return defs.resolve_job_def(job).execute_in_process(
                    instance=site.instance, run_config={"ops": ops}, raise_on_error=False
                )
            return defs.resolve_implicit_global_asset_job_def().execute_in_process(
                instance=site.instance,
                asset_selection=[dg.AssetKey.from_user_string(k) for k in ("topology", *keys)],
                raise_on_error=False,
            )

    assert run("salt_pillar").success
    yield run
    with site.env.env():
        assert site.env.run("salt_pillar", instance=site.instance).success


def test_a_worker_is_released_without_a_site_and_one_that_exits_fails_at_once(
    site: LabReleases, with_worker
):
    """A bot (kind: worker) gets the same release as a web app, but no port, no site and no
    health path: its container must stay up `up_s` seconds. One that exits fails the release
    as soon as it exits, with its last lines, and the live one keeps running."""
    end = site.registry.endpoint()
    v1, v2 = _version(30), _version(31)
    d1 = site.image(v1, to=end.image(WORKER, f"t-{v1[:12]}"), recorded=WORKER)
    d2 = site.image(v2, crashes=True, to=end.image(WORKER, f"t-{v2[:12]}"), recorded=WORKER)
    job = f"release_staging_{WORKER}"
    first = with_worker(job=job, digest=d1, sha=v1)
    assert first.success, first.failure_data_for_node(f"release__staging__{WORKER}")
    [mat] = first.asset_materializations_for_node(f"release__staging__{WORKER}")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["url"] == "(a worker: no URL)" and meta["health_path"] == "(a worker: up 5 s)"
    live = meta["health"].split()[1]  # up: app-ticker-<slot> runs (N s after its start)
    assert re.fullmatch(f"app-{WORKER}-(blue|green)", live), meta["health"]
    other = f"app-{WORKER}-" + ("green" if live.endswith("blue") else "blue")
    running = site.guest("staging", "podman", "ps", "--format", "{{.Names}}|{{.Ports}}")
    assert f"{live}|" in running.splitlines()  # running, nothing published
    sites = site.guest("staging", "ls", "/etc/nginx/conf.d")
    assert f"app-{WORKER}.conf" not in sites

    crashed = with_worker(job=job, digest=d2, sha=v2)
    assert not crashed.success
    message = crashed.failure_data_for_node(f"release__staging__{WORKER}").error.message
    exited = re.search(f"{other} exited with code 3 ([0-9.]+) s after it started", message)
    assert exited and float(exited[1]) < 5, message  # as it exited, not after up_s
    assert "(a worker must stay up 5 s)" in message
    assert "DATABASE_URL is not set, giving up" in message  # its last lines
    still = site.guest("staging", "podman", "ps", "--format", "{{.Names}}")
    assert live in still.split() and other not in still.split()

    # A new version that stays up replaces the live one: the old one stops, kept for a rollback.
    v3 = _version(32)
    d3 = site.image(v3, to=end.image(WORKER, f"t-{v3[:12]}"), recorded=WORKER)
    second = with_worker(job=job, digest=d3, sha=v3)
    assert second.success, second.failure_data_for_node(f"release__staging__{WORKER}")
    [mat] = second.asset_materializations_for_node(f"release__staging__{WORKER}")
    assert mat.metadata["previous_digest"].value == d1
    now = site.guest("staging", "podman", "ps", "-a", "--format", "{{.Names}}|{{.State}}")
    states = {
        name: state.split()[0].lower()
        for name, _, state in (line.partition("|") for line in now.splitlines())
        if name.startswith(f"app-{WORKER}-")
    }
    assert states == {other: "up", live: "exited"}, now  # ("Up 6 seconds", "Exited (0) ...")
    record = json.loads(site.guest("staging", "cat", f"/var/lib/coop/releases/{WORKER}.json"))
    assert record["current"]["digest"] == d3 and record["previous"]["digest"] == d1
    live = other

    # The health check of a worker: its live container runs.
    health = with_worker(job="health")
    assert health.success
    [check] = [e for e in health.get_asset_check_evaluations()
               if e.asset_key.path[1] == site.host("staging") and e.check_name == "app_ticker"]  # fmt: skip
    assert check.passed and check.metadata["detail"].value == f"{live} runs"


def test_every_public_site_answers_https_with_a_certificate_from_the_acme_server(
    site: LabReleases,
):
    """Both environments' sites, once released: HTTPS with a certificate for the domain that
    chains to the root of the lab's ACME server (pebble's, new at its start, so it cannot be
    in any trust store beforehand), HSTS, and HTTP sent to HTTPS. The HTTP-01 challenge was
    answered for real: the ACME server fetched its token from the web host's port 80."""
    v = _version(10)
    d = site.image(v)
    assert site.release(d, v).success
    promoted = site.run("promote")
    assert promoted.success, _failure(promoted, "production")
    # A web host that served the domain before it had TLS (its site sends everything on port 80
    # to the app, the ACME challenges too) and has no certificate: the next release gets one.
    domain = site.env.topo.apps[APP].domains["production"]
    live = json.loads(site.record("production"))["current"]
    address = site.env.address(site.host("production"), "web-production")
    old_site = (
        f"upstream app-{APP} {{ server 127.0.0.1:{live['port']}; }}\n"
        f"server {{ listen {address}:80; server_name {domain};\n"
        f"  location / {{ proxy_pass http://app-{APP}; proxy_set_header Host $host; }} }}\n"
    )
    conf = f"/etc/nginx/conf.d/app-{APP}.conf"
    site.guest("production", "certbot", "delete", "--non-interactive", "--cert-name", domain)
    site.guest("production", "sh", "-c", f"printf %s {shlex.quote(old_site)} > {conf}")
    site.guest("production", "sh", "-c", "nginx -t -q && systemctl reload nginx")
    again = site.run("promote")
    assert again.success, _failure(again, "production")
    assert "acme-challenge" in site.guest("production", "cat", conf)
    number = site.env.site.number_of(site.host("staging"))
    acme = site.env.site.acme_server(number)
    assert acme.running() and acme.directory == f"https://169.254.{number}.2:14000/dir"
    root = x509.load_pem_x509_certificate(acme.root().encode())

    for env in ("staging", "production"):
        where = site.app_site(env)
        domain = site.env.topo.apps[APP].domains[env]
        assert where.url == f"https://{domain}/" and where.cafile is not None
        answer = site.get(env, "health")  # the certificate checked against pebble's root
        assert answer.status_code == 200 and answer.json()["version"] == v
        assert answer.headers["Strict-Transport-Security"] == "max-age=31536000"
        assert answer.headers["X-Coop-Release"] == d

        # The certificate nginx serves: for the domain, issued by pebble's intermediate, whose
        # issuer is the root pebble serves now.
        context = ssl.create_default_context(cafile=str(where.cafile))
        with socket.create_connection((where.address, 443), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=domain) as tls:
                leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [domain]
        assert leaf.issuer.rfc4514_string().startswith("CN=Pebble Intermediate CA")
        assert "Pebble Root CA" in root.subject.rfc4514_string()

        # A name no site here has: the handshake is refused (no other app's certificate).
        with socket.create_connection((where.address, 443), timeout=5) as raw:
            with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME|unrecognized name"):
                context.wrap_socket(raw, server_hostname="unknown.example.org")

        # Without pebble's root, a client refuses the site: no certificate of some other origin.
        with pytest.raises(requests.exceptions.SSLError):
            Site(where.url, where.address, where.route_device).get("/health")

        # HTTP: the ACME challenges' path, and a redirect to HTTPS for everything else.
        plain = Site(f"http://{domain}/", where.address, where.route_device)
        redirect = plain.get("/health?x=1")
        assert redirect.status_code == 301
        assert redirect.headers["Location"] == f"https://{domain}/health?x=1"

        # The challenge was fetched from this host's port 80 by the ACME server (from the lab's
        # namespace: its bridge's address), and answered 200.
        log = site.guest(env, "cat", "/var/log/nginx/access.log").splitlines()
        fetched = [
            line for line in log
            if line.startswith(f"10.{number}.255.254 ") and "/.well-known/acme-challenge/" in line
        ]  # fmt: skip
        assert fetched and all('" 200 ' in line for line in fetched), log[-5:]
        # Renewals: Debian's certbot.timer runs on the host.
        enabled = site.guest(env, "systemctl", "is-enabled", "certbot.timer").strip()
        assert enabled == "enabled"

    # The ACME server's management port (its root, and what it has issued) is the machine's:
    # the lab's hosts do not reach it.
    probe = site.driver.exec(
        number,
        site.host("staging"),
        ["curl", "-sk", "--max-time", "3", f"https://169.254.{number}.2:15000/roots/0"],
        check=False,
    )
    assert probe.returncode == 28, probe.output


def test_a_digest_or_sha_that_is_not_one_is_refused_before_anything_changes(site: LabReleases):
    result = site.run(f"release_staging_{APP}", digest="latest")
    assert not result.success
    assert f"release/staging/{APP}: config digest 'latest' is not sha256:<64 hex digits>" in (
        _failure(result).error.message
    )

    v = _version(10)
    digest = site.image(v)
    assert site.release(digest, v).success
    record = site.record()
    for bad in ["x; touch /tmp/pwned", v + "\n", v.upper()]:
        result = site.release(digest, bad)
        assert not result.success
        assert f"release/staging/{APP}: config sha {bad!r} is not a commit" in (
            _failure(result).error.message
        )

    # An image whose revision label is not the commit it was recorded for (here: not a commit at
    # all): the release refuses it, with nothing asked in the run config...
    bad_label = "v1\nadd_header X-Pwned 1;"
    v_bad = _version(11)
    d_bad = site.image(v_bad, label=bad_label)
    result = site.run(f"release_staging_{APP}", digest=d_bad)
    assert not result.success
    message = _failure(result).error.message
    assert f"{APP}@{d_bad} carries {REVISION_LABEL}={bad_label!r}, not the commit it was" in message
    assert f"recorded for ({v_bad}): nothing was released" in message
    assert site.record() == record

    # ...and the registry sensor asks for no release of it (the cursor moves past it).
    end = site.registry.endpoint()
    d_sensor = site.image(
        _version(12), label=bad_label, to=end.image("badlabel", "main"), recorded="badlabel"
    )
    polled = poll(
        apps={"badlabel": site.env.topo.apps[APP]},
        cursor={},
        registry=site.registry,
        ours=lambda app, branch, digest: our_build(site.instance, app, branch, digest) is not None,
    )
    assert polled.new == []
    assert polled.refused == [
        f"badlabel:main = {d_sensor} not released: its label {REVISION_LABEL}={bad_label!r} is"
        " not a commit (40 lowercase hex digits); build it from git (app_image)"
    ]
    assert polled.cursor == {"badlabel": {"main": d_sensor}}

    # The salt state checks the pillar too (a release applied by hand): nothing runs.
    pillar = {"release": {"app": APP, "digest": digest, "sha": "x; touch /tmp/pwned"}}
    with site.env.env(), site.env.salt() as salt:
        applied = salt.apply(minions=[site.host("staging")], sls=["app"], pillar=pillar, log=_quiet)
    assert not applied.ok
    [state] = applied.states()
    assert state.failed and "sha 'x; touch /tmp/pwned' is not a commit" in state.comment
    assert site.version("staging") == v
    assert json.loads(site.record()) == json.loads(record)


def test_an_image_the_pipeline_did_not_build_is_never_released(site: LabReleases):
    """An image someone pushed with the push account, labelled with a real-looking commit, under
    a tag of its own or the branch tag the sensor watches: no release takes it by digest (with
    or without its commit), and the sensor names it in its tick, asking for no run and keeping
    its cursor before it (our own build's record may land after its tag)."""
    v = _version(13)
    ours = site.image(v)
    assert site.release(ours, v).success
    record = site.record()

    v_foreign = _version(14)
    foreign = site.image(v_foreign, recorded=None)
    for config in ({"digest": foreign}, {"digest": foreign, "sha": v_foreign}):
        result = site.run(f"release_staging_{APP}", **config)
        assert not result.success
        message = _failure(result).error.message
        assert (
            f"release/staging/{APP}: {APP}@{foreign} (asked for (run config)) is not an image"
            f" app_image/{APP} built for a commit of main: nothing was released"
        ) in message
    assert site.record() == record and site.version("staging") == v

    # at the branch tag the sensor watches (a repository of its own, not to disturb the others)
    end = site.registry.endpoint()
    at_branch = site.image(_version(15), to=end.image("intruder", "main"), recorded=None)

    def ours_in_this_instance(app: str, branch: str, digest: str) -> bool:
        return our_build(site.instance, app, branch, digest) is not None

    apps = {"intruder": site.env.topo.apps[APP]}
    polled = poll(apps=apps, cursor={}, registry=site.registry, ours=ours_in_this_instance)
    assert polled.new == [] and polled.cursor == {}
    assert polled.foreign == [
        f"intruder:main = {at_branch} not released: app_image/intruder never built it (an image"
        " pushed by someone else, or a build not recorded yet)"
    ]
    # once app_image has recorded it (say the record landed after the tag moved), it is released
    site.record_build("intruder", at_branch, _version(15))
    polled = poll(apps=apps, cursor={}, registry=site.registry, ours=ours_in_this_instance)
    assert [i.digest for i in polled.new] == [at_branch] and polled.foreign == []


def test_promote_takes_staging_s_record_and_refuses_a_staging_host_that_disagrees(
    site: LabReleases,
):
    """Production takes the digest of the last successful staging release (Dagster's record),
    not what a staging host's record file says: root on a staging host who rewrites it to name
    another image stops the promote instead of choosing what production runs."""
    v1, v2 = _version(16), _version(17)
    d1, d2 = site.image(v1), site.image(v2)
    assert site.release(d1, v1).success
    assert site.release(d2, v2).success
    before = site.record()
    forged = json.loads(before)
    forged["current"], forged["previous"] = forged["previous"], forged["current"]
    host = site.host("staging")
    try:
        write = f"printf %s {shlex.quote(json.dumps(forged))} > {RECORD}"
        site.guest("staging", "sh", "-c", write)  # as root on the staging host would
        refused = site.run("promote")
        assert not refused.success
        assert (f"release/production/{APP}: the last staging release is {d2}") in _failure(
            refused, "production"
        ).error.message
        assert (
            f"{host}: {d1}: nothing was promoted" in _failure(refused, "production").error.message
        )
    finally:
        site.guest("staging", "sh", "-c", f"printf %s {shlex.quote(before)} > {RECORD}")
    promoted = site.run("promote")
    assert promoted.success, _failure(promoted, "production")
    assert _meta(promoted, "production")["digest"] == d2
    assert site.version("production") == v2
