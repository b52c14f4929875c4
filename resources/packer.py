"""PackerResource: `packer validate` and `packer build -machine-readable` on the repo's packer/
templates, through the shared CLI runner, returning the artifacts that the template's manifest
post-processor recorded (for the openstack builder: the new image's id and name).

Machine-readable lines (`timestamp,target,type,data...`) are logged as the text a person would
see (`ui` lines decoded, commas and newlines restored); a failure raises `PackerError` with
Packer's own error lines. Variables go in a `.pkrvars.json` file of the run, never on the
command line; secrets reach Packer only through the environment and are redacted from the log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from infra_assets.paths import REPO_ROOT, state_dir
from resources.cli_runner import CliError, LogSink, default_log, run_cli


class PackerError(RuntimeError):
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
                sink(f"artifact of {target}: {data[2]}")

        try:
            return run_cli(
                args,
                cwd=self.folder(),
                env={"CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1", **(env or {})},
                log=emit,
                redact=redact,
                check=True,
            )
        except CliError as err:
            detail = "\n".join(errors) or "\n".join(err.tail)
            raise PackerError(f"`{err.command}` failed ({err.returncode}):\n{detail}") from None

    def validate(
        self,
        *,
        template: str,
        variables: Mapping[str, Any],
        var_files: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        redact: Sequence[str] = (),
        syntax_only: bool = False,
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
        log: LogSink | None = None,
    ) -> PackerBuild:
        """`packer build -machine-readable`; the artifacts from the manifest the template's
        post-processor wrote at `var.manifest` (this resource picks the path)."""
        path = self._template(template)
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6}"
        stem = f"build-{path.name.split('.')[0]}-{stamp}"
        manifest = self._work() / f"{stem}.manifest.json"
        vars_file = self._vars_file(stem, {**variables, "manifest": str(manifest)})
        args = self._args("build", path, vars_file, var_files)
        started = time.monotonic()
        result = self._run(
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
        )
