"""PackerResource: `packer validate` and `packer build -machine-readable` on the repo's packer/
templates, through the shared CLI runner, returning the artifacts that the template's manifest
post-processor recorded (for the openstack builder: the new image's id and name).

`build_lab` builds a role group's lab image (`-only=docker.lab`: Packer's docker builder driving
podman through Debian's podman-docker shim, with the project's podman config), checks that the
artifact id Packer printed, the manifest's and `podman image inspect localhost/coop-<group>:lab`
agree, and returns that id. A group whose inputs (its salt files, bake.sh, the template, the
base image, salt-requirements.txt) did not change is not rebuilt: the image carries a hash of
them as a label.

Machine-readable lines (`timestamp,target,type,data...`) are logged as the text a person would
see (`ui` lines decoded, commas and newlines restored); a failure raises `PackerError` with
Packer's own error lines. Variables go in a `.pkrvars.json` file of the run, never on the
command line; secrets reach Packer only through the environment and are redacted from the log.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from resources.cli_runner import CliError, LogSink, ToolError, default_log, discard, run_cli
from resources.paths import REPO_ROOT, state_dir
from resources.podman import PodmanResource

LAB_SOURCE = "docker.lab"
INPUTS_LABEL = "org.coop-infra.inputs"
DOCKER_SHIM = "/usr/bin/docker"  # Debian's podman-docker: `exec podman "$@"`


class PackerError(ToolError):
    """Packer failed or its output could not be read; the message carries Packer's errors."""


@dataclass(frozen=True)
class PackerArtifact:
    build_name: str  # the source's name (`role` for source.openstack.role)
    builder_type: str  # openstack, file, docker, ...
    artifact_id: str  # the openstack builder: the image id
    image_name: str  # custom_data.image_name, else the artifact id
    build_time: int
    custom_data: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PackerBuild:
    artifacts: list[PackerArtifact]
    manifest: str
    run_uuid: str
    duration_s: float
    log_lines: int
    # `artifact,N,id` lines of the machine-readable output: {target: [id of artifact 0, 1...]}
    printed_ids: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class LabImage:
    group: str
    tag: str  # localhost/coop-<group>:lab
    image_id: str  # podman's id of the tag (= Packer's artifact id when built)
    inputs_sha256: str
    built: bool  # False: the image had these inputs already
    took_s: float
    roles: list[str] = field(default_factory=list)


def lab_tag(group: str) -> str:
    return f"localhost/coop-{group}:lab"


