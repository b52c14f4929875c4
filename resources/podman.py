"""PodmanResource: podman with the project's own containers config, for building app images.

Podman here runs with configuration files of the project's own (TOOLING.md, "Podman"), named by
`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF` and `CONTAINERS_REGISTRIES_CONF` on every call:
runc (crun fails on this kind of machine), cgroupfs, rlimits the process may set, and storage,
run and temporary folders under `root` (the state folder's `podman/`), so nothing is shared with
another podman user of the machine. Builds run without a network (`--network none`): no bridge,
no iptables rules, no ip_forward; a build step that needs packages takes them from the build
context (a wheelhouse), as TOOLING.md advises.

The base image every app starts FROM is made here too (Docker Hub is not reachable): `debootstrap`
of a minimal Debian with Python, imported with `podman import`, built once and kept in the
storage; later builds find it there.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from resources.cli_runner import CliError, ToolError, discard, run_cli
from resources.paths import state_dir
from resources.registry import Endpoint

LogSink = Callable[[str], object]
PODMAN_ROOT_ENV = "INFRA_PODMAN_ROOT"
BASE_LABEL = "org.coop-infra.base"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"  # debootstrap checks with it


class PodmanError(ToolError):
    """podman failed; from a failed command, that command's facts."""


@dataclass(frozen=True)
class BaseImage:
    ref: str
    image_id: str
    built: bool  # False: it was already in the storage
    took_s: float


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    took_s: float


@dataclass(frozen=True)
class Pushed:
    destination: str
    digest: str
    took_s: float


@dataclass(frozen=True)
class Runtime:
    # Installed with apt-get in the new system (debootstrap's --include does not resolve a
    # package as deep as npm's: "Failure while configuring base packages", measured).
    packages: tuple[str, ...]
    version_command: str  # prints the runtime's version, x.y.z


# The standard build's runtimes, Debian's own (bookworm: Node 18, Python 3.11).
RUNTIMES = {
    "node": Runtime(("nodejs", "npm"), "node --version | sed 's/^v//'"),
    "python": Runtime(
        ("python3", "python3-venv", "python3-pip"),
        "python3 -c 'import platform; print(platform.python_version())'",
    ),
}
RUNTIME_LABEL = "org.coop-infra.runtime-version"


@dataclass(frozen=True)
class RuntimeImage:
    runtime: str
    ref: str
    image_id: str
    version: str


