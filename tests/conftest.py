"""Shared fixtures. Every service a test needs is started for real, on 127.0.0.1, and stopped
by pid; only what cannot run here (an OpenStack cloud, a Jenkins server) is a fake in fakes/."""

from __future__ import annotations

import copy
import gc
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from resources.paths import REPO_ROOT


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def coop_topology_data(repo_root: Path) -> dict:
    """The co-op's topology.yaml as plain data, to copy and break in tests."""
    return yaml.safe_load((repo_root / "topology.yaml").read_text())


@pytest.fixture
def write_topology(tmp_path: Path, coop_topology_data: dict) -> Callable[..., Path]:
    """Write a topology file: YAML text as given, or the co-op's data after `edit(data)`."""

    def write(text: str | None = None, edit: Callable[[dict], None] | None = None) -> Path:
        path = tmp_path / "topology.yaml"
        if text is None:
            data = copy.deepcopy(coop_topology_data)
            if edit:
                edit(data)
            text = yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path

    return write


@pytest.fixture
def dagster_home(
    tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A Dagster instance of the test's own, configured by the repo's dagster.yaml.

    dagster.yaml names its storage relative to the working folder, so the test runs in `home`.
    """
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(repo_root / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(home)
    yield home


def env_with(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


# App delivery (issue 4): git repos, podman, the registry (tests/fixtures_delivery.py).
pytest_plugins = ["fixtures_delivery", "lab_env", "chat_receiver"]


@pytest.fixture(autouse=True)
def _dagster_contexts_are_closed():
    """A Dagster context built in a test and never closed (`build_sensor_context(...)` without
    `with`) leaves its instance's state storage current; when the garbage collector closes it,
    mid-way through some later test, that test fails with 'Attempted to resolve undefined
    DagsterInstance weakref'. Collect the garbage now and fail the test that leaks instead."""
    from dagster._core.storage.defs_state.base import DefsStateStorage

    before = DefsStateStorage.get()
    yield
    gc.collect()
    after = DefsStateStorage.get()
    assert after is before, (
        "this test left a Dagster context open: use `with dg.build_sensor_context(...) as"
        " context:` (or build_schedule_context, instance_for_test) so it is closed"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a lab up (the session's: the `lab_env` fixture, directly or through
    another fixture such as `registry_site`; or tests/lab/test_lab_network.py's own: `lab`) is
    marked `lab` and `slow`, so `-m "not lab"` leaves out exactly the tests that bring a lab up
    (tests/cloud/test_lab_images.py's Packer builds, which bring no lab up, are `slow`)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        own_lab = item.path.name == "test_lab_network.py" and "lab" in fixtures
        if "lab_env" in fixtures or own_lab:
            item.add_marker(pytest.mark.lab)
            item.add_marker(pytest.mark.slow)
