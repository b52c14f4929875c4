"""packer/salt-requirements.txt from uv.lock: salt (the version the project locks) and CherryPy
(salt-api's rest_cherrypy), with their whole dependency closure for Debian 12 (CPython 3.11 on
x86_64 Linux), each at the exact version uv.lock holds, with the sha256 of every file of it that
pip may take there (the wheels whose tags Debian 12's pip accepts, else the sdist), as uv.lock
records them from PyPI: pip checks each download against them (hash-checking mode). Images
(packer/scripts/bake.sh) and first boots (terraform/instances/cloud-init.yaml.tftpl, which
carries a copy) install salt from it into a venv at /opt/salt.

    uv run --locked --no-sync python scripts/salt_requirements.py          # write them
    uv run --locked --no-sync python scripts/salt_requirements.py --check  # exit 1 if stale

The same goes for the `dagster` role's venv (salt/dagster): salt/dagster/files/requirements.txt
pins the project's own dependencies but salt (Dagster reaches salt through salt-api), and
build-requirements.txt beside it what pip builds their two sdists with (python-terraform,
multi-key-dict); no first boot carries those.

tests/configuration/test_salt_requirements.py checks that all of them match uv.lock.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "uv.lock"
REQUIREMENTS = REPO / "packer" / "salt-requirements.txt"
BUILD_REQUIREMENTS = REPO / "packer" / "salt-build-requirements.txt"
CLOUD_INIT = REPO / "terraform" / "instances" / "cloud-init.yaml.tftpl"
CLOUD_INIT_PATH = "/etc/salt/requirements.txt"  # where cloud-init writes its copy
CLOUD_INIT_BUILD_PATH = "/etc/salt/build-requirements.txt"
ROOTS = ("salt", "cherrypy")
# What pip needs to build the two sdists of ROOTS' closure (salt's and timelib's build-system
# requirements), installed first so that they are built with `--no-build-isolation`: pip would
# otherwise download them unchecked, hash-checking mode or not (pyproject.toml's `salt-build`
# group locks them).
BUILD_ROOTS = ("setuptools", "wheel", "cython", "looseversion", "packaging", "importlib-metadata")
DAGSTER_REQUIREMENTS = REPO / "salt" / "dagster" / "files" / "requirements.txt"
DAGSTER_BUILD_REQUIREMENTS = REPO / "salt" / "dagster" / "files" / "build-requirements.txt"
DAGSTER_BUILD_ROOTS = ("setuptools", "wheel")

# Debian 12's Python on the images' architecture: what the markers are evaluated for.
TARGET = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.2",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.11.2",
    "python_version": "3.11",
    "sys_platform": "linux",
}

# The wheel tags Debian 12's pip takes on x86_64 (glibc 2.36): a wheel of any other tag is never
# downloaded there, so its hash is left out (each server's user-data carries this file).
_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
TARGET_TAGS: frozenset[Tag] = frozenset(cpython_tags((3, 11), platforms=_PLATFORMS)) | frozenset(
    compatible_tags((3, 11), "cp311", _PLATFORMS)
)

HEADER = """\
# Salt for the images and first boots: `python3 -m venv /opt/salt`, salt-build-requirements.txt,
# then `pip install --require-hashes --no-build-isolation -r salt-requirements.txt` (bake.sh).
# Generated from uv.lock by scripts/salt_requirements.py: do not edit.
"""
BUILD_HEADER = """\
# What pip builds salt's and timelib's sdists with, installed into /opt/salt before them
# (`pip install --require-hashes -r salt-build-requirements.txt`, packer/scripts/bake.sh).
# Generated from uv.lock by scripts/salt_requirements.py: do not edit.
"""


DAGSTER_HEADER = """\
# The `dagster` role's venv (/opt/dagster/venv, salt/dagster): the project's dependencies but
# salt, installed with `pip install --require-hashes --no-build-isolation` after
# build-requirements.txt. Generated from uv.lock by scripts/salt_requirements.py: do not edit.
"""
DAGSTER_BUILD_HEADER = """\
# What pip builds the two sdists of requirements.txt with (python-terraform, multi-key-dict),
# installed into /opt/dagster/venv first (salt/dagster).
# Generated from uv.lock by scripts/salt_requirements.py: do not edit.
"""


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(lock: dict, roots: tuple[str, ...] = ROOTS) -> dict[str, str]:
    """{package: version} of `roots` and everything they need on the target."""
    return {name: version for name, (version, _extras) in _closure(lock, roots).items()}


def _closure(lock: dict, roots: tuple[str, ...]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """{package: (version, the extras something asks of it)} of `roots` and what they need."""
    packages = {_name(p["name"]): p for p in lock["package"]}
    found: dict[str, str] = {}
    extras_of: dict[str, set[str]] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(_name(r), ()) for r in roots]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        package = packages.get(name)
        if package is None:
            raise KeyError(f"uv.lock has no package {name!r}")
        found[name] = package["version"]
        extras_of.setdefault(name, set()).update(extras)
        deps = list(package.get("dependencies", []))
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        for dep in deps:
            marker = dep.get("marker")
            if marker and not Marker(marker).evaluate(TARGET):
                continue
            todo.append((_name(dep["name"]), tuple(sorted(dep.get("extra", [])))))
    return {n: (found[n], tuple(sorted(extras_of[n]))) for n in sorted(found)}


def hashes(package: dict) -> list[str]:
    """The sha256 of each file of a locked package that pip may take on the target: its wheels
    for the target's tags, else (no such wheel) its sdist."""
    found = []
    for wheel in package.get("wheels", []):
        *_, tags = parse_wheel_filename(wheel["url"].rsplit("/", 1)[1])
        if tags & TARGET_TAGS:
            found.append(wheel["hash"])
    if not found and "sdist" in package:
        found.append(package["sdist"]["hash"])
    if not found:
        raise KeyError(f"uv.lock has no file of {package['name']} for Debian 12 on x86_64")
    return sorted(found)


