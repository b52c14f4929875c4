"""What the lab's role images are built from, made on this machine by the project itself.

The base, `localhost/coop-lab-base:bookworm`: a debootstrap'd Debian 12 (minbase) with systemd
as init, dbus, iproute2, Python and its venv module (salt runs from a venv at /opt/salt), CA
certificates and curl; `podman import`ed into the project's podman storage (PodmanResource's
config, so Packer's builds and the lab's containers see it). No Docker Hub: nothing is pulled.
The image carries a label with a hash of its recipe (the packages, the mirrors, the steps below
and the image's settings): a changed recipe builds it anew, an unchanged one is found.

The wheelhouse, `<state>/lab/wheelhouse`: salt and its dependencies as wheels
(packer/salt-requirements.txt), built once on this machine with `pip wheel` and Debian's own
Python 3.11 (the images' Python). A lab build installs salt from it offline (bake.sh:
SALT_WHEELHOUSE): HTTPS inside containers is intercepted here, and two of salt's dependencies
(salt itself and timelib) are sdists that would need a compiler in the image.

Both take the state folder as an argument; nothing here imports the project.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from resources.cli_runner import CliError, discard, run_cli
from resources.podman import PodmanError, PodmanResource

LogSink = Callable[[str], object]
LAB_BASE_IMAGE = "localhost/coop-lab-base:bookworm"
RECIPE_LABEL = "org.coop-infra.recipe"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_PYTHON = "/usr/bin/python3"  # Debian 12's 3.11: the images' Python
# Beside salt-requirements.txt: what its sdists are built with (scripts/salt_requirements.py).
BUILD_REQUIREMENTS = "salt-build-requirements.txt"

# Run in the debootstrap'd tree (chroot) before it is imported; part of the recipe's hash.
SETUP_SCRIPT = """\
set -eu
# Packages from Debian only, with the point releases and security updates a server gets.
cat > /etc/apt/sources.list <<EOF
deb {mirror} {suite} main
deb {mirror} {suite}-updates main
deb {security_mirror} {suite}-security main
EOF
# Each container makes its own machine id at first boot (systemd fills an empty file).
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
# A container has no consoles to log in on, and no kernel devices to manage.
for unit in getty@tty1.service console-getty.service serial-getty@.service \\
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \\
    systemd-remount-fs.service sys-kernel-debug.mount sys-kernel-tracing.mount; do
  ln -sf /dev/null "/etc/systemd/system/$unit"
