"""Fixtures for app delivery (issue 4): real git repos, the real registry, real podman.

- `app_repos`: bare git repos under tmp_path with a working clone each; `commit()` pushes.
- `podman` (session): podman with the project's config and its storage in a folder of the
  session's own (or $INFRA_TEST_PODMAN_ROOT, to keep the base image between sessions);
  `base_image` (session) makes the base image once per session (about 40 s).
- `registry_site` (session): the lab's registry (support-1, configured by the salt `registry`
  state with TLS and htpasswd), as Dagster reaches it: the push account `ci`, the registry's
  certificate, through the lab's link. Needs the session's lab (tests/lab_env.py).
- `loopback_registry`: a registry of the test's own on 127.0.0.1 (the same Docker Distribution,
  plain HTTP, no accounts), for tests that need a real registry but not the lab's doors;
  `push_image` puts a small image in it by the registry's HTTP API.
- `delivery_defs(topo, **resources)`: the code location for `topo`, with resources replaced.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import requests
import yaml

from lab.processes import Supervisor, free_port
from resources.podman import BaseImage, PodmanResource
from resources.registry import Endpoint, RegistryResource
from sensors import git_push

REPO_ROOT = Path(__file__).resolve().parent.parent
HELLO = REPO_ROOT / "apps" / "hello"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Dev Eloper",
    "GIT_AUTHOR_EMAIL": "dev@example.coop",
    "GIT_COMMITTER_NAME": "Dev Eloper",
    "GIT_COMMITTER_EMAIL": "dev@example.coop",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_IDENTITY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"git {' '.join(args)}: {out.stderr}"
    return out.stdout.strip()


@dataclass
class AppRepo:
    """A bare repo (what the topology names) and a clone to commit and push from."""

    name: str
    bare: Path
    work: Path
    branch: str = "main"

    def commit(self, files: dict[str, str] | None = None, message: str = "change") -> str:
        for rel, text in (files or {}).items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        if not files:
            stamp = self.work / "CHANGES"
            stamp.write_text((stamp.read_text() if stamp.exists() else "") + message + "\n")
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        git("push", "-q", "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


def make_app_repo(root: Path, name: str, *, branch: str = "main", source: Path | None = None):
    bare = root / "git" / f"{name}.git"
    work = root / "work" / name
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "--bare", "-b", branch, str(bare))
    git("clone", "-q", str(bare), str(work))
    git("checkout", "-q", "-b", branch, cwd=work)
    if source is not None:
        shutil.copytree(source, work, dirs_exist_ok=True)
    return AppRepo(name, bare, work, branch)


@pytest.fixture
def app_repos(tmp_path: Path) -> Callable[..., AppRepo]:
    def make(name: str, **kw) -> AppRepo:
        return make_app_repo(tmp_path, name, **kw)

    return make


def write_app_topology(
    path: Path, apps: dict[str, str | dict], *, cloud: str = "lab", branch: str = "main"
) -> Path:
    """The lab's topology at `path` with only the given apps, living at the given repos (paths
    or URLs), on `cloud`."""
    data = yaml.safe_load((REPO_ROOT / "topology.lab.yaml").read_text())
    for location in data["locations"].values():
        location["cloud"] = cloud
    data["apps"] = {}
    for i, (name, repo) in enumerate(apps.items()):
        # two loopback ports each (blue and green): apps' ports at least two apart
        entry = {"repo": repo, "branch": branch, "port": 8000 + 2 * i, "health": "/health"}
        if isinstance(repo, dict):
            entry = {**entry, **repo}
        data["apps"][name] = entry
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def delivery_defs(topo, **resources) -> dg.Definitions:
    from infra_assets.definitions import build_definitions

    defs = build_definitions(topo)
    return dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        sensors=defs.sensors,
        schedules=defs.schedules,
        resources={**(defs.resources or {}), **resources},
        executor=defs.executor,
    )


# --- podman ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanResource]:
    kept = os.environ.get("INFRA_TEST_PODMAN_ROOT")
    resource = PodmanResource(root=kept or str(tmp_path_factory.mktemp("podman")))
    yield resource
    if not kept:  # free the session's images (a few hundred MB) now, not at a later session
        resource.run(["rmi", "--all", "--force"], check=False, log=lambda _line: None)


@pytest.fixture(scope="session")
def base_image(podman: PodmanResource) -> BaseImage:
    """The project's base image, made once per session (debootstrap + podman import)."""
    return podman.ensure_base_image(log=lambda _line: None)


# --- the lab's registry --------------------------------------------------------------------------


@dataclass
class SessionRegistry:
    """The lab's registry, as Dagster reaches it (the lab's definitions' `registry`)."""

    base: RegistryResource
    endpoint: Endpoint  # the `ci` account, the registry's certificate

    def resource(self, **overrides) -> RegistryResource:
        fields = ("url", "username", "password", "password_file", "ca_file", "route_device")
        return RegistryResource(**{**{f: getattr(self.base, f) for f in fields}, **overrides})


