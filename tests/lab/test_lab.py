"""The lab, for real: the co-op's topology as containers with systemd, booted from the images
Packer built, at their planned addresses, configured by the server branch of every state, the
salt master inside support-1 reached only through salt-api over the lab's link."""

from __future__ import annotations

import json
import subprocess

import dagster as dg
import pytest
import yaml
from lab_env import LAB_NUMBER, LabEnv

from infra_assets.cloud.groups import CATALOGUE_FILE, group_of_host
from infra_assets.configuration.pillar import render_pillars
from infra_assets.topology.model import parse_topology
from infra_assets.topology.secrets import load_secrets
from infra_assets.topology.sites import CloudSite

pytestmark = [pytest.mark.slow, pytest.mark.lab]


def _latest(instance: dg.DagsterInstance, key: str):
    event = instance.get_latest_materialization_event(dg.AssetKey.from_user_string(key))
    assert event is not None, f"{key} was never materialised"
    return event.asset_materialization


def test_every_host_runs_its_role_image_at_its_planned_address(lab_env: LabEnv):
    with lab_env.env():
        instance = dg.DagsterInstance.get()
        built = {
            group: _latest(instance, f"images/{group}").metadata["image_id"].value
            for group in ("support", "builder", "web", "postgres")
        }
    status = {c.host: c for c in lab_env.lab().status(LAB_NUMBER)}
    assert sorted(status) == sorted(lab_env.topo.hosts)
    for host, spec in lab_env.topo.hosts.items():
        container = status[host]
        assert container.running and container.systemd in ("running", "degraded"), container
        assert container.address == lab_env.address(host)
        # booted from the image Packer's artifact recorded for the host's group
        group = group_of_host(lab_env.topo, host, spec, CATALOGUE_FILE)
        assert container.image_id.removeprefix("sha256:") == built[group].removeprefix("sha256:")


def test_the_machine_reaches_the_lab_only_through_its_link(lab_env: LabEnv):
    lab = lab_env.lab()
    route = lab.route_into_lab(lab_env.address("support-1"))
    assert route["dev"] == f"coop{LAB_NUMBER}-m"
    # the permanent unreachable route is there, beneath the link's
    routes = subprocess.run(
        ["ip", "-j", "route", "show", f"10.{LAB_NUMBER}.0.0/16"], capture_output=True, text=True
    ).stdout
    kinds = sorted(r.get("type", "unicast") for r in json.loads(routes))
    assert kinds == ["unicast", "unreachable"]


def test_every_minion_answers_through_salt_api_with_keys_made_ahead(lab_env: LabEnv):
    salt = lab_env.salt()
    with salt:
        keys = salt.list_keys()
        assert sorted(keys.accepted) == sorted(lab_env.topo.hosts)
        assert keys.pending == () and keys.denied == () and keys.rejected == ()
        assert salt.ping(minions=sorted(lab_env.topo.hosts)).ok
        # every minion pins the master's key: the fingerprint minion_keys recorded
        finger = lab_env.site.keys_dir() / "master.pub"
        from infra_assets.configuration.salt_keys import pem_finger

        pinned = salt.call(minions=["web-staging-1"], fun="config.get", args=["master_finger"])
        assert pinned["web-staging-1"] == pem_finger(finger.read_text())


