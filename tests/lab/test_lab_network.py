"""The lab's network and container driver (resources/lab.py), for real: a network namespace, a
podman network made from inside it, a veth link and the machine's routes; containers with systemd
as PID 1 booted from a debootstrap'd Debian 12 image made once per machine.

The tests' lab is number 125 (10.125.0.0/16), which no topology uses; it is taken down before and
after. The image `localhost/coop-lab-test:bookworm` lives in a podman storage of its own,
$INFRA_TEST_LAB_PODMAN_ROOT or /var/tmp/coop-infra-tests/lab-podman, kept between sessions
(debootstrap takes about a minute).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from resources.cli_runner import run_cli
from resources.lab import (
    BASE_CAPS,
    GUEST_FILES,
    HOST_LABEL,
    LAB_LABEL,
    Existing,
    HostSpec,
    Lab,
    LabError,
    LabNetwork,
    LabPlan,
    NotInLabError,
    StaleLabPlanError,
    guest_files,
    lab_number_of,
    mac_for,
    owner_file,
)
from resources.podman import PodmanResource

N = 125
NET = LabNetwork(N)
IMAGE = "localhost/coop-lab-test:bookworm"
IMAGE_B = "localhost/coop-lab-test:bookworm-b"  # the same system, another image id
CAP_SYS_ADMIN = 1 << 21
CAP_NET_ADMIN = 1 << 12
USER_DATA = b"#cloud-config\nhostname: a\n"
MINION_PEM = b"-----BEGIN RSA PRIVATE KEY-----\nnot a real key\n-----END RSA PRIVATE KEY-----\n"


def _quiet(_line: str) -> None:
    pass


# --- fast: names and addresses ---------------------------------------------------------------


def test_names_and_addresses_of_a_lab() -> None:
    net = LabNetwork(127)
    assert (net.namespace, net.podman_network) == ("coop-lab-127", "coop-lab-127")
    assert (net.machine_link, net.lab_link) == ("coop127-m", "coop127-l")
    assert (net.machine_address, net.lab_address) == ("169.254.127.1", "169.254.127.2")
    assert (net.subnet, net.gateway) == ("10.127.0.0/16", "10.127.255.254")
    assert net.container_name("support-1") == "lab127-support-1"
    assert mac_for("10.127.5.1") == "02:00:0a:7f:05:01"
    assert lab_number_of("10.127.5.1") == 127
    for bad in ("10.255.255.53", "192.168.1.1", "127.0.0.1", "10.0.0.1", "nope"):
        with pytest.raises(NotInLabError):
            lab_number_of(bad)
    with pytest.raises(LabError):
        LabNetwork(255)


def test_a_spec_config_leaves_out_image_and_files(monkeypatch) -> None:
    a = HostSpec(host="a", image=IMAGE, address="10.125.1.1", files={"/x": (b"1", 0o600)})
    b = HostSpec(host="a", image=IMAGE_B, address="10.125.1.1", files={"/x": (b"2", 0o644)})
    assert a.config_label() == b.config_label()
    assert a.config()["mac"] == "02:00:0a:7d:01:01"
    assert "not a real" not in repr(HostSpec(host="a", image=IMAGE, address="10.125.1.1",
                                             files={"/k": (MINION_PEM, 0o600)}))  # fmt: skip
    c = HostSpec(host="a", image=IMAGE, address="10.125.1.1", cap_add=("cap_sys_time",))
    assert c.config()["cap_add"] == ["SYS_TIME"] and c.config_label() != a.config_label()
    # Every guest gets the lab's guest files, a privileged one more: a change of them replaces it.
    d = HostSpec(host="a", image=IMAGE, address="10.125.1.1", privileged=True)
    assert a.config()["guest_files"] != d.config()["guest_files"]
    assert guest_files(False).keys() < guest_files(True).keys()
    before = a.config_label()
    monkeypatch.setitem(GUEST_FILES, "/etc/new", (b"new\n", 0o644))
    assert a.config_label() != before  # a lab made before this change replaces its guests


def test_the_demo_loop_sends_nothing_to_a_lab_address_off_the_lab_s_link() -> None:
    from lab.demo_loop import LoopError, live_version
    from lab.reach import Site

    site = Site("https://hello.example.org/", "10.99.5.1", "coop99-m")
    with pytest.raises(LoopError, match="does not go through coop99-m"):
        live_version(site, "/health")


def test_a_plan_without_changes_is_a_no_op() -> None:
    kept = [Existing(h, f"lab125-{h}", "c0ffee", IMAGE, "1d", running=True) for h in "ab"]
    plan = LabPlan(number=N, keep=tuple(kept))
    assert not plan.has_changes and plan.destroys == []
    assert plan.summary() == "lab 125: no changes (2 kept)"
    stopped = dataclasses.replace(plan, keep=(dataclasses.replace(kept[0], running=False),))
    assert stopped.has_changes and stopped.summary() == "lab 125: start a; keep a"
    assert LabPlan.from_dict(json.loads(json.dumps(stopped.as_dict()))) == stopped


def test_a_wrong_plan_names_every_problem() -> None:
    specs = [
        HostSpec(host="a", image=IMAGE, address="10.125.1.1"),
        HostSpec(host="b", image=IMAGE, address="10.125.1.1", name="b"),
        HostSpec(host="C_1", image=IMAGE, address="10.126.1.1"),
        HostSpec(host="d", image=IMAGE, address="10.125.255.254", files={"etc/x": (b"", 0o644)}),
        HostSpec(host="e", image=IMAGE, address="10.125.1.5", binds=[("/nowhere", "/srv")]),
        HostSpec(host="f\n", image=IMAGE, address="10.125.1.6"),
    ]
    with pytest.raises(LabError) as err:
        Lab._check_specs(NET, specs)
    text = str(err.value)
    for problem in (
        "b and a share 10.125.1.1",
        "b: its container is lab125-b, not b",
        "'C_1' is not a host name",
        "C_1: 10.126.1.1 is not a host address of 10.125.0.0/16",
        "d: 10.125.255.254 is not a host address",
        "d: 'etc/x' is not an absolute path in the guest",
        "e: the bind's source /nowhere is not there",
        "'f\\n' is not a host name",
    ):
        assert problem in text, text


# --- the image and the lab -------------------------------------------------------------------


@pytest.fixture(scope="session")
def lab_podman_env() -> dict[str, str]:
    """The project's podman config, its storage in a folder kept between sessions."""
    root = os.environ.get("INFRA_TEST_LAB_PODMAN_ROOT") or "/var/tmp/coop-infra-tests/lab-podman"
    return PodmanResource(root=root).env()