@pytest.fixture(scope="session")
def registry_site(lab_env) -> SessionRegistry:
    base = lab_env.definitions().resources["registry"]
    return SessionRegistry(base, base.endpoint())


# --- a registry on loopback ------------------------------------------------------------------


@pytest.fixture
def loopback_registry(tmp_path: Path) -> Iterator[RegistryResource]:
    """Debian's docker-registry (what the lab's registry hosts run) on 127.0.0.1, plain HTTP, no
    accounts, its storage under tmp_path; stopped by pid."""
    port = free_port()
    config = tmp_path / "registry" / "config.yml"
    config.parent.mkdir(parents=True)
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(config.parent / "data")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return requests.get(f"{url}/v2/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    sup = Supervisor(tmp_path / "run")
    sup.start(
        "docker-registry",
        ["/usr/bin/docker-registry", "serve", config],
        log=config.parent / "registry.log",
        ready=ready,
        ready_timeout_s=30,
    )
    yield RegistryResource(url=url)
    sup.stop("docker-registry")


def push_image(url: str, repository: str, tag: str, labels: dict[str, str]) -> str:
    """A one-layer image with these labels, pushed to `repository:tag` by the registry's HTTP
    API (blob uploads, then the manifest); returns its manifest's digest."""

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        start = requests.post(f"{url}/v2/{repository}/blobs/uploads/", timeout=10)
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        location = location if location.startswith("http") else url + location
        sep = "&" if "?" in location else "?"
        done = requests.put(f"{location}{sep}digest={digest}", data=data, timeout=10)
        assert done.status_code == 201, done.text
        return digest

    raw_tar = io.BytesIO()
    with tarfile.open(fileobj=raw_tar, mode="w") as tar:
        text = json.dumps(labels).encode()
        info = tarfile.TarInfo("labels.json")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    layer = gzip.compress(raw_tar.getvalue(), mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": labels},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(raw_tar.getvalue()).hexdigest()],
            },
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": blob(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    put = requests.put(
        f"{url}/v2/{repository}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert put.status_code == 201, put.text
    return put.headers["Docker-Content-Digest"]


def push_sensor_build(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    cursor: str | None = None,
    app: str | None = None,
    build_only: bool = False,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """One tick of git_push_sensor in `defs` from `cursor`, then the one run it asks for (of
    `app`, where other apps have new commits too; its commit's partition added first, as the
    daemon would): the run's result. The run is what a push runs (`deliver_<app>`: the build
    and the staging release; `build_<app>` without a staging host); `build_only` runs its build
    step alone."""
    tick = push_tick(defs, instance, cursor, app)
    [request] = [r for r in tick.run_requests if app is None or r.tags["coop/app"] == app]
    for p in tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(p.partitions_def_name, p.partition_keys)
    job = defs.resolve_job_def(request.job_name)
    selection = None
    if build_only:
        selection = [dg.AssetKey("topology"), dg.AssetKey(["app_image", request.tags["coop/app"]])]
    return job.execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
        asset_selection=selection,
        raise_on_error=raise_on_error,
    )


# --- app_image's record ------------------------------------------------------------------------


def record_build(instance: dg.DagsterInstance, app: str, digest: str, sha: str, branch: str):
    """What `app_image/<app>` records when it has built `digest` from commit `sha` of `branch`
    (infra_assets/delivery/provenance.py), materialised in a run of `instance`: for tests whose images
    podman built here, not app_image (tests/lab/test_lab_delivery.py runs the real chain)."""

    @dg.asset(key=["app_image", app])
    def built() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"digest": digest, "sha": sha, "branch": branch})

    assert dg.materialize([built], instance=instance).success


def sensor_tick(defs: dg.Definitions, name: str, instance, cursor: str | None):
    """One evaluation of sensor `name`, as the daemon would run it, from `cursor`."""
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        return defs.resolve_sensor_def(name)(context)


def push_tick(defs: dg.Definitions, instance, cursor: str | None, app: str | None = None):
    """The git_push_sensor tick that asks for what was pushed since `cursor` (of `app`, or of
    every app): the one after the tick that first sees a new head (sensors/git_push.py). That
    first tick asks for no head it sees for the first time (another app's head that the cursor
    had seen once is asked for there)."""
    seen = sensor_tick(defs, git_push.SENSOR_NAME, instance, cursor)
    before = git_push.read_cursor(cursor)
    early = [
        r
        for r in seen.run_requests or []
        if (app is None or r.tags["coop/app"] == app)
        and before.seen.get(r.tags["coop/app"]) != r.tags["coop/sha"]
    ]
    assert not early, f"asked for on the tick that first saw them: {early}"
    return sensor_tick(defs, git_push.SENSOR_NAME, instance, seen.cursor)


def materialization_metadata(result, node: str) -> dict:
    """The metadata of the one materialisation of step `node` in a run, as plain values."""
    [mat] = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def step_failures(result) -> str:
    """What each failed step of a run said: its Failure's description and its error."""
    out = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            out.append(data.user_failure_data.description if data.user_failure_data else "")
            out.append(data.error.message if data.error else "")
    return "\n".join(out)