def test_services_answer_at_their_planned_addresses(lab_env: LabEnv):
    lab = lab_env.lab().lab()  # the driver: it checks the route into the lab before it sends
    # from this machine (where Dagster runs), or from the host the firewall lets in
    checks = {
        ("support-1", "docker-registry", 5000): None,
        ("support-1", "docker-registry", 5001): None,  # the push door: Dagster's
        ("support-1", "npm-cache", 4873): "support-2",  # the build agent's
        ("support-1", "salt-master", 8000): None,  # salt-api: Dagster's
        ("support-1", "salt-master", 4506): "support-2",  # every minion's
        ("web-staging-1", "web-staging", 80): None,
        ("web-production-1", "web-production", 80): None,
        ("pg-staging-1", "postgres-staging", 5432): "web-staging-1",
        ("pg-production-1", "postgres-production", 5432): "web-production-1",
        ("support-1", "dagster", 443): None,  # the lab's own Dagster's UI (login required)
    }
    closed = []
    for (host, role, port), source in checks.items():
        address = lab_env.address(host, role)
        if source is None:
            answered = lab.probe_tcp(address, port, timeout_s=5)
        else:
            answered = lab.probe_tcp_from(LAB_NUMBER, source, address, port)
        if not answered:
            closed.append(f"{host} {role} {address}:{port} from {source or 'this machine'}")
    assert not closed, closed
    # ...and refused to a host the catalogue does not name: the firewall resets it (its rule's
    # counter moves), while a host it names gets through from the same kind of guest
    address = lab_env.address("support-1", "docker-registry")
    assert lab.probe_tcp_from(LAB_NUMBER, "web-staging-1", address, 5000)  # a web host pulls
    for role, port, source in (
        ("npm-cache", 4873, "web-staging-1"),
        ("docker-registry", 5000, "pg-staging-1"),
    ):
        address = lab_env.address("support-1", role)
        before = _resets(lab, "support-1", port)
        assert not lab.probe_tcp_from(LAB_NUMBER, source, address, port), (role, source)
        assert _resets(lab, "support-1", port) > before, (role, source)


def _resets(lab, host: str, port: int) -> int:
    """How many new connections `host`'s firewall has reset on `port` (its rule's counter)."""
    listed = lab.exec(LAB_NUMBER, host, ["nft", "list", "chain", "inet", "coop_firewall", "input"])
    line = next(
        x for x in listed.output.splitlines() if f"tcp dport {port} ct state new counter" in x
    )
    return int(line.split("packets", 1)[1].split()[0])


def test_up_again_changes_nothing(lab_env: LabEnv):
    from lab import site

    with lab_env.env():
        site.up(lab_env.topology_file)
        instance = dg.DagsterInstance.get()
        plan = _latest(instance, f"plan/instances/{lab_env.site.topo.hosts['support-1'].location}")
        assert plan.metadata["changes"].value is False
        for role in sorted({r for h in lab_env.topo.hosts.values() for r in h.roles}):
            md = _latest(instance, f"highstate/{role}").metadata
            assert md["changed"].value == 0, (role, md["results"].value)


def test_the_lab_runs_the_cloud_s_states_only_the_data_differs(lab_env: LabEnv, tmp_path):
    """Each host's highstate as the lab renders it, and the same host with the pillar a server
    of the co-op's cloud would get: the same states in the same order; only data differs."""
    data = yaml.safe_load(lab_env.topology_file.read_text())
    for location in data["locations"].values():
        location["cloud"] = "catalyst"
        location["number"] = 100
    data["infra_repo"] = "https://git.example.coop/coop-infra.git"  # where the dagster role clones
    cloud = CloudSite(parse_topology(yaml.safe_dump(data), file="cloud.yaml"))
    secrets = load_secrets(lab_env.site.secrets_file(), lab_env.topo)
    cloud_pillars = render_pillars(cloud, secrets)
    salt = lab_env.salt()

    def shape(ret: dict) -> list[tuple[str, str, str]]:
        chunks = []
        for state_id, body in ret.items():
            if not isinstance(body, dict):
                raise AssertionError(f"{state_id}: {body}")
            for module, args in body.items():
                if module.startswith("__"):
                    continue
                fun = next(a for a in args if isinstance(a, str))
                chunks.append((body["__sls__"], state_id, f"{module}.{fun}", body.get("order")))
        return sorted(chunks, key=lambda c: (c[3] or 0, c[1]))

    with salt:
        for host in lab_env.topo.hosts:
            lab = salt.call(minions=[host], fun="state.show_highstate", timeout_s=120)[host]
            server = salt.call(
                minions=[host],
                fun="state.show_highstate",
                kwargs={"pillar": cloud_pillars[host]},
                timeout_s=120,
            )[host]
            assert isinstance(lab, dict) and isinstance(server, dict), (host, lab, server)
            assert [c[:3] for c in shape(lab)] == [c[:3] for c in shape(server)], host
