"""The local site's registry: the real Docker Distribution registry (Debian `docker-registry`) on
127.0.0.1 with htpasswd auth; RegistryResource and registry_image_sensor against it; podman
pushes to it (with the project's own containers config)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
import yaml
from fixtures_delivery import delivery_defs, write_local_topology

from infra_assets.local_site.processes import command_lines, free_port
from infra_assets.model import load_topology
from resources.cli_runner import CliError
from resources.podman import PodmanError
from resources.registry import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    RegistryAuthError,
    RegistryError,
    RegistryResource,
    RegistryUnreachable,
)
from sensors.registry_images import SENSOR_NAME

INFRA = str(Path(sys.executable).parent / "infra")


def infra(*args: str, state: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [INFRA, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "INFRA_STATE_DIR": str(state)},
        timeout=120,
    )


def test_one_registry_the_salt_configured_one_with_tls_and_htpasswd(delivery_site, repo_root):
    """The local site has one registry: the one the salt `registry` state runs on support-1,
    configured as production is (TLS with the certificate from the secrets, htpasswd with the
    `ci` and `deploy` accounts). `infra local status --json` says where it is and which CA and
    account to use, never a password; builds, the sensor and the web hosts all use it."""
    status = infra("local", "status", "--json", state=delivery_site.state, cwd=repo_root)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    registry = data["registry"]
    port = delivery_site.process_site().port("support-1", "registry")
    assert registry["url"] == f"https://127.0.0.1:{port}" and registry["running"] is True
    assert registry["host"] == "support-1" and registry["username"] == "ci"
    secrets = yaml.safe_load(Path(registry["secrets_file"]).read_text())
    users = secrets["registry"]["users"]
    assert not any(pw in status.stdout for pw in users.values())
    # The process is the state's daemon on support-1 (its pid file under the host's root) ...
    root = Path(data["hosts"]["support-1"]["root"])
    assert int((root / "run/docker-registry.pid").read_text().split()[0]) == registry["pid"]
    cmdline = Path(f"/proc/{registry['pid']}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert cmdline.startswith("/usr/bin/docker-registry serve ")
    # ... and the site runs no second one (the plain-HTTP registry of before is gone).
    assert _registries_under(delivery_site.state) == [registry["pid"]]
    assert "registry" not in {r.name for r in delivery_site.site.supervisor.running()}
    # TLS: its certificate is the one in the secrets (and the CA file status names).
    ca = Path(registry["ca_file"])
    assert ca.read_text() == secrets["registry"]["tls"]["cert"]
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{registry['url']}/v2/", timeout=5)  # not trusted without its CA
    url = f"{registry['url']}/v2/"
    assert requests.get(url, verify=ca, timeout=5).status_code == 401
    assert requests.get(url, auth=("ci", "wrong"), verify=ca, timeout=5).status_code == 401
    for user, password in users.items():  # ci pushes (builds), deploy pulls (web hosts)
        assert requests.get(url, auth=(user, password), verify=ca, timeout=5).status_code == 200
    # site.json, which the Dagster resources read, says the same.
    recorded = json.loads((delivery_site.site.root / "site.json").read_text())["registry"]
    assert recorded["url"] == registry["url"] and recorded["ca_file"] == registry["ca_file"]


def test_infra_local_up_starts_the_registry(delivery_site, repo_root, tmp_path, monkeypatch):
    """`infra local up` brings the registry up as the co-op's servers get it: the registry host's
    role applied through Dagster (highstate/docker-registry, its keys and pillar first), recorded
    on the instance. Here the site's registry is stopped first; `up` starts it again."""
    before = delivery_site.status()["registry"]
    assert before["running"] is True
    os.kill(before["pid"], signal.SIGTERM)
    _wait_until(lambda: not delivery_site.status()["registry"]["running"], timeout_s=15)
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(repo_root / "dagster.yaml", home / "dagster.yaml")
    out = subprocess.run(
        [INFRA, "local", "up", "--topology", str(delivery_site.topology)],
        capture_output=True,
        text=True,
        env={**os.environ, **delivery_site.env, "DAGSTER_HOME": str(home)},
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    after = delivery_site.status()["registry"]
    assert after["running"] is True and after["pid"] != before["pid"]
    assert after["url"] == before["url"]
    assert f"registry: {after['url']}" in out.stdout
    url = f"{after['url']}/v2/"
    assert requests.get(url, verify=after["ca_file"], timeout=5).status_code == 401
    secrets = yaml.safe_load(Path(after["secrets_file"]).read_text())
    ci = ("ci", secrets["registry"]["users"]["ci"])
    assert requests.get(url, auth=ci, verify=after["ca_file"], timeout=5).status_code == 200
    assert ci[1] not in out.stdout + out.stderr
    # The role was applied by a Dagster run, on the instance `up` was given.
    monkeypatch.chdir(home)  # dagster.yaml names its storage relative to the instance's folder
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(
            dg.AssetKey(["highstate", "docker-registry"])
        )
    assert event is not None


def _wait_until(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_the_resource_finds_the_local_sites_registry(registry_site, monkeypatch):
    monkeypatch.setenv("INFRA_STATE_DIR", str(registry_site.state_dir))
    resource = RegistryResource()
    assert resource.endpoint().url == registry_site.endpoint.url
    resource.ping()
    assert isinstance(resource.catalog(), list)


def test_the_resource_without_a_url_on_the_coops_topology_names_the_settings(
    tmp_path, monkeypatch, repo_root
):
    monkeypatch.setenv("INFRA_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("INFRA_TOPOLOGY", str(repo_root / "topology.yaml"))
    with pytest.raises(RegistryError) as err:
        RegistryResource().endpoint()
    message = str(err.value)
    assert "is not the local site: set INFRA_REGISTRY_URL" in message
    assert "https://10.100.9.1:5000" in message and "INFRA_REGISTRY_CA_FILE" in message
    assert "infra local up" not in message


def test_the_resource_without_a_local_site_says_what_to_do(tmp_path, monkeypatch, repo_root):
    monkeypatch.setenv("INFRA_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("INFRA_TOPOLOGY", str(repo_root / "topology.local.yaml"))
    with pytest.raises(Exception, match="the local site is not up .* run `infra local up`"):
        RegistryResource().endpoint()


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
    anonymous = registry_site.resource(username="", password="")
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
    topo_file = write_local_topology(tmp_path / "topology.yaml", {app: "git/x.git"}, branch=branch)
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    return delivery_defs(load_topology(topo_file), registry=registry)


def _tick(defs: dg.Definitions, cursor: str | None):
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(),
        cursor=cursor,
        definitions=defs,
        resources=defs.resources,
    ) as context:
        return sensor(context)


def test_registry_sensor_asks_once_per_new_digest(
    tmp_path, monkeypatch, registry_site, tiny_images
):
    oci_digest, _ = tiny_images
    defs = _sensor_defs(tmp_path, monkeypatch, registry_site.resource())
    first = _tick(defs, None)
    [request] = first.run_requests
    assert request.run_key == oci_digest
    # A staging release of exactly that digest (infra_assets/releases.py).
    assert request.job_name == "release_staging_tiny"
    assert request.run_config == {
        "ops": {"release__staging__tiny": {"config": {"digest": oci_digest, "sha": ""}}}
    }
    assert request.tags["coop/app"] == "tiny" and request.tags["coop/digest"] == oci_digest
    assert request.tags["coop/image"] == registry_site.endpoint.image("tiny", oci_digest)
    assert json.loads(first.cursor) == {"tiny": {"oci": oci_digest}}
    # The run it asks for is a run of a job of the code location.
    assert defs.resolve_job_def(request.job_name)

    replay = _tick(defs, first.cursor)
    assert isinstance(replay, dg.SkipReason)  # no run request
    assert replay.skip_message == "no new image"

    # The tag moves to another image: a new digest, a new request.
    registry = registry_site.resource()
    docker = registry.manifest(repository="tiny", reference="docker")
    registry.tag(repository="tiny", manifest=docker, tag="oci")
    try:
        moved = _tick(defs, first.cursor)
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


def _registries_under(state: Path) -> list[int]:
    """The pids of every docker-registry process whose config is under `state`."""
    found = []
    for pid, words in command_lines():
        if words and words[0].endswith("docker-registry"):
            config = Path(words[-1]).resolve()
            if str(config).startswith(str(state.resolve())):
                found.append(pid)
    return found