done
# What an image does not need: downloaded packages and package lists (bake.sh refreshes them).
apt-get clean
rm -rf /var/lib/apt/lists/*
"""


@dataclass(frozen=True)
class BaseRecipe:
    """How the lab's base image is made: its hash is the image's RECIPE_LABEL."""

    ref: str = LAB_BASE_IMAGE
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    packages: tuple[str, ...] = (
        "systemd",
        "systemd-sysv",
        "dbus",
        "iproute2",
        "python3",
        "python3-venv",
        "ca-certificates",
        "curl",
        # salt at run time: `ps` for its process checks, gpg for signed apt repositories
        # (pkgrepo.managed), less for `salt-call --help` and friends
        "procps",
        "gpg",
        "less",
    )
    changes: tuple[str, ...] = (
        f"ENV PATH={DEFAULT_PATH}",
        "ENV LANG=C.UTF-8",
        "ENV container=podman",
        "STOPSIGNAL SIGRTMIN+3",
        'CMD ["/sbin/init"]',
    )

    def setup_script(self) -> str:
        return SETUP_SCRIPT.format(
            mirror=self.mirror, suite=self.suite, security_mirror=self.security_mirror
        )

    def sha256(self) -> str:
        recipe = {
            "suite": self.suite,
            "mirror": self.mirror,
            "security_mirror": self.security_mirror,
            "packages": sorted(self.packages),
            "changes": list(self.changes),
            "setup": self.setup_script(),
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LabBase:
    ref: str
    image_id: str
    recipe_sha256: str
    built: bool  # False: the storage had it, with this recipe
    took_s: float


@dataclass(frozen=True)
class Wheelhouse:
    folder: Path
    requirements_sha256: str
    wheels: list[str] = field(default_factory=list)
    built: bool = False  # False: it was there for these requirements
    took_s: float = 0.0


def lab_dir(state: Path) -> Path:
    return Path(state).absolute() / "lab"


def ensure_lab_base_image(
    podman: PodmanResource,
    state: Path,
    *,
    recipe: BaseRecipe = BaseRecipe(),  # noqa: B008 - frozen, never changed
    log: LogSink | None = None,
) -> LabBase:
    """The lab's base image in the project's podman storage, made when it is missing or its
    recipe changed (debootstrap about 60 s, import about 5 s), else found (a podman inspect)."""
    started = time.monotonic()
    wanted = recipe.sha256()

    def current() -> LabBase | None:
        image_id = podman.image_id(recipe.ref)
        if image_id and podman.labels(recipe.ref).get(RECIPE_LABEL) == wanted:
            return LabBase(recipe.ref, image_id, wanted, False, time.monotonic() - started)
        return None

    found = current()
    if found:
        return found
    with podman._lock("lab-base"):
        found = current()  # another run made it while this one waited
        if found:
            return found
        old = podman.image_id(recipe.ref)
        image_id = _make_base(podman, lab_dir(state), recipe, wanted, log)
        if old and old != image_id:
            # The old base is untagged now; role images built on it keep it alive (rmi fails).
            podman.run(["rmi", old], log=discard, check=False)
    return LabBase(recipe.ref, image_id, wanted, True, time.monotonic() - started)


def _make_base(
    podman: PodmanResource, lab: Path, recipe: BaseRecipe, wanted: str, log: LogSink | None
) -> str:
    cache = lab / "debootstrap-cache"  # the .debs, kept: a changed recipe rebuilds faster
    cache.mkdir(parents=True, exist_ok=True)
    return podman.debootstrap_image(
        ref=recipe.ref,
        work=lab / "base",
        suite=recipe.suite,
        mirror=recipe.mirror,
        packages=recipe.packages,
        changes=[*recipe.changes, f"LABEL {RECIPE_LABEL}={wanted}"],
        message=f"coop-infra lab base: debootstrap {recipe.suite} minbase + systemd",
        what="the lab base image",
        setup_script=recipe.setup_script(),
        cache_dir=cache,
        log=log,
    )


def ensure_wheelhouse(
    requirements: Path,
    state: Path,
    *,
    python: str = DEBIAN_PYTHON,
    log: LogSink | None = None,
    timeout_s: float = 1800.0,
) -> Wheelhouse:
    """`<state>/lab/wheelhouse`: a wheel for every line of `requirements` (`pip wheel --no-deps`:
    the file is the whole closure, and an install from the wheelhouse with `--no-index` proves
    it), built with Debian's Python, once per content of the requirements file, from files pip
    checked against the file's sha256 pins."""
    started = time.monotonic()
    build = Path(requirements).with_name(BUILD_REQUIREMENTS)
    text = Path(requirements).read_text() + "\0" + build.read_text()
    wanted = hashlib.sha256(text.encode()).hexdigest()
    lab = lab_dir(state)
    folder = lab / "wheelhouse"
    stamp = folder / ".requirements.sha256"
    if stamp.is_file() and stamp.read_text().strip() == wanted:
        return Wheelhouse(folder, wanted, _wheels(folder), False, time.monotonic() - started)
    lab.mkdir(parents=True, exist_ok=True)
    with _locked(lab / "wheelhouse.lock"):  # image builds of several groups at once
        if stamp.is_file() and stamp.read_text().strip() == wanted:
            return Wheelhouse(folder, wanted, _wheels(folder), False, time.monotonic() - started)
        _build_wheelhouse(requirements, build, lab, folder, wanted, python, log, timeout_s)
    return Wheelhouse(folder, wanted, _wheels(folder), True, time.monotonic() - started)


def _build_wheelhouse(
    requirements: Path,
    build: Path,
    lab: Path,
    folder: Path,
    wanted: str,
    python: str,
    log: LogSink | None,
    timeout_s: float,
) -> None:
    venv = lab / "pip-venv"
    new = lab / "wheelhouse.new"
    shutil.rmtree(new, ignore_errors=True)
    try:
        if not (venv / "bin" / "pip").exists():
            run_cli([python, "-m", "venv", str(venv)], log=log, timeout_s=300)
        # No other wheels: every file comes from the index and is checked against the file's
        # hashes (hash-checking mode); a wheel built here earlier would not match them. The
        # sdists are built with the build requirements installed first, hashes checked, and no
        # build isolation (which would download them unchecked).
        env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_FIND_LINKS": ""}
        pip = venv / "bin" / "pip"
        run_cli([pip, "install", "-q", "--require-hashes", "-r", build], env=env, log=log)
        run_cli(
            [pip, "wheel", "--no-deps", "--no-build-isolation", "-r", requirements, "-w", new],
            env=env,
            log=log,
            timeout_s=timeout_s,
        )
    except CliError as err:
        shutil.rmtree(new, ignore_errors=True)
        raise PodmanError.from_cli(
            f"building the salt wheelhouse from {requirements} failed: {err}", err
        ) from err
    (new / ".requirements.sha256").write_text(wanted + "\n")
    old = lab / "wheelhouse.old"
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wheels(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.whl"))


__all__ = [
    "LAB_BASE_IMAGE",
    "RECIPE_LABEL",
    "BaseRecipe",
    "LabBase",
    "Wheelhouse",
    "ensure_lab_base_image",
    "ensure_wheelhouse",
    "lab_dir",
]
