"""LabResource: the lab's network and its containers (this machine, as a cloud).

A lab is one location of the topology, numbered N, whose hosts are podman containers with systemd
as PID 1 at their planned addresses 10.N.x.y. Everything of lab N is named from N:

- a permanent `unreachable 10.N.0.0/16 metric 4000` route on the machine, added before anything
  else and never removed: with the lab down, nothing for its /16 ever leaves the machine;
- a network namespace of the project's own, `coop-lab-N` (/run/netns/coop-lab-N), in which
  podman runs (`nsenter --net=...`, not `ip netns exec`, which remounts /sys and leaves runc no
  cgroup mount), so netavark's bridge, its iptables rules and its ip_forward=1 live there only;
- the podman network `coop-lab-N` (10.N.0.0/16, gateway 10.N.255.254), created from inside it;
- a veth link, `coopN-m` (machine, 169.254.N.1/30) to `coopN-l` (namespace, 169.254.N.2/30),
  and the machine route `10.N.0.0/16 via 169.254.N.2 dev coopN-m metric 10`;
- containers `labN-<host>`, labelled `org.coop-infra.lab=N` and `org.coop-infra.host=<host>`;
- `/run/coop-infra/lab-N.owner`: the podman folder of the checkout whose lab N it is. Another
  checkout (a second clone, a CI run on the same machine) is refused lab N while it is held.

Nothing is sent from the machine to a lab address before `route_into_lab` has checked, with
`ip -j route get`, that the route goes through `coopN-m`.

Containers are planned and applied as Terraform plans servers (`plan` -> `LabPlan` -> `apply`):
a host not there is created, a container whose host is gone is deleted, a container whose
configuration (address, MAC, DNS, privileges, binds, labels) changed is replaced; a container
whose image differs is kept (a new image is for new hosts, as `ignore_changes = [image_id,
user_data]` makes it on the cloud) unless its host is named in `replace=`. Files (first-boot
user-data, the minion's key pair) and enabled units (a first-boot runner) are written into a
container after `podman create` and before its first start, and only then.

This module imports nothing from the project but the CLI runner: podman's environment (the
project's config files: runc, cgroupfs, its own storage; `PodmanResource.env()`) is passed in.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import hashlib
import io
import ipaddress
import json
import os
import re
import socket
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from resources.cli_runner import (
    CliError,
    CliResult,
    LogSink,
    ToolError,
    default_log,
    discard,
    run_cli,
)
from resources.lab_acme import ACME_PORT
from resources.lab_egress import EGRESS_PORT
from resources.lab_git import GIT_PORT
from resources.lab_link import WEBHOOKS_PORT

LAB_LABEL = "org.coop-infra.lab"
HOST_LABEL = "org.coop-infra.host"
# The container's configuration as planned (JSON, without the image and the files): what `plan`
# compares to decide that a container must be replaced.
SPEC_LABEL = "org.coop-infra.lab-spec"
OWNER_DIR = Path("/run/coop-infra")
# What the lab writes into every guest: facts of the lab's machine that a server needs no word of.
# Its cgroups are v1, in a container: systemd inside hears no "cgroup empty" (v1 tells it through
# a release agent, which a container has none of), so a unit whose main process exits before its
# children waits out the stop timeout in `final-sigterm` on every stop and restart, then kills
# what is left. dagster-daemon is one (its code server and its runs' log tails outlive it by a
# moment): measured, each of its restarts took 91 s with systemd's default of 90 s, 16 s with
# 15 s. 20 s leaves room for the slowest stop that bears no shorter bound: salt-minion's, which
# waits 5 s and then gives its jobs 2 s before it exits. A server VM (cgroups v2: systemd hears
# at once) stops dagster-daemon in a second. Units that set their own timeout keep it (Debian's
# postgresql@: 1 h; nginx: 5 s; salt-api: 3 s).
GUEST_FILES: dict[str, tuple[bytes, int]] = {
    "/etc/systemd/system.conf.d/50-coop-lab.conf": (
        b"# Written by the coop-infra lab (resources/lab.py): cgroups v1 in a container\n"
        b"[Manager]\nDefaultTimeoutStopSec=20s\n",
        0o644,
    ),
}
# ... and into every privileged guest (the roles that run podman): with the cgroups v1 not
# delegated, systemd inside cannot give a container a scope of its own (the scope is empty at
# once). With podman's default systemd manager every container of the guest then shares one
# cgroup, and removing one (`podman stop` of an old release) kills the others with it (seen: the
# new release killed with 137 as the old one stopped). cgroupfs gives each its own.
PRIVILEGED_GUEST_FILES: dict[str, tuple[bytes, int]] = {
    "/etc/containers/containers.conf.d/50-coop-lab.conf": (
        b"# Written by the coop-infra lab (resources/lab.py): cgroups v1, not delegated\n"
        b'[engine]\ncgroup_manager = "cgroupfs"\n',
        0o644,
    ),
}
UNREACHABLE_METRIC = 4000
VIA_METRIC = 10
NETNS_DIR = Path("/run/netns")
BOOTED_STATES = ("running", "degraded")
# What `podman exec` says of a container whose processes are gone while podman's record says it
# runs (they were killed, or the machine restarted and podman's state outlived it).
STOPPED_UNDER_PODMAN = "cannot exec in a stopped container"
HOST_RE = re.compile(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")  # \Z: not before a newline

# What every container that is not --privileged gets, on top of podman's default capabilities
# (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, NET_BIND_SERVICE, NET_RAW, MKNOD, AUDIT_WRITE,
# SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT):
# - NET_ADMIN and net.ipv4.ip_nonlocal_bind=1: `common.addresses` adds the host's service
#   addresses to eth0 inside the guest, and a service may bind one before it is added.
# Nothing else, found by trying (Debian 12's systemd 252 under runc and cgroupfs, tests/
# test_lab_network.py): systemd boots to `running` with podman's defaults; sandboxing options
# (PrivateTmp=, ProtectSystem=, PrivateDevices=, ProtectHostname=, PrivateNetwork=) are skipped
# with a warning where they need CAP_SYS_ADMIN; only units with DynamicUser=yes fail
# (226/NAMESPACE), and no role's service uses it. dbus warns that it cannot raise its fd limit to
# 65536 (no CAP_SYS_RESOURCE: the machine's own hard limit is 20000, containers.conf's
# default_ulimits); it runs. CAP_SYS_ADMIN is what --privileged (roles that run containers) adds.
BASE_CAPS: tuple[str, ...] = ("NET_ADMIN",)
BASE_SYSCTLS: Mapping[str, str] = {"net.ipv4.ip_nonlocal_bind": "1"}
# systemd's shutdown stops every unit; a database may take a few seconds.
STOP_TIMEOUT_S = 30


class LabError(ToolError):
    """The lab's container driver failed; from a failed command, that command's facts."""


class NotInLabError(LabError):
    """An address the machine would not send into the lab (no route through coopN-m)."""


class StaleLabPlanError(LabError):
    """The lab's containers changed after the plan was made."""


