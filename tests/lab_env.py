"""The test session's lab: the repo's topology.lab.yaml at location number 126 (a developer's
lab, `make demo`'s, is 127: both can be up at once), brought up once per session by the code of
`infra lab up` and taken down at the end. Its role images are the ones `make demo` uses (the
same groups and roles, in the project's podman storage): built once per machine.

Tests that need real hosts take the `lab_env` fixture (marked `lab`); everything else stays fast.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from infra_assets.topology.model import Topology, load_topology
from infra_assets.topology.sites import LabSite
from resources.paths import REPO_ROOT


def _free_lab_number() -> int:
    """126, or the first number below it that no other checkout holds (a developer's lab, a
    second clone's test session): 125 is test_lab_network's and 127 the repo's own lab."""
    from resources.lab import lab_holder
    from resources.podman import PodmanResource

    ours = str(PodmanResource().folder())
    for number in (126, *range(124, 99, -1)):
        if lab_holder(number) in (None, ours):
            return number
    raise RuntimeError("every lab number from 100 to 126 is held by another checkout")


# $INFRA_TEST_LAB_NUMBER: this session's lab number, else the first free one (above). A lab
# number is held by one checkout at a time (resources/lab.py). $INFRA_TEST_LAB_KEEP=1: leave the
# lab up at the end (the next session's `up` finds it and changes nothing; `infra lab down`
# removes it).
LAB_NUMBER = int(os.environ.get("INFRA_TEST_LAB_NUMBER") or _free_lab_number())


@dataclass
class LabEnv:
    topology_file: Path
    dagster_home: Path
    topo: Topology

    @property
    def site(self) -> LabSite:
        return LabSite(self.topo)

    def definitions(self) -> dg.Definitions:
        from infra_assets.definitions import build_definitions

        return build_definitions(self.topo)

    def salt(self):
        """The salt resource Dagster uses on this lab (salt-api, through the lab's link)."""
        return self.definitions().resources["salt"]

    def lab(self):
        return self.definitions().resources["lab"]

    def address(self, host: str, role: str | None = None) -> str:
        site = self.site
        return site.address(host, role) if role else site.plan.primary(host).address

    def env(self):
        """$INFRA_TOPOLOGY and $DAGSTER_HOME set to the lab's, and the working folder the
        instance's (dagster.yaml names its storage relative to it); all restored after."""
        from lab.site import environment

        return environment(
            self.dagster_home,
            INFRA_TOPOLOGY=str(self.topology_file),
            DAGSTER_HOME=str(self.dagster_home),
        )

    def run(self, *keys: str, run_config: dict[str, Any] | None = None, instance=None):
        """Materialise `keys` (and the topology) on the lab, in this process."""
        with self.env():
            job = self.definitions().resolve_implicit_global_asset_job_def()
            return job.execute_in_process(
                asset_selection=[dg.AssetKey.from_user_string(k) for k in ("topology", *keys)],
                instance=instance or dg.DagsterInstance.get(),
                run_config=run_config or {},
                raise_on_error=False,
            )


def write_lab_topology(folder: Path, number: int = LAB_NUMBER) -> Path:
    from lab.site import write_lab_topology as write

    return write(folder, number)


@pytest.fixture(scope="session")
def lab_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEnv]:
    from lab import site

    folder = tmp_path_factory.mktemp("lab")
    topology_file = write_lab_topology(folder)
    home = folder / "dagster"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = LabEnv(topology_file, home, load_topology(topology_file))
    try:
        with env.env():
            site.up(topology_file, echo=print)
        yield env
    finally:
        if os.environ.get("INFRA_TEST_LAB_KEEP") != "1":
            site.down(topology_file)
