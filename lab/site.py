"""The lab as a whole, from the command line: bring it up through Dagster, take it down, say
where everything is. `infra lab up` runs the `main` job on the lab's topology, in this process, on
the repo's Dagster instance (the runs and materialisations are in the UI like any other)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from infra_assets.configuration.pillar import registry_tls_names
from infra_assets.definitions import build_definitions
from infra_assets.delivery.app_images import (
    BUILD_AGENT_ROLE,
    REGISTRY_ACCOUNT,
    RUNTIME_CACHES,
    publish_base_image,
    publish_runtime_image,
)
from infra_assets.delivery.releases import read_records
from infra_assets.site_resources import lab_resources
from infra_assets.topology.model import ENVIRONMENTS, Topology, load_topology
from infra_assets.topology.roles import role_catalogue
from infra_assets.topology.secrets import Secrets, ensure_secrets, load_secrets
from infra_assets.topology.sites import SECRETS_ENV, LabSite, SiteError, site_for
from lab.demo_services import demo_daemon, demo_services, stop_daemon
from lab.reach import Site
from resources.lab import LabNetwork, LabResource
from resources.lab_acme import LabAcmeError
from resources.paths import REPO_ROOT, dagster_home
from resources.podman import PodmanError, PodmanResource
from resources.registry import RegistryError
from resources.salt import SaltError


class LabUpError(RuntimeError):
    """A step of `infra lab up` failed; the message names the asset and why."""


def write_lab_topology(folder: Path, number: int) -> Path:
    """The repo's topology.lab.yaml at another location number (a second lab beside a developer's:
    the tests', a benchmark's), its app repos under `folder`. Returns the file written there."""

    data = yaml.safe_load((REPO_ROOT / "topology.lab.yaml").read_text())
    for location in data["locations"].values():
        location["number"] = number
    for name, app in data.get("apps", {}).items():
        app["repo"] = str(folder / "git" / f"{name}.git")
    path = folder / "topology.lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def lab_resource() -> LabResource:
    """The lab's container driver, on the project's podman (the storage Packer builds into)."""
    return LabResource(podman_env=PodmanResource().env())


def lab_site(topology_file: Path) -> LabSite:
    site = site_for(load_topology(topology_file))
    if not isinstance(site, LabSite):
        raise SiteError(
            f"{topology_file}: its locations are not on `cloud: lab`: `infra lab` works on a lab"
            " topology (topology.lab.yaml)"
        )
    return site


def lab_secrets(site: LabSite) -> Secrets:
    """The file $INFRA_SECRETS_FILE names (checked, never written), or throwaway secrets made
    under the lab's state folder (mode 600, outside git)."""
    if os.environ.get(SECRETS_ENV):
        secrets = load_secrets(site.secrets_file(), site.topo)
    else:
        secrets = ensure_secrets(site.secrets_file(), site.topo, tls_names=registry_tls_names(site))
    write_salt_api_client(site, secrets)
    write_registry_client(site, secrets)
    write_dagster_ui_ca(site, secrets)
    return secrets


def write_dagster_ui_ca(site: LabSite, secrets: Secrets) -> None:
    """The certificate of the lab's Dagster UI (the dagster role), for a client on this machine
    to check it against (`infra lab status` names the file)."""
    if site.topo.hosts_with_role("dagster"):
        site.dagster_ui_ca_file().parent.mkdir(parents=True, exist_ok=True)
        site.dagster_ui_ca_file().write_text(secrets.get("dagster", "tls", "cert"))


def write_salt_api_client(site: LabSite, secrets: Secrets) -> None:
    """What Dagster needs to log in to salt-api: the password (mode 600) and the certificate to
    check it against, beside the lab's secrets (the salt resource reads them when it connects)."""
    password = site.salt_api_password_file()
    password.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(password.parent, 0o700)
    fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.get("salt", "api", "password"))
    site.salt_api_ca_file().write_text(secrets.get("salt", "api", "tls", "cert"))


