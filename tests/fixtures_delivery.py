"""Fixtures for app delivery (issue 4): real git repos, the real registry, real podman.

- `app_repos`: bare git repos under tmp_path with a working clone each; `commit()` pushes.
- `podman` (session): podman with the project's config and its storage in a folder of the
  session's own (or $INFRA_TEST_PODMAN_ROOT, to keep the base image between sessions);
  `base_image` (session) makes the base image once per session (about 40 s).
- `delivery_site` (session): the local site of topology.local.yaml, up and configured (salt
  master and minions, the registry the salt `registry` state runs with TLS and htpasswd, nginx on
  the web hosts), in a state folder of the session's own; stopped by pid at the end.
  `on_delivery_site`: the same, with Dagster's environment pointing at it.
  `INFRA_TEST_DELIVERY_STATE=<folder>` keeps it there, up, between sessions (while developing).
- `registry_site` (session): that site's registry, as the tests reach it (account `ci`, its CA).
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

from infra_assets.local_site.site import SITE_ENV_KEYS, LocalSite, site_environment
from resources.podman import BaseImage, PodmanResource
from resources.registry import Endpoint, RegistryResource, local_site_endpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
HELLO = REPO_ROOT / "apps" / "hello"
HEALTH = "/health?probe=salt&full=1"  # the delivery site's health path for hello
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


def write_local_topology(
    path: Path, apps: dict[str, str | dict], *, cloud: str = "local", branch: str = "main"
) -> Path:
    """A small topology at `path` whose apps live at the given repos (paths or URLs)."""
    data = yaml.safe_load((REPO_ROOT / "topology.local.yaml").read_text())
    data["locations"] = {"local": {"number": 127, "cloud": cloud}}
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


# --- the local site: the registry, salt, the web hosts ---------------------------------------


@dataclass
class DeliverySite:
    """The local site of topology.local.yaml (support-1 with the salt master, the registry and
    DNS; web-staging-1; web-production-1), up and configured: what `make demo` brings up before
    its loop. Its app `hello` lives in a bare repo of the session's own."""

    state: Path  # INFRA_STATE_DIR
    topology: Path
    site: LocalSite
    podman_root: Path
    repo: Path  # the bare git repo the topology names for `hello`

    @property
    def env(self) -> dict[str, str]:
        return {
            "INFRA_STATE_DIR": str(self.state),
            "INFRA_TOPOLOGY": str(self.topology),
            "INFRA_PODMAN_ROOT": str(self.podman_root),
        }

    def topo(self):
        from infra_assets.model import load_topology

        return load_topology(self.topology)

    def process_site(self):
        from infra_assets.sites import ProcessSite

        return ProcessSite(self.topo(), root=self.site.root)

    def status(self) -> dict:
        return self.site.status()


@pytest.fixture(scope="session")
def delivery_site(
    tmp_path_factory: pytest.TempPathFactory, podman: PodmanResource, base_image: BaseImage
) -> Iterator[DeliverySite]:
    """The local site, brought up by its own code (`LocalSite.up()`, what `infra local up` runs)
    and configured by the `configure` job (keys, pillar, every role's states: the registry with
    TLS and htpasswd on support-1, nginx on each web host), once for the session; stopped by pid
    at the end (`LocalSite.down()`: the daemon, the apps' containers, the services, salt)."""
    from infra_assets.definitions import build_definitions
    from infra_assets.model import load_topology

    # $INFRA_TEST_DELIVERY_STATE=<folder>: the site lives there and stays up after the session
    # (while developing: the next session finds it up, and `up` and `configure` change nothing).
    kept = os.environ.get("INFRA_TEST_DELIVERY_STATE")
    state = Path(kept).absolute() if kept else tmp_path_factory.mktemp("delivery")
    state.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load((REPO_ROOT / "topology.local.yaml").read_text())
    data["apps"]["hello"]["repo"] = str(state / "git" / "hello.git")
    # A health path with a query: `?` and `&` are shell characters, and the path reaches the
    # web hosts' shell (salt/app): every release on this site checks that it arrives quoted.
    data["apps"]["hello"]["health"] = HEALTH
    topology = state / "topology.yaml"
    topology.write_text(yaml.safe_dump(data, sort_keys=False))
    site = DeliverySite(
        state,
        topology,
        LocalSite(topology, root=state / "local"),
        podman.folder(),
        state / "git" / "hello.git",
    )
    try:
        with site_environment(site.env):
            site.site.up()
            result = (
                build_definitions(load_topology(topology))
                .resolve_job_def("configure")
                .execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
            )
            assert result.success, "\n".join(
                str(e.event_specific_data.error.message)
                for e in result.all_events
                if e.is_step_failure
            )
            site.site.write_status()
        yield site
    finally:
        if not kept:
            with site_environment(site.env):
                site.site.down()
                link = site.process_site().hosts_dir()
                if link.is_symlink():
                    link.unlink()
            # The web hosts' podman storage (a copy of the base image per image and container,
            # vfs) is not worth keeping with pytest's last sessions.
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def on_delivery_site(delivery_site: DeliverySite, monkeypatch: pytest.MonkeyPatch) -> DeliverySite:
    """Dagster works on the delivery site: its topology, its state folder, its podman."""
    for key in SITE_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in delivery_site.env.items():
        monkeypatch.setenv(key, value)
    return delivery_site


@dataclass
class SessionRegistry:
    """The delivery site's registry (the salt-configured one), as the tests reach it."""

    state_dir: Path  # what INFRA_STATE_DIR must be for RegistryResource() to find it
    site: LocalSite
    endpoint: Endpoint  # the `ci` account, the site's CA

    def resource(self, **overrides) -> RegistryResource:
        e = self.endpoint
        fields = {
            "url": e.url,
            "username": e.username,
            "password": e.password,
            "ca_file": e.ca_file,
            **overrides,
        }
        return RegistryResource(**fields)


@pytest.fixture(scope="session")
def registry_site(delivery_site: DeliverySite) -> SessionRegistry:
    endpoint = local_site_endpoint(delivery_site.site.root)
    return SessionRegistry(delivery_site.state, delivery_site.site, endpoint)