def lab_inputs_sha256(
    *,
    group: str,
    roles: Sequence[str],
    packer_dir: Path,
    salt_tree: Path,
    salt_files: Sequence[Path],
    base_image_id: str,
    template: str = "coop.pkr.hcl",
    role_states: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """A hash of what a group's lab image is made of: the group and its roles (and the states
    each applies, when given), the base image's id, the template, bake.sh,
    salt-requirements.txt and salt-build-requirements.txt, and the group's salt files (paths
    relative to the tree, and contents)."""
    digest = hashlib.sha256()
    head: dict[str, object] = {"group": group, "roles": list(roles), "base": base_image_id}
    if role_states is not None:
        head["states"] = {role: list(states) for role, states in sorted(role_states.items())}
    digest.update(json.dumps(head, sort_keys=True).encode() + b"\0")
    for path in (
        packer_dir / template,
        packer_dir / "scripts" / "bake.sh",
        packer_dir / "salt-requirements.txt",
        packer_dir / "salt-build-requirements.txt",
    ):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for path in sorted(Path(p) for p in salt_files):
        digest.update(b"salt/" + str(path.relative_to(salt_tree)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def decode_machine_line(line: str) -> tuple[str, str, list[str]] | None:
    """`timestamp,target,type,data...` -> (target, type, data), None for any other line."""
    parts = line.split(",")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    data = [
        p.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").replace("\\r", "\r")
        for p in parts[3:]
    ]
    return parts[1], parts[2], data


def read_manifest(path: Path) -> tuple[str, list[PackerArtifact]]:
    """The artifacts of the manifest's last run (the file keeps every run it has seen)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PackerError(
            f"Packer finished but wrote no manifest at {path}: the template needs a"
            " `manifest` post-processor whose output is var.manifest"
        ) from None
    except json.JSONDecodeError as exc:
        raise PackerError(f"the manifest {path} is not JSON: {exc}") from None
    run = data.get("last_run_uuid", "")
    artifacts = []
    for build in data.get("builds", []):
        if build.get("packer_run_uuid") != run:
            continue
        custom = {str(k): str(v) for k, v in (build.get("custom_data") or {}).items()}
        artifact_id = str(build.get("artifact_id", ""))
        artifacts.append(
            PackerArtifact(
                build_name=str(build.get("name", "")),
                builder_type=str(build.get("builder_type", "")),
                artifact_id=artifact_id,
                image_name=custom.get("image_name") or artifact_id,
                build_time=int(build.get("build_time") or 0),
                custom_data=custom,
                files=[f.get("name", "") for f in build.get("files") or []],
            )
        )
    return run, artifacts


class PackerResource(dg.ConfigurableResource):
    """Packer on the repo's packer/ templates."""

    binary: str = Field(default="packer", description="The Packer CLI, on PATH or a path.")
    template_dir: str = Field(
        default="", description="The templates' folder. Empty: the repo's packer/."
    )
    work_dir: str = Field(
        default="",
        description="Where each build's variables and manifest go. Empty: .state/packer.",
    )
    salt_tree: str = Field(
        default="", description="The salt state tree baked into images. Empty: the repo's salt/."
    )
    lab_ca_bundle: str = Field(
        default="/etc/ssl/certs/ca-certificates.crt",
        description="Lab builds: this machine's CA bundle, which the bake's downloads (npm, pip)"
        " trust, mounted into the build container only (HTTPS is intercepted here). Empty: none.",
    )

    def folder(self) -> Path:
        return Path(self.template_dir).absolute() if self.template_dir else REPO_ROOT / "packer"

    def states_dir(self) -> Path:
        return Path(self.salt_tree).absolute() if self.salt_tree else REPO_ROOT / "salt"

    def _work(self) -> Path:
        root = Path(self.work_dir).absolute() if self.work_dir else state_dir() / "packer"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _template(self, template: str) -> Path:
        path = self.folder() / template
        if not path.is_file():
            raise PackerError(f"no Packer template {path}")
        return path

    def _vars_file(self, stem: str, variables: Mapping[str, Any]) -> Path:
        path = self._work() / f"{stem}.pkrvars.json"
        path.write_text(json.dumps(dict(variables), indent=2, sort_keys=True) + "\n")
        return path

    def _args(
        self, verb: str, template: Path, vars_file: Path, var_files: Sequence[Path]
    ) -> list[str]:
        args = [self.binary, verb]
        for extra in var_files:
            extra = Path(extra) if Path(extra).is_absolute() else self.folder() / extra
            if not extra.is_file():
                raise PackerError(f"Packer variables file {extra} is missing")
            args.append(f"-var-file={extra}")
        args.append(f"-var-file={vars_file}")
        return args

    def _run(
        self,
        args: list[str],
        *,
        env: Mapping[str, str] | None,
        redact: Sequence[str],
        log: LogSink | None,
    ):
        sink = log or default_log()
        errors: list[str] = []
        printed: dict[str, list[str]] = {}

        def emit(line: str) -> None:
            decoded = decode_machine_line(line)
            if decoded is None:
                sink(line)
                return
            target, kind, data = decoded
            if kind == "ui" and len(data) >= 2:
                text = data[1].strip("\n")
                if data[0] == "error":
                    errors.append(text)
                if text:
                    sink(text)
            elif kind == "error" and data:
                errors.append(data[0])
                sink(data[0])
            elif kind == "artifact" and len(data) >= 3 and data[1] == "id":
                printed.setdefault(target, []).append(data[2])
                sink(f"artifact of {target}: {data[2]}")

        try:
            result = run_cli(
                args,
                cwd=self.folder(),
                env={"CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1", **(env or {})},
                log=emit,
                redact=redact,
                check=True,
            )
        except CliError as err:
            detail = "\n".join(errors) or "\n".join(err.tail)
            raise PackerError.from_cli(
                f"`{err.command}` failed ({err.returncode}):\n{detail}", err
            ) from err
        return result, printed

    def validate(
        self,
        *,
        template: str,
        variables: Mapping[str, Any],
        var_files: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        redact: Sequence[str] = (),
        syntax_only: bool = False,
        only: Sequence[str] = (),
        log: LogSink | None = None,
    ) -> None:
        """`packer validate`. The openstack builder authenticates to its cloud while preparing,
        so a full validation needs the cloud (or a fake of it); `syntax_only` needs nothing."""
        path = self._template(template)
        stem = f"validate-{path.name.split('.')[0]}-{time.time_ns()}"
        vars_file = self._vars_file(stem, variables)
        args = self._args("validate", path, vars_file, var_files)
        if syntax_only:
            args.append("-syntax-only")
        args += [f"-only={name}" for name in only]
        try:
            self._run([*args, str(path)], env=env, redact=redact, log=log)
        finally:
            vars_file.unlink(missing_ok=True)

    def build(
        self,
        *,
        template: str,
        variables: Mapping[str, Any],
        var_files: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        redact: Sequence[str] = (),
        only: Sequence[str] = (),
        skip: Sequence[str] = (),
        log: LogSink | None = None,
    ) -> PackerBuild:
        """`packer build -machine-readable`; the artifacts from the manifest the template's
        post-processor wrote at `var.manifest` (this resource picks the path). `only`: the
        sources to build (`-only=docker.lab`), else every source of the template but those in
        `skip` (`-except=docker.lab`)."""
        path = self._template(template)
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6}"
        stem = f"build-{path.name.split('.')[0]}-{stamp}"
        manifest = self._work() / f"{stem}.manifest.json"
        vars_file = self._vars_file(stem, {**variables, "manifest": str(manifest)})
        args = self._args("build", path, vars_file, var_files)
        args += [f"-only={name}" for name in only]
        args += [f"-except={name}" for name in skip]
        started = time.monotonic()
        result, printed = self._run(
            [*args, "-machine-readable", "-color=false", str(path)],
            env=env,
            redact=redact,
            log=log,
        )
        run_uuid, artifacts = read_manifest(manifest)
        if not artifacts:
            raise PackerError(f"Packer finished but the manifest {manifest} lists no artifact")
        return PackerBuild(
            artifacts=artifacts,
            manifest=str(manifest),
            run_uuid=run_uuid,
            duration_s=time.monotonic() - started,
            log_lines=len(result.lines),
            printed_ids=printed,
        )

    # --- the lab ----------------------------------------------------------------------------

    def docker_shim_dir(self) -> Path:
        """A folder whose `docker` is Debian's podman-docker shim, to put first on Packer's PATH
        (a real docker CLI elsewhere on PATH fails against podman at commit)."""
        if not Path(DOCKER_SHIM).is_file():
            raise PackerError(
                f"{DOCKER_SHIM} is missing: `apt-get install podman-docker` (scripts/"
                "apt-packages.txt): Packer's docker builder drives podman through it"
            )
        folder = self._work() / "docker-shim"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "docker"
        if not link.is_symlink() or os.readlink(link) != DOCKER_SHIM:
            link.unlink(missing_ok=True)
            link.symlink_to(DOCKER_SHIM)
        return folder

    def build_lab(
        self,
        *,
        group: str,
        roles: Sequence[str],
        podman: PodmanResource,
        base_image: str,
        base_image_id: str,
        wheelhouse: Path,
        salt_files: Sequence[Path] | None = None,
        role_states: Mapping[str, Sequence[str]] | None = None,
        template: str = "coop.pkr.hcl",
        git_commit: str = "",
        force: bool = False,
        log: LogSink | None = None,
    ) -> LabImage:
        """The group's lab image `localhost/coop-<group>:lab`, built by `packer build
        -only=docker.lab` from `base_image` (in podman's storage, never pulled) unless the image
        there already has these inputs (`force`: build anyway). `salt_files`: the files of the
        salt tree the group's image depends on (None: the whole tree); `role_states`: the
        states of the group's roles, from the role catalogue (hashed in its place)."""
        started = time.monotonic()
        tree = self.states_dir()
        inputs = self._lab_inputs(
            tree,
            group=group,
            roles=roles,
            salt_files=salt_files,
            base_image_id=base_image_id,
            template=template,
            role_states=role_states,
        )
        tag = lab_tag(group)
        old = podman.image_id(tag)
        if old and not force and podman.labels(tag).get(INPUTS_LABEL) == inputs:
            return LabImage(group, tag, old, inputs, False, time.monotonic() - started, list(roles))
        # One build of a group at a time on this storage (the tag is the group's): a run that
        # waited finds the image another one just built.
        with podman._lock(f"lab-image-{group}"):
            old = podman.image_id(tag)
            if old and not force and podman.labels(tag).get(INPUTS_LABEL) == inputs:
                took = time.monotonic() - started
                return LabImage(group, tag, old, inputs, False, took, list(roles))
            image_id = self._build_lab(
                group,
                roles,
                podman,
                base_image,
                tree,
                wheelhouse,
                inputs,
                template,
                git_commit,
                log,
            )
        if old and old != image_id:
            # the previous image, untagged now; a container still running it keeps it (rmi fails)
            podman.run(["rmi", old], log=discard, check=False)
        return LabImage(group, tag, image_id, inputs, True, time.monotonic() - started, list(roles))

    def _lab_inputs(
        self,
        tree: Path,
        *,
        group: str,
        roles: Sequence[str],
        salt_files: Sequence[Path] | None,
        base_image_id: str,
        template: str,
        role_states: Mapping[str, Sequence[str]] | None,
    ) -> str:
        """The hash of the group's lab image inputs (`salt_files` None: the whole salt `tree`)."""
        if salt_files is None:
            salt_files = [p for p in tree.rglob("*") if p.is_file()]
        return lab_inputs_sha256(
            group=group,
            roles=roles,
            packer_dir=self.folder(),
            salt_tree=tree,
            salt_files=salt_files,
            base_image_id=base_image_id,
            template=template,
            role_states=role_states,
        )

    def _build_lab(
        self,
        group: str,
        roles: Sequence[str],
        podman: PodmanResource,
        base_image: str,
        tree: Path,
        wheelhouse: Path,
        inputs: str,
        template: str,
        git_commit: str,
        log: LogSink | None,
    ) -> str:
        tag = lab_tag(group)
        path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        env = {**podman.env(), "PATH": f"{self.docker_shim_dir()}:{path}"}
        build = self.build(
            template=template,
            variables={
                "group": group,
                "image_name": tag,
                "source_image_name": "",  # the openstack source's: not built here
                "flavor": "",
                "roles": list(roles),
                "salt_tree": str(tree),
                "lab_base_image": base_image,
                "lab_ca_bundle": self.lab_ca_bundle if Path(self.lab_ca_bundle).is_file() else "",
                "salt_wheelhouse": str(Path(wheelhouse).absolute()),
                "lab_inputs_sha256": inputs,
                "git_commit": git_commit,
            },
            env=env,
            only=[LAB_SOURCE],
            log=log,
        )
        built = [a for a in build.artifacts if a.build_name == "lab" and a.builder_type == "docker"]
        printed = build.printed_ids.get(LAB_SOURCE, [])
        if not built or not printed:
            raise PackerError(
                f"Packer built {group} but reported no docker.lab artifact (manifest: "
                f"{[a.artifact_id for a in build.artifacts]}, printed: {build.printed_ids})"
            )
        artifact_id = _bare(built[-1].artifact_id)
        image_id = podman.image_id(tag)
        if _bare(printed[0]) != artifact_id or image_id != artifact_id:
            raise PackerError(
                f"the {group} lab image does not match Packer's artifact: Packer printed"
                f" {printed[0]}, its manifest says {built[-1].artifact_id}, and podman has"
                f" {tag} as {image_id}"
            )
        labels = podman.labels(tag)
        if labels.get(INPUTS_LABEL) != inputs:
            raise PackerError(f"{tag} lacks its inputs label ({INPUTS_LABEL}): {labels}")
        return image_id


def _bare(image_id: str) -> str:
    return image_id.strip().removeprefix("sha256:")