def write_registry_client(site: LabSite, secrets: Secrets) -> None:
    """What Dagster needs to use the lab's registry: the push account's password (mode 600) and
    the registry's certificate to check it against, beside the lab's secrets."""
    if not site.topo.hosts_with_role("docker-registry"):
        return
    password = site.registry_password_file()
    password.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(password.parent, 0o700)
    fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.get("registry", "users", REGISTRY_ACCOUNT))
    site.registry_ca_file().write_text(secrets.get("registry", "tls", "cert"))


@contextmanager
def environment(cwd: Path | None = None, **variables: str | None) -> Iterator[None]:
    """`variables` in os.environ (None: unset) and the working folder `cwd`, while the block
    runs; every variable and the folder restored after. For running a lab's Dagster code in
    process: `up`, the tests' lab, the lab benchmark."""
    saved = {k: os.environ.get(k) for k in variables}
    before = Path.cwd()
    for key, value in variables.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(before)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def up(topology_file: Path, *, job: str = "main", echo=None) -> dict[str, Any]:
    """Images when missing, the network, the keys, the containers, the minions, every role's
    states: the `main` job, through Dagster, on the repo's instance ($DAGSTER_HOME). Safe to run
    twice (every step compares first). `echo` gets a line per step as the run goes."""

    site = lab_site(topology_file)
    lab_secrets(site)
    home = dagster_home()
    # dagster.yaml names its storage relative to the instance's folder.
    with environment(
        home, DAGSTER_HOME=str(home), INFRA_TOPOLOGY=str(Path(topology_file).absolute())
    ):
        defs = build_definitions(site.topo)
        instance = dg.DagsterInstance.get()
        run_id = str(uuid.uuid4())
        follower = _Follower(instance, run_id, echo) if echo else None
        try:
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance,
                run_id=run_id,
                raise_on_error=False,
                # Dagster's own console log (every event, with stack traces) stays quiet: the
                # steps are followed here, and the whole run is in the UI.
                run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            )
        finally:
            if follower:
                follower.stop()
    if not result.success:
        raise LabUpError(_failure_text(result))
    start_git_daemon(site, Path(topology_file).absolute().parent)
    publish_build_images(site, echo)
    return status(topology_file)


def publish_build_images(site: LabSite, echo=None) -> list[str]:
    """The project's base image, and the standard build's runtime images whose package cache
    the lab has, in the lab's registry for the lab's own Dagster (the dagster role), which has
    no podman to make them: pushed from this machine's storage when the registry's are others
    (made here first when missing). Returns what happened ([]: no dagster or registry host)."""
    if not site.topo.hosts_with_role("dagster"):
        return []
    registry = lab_resources(site).get("registry")
    if registry is None:
        return []
    podman, lines = PodmanResource(), []
    notes: list[str] = []
    try:
        endpoint = registry.endpoint()
        _image, note = publish_base_image(podman, registry, endpoint, lines.append)
        notes.append(f"{note} (the lab's Dagster builds FROM it)")
        for runtime, cache in sorted(RUNTIME_CACHES.items()):
            if site.topo.hosts_with_role(cache):
                _image, note = publish_runtime_image(
                    podman, registry, endpoint, runtime, lines.append
                )
                notes.append(f"{note} (the lab's Dagster's standard builds of {runtime} apps)")
    except (PodmanError, RegistryError, SiteError) as err:
        raise LabUpError(f"the build images, for the lab's Dagster: {err}") from None
    for note in notes if echo else []:
        echo(f"  {note}")
    return notes


def start_git_daemon(site: LabSite, base_dir: Path) -> dict[str, Any] | None:
    """The read-only git daemon on the build agent's lab link, serving the apps whose repo is a
    path on this machine (the salt builder starts it too when it is not running)."""
    agents = sorted(site.topo.hosts_with_role(BUILD_AGENT_ROLE))
    daemon = site.serve_git(site.number_of(agents[0]), base_dir) if agents else None
    return daemon.status() if daemon else None


def stop_git_daemons(site: LabSite) -> list[str]:
    """Stop the lab's git daemons, by their pids."""
    stopped = []
    for number in site.numbers():
        pid = site.git_daemon(number).stop()
        if pid is not None:
            stopped.append(f"git daemon (pid {pid})")
    return stopped