# --- names ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabNetwork:
    """Every name and address of lab `number`'s network."""

    number: int

    def __post_init__(self) -> None:
        # 255 is not one: 10.255.0.0/16 holds the machine's own DNS resolver.
        if not isinstance(self.number, int) or not 1 <= self.number <= 254:
            raise LabError(
                f"a lab's number is 1-254 (the second octet of 10.N.0.0/16): {self.number!r}"
            )

    @property
    def namespace(self) -> str:
        return f"coop-lab-{self.number}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.namespace

    @property
    def podman_network(self) -> str:
        return f"coop-lab-{self.number}"

    @property
    def subnet(self) -> str:
        return f"10.{self.number}.0.0/16"

    @property
    def gateway(self) -> str:
        return f"10.{self.number}.255.254"

    @property
    def machine_link(self) -> str:
        return f"coop{self.number}-m"

    @property
    def lab_link(self) -> str:
        return f"coop{self.number}-l"

    @property
    def machine_address(self) -> str:
        return f"169.254.{self.number}.1"

    @property
    def lab_address(self) -> str:
        return f"169.254.{self.number}.2"

    def container_name(self, host: str) -> str:
        return f"lab{self.number}-{host}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "namespace": self.namespace,
            "podman_network": self.podman_network,
            "subnet": self.subnet,
            "gateway": self.gateway,
            "machine_link": self.machine_link,
            "machine_address": self.machine_address,
            "lab_link": self.lab_link,
            "lab_address": self.lab_address,
        }


def container_name(number: int, host: str) -> str:
    return LabNetwork(number).container_name(host)


def mac_for(address: str) -> str:
    """The fixed MAC of a planned address: `02:00:` and its 4 octets in hex."""
    octets = ipaddress.IPv4Address(address).packed
    return "02:00:" + ":".join(f"{b:02x}" for b in octets)


