"""packer/salt-requirements.txt (what images and first boots install salt from) against uv.lock:
the same salt, CherryPy and every dependency, at the locked versions; the cloud-init template
carries the same file, and pip enforces the files' sha256 pins (one test downloads from PyPI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from scripts_loader import load_script

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generator():
    return load_script("salt_requirements")


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
    # (a package some dependency asks extras of carries them: pip's hash-checking mode would
    # otherwise take `gql[requests]>=3` for a requirement of its own, unpinned)
    pins = {}
    for line in lines:
        name, version = line.split(" ", 1)[0].split("==")
        pins[name.split("[")[0]] = version
    assert len(pins) == len(lines)  # one exact pin a line
    assert "opentelemetry-exporter-http-transport[requests]==" in "\n".join(lines)
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


def _requirement_lines() -> list[str]:
    text = (REPO / "packer" / "salt-requirements.txt").read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_build_requirements_are_what_the_two_sdists_declare(generator, tmp_path):
    """salt and timelib are the closure's only sdists; what their pyproject.toml's build-system
    asks for (as PyPI's sdists say: setuptools, wheel, Cython, looseversion, packaging,
    importlib-metadata) is pinned, with hashes, in salt-build-requirements.txt."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    packages = {generator._name(p["name"]): p for p in lock["package"]}
    sdists = [
        name
        for name in generator.closure(lock)
        if generator.hashes(packages[name]) == [packages[name].get("sdist", {}).get("hash")]
    ]
    assert sorted(sdists) == ["salt", "timelib"]
    text = (REPO / "packer" / "salt-build-requirements.txt").read_text()
    pinned = {line.split("==")[0] for line in text.splitlines() if line and line[0] != "#"}
    assert {"setuptools", "wheel", "cython", "looseversion", "packaging"} <= pinned
    assert "importlib-metadata" in pinned
    assert all("--hash=sha256:" in line for line in text.splitlines() if line[:1] not in "#")


def test_every_pin_carries_the_sha256_of_the_files_pip_takes_on_debian_12(generator):
    """Hash-checking mode: each line carries the sha256 that uv.lock recorded from PyPI of each
    file of that version that Debian 12's pip may take on x86_64 (its wheel for cp311, an
    abi3 or pure-Python wheel, else the sdist), and no hash of anything else."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    packages = {generator._name(p["name"]): p for p in lock["package"]}
    for line in _requirement_lines():
        pin, *options = line.split(" ")
        name, _version = pin.split("==")
        name = name.split("[")[0]  # the extras a dependency asks for
        pinned = {option.removeprefix("--hash=") for option in options}
        assert options and all(o.startswith("--hash=sha256:") for o in options), line
        package = packages[name]
        files = {w["url"].rsplit("/", 1)[1]: w["hash"] for w in package.get("wheels", [])}
        if "sdist" in package:
            files[package["sdist"]["url"].rsplit("/", 1)[1]] = package["sdist"]["hash"]
        assert pinned <= set(files.values()), name  # each a file of that locked version
        taken = {f for f, h in files.items() if h in pinned}
        for file in taken:
            if file.endswith(".whl"):
                tags = set(generator.parse_wheel_filename(file)[3])
                assert tags & generator.TARGET_TAGS, f"{name}: {file} is not for Debian 12"
        ours = [f for f in files if f.endswith(".whl") and "-cp311-" in f and "manylinux" in f]
        if any("x86_64" in f for f in ours):
            assert any("x86_64" in f and "-cp311-" in f for f in taken), name
    salt = next(line for line in _requirement_lines() if line.startswith("salt=="))
    assert salt.count("--hash=") == 1  # an sdist only: its one file


def test_pip_refuses_a_download_whose_hash_is_not_the_pinned_one(tmp_path):
    """The pins are enforced by pip itself: one line as committed downloads; the same line with
    one hash digit changed is refused with pip's hash error (real pip, from PyPI)."""
    line = next(line for line in _requirement_lines() if line.startswith("zipp=="))
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_FIND_LINKS": ""}

    def download(text: str) -> subprocess.CompletedProcess:
        (tmp_path / "req.txt").write_text(text + "\n")
        folder = tmp_path / "dl"
        shutil.rmtree(folder, ignore_errors=True)
        return subprocess.run(
            [
                venv / "bin" / "pip",
                "download",
                "--no-deps",
                "-d",
                folder,
                "-r",
                tmp_path / "req.txt",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    good = download(line)
    assert good.returncode == 0, good.stderr
    digest = line.rsplit("sha256:", 1)[1]
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    bad = download(line.replace(digest, flipped))
    assert bad.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in bad.stderr


def test_the_bake_installs_from_it_into_the_venv():
    bake = (REPO / "packer" / "scripts" / "bake.sh").read_text()
    assert '"$SALT_VENV/bin/pip" install' in bake
    assert '--no-index --find-links "$SALT_WHEELHOUSE"' in bake
    # from PyPI: every file checked, the sdists built with hashed build requirements
    build, install = (
        bake.index(f'-r "${var}"') for var in ("SALT_BUILD_REQUIREMENTS", "SALT_REQUIREMENTS")
    )
    assert build < install
    assert '--require-hashes -r "$SALT_BUILD_REQUIREMENTS"' in bake
    assert '--require-hashes --no-build-isolation \\\n      -r "$SALT_REQUIREMENTS"' in bake
    assert (
        '"SALT_BUILD_REQUIREMENTS=/tmp/coop-salt-build-requirements.txt"'
        in (REPO / "packer" / "coop.pkr.hcl").read_text()
    )
    assert "packages.broadcom.com" not in bake and "salt.sources" not in bake
    template = (REPO / "packer" / "coop.pkr.hcl").read_text()
    assert '"${path.root}/salt-requirements.txt"' in template
    assert '"SALT_REQUIREMENTS=/tmp/coop-salt-requirements.txt"' in template