class _Follower:
    """A line per step of a run as it goes (start, success or failure, with seconds)."""

    def __init__(self, instance, run_id: str, echo):
        self.instance, self.run_id, self.echo = instance, run_id, echo
        self._stop = threading.Event()
        self._seen = 0
        self._started: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self._drain()

    def _drain(self) -> None:
        try:
            records = self.instance.all_logs(self.run_id)
        except Exception:  # noqa: BLE001 - the run's storage may not exist yet
            return
        for event in records[self._seen :]:
            self._seen += 1
            dagster_event = event.dagster_event
            if dagster_event is None or not dagster_event.step_key:
                continue
            step = dagster_event.step_key
            kind = dagster_event.event_type
            if kind == dg.DagsterEventType.STEP_START:
                self._started[step] = event.timestamp
                self.echo(f"  {step} ...")
            elif kind == dg.DagsterEventType.STEP_SUCCESS:
                took = event.timestamp - self._started.get(step, event.timestamp)
                self.echo(f"  {step} ok ({took:.1f} s)")
            elif kind == dg.DagsterEventType.STEP_FAILURE:
                self.echo(f"  {step} FAILED")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()


def step_error_text(error) -> str:
    """A failed step's error without Dagster's wrapper: the outermost error in the chain that is
    not Dagster's own (the project's errors name the file, key or command), else the last."""
    if error is None:
        return "failed"
    chain = []
    while error is not None:
        chain.append(error)
        error = error.cause
    ours = next((e for e in chain if not (e.cls_name or "").startswith("Dagster")), chain[-1])
    return ours.message.strip()


def _failure_text(result) -> str:
    lines = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            why = data.user_failure_data.description if data.user_failure_data else None
            lines.append(f"{event.step_key}: {why or step_error_text(data.error)}")
    return "\n".join(lines) or "the run failed (see the Dagster UI)"


def down(topology_file: Path) -> list[str]:
    """Remove every container of the lab, its network, namespace and link. The `unreachable`
    route for each lab /16 stays, so nothing for the lab's addresses ever leaves the machine."""
    site = lab_site(topology_file)
    lab = lab_resource()
    removed = stop_daemon(site) + stop_git_daemons(site)
    for number in site.numbers():
        pid = site.egress(number).stop()
        if pid is not None:
            removed.append(f"egress proxy (pid {pid})")
        pid = site.acme_server(number).stop()
        if pid is not None:
            removed.append(f"ACME server (pebble, pid {pid})")
    for number in site.numbers():
        removed += lab.down_network(number)
    return removed


def status(topology_file: Path) -> dict[str, Any]:
    site = lab_site(topology_file)
    topo: Topology = site.topo
    lab = lab_resource()
    hosts: dict[str, Any] = {}
    for number in site.numbers():
        for h in lab.status(number):
            hosts[h.host] = h.as_dict()
    for host in topo.hosts:
        entry = hosts.setdefault(host, {"running": False})
        entry["address"] = site.plan.primary(host).address
        entry["roles"] = list(topo.hosts[host].roles)
        entry["services"] = _services(site, host)
    return {
        "topology": str(Path(topology_file).absolute()),
        "state_dir": str(site.root),
        "networks": {loc: lab.network_status(spec.number) for loc, spec in topo.locations.items()},
        "salt": {"api_url": site.salt_api_url(), "master": site.master_host()},
        "hosts": hosts,
        "git_daemon": _git_daemons(site),
        "egress": {str(n): site.egress(n).status() for n in site.numbers()},
        "acme": {str(n): site.acme_server(n).status() for n in site.numbers()},
        "registry": _registry(site),
        "releases": releases(site),
        "dagster": _demo_daemon(site),
        "dagster_ui": _dagster_ui(site),
    }


def _dagster_ui(site: LabSite) -> list[dict[str, Any]]:
    """Where the lab's own Dagster (the dagster role) serves its UI, and how to log in."""
    return [
        {
            "host": host,
            "url": f"https://{site.reach(host, 'dagster')}/",
            "login": f"an account of dagster.accounts in {site.secrets_file()}",
            "ca_file": str(site.dagster_ui_ca_file()),
            "curl": (
                f"curl --cacert {site.dagster_ui_ca_file()} -u <account>"
                f" https://{site.reach(host, 'dagster')}/server_info"
            ),
        }
        for host in sorted(site.topo.hosts_with_role("dagster"))
    ]