def lab_number_of(address: str) -> int:
    """The lab a 10.N.x.y address belongs to."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise NotInLabError(f"{address!r} is not an IPv4 address") from None
    if ip not in ipaddress.IPv4Network("10.0.0.0/8") or not 1 <= ip.packed[1] <= 254:
        raise NotInLabError(f"{address} is not a lab address (10.N.x.y, N from 1 to 254)")
    return ip.packed[1]


# --- hosts and plans -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HostSpec:
    """One container of a lab, as planned.

    Made once, before the first start, and never again (not compared by `plan`, as `user_data`
    on the cloud): `files` ({path in the guest: (content, mode)}, owned by root; missing folders
    are made 0755), e.g. first-boot user-data or a minion's key pair, and `enable_units` ({unit:
    target}: a link in /etc/systemd/system/<target>.wants/, as `systemctl enable` makes it).
    `binds` ((path on the machine, path in the guest), ...) are read-only bind mounts.
    """

    host: str  # the topology's host name: the container's hostname and its host label
    image: str  # an image reference in the lab's podman storage (localhost/coop-<group>:lab)
    address: str  # the primary planned address, 10.N.x.y
    name: str = ""  # the container's: "" for lab<N>-<host>, the only name it may have
    mac: str = ""  # "": mac_for(address)
    dns: str | None = None  # --dns (the `dns` host's address); None: --dns=none (the image's)
    privileged: bool = False
    cap_add: Sequence[str] = ()  # on top of BASE_CAPS (not privileged only)
    sysctls: Mapping[str, str] = field(default_factory=dict)  # on top of BASE_SYSCTLS
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict, repr=False)
    enable_units: Mapping[str, str] = field(default_factory=dict)
    binds: Sequence[tuple[str, str]] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def mac_address(self) -> str:
        return (self.mac or mac_for(self.address)).lower()

    def config(self) -> dict[str, Any]:
        """What a container is made from, but its image and first-boot files: a change of any
        of it replaces the container (as a server's fixed address would be)."""
        return {
            "address": self.address,
            "mac": self.mac_address,
            "dns": self.dns,
            "privileged": self.privileged,
            "cap_add": sorted({c.upper().removeprefix("CAP_") for c in self.cap_add}),
            "sysctls": dict(sorted(self.sysctls.items())),
            "binds": sorted([str(src), str(dst)] for src, dst in self.binds),
            "labels": dict(sorted(self.labels.items())),
            # What the lab writes into the guest (guest_files): a guest made before it changed
            # is replaced, not left without it.
            "guest_files": _files_sha(guest_files(self.privileged)),
        }

    def config_label(self) -> str:
        return json.dumps(self.config(), sort_keys=True, separators=(",", ":"))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the files' contents in base64: they may be secrets)."""
        return {
            "host": self.host,
            "image": self.image,
            "address": self.address,
            "name": self.name,
            "mac": self.mac,
            "dns": self.dns,
            "privileged": self.privileged,
            "cap_add": list(self.cap_add),
            "sysctls": dict(self.sysctls),
            "files": {
                path: {"base64": base64.b64encode(content).decode(), "mode": mode}
                for path, (content, mode) in self.files.items()
            },
            "enable_units": dict(self.enable_units),
            "binds": [[str(src), str(dst)] for src, dst in self.binds],
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostSpec:
        return cls(
            **{
                **data,
                "cap_add": tuple(data.get("cap_add") or ()),
                "files": {
                    path: (base64.b64decode(f["base64"]), int(f["mode"]))
                    for path, f in (data.get("files") or {}).items()
                },
                "binds": tuple((src, dst) for src, dst in data.get("binds") or ()),
            }
        )


@dataclass(frozen=True)
class Existing:
    """A container of the lab, as a plan found it."""

    host: str
    name: str
    container_id: str
    image: str  # the reference it was created from
    image_id: str
    running: bool


@dataclass(frozen=True)
class LabPlan:
    """What `apply` will do to lab `number`, and the containers it was made against."""

    number: int
    create: tuple[HostSpec, ...] = ()
    replace: tuple[HostSpec, ...] = ()  # its container deleted, then created from the spec
    delete: tuple[Existing, ...] = ()
    keep: tuple[Existing, ...] = ()  # stays as it is (started if it is not running)
    prior: Mapping[str, str] = field(default_factory=dict)  # host -> container id, when planned
    notes: Mapping[str, str] = field(default_factory=dict)  # host -> why (replace, kept image)

    @property
    def start(self) -> tuple[Existing, ...]:
        """Kept, but not running (the machine restarted): apply starts them."""
        return tuple(e for e in self.keep if not e.running)

    @property
    def has_changes(self) -> bool:
        return bool(self.create or self.replace or self.delete or self.start)

    @property
    def destroys(self) -> list[str]:
        """The hosts whose container this plan removes (the destroy gate's question)."""
        return sorted([*(e.host for e in self.delete), *(s.host for s in self.replace)])

    def summary(self) -> str:
        if not self.has_changes:
            return f"lab {self.number}: no changes ({len(self.keep)} kept)"
        parts = []
        for what, items in (
            ("create", self.create),
            ("replace", self.replace),
            ("delete", self.delete),
            ("start", self.start),
            ("keep", self.keep),
        ):
            if items:
                parts.append(f"{what} {', '.join(sorted(i.host for i in items))}")
        return f"lab {self.number}: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; it holds the new hosts' files (secrets: keep it 0600, as `save_plan`)."""
        return {
            "number": self.number,
            "create": [s.as_dict() for s in self.create],
            "replace": [s.as_dict() for s in self.replace],
            "delete": [dataclasses.asdict(e) for e in self.delete],
            "keep": [dataclasses.asdict(e) for e in self.keep],
            "prior": dict(self.prior),
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabPlan:
        return cls(
            number=int(data["number"]),
            create=tuple(HostSpec.from_dict(s) for s in data.get("create") or ()),
            replace=tuple(HostSpec.from_dict(s) for s in data.get("replace") or ()),
            delete=tuple(Existing(**e) for e in data.get("delete") or ()),
            keep=tuple(Existing(**e) for e in data.get("keep") or ()),
            prior=dict(data.get("prior") or {}),
            notes=dict(data.get("notes") or {}),
        )


@dataclass(frozen=True)
class Applied:
    number: int
    created: tuple[str, ...]
    deleted: tuple[str, ...]
    started: tuple[str, ...]
    running_s: float  # from the start of apply to every created or started container running
    booted_s: float | None  # ... to systemd `running` or `degraded` in each (wait_booted)
    systemd: Mapping[str, str]  # host -> is-system-running, when waited for

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ContainerStatus:
    host: str
    name: str
    container_id: str
    address: str | None
    mac: str | None
    image: str  # the reference it was created from
    image_id: str
    running: bool
    state: str  # podman's: created, running, exited, ...
    pid: int  # 0 when not running
    systemd: str | None  # `systemctl is-system-running`, when running and asked for
    config: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Memory:
    host: str
    pss_bytes: int  # the container's processes (its cgroup, systemd and everything under it)
    processes: int
    conmon_pss_bytes: int  # podman's monitor for it, on the machine


# --- the lab -------------------------------------------------------------------------------------


class Lab:
    """The lab driver. `podman_env`: the environment of the project's podman
    (`PodmanResource.env()`); `log`: where each command's lines go."""

    def __init__(
        self,
        podman_env: Mapping[str, str],
        *,
        log: LogSink | None = None,
        timeout_s: float = 300.0,
        lock_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not podman_env.get("CONTAINERS_CONF"):
            raise LabError("podman_env has no CONTAINERS_CONF: pass PodmanResource(...).env()")
        self.podman_env = dict(podman_env)
        self.log = log or default_log()
        self.timeout_s = timeout_s
        # Machine-wide (not per checkout): two clones must not change one lab number at once.
        self.lock_dir = Path(lock_dir or OWNER_DIR)
        # Which checkout this is, for the owner file: its podman folder.
        self.owner = str(Path(self.podman_env["CONTAINERS_CONF"]).parent)

    # --- commands ------------------------------------------------------------------------------

    def _ip(self, *args: str, check: bool = True) -> CliResult:
        return run_cli(["ip", *args], log=self.log, check=check, timeout_s=60)

    def _ip_json(self, *args: str) -> list[dict[str, Any]]:
        result = run_cli(["ip", "-j", *args], log=discard, check=False, timeout_s=60)
        if result.returncode != 0 or not result.output.strip():
            return []
        return json.loads(result.output)

    def _podman_argv(self, number: int | None, args: Sequence[str]) -> list[str]:
        argv = ["podman", *args]
        if number is not None:
            netns = LabNetwork(number).netns_path
            if _is_netns(netns):
                argv = ["nsenter", f"--net={netns}", *argv]
        return argv

    def podman(
        self,
        number: int | None,
        args: Sequence[str],
        *,
        check: bool = True,
        quiet: bool = False,
        timeout_s: float | None = None,
    ) -> CliResult:
        """`podman ARGS` with the project's config, inside lab `number`'s namespace (in the
        machine's when it is gone, or for `number=None`: images, listing, inspecting and removing
        stopped containers need no network)."""
        return run_cli(
            self._podman_argv(number, args),
            env=self.podman_env,
            log=discard if quiet else self.log,
            check=check,
            timeout_s=timeout_s or self.timeout_s,
        )

    @contextmanager
    def _locked(self, number: int) -> Iterator[None]:
        """One change of lab `number` at a time (network up or down, apply)."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_dir / f"coop-lab-{number}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- the network ---------------------------------------------------------------------------

    def up_network(self, number: int) -> dict[str, Any]:
        """Make lab `number`'s network, in this order, each part only when missing: the
        unreachable route, the namespace, the podman network, the link, the machine's route.
        Returns its names and addresses, and `made`: the parts this call made."""
        net = LabNetwork(number)
        made: list[str] = []
        with self._locked(number):
            if self._ensure_unreachable(net):
                made.append("unreachable route")
            self._claim(net)
            if self._ensure_namespace(net):
                made.append("namespace")
            if self._ensure_podman_network(net):
                made.append("podman network")
            if self._ensure_link(net):
                made.append("link")
            if self._ensure_link_rules(net):
                made.append("link rules")
            if not self._via_route(net):
                self._ip(
                    "route", "replace", net.subnet, "via", net.lab_address,
                    "dev", net.machine_link, "metric", str(VIA_METRIC),
                )  # fmt: skip
                made.append("route")
        self.route_into_lab(net.gateway)
        return {**net.as_dict(), "made": made}

    def _claim(self, net: LabNetwork) -> None:
        """Make this checkout the owner of lab N, unless another one holds it (under the lock)."""
        self._refuse_if_held(net)
        path = owner_file(net.number)
        if not path.is_file() or path.read_text().strip() != self.owner:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(self.owner + "\n")
            os.replace(tmp, path)  # whole or not at all

    def _refuse_if_held(self, net: LabNetwork) -> None:
        """LabError when another checkout holds lab N: its namespace is live and the owner file
        names another checkout whose podman folder still exists; or, with no owner file (a lab
        made before owners were recorded) or an owner whose folder is gone, when processes
        this checkout's podman did not start run in the namespace."""
        if not _is_netns(net.netns_path):
            return
        path = owner_file(net.number)
        held_by = path.read_text().strip() if path.is_file() else ""
        if held_by == self.owner:
            return
        if held_by and Path(held_by).is_dir():
            self._refuse(net, held_by, "")
        # conmon runs in the namespace (podman is started there); each container's own
        # processes are in namespaces of their own, linked to the bridge
        ours = set()
        for info in self._containers(net.number).values():
            state = info.get("State") or {}
            ours |= {int(pid) for pid in (state.get("ConmonPid"), state.get("Pid")) if pid}
        theirs = [pid for pid in _processes_in(net.netns_path) if pid not in ours]
        if theirs:
            self._refuse(
                net,
                held_by or "unknown: made before owners were recorded",
                f" (its namespace {net.namespace} runs pids {', '.join(map(str, theirs[:8]))})",
            )

    @staticmethod
    def _refuse(net: LabNetwork, held_by: str, detail: str) -> None:
        raise LabError(
            f"lab {net.number} is held by another checkout ({held_by}){detail}. Take that lab"
            " down from its checkout (`infra lab down`), or give this topology's location"
            " another lab number (`number:` in its topology; the tests: $INFRA_TEST_LAB_NUMBER)"
        )

    def _ensure_unreachable(self, net: LabNetwork) -> bool:
        if self._unreachable_route(net):
            return False
        self._ip("route", "add", "unreachable", net.subnet, "metric", str(UNREACHABLE_METRIC))
        return True

    def _unreachable_route(self, net: LabNetwork) -> bool:
        routes = self._ip_json("route", "show", "exact", net.subnet)
        return any(
            r.get("type") == "unreachable" and r.get("metric") == UNREACHABLE_METRIC for r in routes
        )

    def _via_route(self, net: LabNetwork) -> bool:
        routes = self._ip_json("route", "show", "exact", net.subnet)
        return any(
            r.get("dev") == net.machine_link
            and r.get("gateway") == net.lab_address
            and r.get("metric") == VIA_METRIC
            for r in routes
        )

    def _ensure_namespace(self, net: LabNetwork) -> bool:
        made = False
        if net.netns_path.exists() and not _is_netns(net.netns_path):
            # a file left by a namespace that is gone (the machine restarted): `ip netns add`
            # refuses to make it again while it is there
            self._ip("netns", "delete", net.namespace, check=False)
            net.netns_path.unlink(missing_ok=True)
        if not net.netns_path.exists():
            self._ip("netns", "add", net.namespace)
            made = True
        self._ip("-n", net.namespace, "link", "set", "lo", "up")
        return made

    def _ensure_podman_network(self, net: LabNetwork) -> bool:
        found = self.podman(
            net.number, ["network", "inspect", net.podman_network], check=False, quiet=True
        )
        if found.returncode == 0:
            (info,) = json.loads(found.output)
            subnets = {(s.get("subnet"), s.get("gateway")) for s in info.get("subnets") or []}
            if subnets != {(net.subnet, net.gateway)}:
                raise LabError(
                    f"the podman network {net.podman_network} exists with subnets"
                    f" {sorted(subnets)}, not {net.subnet} (gateway {net.gateway}):"
                    " remove it (`infra lab down`)"
                )
            return False
        self.podman(
            net.number,
            [
                "network", "create",
                "--driver", "bridge",
                "--subnet", net.subnet,
                "--gateway", net.gateway,
                # No aardvark-dns here: names come from the `dns` role's dnsmasq (--dns).
                "--disable-dns",
                "--label", f"{LAB_LABEL}={net.number}",
                net.podman_network,
            ],
        )  # fmt: skip
        return True

    def _ensure_link(self, net: LabNetwork) -> bool:
        made = False
        machine = self._ip_json("link", "show", "dev", net.machine_link)
        inside = self._ip_json("-n", net.namespace, "link", "show", "dev", net.lab_link)
        if machine and not inside:  # a half-made link (its peer is elsewhere): make it again
            self._ip("link", "delete", net.machine_link)
            machine = []
        if not machine:
            self._ip(
                "link", "add", net.machine_link, "type", "veth",
                "peer", "name", net.lab_link, "netns", net.namespace,
            )  # fmt: skip
            made = True
        self._ip("addr", "replace", f"{net.machine_address}/30", "dev", net.machine_link)
        self._ip("link", "set", net.machine_link, "up")
        self._ip(
            "-n", net.namespace, "addr", "replace", f"{net.lab_address}/30", "dev", net.lab_link
        )  # fmt: skip
        self._ip("-n", net.namespace, "link", "set", net.lab_link, "up")
        return made

    def _link_rules(self, net: LabNetwork) -> list[tuple[str, str, list[str]]]:
        """The lab's rules for its link, in its namespace (netavark's own chains untouched; the
        machine's iptables never changed), in order:
        - its hosts keep their own addresses towards the machine's end of the link (netavark
          masquerades everything leaving the /16): the egress proxy allows by address;
        - of what the hosts start towards the machine, only the egress proxy (3128), the git
          daemon (9418) and the webhook endpoint (8700: the registry's notifications) pass:
          nothing else the machine listens on is the lab's business;
        - of what the hosts start towards the namespace itself, only the ACME server's directory
          (14000, pebble, which runs in the namespace: resources/lab_acme.py) passes, not its
          management port;
        - the namespace starts nothing towards the machine: pebble's validations (which follow
          redirects to any address it can reach) reach the lab's hosts and nothing else.
        In the mangle table, which netavark leaves alone: its filter FORWARD chain accepts
        everything from the /16 before any rule of ours there could say no."""
        to_machine = ["-s", net.subnet, "-d", f"{net.machine_address}/32"]
        new = ["-m", "conntrack", "--ctstate", "NEW"]
        return [
            ("nat", "POSTROUTING", [*to_machine, "-j", "RETURN"]),
            ("mangle", "FORWARD", [*to_machine, "-p", "tcp", "-m", "multiport",
             "--dports", f"{EGRESS_PORT},{GIT_PORT},{WEBHOOKS_PORT}", *new, "-j", "ACCEPT"]),
            ("mangle", "FORWARD", [*to_machine, *new, "-j", "DROP"]),
            ("mangle", "INPUT", ["-s", net.subnet, "-p", "tcp", "--dport", str(ACME_PORT),
             *new, "-j", "ACCEPT"]),
            ("mangle", "INPUT", ["-s", net.subnet, *new, "-j", "DROP"]),
            ("mangle", "OUTPUT", ["-d", f"{net.machine_address}/32", *new, "-j", "DROP"]),
        ]  # fmt: skip

    def _ensure_link_rules(self, net: LabNetwork) -> bool:
        """Insert the link's rules at the top of their chains unless each is there already
        (`iptables -C`); when one is missing, all are put back in their order."""
        rules = self._link_rules(net)

        def present(table: str, chain: str, spec: list[str]) -> bool:
            return self._iptables(net, table, "-C", chain, *spec, check=False).returncode == 0

        if all(present(*rule) for rule in rules) and self._return_first(net):
            return False
        for rule in rules:
            while present(*rule):
                self._iptables(net, rule[0], "-D", rule[1], *rule[2])
        for index, (table, chain, spec) in enumerate(rules):
            position = sum(1 for r in rules[:index] if r[:2] == (table, chain)) + 1
            self._iptables(net, table, "-I", chain, str(position), *spec)
        return True

    def _return_first(self, net: LabNetwork) -> bool:
        """Whether the nat RETURN comes before netavark's masquerading jump (netavark appends
        its jump when a container starts; a rule of its inserted above ours would undo it)."""
        lines = self._iptables(net, "nat", "-S", "POSTROUTING").lines
        ours = [i for i, line in enumerate(lines) if f"-d {net.machine_address}/32" in line]
        masq = [
            i for i, line in enumerate(lines) if "-j NETAVARK-" in line and "HOSTPORT" not in line
        ]
        return bool(ours) and (not masq or ours[0] < masq[0])

    def _iptables(self, net: LabNetwork, table: str, *args: str, check: bool = True) -> CliResult:
        """`iptables -t TABLE ARGS` inside the lab's namespace (never the machine's)."""
        argv = ["nsenter", f"--net={net.netns_path}", "iptables", "-w", "-t", table, *args]
        return run_cli(argv, log=discard, check=check, timeout_s=60)

    def down_network(self, number: int) -> list[str]:
        """Remove lab `number`'s containers, its podman network, the machine's route into it,
        the link and the namespace; keep (or add) the unreachable route. Returns what it
        removed."""
        net = LabNetwork(number)
        removed: list[str] = []
        with self._locked(number):
            self._ensure_unreachable(net)
            self._refuse_if_held(net)
            found = self._containers(number)
            if found:
                self._remove_containers(number, [info["Id"] for info in found.values()])
                removed += [f"container {info['Name']}" for info in found.values()]
            exists = self.podman(number, ["network", "exists", net.podman_network], check=False)
            if exists.returncode == 0:
                self.podman(number, ["network", "rm", net.podman_network])
                removed.append(f"podman network {net.podman_network}")
            if self._via_route(net):
                self._ip(
                    "route", "del", net.subnet, "via", net.lab_address,
                    "dev", net.machine_link, "metric", str(VIA_METRIC),
                )  # fmt: skip
                removed.append(f"route {net.subnet} via {net.lab_address}")
            if self._ip_json("link", "show", "dev", net.machine_link):
                self._ip("link", "delete", net.machine_link)
                removed.append(f"link {net.machine_link}")
            if net.netns_path.exists():
                left = _processes_in(net.netns_path)
                if left:
                    raise LabError(
                        f"processes still run in the namespace {net.namespace}: pids"
                        f" {', '.join(map(str, left))} (not the lab's containers);"
                        " stop them, then take the lab down again"
                    )
                self._ip("netns", "delete", net.namespace)
                removed.append(f"namespace {net.namespace}")
            path = owner_file(number)
            if path.is_file() and path.read_text().strip() == self.owner:
                path.unlink()
        return removed

    def network_status(self, number: int) -> dict[str, bool]:
        """Which of lab `number`'s network parts exist."""
        net = LabNetwork(number)
        exists = self.podman(number, ["network", "exists", net.podman_network], check=False)
        return {
            "unreachable_route": self._unreachable_route(net),
            "namespace": _is_netns(net.netns_path),
            "podman_network": exists.returncode == 0,
            "link": bool(self._ip_json("link", "show", "dev", net.machine_link)),
            "via_route": self._via_route(net),
        }

    def route_into_lab(self, address: str) -> dict[str, Any]:
        """Check that the machine sends `address` into its lab (`ip -j route get` says dev
        coopN-m, via 169.254.N.2); raise NotInLabError otherwise. Call before any traffic."""
        number = lab_number_of(address)
        net = LabNetwork(number)
        result = run_cli(
            ["ip", "-j", "route", "get", address], log=discard, check=False, timeout_s=30
        )
        routes = json.loads(result.output) if result.returncode == 0 and result.output else []
        route = routes[0] if routes else {}
        if route.get("dev") != net.machine_link or route.get("gateway") != net.lab_address:
            if route:
                said = f"dev {route.get('dev')} via {route.get('gateway') or 'none'}"
            else:
                said = result.output.strip() or f"exit {result.returncode}"
            if not self._via_route(net):
                said += f"; lab {number}'s network is down" + (
                    ": its /16 is unreachable" if self._unreachable_route(net) else ""
                )
            raise NotInLabError(
                f"refusing to send to {address}: the machine does not route it into lab"
                f" {number} through {net.machine_link} (ip route get: {said});"
                " bring the lab's network up first (`infra lab up`)"
            )
        return route

    def probe_tcp(self, address: str, port: int, *, timeout_s: float = 2.0) -> bool:
        """Whether the machine can open a TCP connection to address:port in the lab (the route
        is checked first)."""
        self.route_into_lab(address)
        try:
            with socket.create_connection((address, port), timeout=timeout_s):
                return True
        except OSError:
            return False

    def probe_tcp_from(
        self, number: int, host: str, address: str, port: int, *, timeout_s: int = 5
    ) -> bool:
        """Whether lab `number`'s `host` (a guest) can open a TCP connection to address:port:
        a firewall's view from inside the lab, where `probe_tcp` has the machine's."""
        probe = ["timeout", str(timeout_s), "bash", "-c", f": <>/dev/tcp/{address}/{port}"]
        return self.exec(number, host, probe, check=False).returncode == 0

    # --- containers ----------------------------------------------------------------------------

    def _containers(self, number: int) -> dict[str, dict[str, Any]]:
        """Lab `number`'s containers (`podman inspect`), by host."""
        listed = self.podman(
            number,
            ["ps", "-a", "--no-trunc", "--filter", f"label={LAB_LABEL}={number}",
             "--format", "{{.ID}}"],
            quiet=True,
        )  # fmt: skip
        ids = [line.strip() for line in listed.lines if line.strip()]
        if not ids:
            return {}
        found: dict[str, dict[str, Any]] = {}
        for info in json.loads(self.podman(number, ["inspect", *ids], quiet=True).output):
            labels = (info.get("Config") or {}).get("Labels") or {}
            host = labels.get(HOST_LABEL) or info["Name"]
            if host in found:
                raise LabError(f"two containers of lab {number} say they are {host}")
            found[host] = info
        return found

    def _remove_containers(self, number: int, ids: Sequence[str]) -> None:
        # `stop` may fail for a container whose network is already gone (its namespace was
        # deleted under it) while it stops it all the same; `rm --force` says what is left.
        self.podman(number, ["stop", "--ignore", "-t", str(STOP_TIMEOUT_S), *ids], check=False)
        try:
            self.podman(number, ["rm", "--ignore", "--force", *ids])
        except CliError as err:
            raise LabError.from_cli(
                f"lab {number}: its containers could not be removed: {err}", err
            ) from err

    def image_id(self, ref: str, *, number: int | None = None) -> str | None:
        """The id of image `ref` in the lab's podman storage; None when it is not there."""
        result = self.podman(
            number, ["image", "inspect", "--format", "{{.Id}}", ref], check=False, quiet=True
        )
        if result.returncode != 0 or not result.lines:
            return None
        return result.lines[-1].strip()

    def plan(
        self, specs: Iterable[HostSpec], number: int, *, replace: Iterable[str] = ()
    ) -> LabPlan:
        """Compare `specs` with lab `number`'s containers: what to create, replace, delete and
        keep (and start, of what is kept). A container whose image is not its spec's is kept
        (noted) unless its host is in `replace`; one whose configuration changed is replaced."""
        net = LabNetwork(number)
        specs = list(specs)
        replace = set(replace)
        self._check_specs(net, specs)
        image_ids = self._image_ids(number, specs)
        wanted = {s.host: s for s in specs}
        self._check_replace(number, replace, wanted)
        existing = self._containers(number)
        taken = self._names_taken(number)
        create, replaced, keep = [], [], []
        notes: dict[str, str] = {}
        for host, spec in sorted(wanted.items()):
            info = existing.get(host)
            if info is None:
                name = net.container_name(host)
                if name in taken:
                    raise LabError(
                        f"a container named {name} exists but is not labelled as lab {number}'s"
                        f" {host}: remove it (`podman rm -f {name}`) or rename it"
                    )
                create.append(spec)
                continue
            labels = (info.get("Config") or {}).get("Labels") or {}
            try:
                current = json.loads(labels.get(SPEC_LABEL) or "{}")
            except json.JSONDecodeError:
                current = {}
            changed = sorted(k for k, v in spec.config().items() if current.get(k) != v)
            if host in replace:
                replaced.append(spec)
                notes[host] = "replace asked for"
            elif changed:
                replaced.append(spec)
                notes[host] = f"changed: {', '.join(changed)}"
            else:
                keep.append(_existing(host, info))
                if info.get("Image") != image_ids[spec.image]:
                    notes[host] = (
                        f"kept on its image {info.get('ImageName') or info.get('Image', '')[:12]}"
                        f" ({spec.image} is another: for new hosts; replace={host} rebuilds it)"
                    )
        return LabPlan(
            number=number,
            create=tuple(create),
            replace=tuple(replaced),
            delete=tuple(_existing(h, existing[h]) for h in sorted(set(existing) - set(wanted))),
            keep=tuple(keep),
            prior={host: info["Id"] for host, info in sorted(existing.items())},
            notes=notes,
        )

    def _image_ids(self, number: int, specs: Sequence[HostSpec]) -> dict[str, str | None]:
        """The id of each image the specs name, in the lab's podman storage; all must be there."""
        image_ids = {ref: self.image_id(ref) for ref in sorted({s.image for s in specs})}
        missing = [ref for ref, image_id in image_ids.items() if not image_id]
        if missing:
            raise LabError(
                f"lab {number}: no image {', '.join(missing)} in the lab's podman storage"
                " (build the image groups first)"
            )
        return image_ids

    @staticmethod
    def _check_replace(number: int, replace: set[str], wanted: Mapping[str, HostSpec]) -> None:
        """Every host that `replace` names is one of the plan's."""
        unknown = sorted(replace - set(wanted))
        if unknown:
            raise LabError(
                f"replace names {', '.join(unknown)}, not a host of lab {number}'s plan"
                f" (its hosts: {', '.join(sorted(wanted)) or 'none'})"
            )

    @staticmethod
    def _check_specs(net: LabNetwork, specs: Sequence[HostSpec]) -> None:
        problems = []
        subnet = ipaddress.IPv4Network(net.subnet)
        seen_hosts: set[str] = set()
        seen_addresses: dict[str, str] = {}
        for spec in specs:
            if not HOST_RE.match(spec.host):
                problems.append(f"{spec.host!r} is not a host name (a-z, 0-9, -)")
            if spec.name and spec.name != net.container_name(spec.host):
                problems.append(
                    f"{spec.host}: its container is {net.container_name(spec.host)}, not"
                    f" {spec.name}"
                )
            if spec.host in seen_hosts:
                problems.append(f"{spec.host} is planned twice")
            seen_hosts.add(spec.host)
            try:
                address = ipaddress.IPv4Address(spec.address)
            except ValueError:
                problems.append(f"{spec.host}: {spec.address!r} is not an IPv4 address")
                continue
            if address not in subnet or address in (
                subnet.network_address,
                subnet.broadcast_address,
                ipaddress.IPv4Address(net.gateway),
            ):
                problems.append(f"{spec.host}: {spec.address} is not a host address of {subnet}")
            if spec.address in seen_addresses:
                problems.append(
                    f"{spec.host} and {seen_addresses[spec.address]} share {spec.address}"
                )
            seen_addresses[spec.address] = spec.host
            if spec.dns is not None:
                try:
                    ipaddress.IPv4Address(spec.dns)
                except ValueError:
                    problems.append(f"{spec.host}: dns {spec.dns!r} is not an IPv4 address")
            guest_paths = [*spec.files, *(dst for _, dst in spec.binds)]
            for path in guest_paths:
                if not str(path).startswith("/") or ".." in Path(path).parts:
                    problems.append(f"{spec.host}: {path!r} is not an absolute path in the guest")
            for source, _ in spec.binds:
                if not Path(source).is_absolute() or not Path(source).exists():
                    problems.append(f"{spec.host}: the bind's source {source} is not there")
            for unit, target in spec.enable_units.items():
                if "/" in unit or "/" in target or "." not in unit or "." not in target:
                    problems.append(f"{spec.host}: cannot enable {unit!r} for {target!r}")
        if problems:
            raise LabError(f"lab {net.number}'s plan is wrong:\n- " + "\n- ".join(problems))

    def _names_taken(self, number: int) -> set[str]:
        result = self.podman(number, ["ps", "-a", "--format", "{{.Names}}"], quiet=True)
        return {line.strip() for line in result.lines if line.strip()}

    def save_plan(self, plan: LabPlan, path: str | os.PathLike[str]) -> Path:
        """The plan as JSON, mode 0600 (it holds the new hosts' files: keys)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(plan.as_dict(), out, indent=1)
        os.chmod(path, 0o600)
        return path

    @staticmethod
    def load_plan(path: str | os.PathLike[str]) -> LabPlan:
        return LabPlan.from_dict(json.loads(Path(path).read_text()))

    def apply(self, plan: LabPlan, *, boot_timeout_s: float | None = 120.0) -> Applied:
        """Carry out `plan` (refused if lab `plan.number`'s containers changed since): delete,
        then create (files written before the first start), then start. Waits for every created
        or started container to run, then (unless boot_timeout_s is None) for systemd in each
        to have booted (`running` or `degraded`)."""
        net = LabNetwork(plan.number)
        began = time.monotonic()
        if not _is_netns(net.netns_path):
            raise LabError(f"lab {plan.number}'s network is not up (no {net.netns_path})")
        with self._locked(plan.number):
            self._refuse_if_held(net)
            existing = self._containers(plan.number)
            now = {host: info["Id"] for host, info in existing.items()}
            if now != dict(plan.prior):
                raise StaleLabPlanError(
                    f"lab {plan.number}'s containers changed since the plan was made"
                    f" (then: {sorted(plan.prior)}; now: {sorted(now)}): plan again"
                )
            gone = [*(e.host for e in plan.delete), *(s.host for s in plan.replace)]
            if gone:
                self._remove_containers(plan.number, [existing[h]["Id"] for h in gone])
            new = [*plan.create, *plan.replace]
            for spec in new:
                self._create(net, spec)
            hosts = [*(s.host for s in new), *(e.host for e in plan.start)]
            if hosts:
                names = [net.container_name(h) for h in hosts]
                try:
                    self.podman(plan.number, ["start", *names])
                except CliError as err:
                    raise LabError.from_cli(
                        f"lab {plan.number}: starting {names} failed: {err}", err
                    ) from err
                self._wait_running(plan.number, hosts, began)
            running_s = time.monotonic() - began
        systemd: dict[str, str] = {}
        booted_s = None
        if hosts and boot_timeout_s is not None:
            rows = self.wait_booted(plan.number, hosts, timeout_s=boot_timeout_s)
            systemd = {r.host: r.systemd or "" for r in rows}
            booted_s = time.monotonic() - began
        return Applied(
            number=plan.number,
            created=tuple(s.host for s in new),
            deleted=tuple(gone),
            started=tuple(e.host for e in plan.start),
            running_s=running_s,
            booted_s=booted_s,
            systemd=systemd,
        )

    def _create(self, net: LabNetwork, spec: HostSpec) -> None:
        name = net.container_name(spec.host)
        args = [
            "create",
            "--name", name,
            "--hostname", spec.host,
            "--label", f"{LAB_LABEL}={net.number}",
            "--label", f"{HOST_LABEL}={spec.host}",
            "--label", f"{SPEC_LABEL}={spec.config_label()}",
            "--network", net.podman_network,
            "--ip", spec.address,
            "--mac-address", spec.mac_address,
            "--dns", spec.dns or "none",
            "--systemd", "always",
            "--stop-timeout", str(STOP_TIMEOUT_S),
            "--pull", "never",
        ]  # fmt: skip
        for key, value in sorted(spec.labels.items()):
            args += ["--label", f"{key}={value}"]
        if spec.privileged:
            # Roles that run containers (podman inside the guest: mounts, cgroups, network
            # namespaces of their own) need what only this gives.
            args.append("--privileged")
        else:
            for cap in sorted({*BASE_CAPS, *spec.config()["cap_add"]}):
                args += ["--cap-add", cap]
        for key, value in sorted({**BASE_SYSCTLS, **spec.sysctls}.items()):
            args += ["--sysctl", f"{key}={value}"]
        for source, target in sorted(spec.binds):
            args += ["--volume", f"{Path(source).absolute()}:{target}:ro"]
        args += [spec.image, "/sbin/init"]
        spec = dataclasses.replace(spec, files={**guest_files(spec.privileged), **spec.files})
        try:
            self.podman(net.number, args)
            if spec.files or spec.enable_units:
                self._write_files(net.number, name, spec)
        except CliError as err:
            # Half made (no files in it): gone, so that the next plan creates it again.
            self.podman(net.number, ["rm", "--ignore", "--force", name], check=False, quiet=True)
            raise LabError.from_cli(
                f"lab {net.number}: creating {name} failed: {err}", err
            ) from err

    def _write_files(self, number: int, name: str, spec: HostSpec) -> None:
        """The spec's files and unit links into the created container's root, as one tar
        stream (`podman cp -`): each owned by root with its mode; missing folders made 0755."""
        archive = io.BytesIO()
        now = int(time.time())
        with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path, (content, mode) in sorted(spec.files.items()):
                info = _tar_entry(path, now)
                info.size = len(content)
                info.mode = mode
                tar.addfile(info, io.BytesIO(content))
            for unit, target in sorted(spec.enable_units.items()):
                own = f"/etc/systemd/system/{unit}"
                info = _tar_entry(f"/etc/systemd/system/{target}.wants/{unit}", now)
                info.type = tarfile.SYMTYPE
                info.linkname = own if own in spec.files else f"/lib/systemd/system/{unit}"
                info.mode = 0o777
                tar.addfile(info)
        run_cli(
            self._podman_argv(number, ["cp", "-", f"{name}:/"]),
            env=self.podman_env,
            stdin=archive.getvalue(),
            timeout_s=self.timeout_s,
            log=discard,
        )

    def _wait_running(self, number: int, hosts: Sequence[str], since: float) -> None:
        deadline = since + self.timeout_s
        while True:
            found = self._containers(number)
            states = {h: (found.get(h) or {}).get("State") or {} for h in hosts}
            if all(s.get("Running") for s in states.values()):
                return
            if any(s.get("Status") == "exited" for s in states.values()) or (
                time.monotonic() > deadline
            ):
                raise LabError(
                    f"lab {number}: not running: "
                    + ", ".join(f"{h} ({s.get('Status')})" for h, s in sorted(states.items()))
                )
            time.sleep(0.1)

    def exec(
        self, number: int, host: str, args: Sequence[str], *, check: bool = True, quiet: bool = True
    ) -> CliResult:
        """`podman exec` in host's container: for the lab's own checks (never a salt transport)."""
        name = LabNetwork(number).container_name(host)
        return self.podman(number, ["exec", name, *args], check=check, quiet=quiet)

    def systemd_state(self, number: int, host: str) -> str:
        """`systemctl is-system-running` in host's container (`exit N` when it did not say)."""
        result = self.exec(number, host, ["systemctl", "is-system-running"], check=False)
        return (result.lines[-1].strip() if result.lines else "") or f"exit {result.returncode}"

    def wait_booted(
        self, number: int, hosts: Sequence[str] | None = None, *, timeout_s: float = 120.0
    ) -> list[ContainerStatus]:
        """Wait until systemd in each of `hosts` (default: every container of the lab) says
        `running` or `degraded`; then the lab's status. LabError names those that did not."""
        if hosts is None:
            hosts = [row.host for row in self.status(number, systemd=False)]
        deadline = time.monotonic() + timeout_s

        def wait(host: str) -> str:
            while True:
                state = self.systemd_state(number, host)
                if state in BOOTED_STATES or time.monotonic() > deadline:
                    return state
                if STOPPED_UNDER_PODMAN in state:  # it will not boot by waiting
                    return state
                time.sleep(0.25)

        with ThreadPoolExecutor(max_workers=min(8, max(1, len(hosts)))) as pool:
            states = dict(zip(hosts, pool.map(wait, hosts), strict=True))
        late = {h: s for h, s in states.items() if s not in BOOTED_STATES}
        stale = sorted(h for h, s in late.items() if STOPPED_UNDER_PODMAN in s)
        if stale:
            raise LabError(
                f"lab {number}: podman counts {', '.join(stale)} as running, but"
                f" {'its' if len(stale) == 1 else 'their'} processes are gone (killed, or the"
                " machine restarted while podman's state was kept): `infra lab down`, then"
                " `infra lab up`, makes the lab again"
            )
        if late:
            raise LabError(
                f"lab {number}: systemd did not boot within {timeout_s:g} s in "
                + ", ".join(f"{h} ({s})" for h, s in sorted(late.items()))
            )
        rows = self.status(number, systemd=False)
        return [dataclasses.replace(r, systemd=states.get(r.host)) for r in rows]

    def status(self, number: int, *, systemd: bool = True) -> list[ContainerStatus]:
        """Each container of lab `number`, by host (with systemd's state when `systemd`)."""
        net = LabNetwork(number)
        rows = []
        for host, info in sorted(self._containers(number).items()):
            state = info.get("State") or {}
            networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
            network = networks.get(net.podman_network) or {}
            labels = (info.get("Config") or {}).get("Labels") or {}
            try:
                config = json.loads(labels.get(SPEC_LABEL) or "{}")
            except json.JSONDecodeError:
                config = {}
            rows.append(
                ContainerStatus(
                    host=host,
                    name=info["Name"],
                    container_id=info["Id"],
                    address=network.get("IPAddress") or config.get("address"),
                    mac=network.get("MacAddress") or config.get("mac"),
                    image=info.get("ImageName", ""),
                    image_id=info.get("Image", ""),
                    running=bool(state.get("Running")),
                    state=state.get("Status", ""),
                    pid=int(state.get("Pid") or 0),
                    systemd=None,
                    config=config,
                )
            )
        if systemd:
            running = [r.host for r in rows if r.running]
            with ThreadPoolExecutor(max_workers=min(8, max(1, len(running)))) as pool:
                states = dict(
                    zip(running, pool.map(lambda h: self.systemd_state(number, h), running),
                        strict=True)
                )  # fmt: skip
            rows = [dataclasses.replace(r, systemd=states.get(r.host)) for r in rows]
        return rows

    def memory(self, number: int) -> list[Memory]:
        """The PSS of each running container's processes (every process of its cgroup, from
        /proc/<pid>/smaps_rollup), and of its conmon on the machine."""
        found = []
        for host, info in sorted(self._containers(number).items()):
            state = info.get("State") or {}
            pid = int(state.get("Pid") or 0)
            if not state.get("Running") or not pid:
                continue
            pids = _cgroup_pids(pid)
            found.append(
                Memory(
                    host=host,
                    pss_bytes=sum(_pss(p) for p in pids),
                    processes=len(pids),
                    conmon_pss_bytes=_pss(int(state.get("ConmonPid") or 0)),
                )
            )
        return found


def _existing(host: str, info: Mapping[str, Any]) -> Existing:
    return Existing(
        host=host,
        name=info["Name"],
        container_id=info["Id"],
        image=info.get("ImageName", ""),
        image_id=info.get("Image", ""),
        running=bool((info.get("State") or {}).get("Running")),
    )


def _tar_entry(path: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = mtime
    return info


class LabResource(dg.ConfigurableResource):
    """The lab driver (`Lab`) as a Dagster resource. `podman_env` is `PodmanResource.env()`: the
    project's podman config (runc, cgroupfs, storage under the state folder), so Packer's builds
    and the lab's containers see the same images. Each method takes `log` (a run's
    `context.log.info`); without it, lines go to Dagster's logger."""

    podman_env: dict[str, str] = Field(
        description="The environment of every podman call (CONTAINERS_CONF, ...):"
        " PodmanResource(...).env()."
    )
    timeout_s: float = Field(default=300.0, description="The longest one podman command may take.")

    def lab(self, log: LogSink | None = None) -> Lab:
        return Lab(self.podman_env, log=log, timeout_s=self.timeout_s)

    def up_network(self, number: int, *, log: LogSink | None = None) -> dict[str, Any]:
        return self.lab(log).up_network(number)

    def down_network(self, number: int, *, log: LogSink | None = None) -> list[str]:
        return self.lab(log).down_network(number)

    def network_status(self, number: int) -> dict[str, bool]:
        return self.lab().network_status(number)

    def route_into_lab(self, address: str) -> dict[str, Any]:
        return self.lab().route_into_lab(address)

    def image_id(self, ref: str) -> str | None:
        return self.lab().image_id(ref)

    def plan(
        self,
        specs: Iterable[HostSpec],
        number: int,
        *,
        replace: Iterable[str] = (),
        log: LogSink | None = None,
    ) -> LabPlan:
        return self.lab(log).plan(specs, number, replace=replace)

    def save_plan(self, plan: LabPlan, path: str | os.PathLike[str]) -> Path:
        return self.lab().save_plan(plan, path)

    def load_plan(self, path: str | os.PathLike[str]) -> LabPlan:
        return Lab.load_plan(path)

    def apply(
        self,
        plan: LabPlan,
        *,
        boot_timeout_s: float | None = 120.0,
        log: LogSink | None = None,
    ) -> Applied:
        return self.lab(log).apply(plan, boot_timeout_s=boot_timeout_s)

    def wait_booted(
        self, number: int, hosts: Sequence[str] | None = None, *, timeout_s: float = 120.0
    ) -> list[ContainerStatus]:
        return self.lab().wait_booted(number, hosts, timeout_s=timeout_s)

    def status(self, number: int, *, systemd: bool = True) -> list[ContainerStatus]:
        return self.lab().status(number, systemd=systemd)

    def memory(self, number: int) -> list[Memory]:
        return self.lab().memory(number)


# --- helpers -------------------------------------------------------------------------------------


def guest_files(privileged: bool) -> dict[str, tuple[bytes, int]]:
    """What the lab writes into a guest of its own accord (path -> content, mode)."""
    return {**GUEST_FILES, **(PRIVILEGED_GUEST_FILES if privileged else {})}


def _files_sha(files: Mapping[str, tuple[bytes, int]]) -> str:
    text = json.dumps({k: [v.decode(), m] for k, (v, m) in sorted(files.items())})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def owner_file(number: int) -> Path:
    """Where lab `number`'s owner (a checkout's podman folder) is written; /run: gone with the
    namespaces when the machine restarts."""
    return OWNER_DIR / f"lab-{number}.owner"


def lab_holder(number: int) -> str | None:
    """Who holds lab `number`: the podman folder of the checkout that made it, "unknown" for a
    live namespace without an owner file; None when the lab is not up."""
    if not _is_netns(LabNetwork(number).netns_path):
        return None
    path = owner_file(number)
    return (path.read_text().strip() if path.is_file() else "") or "unknown"


def _is_netns(path: Path) -> bool:
    """Whether `path` is a live network namespace (`ip netns add` bind-mounts one there)."""
    return path.exists() and os.path.ismount(path)


def _processes_in(netns: Path) -> list[int]:
    """The pids whose network namespace is the one bound at `netns`."""
    try:
        target = os.stat(netns)
    except OSError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(entry / "ns" / "net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry.name))
    return sorted(pids)


def _cgroup_pids(pid: int) -> list[int]:
    """Every process in the cgroup of `pid` and below it (cgroup v1's memory hierarchy, or v2)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    root = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            root = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            break
        if controllers == "":
            root = Path("/sys/fs/cgroup") / path.lstrip("/")
    if root is None or not root.is_dir():
        return [pid]
    pids: set[int] = set()
    for procs in root.rglob("cgroup.procs"):
        try:
            pids.update(int(p) for p in procs.read_text().split())
        except OSError:
            continue
    return sorted(pids) or [pid]


def _pss(pid: int) -> int:
    if not pid:
        return 0
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0