def _podman(env: dict[str, str], *args: str, check: bool = True):
    return run_cli(["podman", *args], env=env, log=_quiet, check=check, timeout_s=600)


def _image_id(env: dict[str, str], ref: str) -> str | None:
    result = _podman(env, "image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return result.lines[-1].strip() if result.returncode == 0 and result.lines else None


@pytest.fixture(scope="session")
def lab_image(lab_podman_env: dict[str, str]) -> str:
    """`localhost/coop-lab-test:bookworm`: debootstrap'd Debian 12 with systemd, made once per
    machine (about 60 s) and reused; a second tag with another image id (a label more)."""
    env = lab_podman_env
    root = Path(env["CONTAINERS_CONF"]).parent
    with open(root / "lab-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _image_id(env, IMAGE):
            _make_test_image(env, root / "lab-image")
        if not _image_id(env, IMAGE_B):
            context = root / "lab-image-b"
            context.mkdir(exist_ok=True)
            (context / "Containerfile").write_text(
                f"FROM {IMAGE}\nLABEL org.coop-infra.test=image-b\n"
            )
            _podman(env, "build", "--pull=never", "--network=none", "-t", IMAGE_B, str(context))
    assert _image_id(env, IMAGE) != _image_id(env, IMAGE_B)
    return IMAGE


def _make_test_image(env: dict[str, str], work: Path) -> None:
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed (scripts/apt-packages.txt)")
    if work.exists():
        shutil.rmtree(work)
    rootfs = work / "rootfs"
    work.mkdir(parents=True)
    try:
        run_cli(
            [
                "debootstrap", "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus,iproute2,python3,ca-certificates",
                "bookworm", str(rootfs), "http://deb.debian.org/debian",
            ],
            log=_quiet,
            timeout_s=900,
        )  # fmt: skip
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / leftover).glob("*"):
                if entry.is_file():
                    entry.unlink()
        # debootstrap copies the machine's resolv.conf (its resolver is 10.255.255.53): not in
        # an image; --dns writes the lab's.
        (rootfs / "etc/resolv.conf").write_text("")
        (rootfs / "etc/hostname").write_text("localhost\n")
        tarball = work / "rootfs.tar"
        run_cli(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], log=_quiet)
        _podman(
            env, "import",
            "--change", 'CMD ["/sbin/init"]',
            "--message", "coop-infra lab test image: debootstrap bookworm minbase + systemd",
            str(tarball), IMAGE,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(lab_podman_env: dict[str, str], lab_image: str) -> Iterator[Lab]:
    """Lab 125's network, up; down (containers, network, link, namespace) at the end."""
    driver = Lab(lab_podman_env, log=_quiet, timeout_s=300)
    driver.down_network(N)  # what an interrupted session left
    driver.up_network(N)
    yield driver
    driver.down_network(N)


def _spec(host: str, address: str, image: str = IMAGE, **kw) -> HostSpec:
    return HostSpec(host=host, image=image, address=address, dns="10.125.1.1", **kw)


FIRST_BOOT_UNIT = b"""[Unit]
Description=lab test: a first-boot runner, enabled before the first start
ConditionPathExists=!/var/lib/lab-first-boot.done

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'wc -c < /var/lib/cloud/seed/nocloud/user-data > /var/lib/lab-first-boot.done'

[Install]
WantedBy=multi-user.target
"""
SPEC_A = _spec(
    "a",
    "10.125.1.1",
    files={
        "/var/lib/cloud/seed/nocloud/user-data": (USER_DATA, 0o644),
        "/etc/salt/pki/minion/minion.pem": (MINION_PEM, 0o600),
        "/etc/systemd/system/lab-first-boot.service": (FIRST_BOOT_UNIT, 0o644),
    },
    enable_units={"lab-first-boot.service": "multi-user.target"},
    labels={"org.coop-infra.roles": "dns"},
)
SPEC_B = _spec("b", "10.125.1.2", binds=[(str(Path(__file__).parent), "/srv/tests")])


def _ensure(lab: Lab, specs: list[HostSpec]) -> None:
    """Lab 125 holds these containers (each test can run on its own)."""
    plan = lab.plan(specs, N)
    if plan.has_changes:
        lab.apply(plan)


def _routes() -> list[dict]:
    out = subprocess.run(["ip", "-j", "route", "show", "exact", NET.subnet], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return json.loads(out or "[]")


# --- the network -----------------------------------------------------------------------------


@pytest.mark.slow
def test_up_network_twice_changes_nothing(lab: Lab) -> None:
    before = (_routes(), _links())
    report = lab.up_network(N)
    assert (_routes(), _links()) == before
    assert report["made"] == [] and report["namespace"] == "coop-lab-125"
    assert lab.network_status(N) == {
        "unreachable_route": True,
        "namespace": True,
        "podman_network": True,
        "link": True,
        "via_route": True,
    }
    routes = sorted(_routes(), key=lambda r: r["metric"])
    assert [(r.get("type", "unicast"), r.get("gateway"), r.get("dev"), r["metric"])
            for r in routes] == [
        ("unicast", "169.254.125.2", "coop125-m", 10),
        ("unreachable", None, None, 4000),
    ]  # fmt: skip
    inside = _ip_json("-n", NET.namespace, "addr", "show")
    addresses = {i["ifname"]: [a["local"] for a in i["addr_info"] if a["family"] == "inet"]
                 for i in inside}  # fmt: skip
    assert addresses["lo"] == ["127.0.0.1"] and addresses["coop125-l"] == ["169.254.125.2"]
    assert "UP" in next(i for i in inside if i["ifname"] == "lo")["flags"]
    info = json.loads(lab.podman(N, ["network", "inspect", NET.podman_network], quiet=True).output)
    assert info[0]["subnets"] == [{"subnet": "10.125.0.0/16", "gateway": "10.125.255.254"}]
    assert info[0]["dns_enabled"] is False
    route = lab.route_into_lab("10.125.7.7")
    assert (route["dev"], route["gateway"]) == ("coop125-m", "169.254.125.2")

    # The link's rules, in the lab's namespace (the machine's own iptables untouched): its
    # hosts keep their addresses towards the link, and reach only ports 3128, 9418 and 8700
    # there (the egress proxy, the git daemon, the webhook endpoint); in the namespace itself
    # only 14000 (the ACME
    # server's directory); the namespace starts nothing towards the machine.
    def rules(table: str) -> list[str]:
        argv = ["nsenter", f"--net={NET.netns_path}", "iptables", "-t", table, "-S"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        return [r for r in out.splitlines() if "10.125.0.0/16" in r or "169.254.125.1/32" in r]

    assert rules("nat") == ["-A POSTROUTING -s 10.125.0.0/16 -d 169.254.125.1/32 -j RETURN"]
    assert rules("mangle") == [
        "-A INPUT -s 10.125.0.0/16 -p tcp -m tcp --dport 14000 -m conntrack --ctstate NEW"
        " -j ACCEPT",
        "-A INPUT -s 10.125.0.0/16 -m conntrack --ctstate NEW -j DROP",
        "-A FORWARD -s 10.125.0.0/16 -d 169.254.125.1/32 -p tcp -m multiport --dports 3128,9418,8700"
        " -m conntrack --ctstate NEW -j ACCEPT",
        "-A FORWARD -s 10.125.0.0/16 -d 169.254.125.1/32 -m conntrack --ctstate NEW -j DROP",
        "-A OUTPUT -d 169.254.125.1/32 -m conntrack --ctstate NEW -j DROP",
    ]


def _links() -> list[str]:
    return sorted(i["ifname"] for i in _ip_json("link", "show") if "coop125" in i["ifname"])


def _ip_json(*args: str) -> list[dict]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


@pytest.mark.slow
def test_route_into_lab_refuses_what_does_not_go_into_a_lab(lab: Lab) -> None:
    with pytest.raises(NotInLabError, match="not a lab address"):
        lab.route_into_lab("10.255.255.53")
    with pytest.raises(NotInLabError, match="not a lab address"):
        lab.route_into_lab("192.0.2.1")
    links = {i["ifname"] for i in _ip_json("link", "show")}
    free = next(n for n in range(124, 100, -1) if f"coop{n}-m" not in links)
    with pytest.raises(NotInLabError, match=f"into lab {free} through coop{free}-m"):
        lab.route_into_lab(f"10.{free}.1.1")


# --- containers ------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_containers_boot_systemd_at_their_addresses_and_reach_each_other(lab: Lab) -> None:
    plan = lab.plan([SPEC_A, SPEC_B], N)
    assert [s.host for s in plan.create] == ["a", "b"]
    assert not (plan.delete or plan.replace or plan.keep) and plan.has_changes
    assert plan.summary() == "lab 125: create a, b"
    applied = lab.apply(plan, boot_timeout_s=120)
    print(
        f"\nlab {N}: apply -> 2 containers running in {applied.running_s:.2f} s,"
        f" systemd booted in {applied.booted_s:.2f} s: {dict(applied.systemd)}"
    )
    assert set(applied.systemd.values()) <= {"running", "degraded"}
    assert applied.created == ("a", "b")

    rows = {r.host: r for r in lab.status(N)}
    assert set(rows) == {"a", "b"}
    for host, spec in (("a", SPEC_A), ("b", SPEC_B)):
        row = rows[host]
        assert row.running and row.systemd in ("running", "degraded")
        assert (row.name, row.address, row.mac) == (f"lab125-{host}", spec.address,
                                                    mac_for(spec.address))  # fmt: skip
        assert row.image_id == lab.image_id(IMAGE, number=N)
        assert lab.exec(N, host, ["hostname"]).output.strip() == host
        assert lab.exec(N, host, ["cat", "/etc/resolv.conf"]).output.split() == [
            "nameserver", "10.125.1.1",
        ]  # fmt: skip
        addr = json.loads(lab.exec(N, host, ["ip", "-j", "addr", "show", "eth0"]).output)[0]
        assert addr["address"] == mac_for(spec.address)
        assert [a["local"] for a in addr["addr_info"] if a["family"] == "inet"] == [spec.address]
    labels = json.loads(lab.podman(N, ["inspect", "--format", "{{json .Config.Labels}}",
                                       "lab125-a"], quiet=True).output)  # fmt: skip
    assert labels[LAB_LABEL] == "125" and labels[HOST_LABEL] == "a"
    assert labels["org.coop-infra.roles"] == "dns"

    # The files were there before the first boot, with their modes, owned by root.
    stat = lab.exec(N, "a", ["stat", "-c", "%a %U %s %n", "/etc/salt/pki/minion/minion.pem",
                             "/var/lib/cloud/seed/nocloud/user-data"]).lines  # fmt: skip
    assert stat == [
        f"600 root {len(MINION_PEM)} /etc/salt/pki/minion/minion.pem",
        f"644 root {len(USER_DATA)} /var/lib/cloud/seed/nocloud/user-data",
    ]
    assert lab.exec(N, "a", ["cat", "/var/lib/cloud/seed/nocloud/user-data"]).output.encode() \
        == USER_DATA.rstrip(b"\n")  # fmt: skip

    # The unit enabled before the first start ran at the first boot, and saw the user-data.
    done = lab.exec(N, "a", ["cat", "/var/lib/lab-first-boot.done"]).output.strip()
    assert done == str(len(USER_DATA))
    # b's read-only bind
    assert "test_lab_network.py" in lab.exec(N, "b", ["ls", "/srv/tests"]).lines
    denied = lab.exec(N, "b", ["touch", "/srv/tests/x"], check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.output

    # A service of a's systemd, reached from b and, once the route is checked, from the machine.
    lab.exec(N, "a", ["systemd-run", "--unit=lab-probe", "--property=Type=exec", "python3", "-m",
                      "http.server", "--bind", "10.125.1.1", "--directory", "/etc", "8000"])  # fmt: skip
    deadline = time.monotonic() + 20
    while not lab.probe_tcp("10.125.1.1", 8000, timeout_s=1):
        assert time.monotonic() < deadline, "a's http.server never listened"
        time.sleep(0.2)
    fetch = (
        "import urllib.request as u;"
        "print(u.urlopen('http://10.125.1.1:8000/hostname', timeout=5).read().decode())"
    )
    assert lab.exec(N, "b", ["python3", "-c", fetch]).output.strip() == "a"
    lab.route_into_lab("10.125.1.1")
    with urllib.request.urlopen("http://10.125.1.1:8000/hostname", timeout=5) as answer:
        assert answer.status == 200 and answer.read().decode().strip() == "a"
    # and a to b: a TCP connection to a port b's systemd-run serves
    lab.exec(N, "b", ["systemd-run", "--unit=lab-probe", "--property=Type=exec", "python3", "-c",
                      "import socket;s=socket.create_server(('10.125.1.2',9000));"
                      "c,_=s.accept();c.sendall(b'b here')"])  # fmt: skip
    reach = (
        "import socket,time\n"
        "for _ in range(50):\n"
        "    try:\n"
        "        print(socket.create_connection(('10.125.1.2',9000),timeout=2).recv(9).decode());break\n"
        "    except ConnectionRefusedError: time.sleep(0.1)\n"
    )
    assert lab.exec(N, "a", ["python3", "-c", reach]).output.strip() == "b here"

    # An unchanged lab is a no-op plan.
    again = lab.plan([SPEC_A, SPEC_B], N)
    assert not again.has_changes and [e.host for e in again.keep] == ["a", "b"], again
    assert again.summary() == "lab 125: no changes (2 kept)"


@pytest.mark.slow
def test_a_container_that_is_not_privileged_has_no_cap_sys_admin(lab: Lab) -> None:
    _ensure(lab, [SPEC_A, SPEC_B])
    eff = _cap_eff(lab, "b")
    assert not eff & CAP_SYS_ADMIN, f"CapEff {eff:#x} has CAP_SYS_ADMIN"
    assert eff & CAP_NET_ADMIN and BASE_CAPS == ("NET_ADMIN",)
    assert lab.exec(N, "b", ["cat", "/proc/sys/net/ipv4/ip_nonlocal_bind"]).output.strip() == "1"
    # NET_ADMIN is what common.addresses needs: a service address added inside the guest
    lab.exec(N, "b", ["ip", "addr", "add", "10.125.9.2/32", "dev", "eth0"])
    lab.exec(N, "b", ["ip", "addr", "del", "10.125.9.2/32", "dev", "eth0"])
    inspect = json.loads(lab.podman(N, ["inspect", "lab125-b"], quiet=True).output)[0]
    assert inspect["HostConfig"]["Privileged"] is False
    # the project's podman config: runc (crun fails here), cgroupfs, systemd mode
    assert inspect["OCIRuntime"] == "runc"
    assert inspect["Config"]["StopSignal"] == 37  # SIGRTMIN+3: systemd's halt (--systemd=always)
    assert inspect["Config"]["Cmd"] == ["/sbin/init"]
    info = lab.podman(N, ["info", "--format", "{{.Host.CgroupManager}}"], quiet=True)
    assert info.output.strip() == "cgroupfs"


def _cap_eff(lab: Lab, host: str) -> int:
    status = lab.exec(N, host, ["cat", "/proc/1/status"]).lines
    return int(next(line for line in status if line.startswith("CapEff:")).split()[1], 16)


@pytest.mark.slow
def test_memory_of_an_idle_systemd_container(lab: Lab) -> None:
    _ensure(lab, [SPEC_A, SPEC_B])
    time.sleep(2)  # idle: booted a while ago
    found = {m.host: m for m in lab.memory(N)}
    assert set(found) == {"a", "b"}
    b = found["b"]
    print(
        f"\nlab {N}: idle systemd container b: PSS {b.pss_bytes / 2**20:.1f} MiB in"
        f" {b.processes} processes, + conmon {b.conmon_pss_bytes / 2**20:.1f} MiB"
    )
    assert 1 <= b.processes < 20
    assert 2 * 2**20 < b.pss_bytes < 200 * 2**20


@pytest.mark.slow
def test_plan_deletes_what_left_the_specs_and_keeps_a_host_on_its_old_image(
    lab: Lab, tmp_path: Path
) -> None:
    _ensure(lab, [SPEC_A, SPEC_B])
    stale = lab.plan([SPEC_A, SPEC_B], N)  # no-op, made against a and b

    plan = lab.plan([SPEC_A], N)
    assert [e.host for e in plan.delete] == ["b"] and [e.host for e in plan.keep] == ["a"]
    assert plan.destroys == ["b"] and not (plan.create or plan.replace)
    # A plan goes to a file (0600: new hosts' files are secrets) and comes back the same.
    saved = lab.save_plan(plan, tmp_path / "plans" / "lab.json")
    assert saved.stat().st_mode & 0o777 == 0o600
    assert lab.load_plan(saved) == plan
    applied = lab.apply(lab.load_plan(saved))
    assert applied.deleted == ("b",) and applied.created == ()
    assert [r.host for r in lab.status(N, systemd=False)] == ["a"]
    with pytest.raises(StaleLabPlanError):
        lab.apply(stale)

    # A new image is for new hosts: a stays on its own, unless replace= names it.
    newer = dataclasses.replace(SPEC_A, image=IMAGE_B)
    kept = lab.plan([newer], N)
    assert not kept.has_changes and [e.host for e in kept.keep] == ["a"]
    assert "replace=a rebuilds it" in kept.notes["a"]
    assert kept.keep[0].image_id == lab.image_id(IMAGE)
    with pytest.raises(LabError, match="replace names zz"):
        lab.plan([newer], N, replace=["zz"])
    rebuild = lab.plan([newer], N, replace=["a"])
    assert [s.host for s in rebuild.replace] == ["a"] and rebuild.destroys == ["a"]
    old_id = lab.status(N, systemd=False)[0].container_id
    lab.apply(rebuild)
    (row,) = lab.status(N)
    assert row.image_id == lab.image_id(IMAGE_B, number=N) and row.container_id != old_id
    assert row.systemd in ("running", "degraded")
    assert not lab.plan([newer], N).has_changes

    # A changed address is a new container (as a server's port would be).
    moved = _spec("a", "10.125.1.3", image=IMAGE_B)
    plan = lab.plan([moved], N)
    assert [s.host for s in plan.replace] == ["a"] and "address" in plan.notes["a"]


@pytest.mark.slow
def test_a_privileged_container_has_cap_sys_admin(lab: Lab) -> None:
    lab.apply(lab.plan([_spec("p", "10.125.2.1", privileged=True)], N))
    assert _cap_eff(lab, "p") & CAP_SYS_ADMIN
    assert [r.host for r in lab.status(N, systemd=False)] == ["p"]


@pytest.mark.slow
def test_after_the_machine_restarted_up_and_apply_bring_the_lab_back(lab: Lab) -> None:
    """A restart takes the namespace and the link (they live in /run and the kernel) and stops
    the containers; podman's storage and the podman network's file stay."""
    spec = _spec("p", "10.125.2.1", privileged=True)
    _ensure(lab, [spec])
    lab.podman(N, ["stop", "lab125-p"])
    subprocess.run(["ip", "link", "delete", NET.machine_link], check=True)
    subprocess.run(["ip", "netns", "delete", NET.namespace], check=True)
    with pytest.raises(NotInLabError, match="network is down: its /16 is unreachable"):
        lab.route_into_lab("10.125.2.1")

    assert lab.up_network(N)["made"] == ["namespace", "link", "link rules", "route"]
    plan = lab.plan([spec], N)
    assert [e.host for e in plan.start] == ["p"] and not (plan.create or plan.delete)
    applied = lab.apply(plan)
    assert applied.started == ("p",) and applied.systemd == {"p": "running"}
    lab.exec(N, "p", ["systemd-run", "--unit=lab-probe", "--property=Type=exec", "python3",
                      "-m", "http.server", "--bind", "10.125.2.1", "8000"])  # fmt: skip
    deadline = time.monotonic() + 20
    while not lab.probe_tcp("10.125.2.1", 8000, timeout_s=1):
        assert time.monotonic() < deadline, "p's http.server never listened"
        time.sleep(0.2)
    assert not lab.plan([spec], N).has_changes


@pytest.mark.slow
def test_another_checkout_is_refused_a_lab_number_that_is_held(lab: Lab, tmp_path, request) -> None:
    """A second clone (or a CI run on the same machine) with the same lab number gets a clear
    refusal from `up`, `down` and `apply`, whether or not the holder's containers run, and the
    holder's lab and owner file are left as they were."""
    assert owner_file(N).read_text().strip() == lab.owner
    other_root = tmp_path / "other"
    # podman mounts its own storage's overlay folder on first use: unmounted after the test
    request.addfinalizer(
        lambda: subprocess.run(
            ["umount", str(other_root / "storage" / "overlay")], capture_output=True, check=False
        )
    )
    other = Lab(PodmanResource(root=str(other_root)).env(), log=_quiet)
    plan = lab.plan([SPEC_A, SPEC_B], N)  # what the holder would do; `other` must not apply it
    before = (_routes(), _links(), lab.network_status(N), lab.status(N, systemd=False))
    for change in (other.up_network, other.down_network, lambda _n: other.apply(plan)):
        with pytest.raises(LabError) as refused:
            change(N)
        text = str(refused.value)
        assert f"lab {N} is held by another checkout ({lab.owner})" in text
        assert "`infra lab down`" in text and "another lab number" in text
    assert (_routes(), _links(), lab.network_status(N), lab.status(N, systemd=False)) == before
    assert owner_file(N).read_text().strip() == lab.owner


@pytest.mark.slow
def test_down_network_leaves_only_the_unreachable_route(lab: Lab) -> None:
    _ensure(lab, [_spec("p", "10.125.2.1", privileged=True)])  # something to take down
    removed = lab.down_network(N)
    assert removed == [
        "container lab125-p",
        "podman network coop-lab-125",
        "route 10.125.0.0/16 via 169.254.125.2",
        "link coop125-m",
        "namespace coop-lab-125",
    ]
    assert lab.network_status(N) == {
        "unreachable_route": True,
        "namespace": False,
        "podman_network": False,
        "link": False,
        "via_route": False,
    }
    assert not NET.netns_path.exists()
    assert _links() == []
    assert [(r.get("type"), r["metric"]) for r in _routes()] == [("unreachable", 4000)]
    assert lab.podman(N, ["ps", "-a", "-q", "--filter", f"label={LAB_LABEL}={N}"]).lines == []
    with pytest.raises(NotInLabError, match="unreachable"):
        lab.route_into_lab("10.125.1.1")
    # netavark's chains and rules lived in the namespace; nothing of the lab's on the machine
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "10.125." not in rules
    assert not any("coop125" in line for line in Path("/proc/net/dev").read_text().splitlines())
    assert lab.down_network(N) == []  # twice: nothing to do
    assert [(r.get("type"), r["metric"]) for r in _routes()] == [("unreachable", 4000)]
