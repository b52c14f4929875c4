"""Fixtures for app delivery (issue 4): real git repos, the real registry, real podman.

- `app_repos`: bare git repos under tmp_path with a working clone each; `commit()` pushes.
- `podman` (session): podman with the project's config and its storage in a folder of the
  session's own (or $INFRA_TEST_PODMAN_ROOT, to keep the base image between sessions);
  `base_image` (session) makes the base image once per session (about 40 s).
- `registry_site` (session): the lab's registry (support-1, configured by the salt `registry`
  state with TLS and htpasswd), as Dagster reaches it: the push account `ci`, the registry's
  certificate, through the lab's link. Needs the session's lab (tests/lab_env.py).
- `delivery_defs(topo, **resources)`: the code location for `topo`, with resources replaced.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from resources.podman import BaseImage, PodmanResource
from resources.registry import Endpoint, RegistryResource

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
    for name, repo in apps.items():
        entry = {"repo": repo, "branch": branch, "port": 8000, "health": "/health"}
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


# --- app_image's record ------------------------------------------------------------------------


def record_build(instance: dg.DagsterInstance, app: str, digest: str, sha: str, branch: str):
    """What `app_image/<app>` records when it has built `digest` from commit `sha` of `branch`
    (infra_assets/provenance.py), materialised in a run of `instance`: for tests whose images
    podman built here, not app_image (tests/test_lab_delivery.py runs the real chain)."""

    @dg.asset(key=["app_image", app])
    def built() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"digest": digest, "sha": sha, "branch": branch})

    assert dg.materialize([built], instance=instance).success
