"""packer/salt-requirements.txt from uv.lock: salt (the version the project locks) and CherryPy
(salt-api's rest_cherrypy), with their whole dependency closure for Debian 12 (CPython 3.11 on
x86_64 Linux), each at the exact version uv.lock holds, with the sha256 of every file of it that
pip may take there (the wheels whose tags Debian 12's pip accepts, else the sdist), as uv.lock
records them from PyPI: pip checks each download against them (hash-checking mode). Images
(packer/scripts/bake.sh) and first boots (terraform/instances/cloud-init.yaml.tftpl, which
carries a copy) install salt from it into a venv at /opt/salt.

    uv run --locked --no-sync python scripts/salt_requirements.py          # write both files
    uv run --locked --no-sync python scripts/salt_requirements.py --check  # exit 1 if stale

tests/test_salt_requirements.py checks that both match uv.lock.
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
CLOUD_INIT = REPO / "terraform" / "instances" / "cloud-init.yaml.tftpl"
CLOUD_INIT_PATH = "/etc/salt/requirements.txt"  # where cloud-init writes its copy
ROOTS = ("salt", "cherrypy")

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
# Salt for the images and first boots: `python3 -m venv /opt/salt &&
# /opt/salt/bin/pip install --require-hashes -r salt-requirements.txt` (packer/scripts/bake.sh).
# Generated from uv.lock by scripts/salt_requirements.py: do not edit.
"""


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(lock: dict, roots: tuple[str, ...] = ROOTS) -> dict[str, str]:
    """{package: version} of `roots` and everything they need on the target."""
    packages = {_name(p["name"]): p for p in lock["package"]}
    found: dict[str, str] = {}
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
        deps = list(package.get("dependencies", []))
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        for dep in deps:
            marker = dep.get("marker")
            if marker and not Marker(marker).evaluate(TARGET):
                continue
            todo.append((_name(dep["name"]), tuple(sorted(dep.get("extra", [])))))
    return dict(sorted(found.items()))


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


def render(lock_text: str) -> str:
    lock = tomllib.loads(lock_text)
    packages = {_name(p["name"]): p for p in lock["package"]}
    lines = []
    for name, version in closure(lock).items():
        pinned = " ".join(f"--hash={h}" for h in hashes(packages[name]))
        lines.append(f"{name}=={version} {pinned}\n")
    return HEADER + "".join(lines)


def cloud_init_copy(template: str) -> str:
    """The requirements file as the cloud-init template carries it (its write_files entry's
    content, unindented)."""
    match = re.search(
        rf"- path: {re.escape(CLOUD_INIT_PATH)}\n(?:\s+\w+: .*\n)*?\s+content: \|\n"
        r"((?:      .*\n|\n)+)",
        template,
    )
    if match is None:
        raise ValueError(f"{CLOUD_INIT} writes no {CLOUD_INIT_PATH}")
    return "".join(line[6:] + "\n" for line in match.group(1).splitlines())


def with_cloud_init_copy(template: str, requirements: str) -> str:
    old = cloud_init_copy(template)
    indented = "".join(f"      {line}\n" for line in old.splitlines())
    new = "".join(f"      {line}\n" for line in requirements.splitlines())
    return template.replace(indented, new, 1)


def main(argv: list[str]) -> int:
    wanted = render(LOCK.read_text())
    template = CLOUD_INIT.read_text()
    stale = [
        str(path.relative_to(REPO))
        for path, current in (
            (REQUIREMENTS, REQUIREMENTS.read_text() if REQUIREMENTS.exists() else ""),
            (CLOUD_INIT, cloud_init_copy(template)),
        )
        if current != wanted
    ]
    if "--check" in argv:
        for path in stale:
            sys.stdout.write(f"{path} does not match uv.lock: run scripts/salt_requirements.py\n")
        return 1 if stale else 0
    REQUIREMENTS.write_text(wanted)
    CLOUD_INIT.write_text(with_cloud_init_copy(template, wanted))
    for path in stale:
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