def render(lock_text: str, roots: tuple[str, ...] = ROOTS, header: str = HEADER) -> str:
    lock = tomllib.loads(lock_text)
    packages = {_name(p["name"]): p for p in lock["package"]}
    lines = []
    for name, (version, extras) in _closure(lock, roots).items():
        pinned = " ".join(f"--hash={h}" for h in hashes(packages[name]))
        # pip's hash-checking mode wants the extras a dependency asks for on the pinned line
        wanted = f"[{','.join(extras)}]" if extras else ""
        lines.append(f"{name}{wanted}=={version} {pinned}\n")
    return header + "".join(lines)


def cloud_init_copy(template: str, path: str = CLOUD_INIT_PATH) -> str:
    """A requirements file as the cloud-init template carries it (its write_files entry's
    content, unindented)."""
    match = re.search(
        rf"- path: {re.escape(path)}\n(?:\s+\w+: .*\n)*?\s+content: \|\n"
        r"((?:      .*\n|\n)+)",
        template,
    )
    if match is None:
        raise ValueError(f"{CLOUD_INIT} writes no {path}")
    return "".join(line[6:] + "\n" for line in match.group(1).splitlines())


def with_cloud_init_copy(template: str, requirements: str, path: str = CLOUD_INIT_PATH) -> str:
    old = cloud_init_copy(template, path)
    indented = "".join(f"      {line}\n" for line in old.splitlines())
    new = "".join(f"      {line}\n" for line in requirements.splitlines())
    marker = f"- path: {path}\n"
    at = template.index(marker)  # the entry's own content, not an equal block elsewhere
    return template[:at] + template[at:].replace(indented, new, 1)


def project_roots(lock_text: str) -> tuple[str, ...]:
    """The project's own dependencies (pyproject.toml's, as uv.lock holds them) but salt."""
    lock = tomllib.loads(lock_text)
    project = next(p for p in lock["package"] if p["name"] == "coop-infra")
    return tuple(d["name"] for d in project["dependencies"] if _name(d["name"]) != "salt")


# Each file: where it is committed, where cloud-init writes its copy (None: no first boot
# carries it), what it pins (None: the project's own dependencies but salt).
FILES = (
    (REQUIREMENTS, CLOUD_INIT_PATH, ROOTS, HEADER),
    (BUILD_REQUIREMENTS, CLOUD_INIT_BUILD_PATH, BUILD_ROOTS, BUILD_HEADER),
    (DAGSTER_REQUIREMENTS, None, None, DAGSTER_HEADER),
    (DAGSTER_BUILD_REQUIREMENTS, None, DAGSTER_BUILD_ROOTS, DAGSTER_BUILD_HEADER),
)


def main(argv: list[str]) -> int:
    lock_text = LOCK.read_text()
    template = CLOUD_INIT.read_text()
    stale = set()
    for file, path, roots, header in FILES:
        wanted = render(lock_text, roots or project_roots(lock_text), header)
        if (file.read_text() if file.exists() else "") != wanted:
            stale.add(str(file.relative_to(REPO)))
        if path is not None and cloud_init_copy(template, path) != wanted:
            stale.add(str(CLOUD_INIT.relative_to(REPO)))
        if "--check" not in argv:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(wanted)
            if path is not None:
                template = with_cloud_init_copy(template, wanted, path)
    if "--check" in argv:
        for name in sorted(stale):
            sys.stdout.write(f"{name} does not match uv.lock: run scripts/salt_requirements.py\n")
        return 1 if stale else 0
    CLOUD_INIT.write_text(template)
    for name in sorted(stale):
        sys.stdout.write(f"wrote {name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