def _demo_daemon(site: LabSite) -> dict[str, Any]:
    """The Dagster daemon `make demo` started for this lab (it runs what pushes start), its
    webserver (the UI) and the webhook endpoint the app repos' hooks call."""
    return {**demo_daemon(site).status(), **demo_services(site).status()}


def _git_daemons(site: LabSite) -> dict[str, Any]:
    return {str(n): site.git_daemon(n).status() for n in site.numbers()}


def _registry(site: LabSite) -> dict[str, Any]:
    """Where the lab's registry is and how Dagster reaches it (never a password)."""
    registry = lab_resources(site).get("registry")
    if registry is None:
        return {"url": None, "note": "no host has the role docker-registry"}
    return {
        "url": registry.url,
        "username": registry.username,
        "ca_file": registry.ca_file,
        "password_file": registry.password_file,
        "reached_through": registry.route_device,
    }


def releases(site: LabSite) -> dict[str, Any]:
    """`releases.<app>.<environment>`: what the web hosts record as live (read through salt)
    and where the machine reaches it (`lab_app_reach`: the app's URL, the web host's planned
    address it is reached at through the lab's link, the root its certificate chains to)."""
    topo = site.topo
    out: dict[str, Any] = {}
    if not topo.apps:
        return out
    salt = lab_resources(site)["salt"]
    try:
        with salt:
            for app in sorted(topo.apps):
                for env in ENVIRONMENTS:
                    hosts = sorted(topo.hosts_with_role(f"web-{env}"))
                    if not hosts:
                        continue
                    entry = lab_app_reach(site, hosts[0], app, env)
                    try:
                        [record, *_] = read_records(salt, site, hosts, app)
                        current, previous = record.current or {}, record.previous or {}
                    except SaltError as err:
                        current, previous = {}, {}
                        entry["error"] = str(err).splitlines()[0]
                    entry.update(
                        digest=current.get("digest"),
                        sha=current.get("sha"),
                        previous={"digest": previous.get("digest"), "sha": previous.get("sha")},
                        hosts=hosts,
                    )
                    out.setdefault(app, {})[env] = entry
    except (SaltError, OSError) as err:
        return {"error": str(err).splitlines()[0]}
    return out


def app_site(site: LabSite, host: str, app: str, environment: str) -> Site:
    """`app` in `environment` as the machine opens it on web host `host` (lab/reach.py): its
    domain over HTTPS, checked against the lab's ACME root (fetched now: it changes at every
    start of the ACME server), at the host's planned address through the lab's link; an app
    without a domain there over HTTP, by the host's address."""
    role = f"web-{environment}"
    number = site.number_of(host)
    device = LabNetwork(number).machine_link
    address = site.reach(host, role)
    domain = site.topo.apps[app].domains.get(environment)
    if not domain:
        port = site.port(host, "http")
        return Site(f"http://{app}:{port}/", address, device)
    acme = site.acme_server(number)
    try:
        cafile = acme.save_root()
    except LabAcmeError:
        cafile = acme.root_file  # the last one fetched: the ACME server is not running
    port = site.port(host, "https")
    url = f"https://{domain}/" if port == 443 else f"https://{domain}:{port}/"
    return Site(url, address, device, cafile)


def lab_app_reach(site: LabSite, host: str, app: str, environment: str) -> dict[str, Any]:
    """How the machine opens `app` on web host `host` (`app_site`), for `infra lab status`."""
    reach = app_site(site, host, app, environment)
    return {
        "url": reach.url,
        "address": reach.address,
        "cafile": str(reach.cafile) if reach.cafile else None,
        "curl": reach.curl(),
    }


def _services(site: LabSite, host: str) -> dict[str, Any]:
    """Each service of `host` and how the machine reaches it: through the lab's link."""
    services = role_catalogue().services()
    out: dict[str, Any] = {}
    for role in site.topo.hosts[host].roles:
        service = services.get(role)
        if service:
            out[service] = {
                "address": site.reach(host, role),
                "port": site.port(host, service),
                "reached_through": "the lab's link (route into the lab's namespace)",
            }
    if host == site.master_host():
        out["salt-api"] = {"url": site.salt_api_url()}
    return out