class PodmanResource(dg.ConfigurableResource):
    """The podman CLI, configured by files of the project's own under `root`."""

    root: str = Field(
        default="",
        description="Podman's configs, storage and run folders. Empty: $INFRA_PODMAN_ROOT, else"
        " the state folder's podman/.",
    )
    base_image: str = Field(
        default="localhost/coop-base:bookworm",
        description="The image apps build FROM (their Dockerfile's BASE_IMAGE build argument).",
    )
    debian_suite: str = Field(default="bookworm", description="The base image's Debian release.")
    debian_mirror: str = Field(default="http://deb.debian.org/debian")
    base_packages: list[str] = Field(
        default=["python3", "ca-certificates"],
        description="Packages debootstrap adds to the minimal base.",
    )
    storage_driver: str = Field(
        default="overlay",
        description="containers/storage driver: `overlay` (fast, needs a filesystem that is not"
        " itself overlayfs) or `vfs` (works anywhere, copies every layer).",
    )
    build_network: str = Field(
        default="none",
        description="podman build --network: `none` (the default) creates no bridge and no"
        " iptables rules; `host` lets RUN steps use the machine's network.",
    )
    timeout_s: float = Field(default=1800.0, description="The longest one podman command may take.")

    # --- configuration ----------------------------------------------------------------------

    def folder(self) -> Path:
        if self.root:
            return Path(self.root).absolute()
        # $INFRA_PODMAN_ROOT: one storage (and one base image) for several state folders.
        return Path(os.environ.get(PODMAN_ROOT_ENV) or state_dir() / "podman").absolute()

    def env(self) -> dict[str, str]:
        """The environment every podman call gets: the project's config files (written here
        when missing or changed)."""
        root = self.folder()
        for sub in ("storage", "run", "tmp", "networks", "volumes"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        files = {
            "containers.conf": _containers_conf(root),
            "storage.conf": _storage_conf(root, self.storage_driver),
            "registries.conf": 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n',
        }
        files["no-auth.json"] = '{"auths": {}}\n'
        for name, text in files.items():
            path = root / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
        return {
            "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
            "TMPDIR": str(root / "tmp"),
            # Never a developer's own registry logins: each push names its auth file.
            "REGISTRY_AUTH_FILE": str(root / "no-auth.json"),
        }

    def run(
        self,
        args: list[str],
        *,
        log: LogSink | None = None,
        redact: list[str] | None = None,
        check: bool = True,
        timeout_s: float | None = None,
    ):
        """`podman ARGS` with the project's config (the CLI runner: each line to `log`)."""
        env = self.env()
        try:
            result = run_cli(
                ["podman", *args],
                env=env,
                log=log,
                redact=redact or [],
                check=check,
                timeout_s=timeout_s or self.timeout_s,
            )
        except CliError:
            self._release_storage(env)
            raise
        if result.returncode != 0:
            self._release_storage(env)
        return result

    @staticmethod
    def _release_storage(env: Mapping[str, str]) -> None:
        """A podman command that fails leaves its overlay storage's home bind-mounted (measured:
        `<root>/storage/overlay` stays a mount point, and the folder cannot be removed). The next
        podman command that ends well unmounts it; run a cheap one."""
        try:
            run_cli(["podman", "images", "-q"], env=env, log=discard, check=False, timeout_s=60)
        except CliError:
            pass

    # --- images -----------------------------------------------------------------------------

    def available(self) -> bool:
        """Whether podman is installed here (a Dagster host without it takes the base images
        from the registry: infra_assets/delivery/app_images.py)."""
        return shutil.which("podman") is not None

    def image_id(self, ref: str) -> str | None:
        result = self.run(
            ["image", "inspect", "--format", "{{.Id}}", ref], log=discard, check=False
        )
        if result.returncode != 0:
            return None
        return result.lines[-1].strip() if result.lines else None

    def labels(self, ref: str) -> dict[str, str]:
        result = self.run(["image", "inspect", "--format", "{{json .Labels}}", ref], log=discard)
        return json.loads(result.lines[-1]) or {}

    def remove_image(self, ref: str) -> None:
        self.run(["rmi", "--force", "--ignore", ref], log=discard, check=False)

    def ensure_base_image(self, *, log: LogSink | None = None) -> BaseImage:
        """The base image, made once (debootstrap + podman import, about 30-40 s), then found."""
        started = time.monotonic()
        existing = self.image_id(self.base_image)
        if existing:
            return BaseImage(self.base_image, existing, False, time.monotonic() - started)
        with self._lock("base"):
            existing = self.image_id(self.base_image)  # another run made it while we waited
            if existing:
                return BaseImage(self.base_image, existing, False, time.monotonic() - started)
            image_id = self._make_base_image(log)
        return BaseImage(self.base_image, image_id, True, time.monotonic() - started)

    def runtime_image_ref(self, runtime: str) -> str:
        return f"localhost/coop-{runtime}:{self.debian_suite}"

    def ensure_runtime_image(self, runtime: str, *, log: LogSink | None = None) -> RuntimeImage:
        """The standard build's base image for `runtime` (`node`, `python`): Debian's own
        runtime, debootstrapped once like the base image, labelled with the runtime's version."""
        spec = RUNTIMES.get(runtime)
        if spec is None:
            raise PodmanError(
                f"no runtime {runtime!r}: the standard build knows {', '.join(sorted(RUNTIMES))}"
            )
        ref = self.runtime_image_ref(runtime)
        with self._lock(f"runtime-{runtime}"):
            image_id = self.image_id(ref)
            if not image_id:
                image_id = self.debootstrap_image(
                    ref=ref,
                    work=self.folder() / f"runtime-{runtime}",
                    suite=self.debian_suite,
                    mirror=self.debian_mirror,
                    packages=["ca-certificates"],
                    setup_script="apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get"
                    f" install -q -y --no-install-recommends {' '.join(spec.packages)}",
                    changes=[
                        f"ENV PATH={DEFAULT_PATH}",
                        "ENV LANG=C.UTF-8",
                        f"LABEL {BASE_LABEL}={self.debian_suite}",
                        'CMD ["/bin/bash"]',
                    ],
                    message=f"coop-infra {runtime} base: debootstrap {self.debian_suite} minbase"
                    f" + {' '.join(spec.packages)}",
                    what=f"the {runtime} base image",
                    label_probes={RUNTIME_LABEL: spec.version_command},
                    log=log,
                )
        version = self.labels(ref).get(RUNTIME_LABEL, "")
        if not re.fullmatch(r"\d+\.\d+\.\d+", version):
            raise PodmanError(
                f"{ref} has no {runtime} version in its {RUNTIME_LABEL} label"
                f" ({version!r}): remove it (podman rmi) to have it made again"
            )
        return RuntimeImage(runtime, ref, image_id, version)

    def _make_base_image(self, log: LogSink | None) -> str:
        return self.debootstrap_image(
            ref=self.base_image,
            work=self.folder() / "base",
            suite=self.debian_suite,
            mirror=self.debian_mirror,
            packages=self.base_packages,
            changes=[
                f"ENV PATH={DEFAULT_PATH}",
                "ENV LANG=C.UTF-8",
                f"LABEL {BASE_LABEL}={self.debian_suite}",
                'CMD ["/bin/bash"]',
            ],
            message=f"coop-infra base: debootstrap {self.debian_suite} minbase",
            what="the base image",
            log=log,
        )

    def debootstrap_image(
        self,
        *,
        ref: str,
        work: Path,
        suite: str,
        mirror: str,
        packages: Sequence[str],
        changes: Sequence[str],
        message: str,
        what: str,
        setup_script: str | None = None,
        cache_dir: Path | None = None,
        label_probes: Mapping[str, str] | None = None,
        log: LogSink | None = None,
    ) -> str:
        """A minimal Debian made with debootstrap in `work` (with `packages`, `setup_script` run
        in it by chroot, no package caches or lists left), `podman import`ed as `ref` with
        `changes` (and a label per `label_probes`, each a command's output in the new system):
        the image id. The app bases and the lab base are all made here."""
        self._check_debootstrap_tools()
        rootfs = work / "rootfs"
        tarball = work / "rootfs.tar"
        if work.exists():
            _unmount_under(work)  # debootstrap's /proc and /sys, when it was killed
            shutil.rmtree(work)  # what a failed attempt left
        work.mkdir(parents=True)
        cache = [f"--cache-dir={cache_dir}"] if cache_dir else []
        try:
            self._debootstrap(rootfs, suite, mirror, packages, cache, log)
            if setup_script:
                run_cli(["chroot", str(rootfs), "/bin/sh", "-c", setup_script], log=log)
            changes = list(changes)
            changes += self._probed_labels(rootfs, label_probes or {})
            self._drop_package_files(rootfs)
            run_cli(
                ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."], log=log
            )
            shutil.rmtree(rootfs)
            args = ["import"]
            for change in changes:
                args += ["--change", change]
            self.run([*args, "--message", message, str(tarball), ref], log=log)
        except CliError as err:
            raise PodmanError.from_cli(f"making {what} {ref} failed: {err}", err) from err
        finally:
            _unmount_under(work)  # a debootstrap killed by the timeout leaves /proc mounted
            shutil.rmtree(work, ignore_errors=True)
        image_id = self.image_id(ref)
        if not image_id:
            raise PodmanError(f"{ref} is not in the storage after podman import")
        return image_id

    @staticmethod
    def _check_debootstrap_tools() -> None:
        """Debian's archive keys and debootstrap are installed here."""
        if not Path(DEBIAN_KEYRING).is_file():
            raise PodmanError(
                f"{DEBIAN_KEYRING} is missing: install the debian-archive-keyring package"
                " (scripts/apt-packages.txt)"
            )
        if shutil.which("debootstrap") is None:
            raise PodmanError(
                "debootstrap is not installed: `apt-get install debootstrap` (listed in"
                " scripts/apt-packages.txt; `make setup` installs it)"
            )

    def _debootstrap(
        self,
        rootfs: Path,
        suite: str,
        mirror: str,
        packages: Sequence[str],
        cache: Sequence[str],
        log: LogSink | None,
    ) -> None:
        """A minimal Debian `suite` with `packages` into `rootfs`, checked with Debian's keys."""
        run_cli(
            [
                "debootstrap",
                "--variant=minbase",
                # Every Release file checked against Debian's keys, never skipped: without
                # this file debootstrap fails instead of going on unverified.
                f"--keyring={DEBIAN_KEYRING}",
                f"--include={','.join(packages)}",
                *cache,
                suite,
                str(rootfs),
                mirror,
            ],
            log=log,
            timeout_s=self.timeout_s,
        )

    @staticmethod
    def _probed_labels(rootfs: Path, label_probes: Mapping[str, str]) -> list[str]:
        """A `LABEL` change per probe: its command's output in the new system."""
        changes = []
        for label, command in label_probes.items():  # a label from what was installed
            probed = run_cli(["chroot", str(rootfs), "/bin/sh", "-c", command], log=discard)
            changes.append(f"LABEL {label}={probed.output.strip()}")
        return changes

    @staticmethod
    def _drop_package_files(rootfs: Path) -> None:
        """What an image does not need: downloaded packages and package lists (~90 MB)."""
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / leftover).glob("*"):
                if entry.is_file():
                    entry.unlink()

    def build(
        self,
        *,
        context: Path,
        tag: str,
        dockerfile: str = "Dockerfile",
        build_args: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        log: LogSink | None = None,
    ) -> BuiltImage:
        """`podman build` of `context` into `tag`, FROM the base image (never pulled)."""
        if not (Path(context) / dockerfile).is_file():
            raise PodmanError(f"no {dockerfile} at the top of the build context {context}")
        started = time.monotonic()
        iidfile = self.folder() / "tmp" / f"iid-{os.getpid()}-{time.monotonic_ns()}"
        args = [
            "build",
            "--pull=never",
            f"--network={self.build_network}",
            "--layers",
            "--force-rm",
            "--iidfile", str(iidfile),
            "-f", str(Path(context) / dockerfile),
            "-t", tag,
            "--build-arg", f"BASE_IMAGE={self.base_image}",
        ]  # fmt: skip
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        try:
            self.run([*args, str(context)], log=log)
            image_id = iidfile.read_text().strip().removeprefix("sha256:")
        except CliError as err:
            raise PodmanError.from_cli(f"podman build of {tag} failed: {err}", err) from err
        finally:
            iidfile.unlink(missing_ok=True)
        return BuiltImage(tag, image_id, time.monotonic() - started)

    def push(
        self,
        *,
        image: str,
        destination: str,
        registry: Endpoint,
        manifest_format: str | None = None,
        log: LogSink | None = None,
    ) -> Pushed:
        """`podman push image docker://destination`; returns the digest the registry stored.

        The credentials go in an auth file of the call's own (0600, removed after), never on
        the command line; the password is redacted from every line logged.
        """
        started = time.monotonic()
        with self._auth_file(registry) as auth, _temp_path(self.folder() / "tmp") as digestfile:
            args = [
                "push",
                "--authfile", str(auth),
                f"--tls-verify={'true' if registry.tls else 'false'}",
                "--digestfile", str(digestfile),
            ]  # fmt: skip
            if registry.tls and registry.ca_file:
                # podman trusts the *.crt files of a folder: the registry's CA file's own.
                args += ["--cert-dir", str(Path(registry.ca_file).parent)]
            if manifest_format:
                args += ["--format", manifest_format]
            try:
                self.run(
                    [*args, image, f"docker://{destination}"],
                    log=log,
                    redact=[registry.password],
                )
            except CliError as err:
                raise PodmanError.from_cli(
                    f"podman push to {destination} failed: {err}", err
                ) from err
            digest = digestfile.read_text().strip()
        return Pushed(destination, digest, time.monotonic() - started)

    # --- helpers ----------------------------------------------------------------------------

    @contextmanager
    def _auth_file(self, registry: Endpoint) -> Iterator[Path]:
        token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
        auths = {"auths": {registry.host: {"auth": token}}} if registry.username else {"auths": {}}
        with _temp_path(self.folder() / "tmp") as path:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(auths, out)
            yield path

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        path = self.folder() / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _temp_path(folder: Path) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _containers_conf(root: Path) -> str:
    return f"""\
# Written by coop-infra (resources/podman.py): podman for this project only.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
tmp_dir = "{root}/tmp/libpod"
volume_path = "{root}/volumes"
static_dir = "{root}/storage/libpod"

[network]
network_backend = "netavark"
network_config_dir = "{root}/networks"
"""


def _storage_conf(root: Path, driver: str) -> str:
    return f"""\
# Written by coop-infra (resources/podman.py).
[storage]
driver = "{driver}"
graphroot = "{root}/storage"
runroot = "{root}/run"
"""


def _unmount_under(folder: Path) -> None:
    """Unmount what is mounted under `folder`, deepest first (a killed debootstrap leaves its
    chroot's /proc and /sys mounted, and removing the folder would then fail)."""
    prefix = str(folder.absolute()) + "/"
    with open("/proc/self/mounts") as mounts:
        # /proc/self/mounts writes a space in a path as \040
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    points = [point for point in points if point.startswith(prefix)]
    for point in sorted(points, reverse=True):
        run_cli(["umount", "--lazy", point], log=discard, check=False)
