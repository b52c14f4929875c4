"""packer/salt-requirements.txt (what images and first boots install salt from) against uv.lock:
the same salt, CherryPy and every dependency, at the locked versions; the cloud-init template
carries the same file. Fast: no network, no install."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location(
        "salt_requirements", REPO / "scripts" / "salt_requirements.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_requirements_are_uv_lock_s(generator):
    lock_text = (REPO / "uv.lock").read_text()
    committed = (REPO / "packer" / "salt-requirements.txt").read_text()
    assert committed == generator.render(lock_text), (
        "packer/salt-requirements.txt is stale: run scripts/salt_requirements.py"
    )
    assert generator.main(["--check"]) == 0  # and so is the cloud-init template's copy


def test_every_pin_is_the_locked_version_and_nothing_is_missing(generator):
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {generator._name(p["name"]): p["version"] for p in lock["package"]}
    lines = [
        line
        for line in (REPO / "packer" / "salt-requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    pins = dict(line.split("==") for line in lines)
    assert len(pins) == len(lines)  # one exact pin a line
    assert pins["salt"] == "3008.4" == locked["salt"]
    assert pins["cherrypy"] == locked["cherrypy"]  # salt-api's rest_cherrypy
    for name, version in pins.items():
        assert locked[name] == version, name
    # the closure: every dependency of a pinned package that applies on Debian 12 is pinned
    packages = {generator._name(p["name"]): p for p in lock["package"]}
    for name in pins:
        for dep in packages[name].get("dependencies", []):
            marker = dep.get("marker")
            if marker and not generator.Marker(marker).evaluate(generator.TARGET):
                continue
            assert generator._name(dep["name"]) in pins, f"{name} needs {dep['name']}"
    # Windows-only dependencies stay out
    assert not {"pywin32", "wmi", "pymssql", "pythonnet"} & set(pins)
    assert "croniter" in pins  # sys_platform != 'win32'


def test_the_bake_installs_from_it_into_the_venv():
    bake = (REPO / "packer" / "scripts" / "bake.sh").read_text()
    assert '"$SALT_VENV/bin/pip" install' in bake
    assert '--no-index --find-links "$SALT_WHEELHOUSE"' in bake
    assert "packages.broadcom.com" not in bake and "salt.sources" not in bake
    template = (REPO / "packer" / "coop.pkr.hcl").read_text()
    assert '"${path.root}/salt-requirements.txt"' in template
    assert '"SALT_REQUIREMENTS=/tmp/coop-salt-requirements.txt"' in template
