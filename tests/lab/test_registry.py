"""The lab's registry: the real Docker Distribution registry (Debian `docker-registry`) that the
salt `registry` state runs on support-1, with TLS and htpasswd, reached through the lab's link;
RegistryResource and registry_image_sensor against it; podman on this machine pushes to it (with
the project's own containers config). The sensor's and the resource's errors without a
registry need none."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from urllib.parse import urlsplit

import dagster as dg
import pytest
import requests
from fixtures_delivery import delivery_defs, record_build, write_app_topology
from lab_env import LAB_NUMBER

from infra_assets.topology.model import load_topology
from infra_assets.topology.secrets import load_secrets
from lab.processes import free_port
from resources.cli_runner import CliError
from resources.lab import LabNetwork
from resources.podman import PodmanError
from resources.registry import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Endpoint,
    RegistryAuthError,
    RegistryError,
    RegistryResource,
    RegistryUnreachable,
)
from sensors.registry_images import SENSOR_NAME


def test_the_lab_s_registry_is_reached_through_the_lab_s_link_only(registry_site, lab_env):
    """The lab's definitions give the registry on support-1 at its service address, with the
    push account and the registry's certificate; a resource told that the route must go through
    another device refuses to send anything."""
    resource = registry_site.resource()
    # the push door: Dagster pushes the project's base image for the agents
    assert resource.url == f"https://{lab_env.address('support-1', 'docker-registry')}:5001"
    assert resource.route_device == LabNetwork(LAB_NUMBER).machine_link
    resource.ping()
    assert isinstance(resource.catalog(), list)
    with pytest.raises(RegistryUnreachable, match="refusing to send"):
        registry_site.resource(route_device="lo").ping()


def test_the_resource_without_a_url_names_the_settings(monkeypatch):
    for name in ("INFRA_REGISTRY_URL", "INFRA_REGISTRY_USER", "INFRA_REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RegistryError) as err:
        RegistryResource.from_env().endpoint()
    message = str(err.value)
    assert "no registry URL is set: set INFRA_REGISTRY_URL" in message
    assert "INFRA_REGISTRY_CA_FILE" in message and "infra lab up" in message


@pytest.fixture(scope="module")
def tiny_images(podman, registry_site, tmp_path_factory):
    """A tiny image (FROM scratch, one file) pushed by podman twice: as OCI and as Docker."""
    context = tmp_path_factory.mktemp("tiny")
    (context / "hello.txt").write_text("hello\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    podman.build(context=context, tag="localhost/tiny:latest", labels={"test": "tiny"})
    end = registry_site.endpoint
    oci = podman.push(
        image="localhost/tiny:latest", destination=end.image("tiny", "oci"), registry=end
    )
    docker = podman.push(
        image="localhost/tiny:latest",
        destination=end.image("tiny", "docker"),
        registry=end,
        manifest_format="v2s2",
    )
    return oci.digest, docker.digest


def test_catalog_tags_and_digests_in_both_media_types(registry_site, tiny_images):
    oci_digest, docker_digest = tiny_images
    assert oci_digest != docker_digest  # another format, other bytes: another digest
    registry = registry_site.resource()
    assert "tiny" in registry.catalog()
    assert {"oci", "docker"} <= set(registry.tags(repository="tiny"))
    assert registry.tags(repository="no-such-repo") == []
    assert registry.digest(repository="no-such-repo", reference="main") is None
    assert registry.digest(repository="tiny", reference="no-such-tag") is None

    for tag, digest, media_type in (
        ("oci", oci_digest, OCI_MANIFEST),
        ("docker", docker_digest, DOCKER_MANIFEST),
    ):
        assert registry.digest(repository="tiny", reference=tag) == digest
        manifest = registry.manifest(repository="tiny", reference=tag)
        assert manifest.digest == digest and manifest.media_type == media_type
        # The digest is the sha256 of the bytes the registry serves, fetched here by hand.
        raw = requests.get(
            f"{registry_site.endpoint.url}/v2/tiny/manifests/{tag}",
            headers={"Accept": media_type},
            auth=(registry_site.endpoint.username, registry_site.endpoint.password),
            verify=registry_site.endpoint.ca_file,
            timeout=5,
        ).content
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
        assert manifest.size > 0 and len(manifest.layers) == 1
        assert registry.labels(repository="tiny", manifest=manifest)["test"] == "tiny"


def test_tagging_an_image_in_the_registry_keeps_its_digest(registry_site, tiny_images):
    oci_digest, _ = tiny_images
    registry = registry_site.resource()
    manifest = registry.manifest(repository="tiny", reference=oci_digest)
    registry.tag(repository="tiny", manifest=manifest, tag="copied")
    assert registry.digest(repository="tiny", reference="copied") == oci_digest


def test_wrong_credentials_and_no_registry_are_clear_errors(registry_site):
    wrong = registry_site.resource(password="not-the-password")
    with pytest.raises(RegistryAuthError, match="refused GET /v2/ \\(401, user 'ci'\\)"):
        wrong.ping()
    anonymous = registry_site.resource(username="", password="", password_file="")
    with pytest.raises(RegistryAuthError, match="no credentials"):
        anonymous.catalog()
    gone = RegistryResource(url=f"http://127.0.0.1:{free_port()}", username="u", password="p")
    with pytest.raises(RegistryUnreachable, match="unreachable"):
        gone.ping()


def test_the_registry_refuses_an_anonymous_push(podman, registry_site, tiny_images):
    end = registry_site.endpoint
    anonymous = dataclasses.replace(end, username="", password="")
    with pytest.raises(PodmanError, match="authentication required") as err:
        podman.push(
            image="localhost/tiny:latest", destination=end.image("tiny", "anon"), registry=anonymous
        )
    assert end.password not in str(err.value)
    wrong = dataclasses.replace(end, password="wrong-password")
    with pytest.raises(PodmanError, match="authentication required") as err:
        podman.push(
            image="localhost/tiny:latest", destination=end.image("tiny", "anon"), registry=wrong
        )
    assert "wrong-password" not in str(err.value)
    assert "anon" not in registry_site.resource().tags(repository="tiny")


# --- two doors: the pull accounts read, the push account writes, nobody deletes ---------------


def _pull_door(registry_site, lab_env) -> Endpoint:
    """The read-only door (5000) with the pull account `deploy`, as the web hosts use it."""
    secrets = load_secrets(lab_env.site.secrets_file(), lab_env.topo)
    push = registry_site.endpoint
    return Endpoint(
        url=push.url.rsplit(":", 1)[0] + ":5000",
        username="deploy",
        password=secrets.get("registry", "users", "deploy"),
        ca_file=push.ca_file,
    )


def _v2(
    lab_env, endpoint: Endpoint, method: str, path: str, *, auth=True, **kwargs
) -> requests.Response:
    lab_env.lab().route_into_lab(urlsplit(endpoint.url).hostname)  # never off the machine
    return requests.request(
        method,
        f"{endpoint.url}/v2/{path}",
        auth=(endpoint.username, endpoint.password) if auth else None,
        verify=endpoint.verify,
        timeout=10,
        **kwargs,
    )


def _codes(response: requests.Response) -> list[str]:
    """The registry's error codes in an answer (none when it has no JSON body: the read-only
    door answers 405 with an empty one)."""
    try:
        body = response.json()
    except ValueError:
        return []
    return [e.get("code") for e in body.get("errors", [])]


def test_a_pull_account_reads_and_can_neither_push_nor_delete(
    podman, registry_site, lab_env, tiny_images
):
    """The pull account reads at its door; a push there is refused (the door is read-only), a
    push at the push door with it is refused with the registry's auth error (it is not an
    account there), and a delete is refused everywhere, even for the push account."""
    oci_digest, _ = tiny_images
    pull, push = _pull_door(registry_site, lab_env), registry_site.endpoint
    read = _v2(
        lab_env, pull, "GET", f"tiny/manifests/{oci_digest}", headers={"Accept": OCI_MANIFEST}
    )
    assert read.status_code == 200 and hashlib.sha256(read.content).hexdigest() == oci_digest[7:]

    with pytest.raises(PodmanError) as at_pull:
        podman.push(
            image="localhost/tiny:latest",
            destination=pull.image("tiny", "by-deploy"),
            registry=pull,
        )
    # the read-only door refuses the upload before it starts
    assert "blobs/uploads/" in str(at_pull.value)
    assert "StatusCode: 405, Method not allowed" in str(at_pull.value)
    as_pusher = dataclasses.replace(push, username=pull.username, password=pull.password)
    with pytest.raises(PodmanError, match="authentication required") as at_push:
        podman.push(
            image="localhost/tiny:latest",
            destination=push.image("tiny", "by-deploy"),
            registry=as_pusher,
        )
    assert pull.password not in str(at_push.value) + str(at_pull.value)
    assert "by-deploy" not in registry_site.resource().tags(repository="tiny")

    # a delete: refused for the pull account at both doors, and for the push account too
    for endpoint in (pull, as_pusher, push):
        deleted = _v2(lab_env, endpoint, "DELETE", f"tiny/manifests/{oci_digest}")
        said = (endpoint.url, endpoint.username, deleted.status_code, deleted.text)
        if endpoint.username == "deploy" and endpoint.url == push.url:
            assert deleted.status_code == 401 and _codes(deleted) == ["UNAUTHORIZED"], said
        else:  # read-only, or deletion off: "method not allowed"
            assert deleted.status_code == 405 and _codes(deleted) in ([], ["UNSUPPORTED"]), said
    assert registry_site.resource().digest(repository="tiny", reference="oci") == oci_digest
    # an upload is refused at the read-only door before it starts
    started = _v2(lab_env, pull, "POST", "tiny/blobs/uploads/")
    assert started.status_code == 405, started.text


def test_both_doors_refuse_anonymous_access(registry_site, lab_env):
    for endpoint in (_pull_door(registry_site, lab_env), registry_site.endpoint):
        for path in ("", "_catalog"):
            answer = _v2(lab_env, endpoint, "GET", path, auth=False)
            assert answer.status_code == 401 and _codes(answer) == ["UNAUTHORIZED"], endpoint.url


def test_the_push_door_takes_connections_from_the_build_agents_and_dagster_only(
    registry_site, lab_env
):
    """The registry host's firewall (common.firewall, the catalogue's `only_from`): a web host's
    connection to the push door is refused (a reset), the build agent's is taken, and the read-only
    door takes both; Dagster (this machine, through the link) reaches the push door."""
    registry = lab_env.address("support-1", "docker-registry")
    lab = lab_env.lab().lab()

    def connects(host: str, port: int) -> bool:
        return lab.probe_tcp_from(LAB_NUMBER, host, registry, port)

    assert connects("support-2", 5001)
    assert not connects("web-staging-1", 5001)
    assert connects("web-staging-1", 5000) and connects("support-2", 5000)
    registry_site.resource().ping()  # from this machine: Dagster's own door


def test_the_push_log_never_shows_the_password(podman, registry_site, tiny_images):
    end = registry_site.endpoint
    lines: list[str] = []
    podman.push(
        image="localhost/tiny:latest",
        destination=end.image("tiny", "logged"),
        registry=end,
        log=lines.append,
    )
    assert lines and not any(end.password in line for line in lines)


# --- registry_image_sensor -------------------------------------------------------------------


def _sensor_defs(tmp_path, monkeypatch, registry: RegistryResource, app="tiny", branch="oci"):
    topo_file = write_app_topology(tmp_path / "topology.yaml", {app: "git/x.git"}, branch=branch)
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    return delivery_defs(load_topology(topo_file), registry=registry)


def _tick(defs: dg.Definitions, cursor: str | None, instance: dg.DagsterInstance | None = None):
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    with dg.build_sensor_context(
        instance=instance or dg.DagsterInstance.ephemeral(),
        cursor=cursor,
        definitions=defs,
        resources=defs.resources,
    ) as context:
        return sensor(context)


def test_registry_sensor_asks_once_per_new_digest(
    tmp_path, monkeypatch, registry_site, tiny_images
):
    oci_digest, docker_digest = tiny_images
    defs = _sensor_defs(tmp_path, monkeypatch, registry_site.resource())
    instance = dg.DagsterInstance.ephemeral()
    # Not built by app_image (podman pushed it here): named, no run, the cursor stays
    foreign = _tick(defs, None, instance)
    assert isinstance(foreign, dg.SkipReason)
    assert f"tiny:oci = {oci_digest} not released: app_image/tiny never built it" in (
        foreign.skip_message
    )
    for digest in (oci_digest, docker_digest):
        record_build(instance, "tiny", digest, "", "oci")  # app_image's record of it
    first = _tick(defs, None, instance)
    [request] = first.run_requests
    assert request.run_key == oci_digest
    # A staging release of exactly that digest (infra_assets/delivery/releases.py).
    assert request.job_name == "release_staging_tiny"
    assert request.run_config == {
        "ops": {"release__staging__tiny": {"config": {"digest": oci_digest, "sha": ""}}}
    }
    assert request.tags["coop/app"] == "tiny" and request.tags["coop/digest"] == oci_digest
    assert request.tags["coop/image"] == registry_site.endpoint.image("tiny", oci_digest)
    assert json.loads(first.cursor) == {"tiny": {"oci": oci_digest}}
    # The run it asks for is a run of a job of the code location.
    assert defs.resolve_job_def(request.job_name).name == "release_staging_tiny"

    replay = _tick(defs, first.cursor, instance)
    assert isinstance(replay, dg.SkipReason)  # no run request
    assert replay.skip_message == "no new image"

    # The tag moves to another image: a new digest, a new request.
    registry = registry_site.resource()
    docker = registry.manifest(repository="tiny", reference="docker")
    registry.tag(repository="tiny", manifest=docker, tag="oci")
    try:
        moved = _tick(defs, first.cursor, instance)
        assert [r.run_key for r in moved.run_requests] == [docker.digest]
    finally:
        oci = registry.manifest(repository="tiny", reference=oci_digest)
        registry.tag(repository="tiny", manifest=oci, tag="oci")


def test_registry_sensor_skips_an_app_not_built_yet(tmp_path, monkeypatch, registry_site):
    defs = _sensor_defs(tmp_path, monkeypatch, registry_site.resource(), app="not-built")
    result = _tick(defs, None)
    assert "not-built:oci is not in the registry yet" in result.skip_message


def test_registry_sensor_skips_an_unreachable_registry_and_keeps_its_cursor(tmp_path, monkeypatch):
    gone = RegistryResource(url=f"http://127.0.0.1:{free_port()}", username="u", password="p")
    defs = _sensor_defs(tmp_path, monkeypatch, gone)
    reason = _skipped_keeping_its_cursor(defs)
    assert reason.startswith("registry unreachable, cursor unchanged:")


def test_a_missing_ca_file_is_a_clear_error_and_the_sensor_skips(tmp_path, monkeypatch):
    """INFRA_REGISTRY_CA_FILE naming no file: a RegistryError naming the file and the variable
    (requests alone raises an OSError of its own: a traceback), before any request is sent."""
    missing = tmp_path / "no-such-ca.pem"
    url = f"https://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError) as err:
        RegistryResource(url=url, username="u", password="p", ca_file=str(missing)).ping()
    assert f"its CA file {missing} does not exist" in str(err.value)
    assert "INFRA_REGISTRY_CA_FILE" in str(err.value)

    # The sensor, with the resource as Dagster makes it from the environment.
    monkeypatch.setenv("INFRA_REGISTRY_URL", url)
    monkeypatch.setenv("INFRA_REGISTRY_CA_FILE", str(missing))
    defs = _sensor_defs(tmp_path, monkeypatch, RegistryResource.from_env())
    reason = _skipped_keeping_its_cursor(defs)
    assert reason.startswith("registry unreachable, cursor unchanged:")
    assert f"its CA file {missing} does not exist" in reason


def _skipped_keeping_its_cursor(defs: dg.Definitions) -> str:
    """One tick from a cursor that knows an image: it must skip and leave the cursor as it was.
    Returns the reason it gives."""
    cursor = json.dumps({"tiny": {"oci": "sha256:" + "a" * 64}})
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), cursor=cursor, resources=defs.resources
    ) as context:
        result = sensor(context)
    assert isinstance(result, dg.SkipReason)
    assert context.cursor == cursor and not context.cursor_updated
    return result.skip_message


def test_registry_sensor_skips_on_refused_credentials(tmp_path, monkeypatch, registry_site):
    defs = _sensor_defs(tmp_path, monkeypatch, registry_site.resource(password="wrong"))
    result = _tick(defs, None)
    assert isinstance(result, dg.SkipReason) and "401" in result.skip_message


def test_cli_errors_never_carry_the_password(podman, registry_site):
    """The runner redacts: even the failing command line shows *** for the password."""
    end = registry_site.endpoint
    with pytest.raises(CliError) as err:
        podman.run(
            ["push", "--creds", f"coop:{end.password}", "localhost/none:x"],
            redact=[end.password],
            log=lambda _l: None,
        )
    assert end.password not in str(err.value) and "***" in str(err.value)
