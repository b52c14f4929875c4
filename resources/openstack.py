"""OpenStackResource: what Terraform does not own, through openstacksdk: the role images (lookups
and retention) and the servers' observed status and addresses.

A cloud is an entry of clouds.yaml (the topology's `cloud`), found where openstacksdk looks
(`$OS_CLIENT_CONFIG_FILE`, ./clouds.yaml, ~/.config/openstack/, /etc/openstack/) or at
`clouds_yaml`. The password is not in that file: it comes from the environment (the `password`
field, set from `dg.EnvVar("OS_PASSWORD")`) or from openstacksdk's secure.yaml.

Images built by Packer carry the property `coop_image_group` (support, web, ...): that is how
they are found and pruned, newest first, keeping the last N and never one a server still uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.cli_runner import ToolError

GROUP_PROPERTY = "coop_image_group"


class OpenStackError(ToolError):
    """The cloud could not be reached or refused; the message says which cloud and what to do."""


@dataclass(frozen=True)
class Image:
    id: str
    name: str
    status: str
    created_at: str
    group: str | None
    properties: dict[str, Any] = field(default_factory=dict, compare=False)

    def as_row(self) -> str:
        return f"| {self.name} | `{self.id}` | {self.created_at} | {self.status} |"


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    status: str
    image_id: str | None
    addresses: dict[str, list[str]]  # network name -> addresses, as Nova reports them

    @property
    def all_addresses(self) -> list[str]:
        return [ip for ips in self.addresses.values() for ip in ips]


@dataclass(frozen=True)
class PruneResult:
    group: str
    keep: int
    kept: list[Image]  # the newest `keep`
    deleted: list[Image]
    in_use: list[Image]  # older, but a server still runs on it: kept
    dry_run: bool

    def markdown(self) -> str:
        rows = ["| image | id | created | what |", "|---|---|---|---|"]
        for what, images in (
            ("kept (newest)", self.kept),
            ("kept (in use)", self.in_use),
            ("would delete" if self.dry_run else "deleted", self.deleted),
        ):
            rows += [f"| {i.name} | `{i.id}` | {i.created_at} | {what} |" for i in images]
        return "\n".join(rows)


class OpenStackResource(dg.ConfigurableResource):
    """openstacksdk on the clouds of clouds.yaml; credentials from the environment."""

    clouds_yaml: str = Field(
        default="",
        description="A clouds.yaml file. Empty: where openstacksdk looks ($OS_CLIENT_CONFIG_FILE,"
        " ./clouds.yaml, ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml).",
    )
    password: str | None = Field(
        default=None,
        description="The cloud user's password (set it from dg.EnvVar). None: the environment"
        " variable named by password_env, if set, else clouds.yaml / secure.yaml.",
    )
    # The password is optional (secure.yaml or application credentials do without it), and a
    # dg.EnvVar cannot be optional: so the variable's NAME is configured and read when used.
    password_env: str = Field(
        default="OS_PASSWORD",
        description="The environment variable holding the password when `password` is None.",
    )
    api_timeout_s: float = Field(default=60.0, description="Timeout of each API call.")

    _connections: dict[str, Any] = PrivateAttr(default_factory=dict)

    # --- connection ------------------------------------------------------------------------

    def connect(self, *, cloud: str):
        """An openstacksdk Connection to `cloud` (one per cloud, reused)."""
        if cloud in self._connections:
            return self._connections[cloud]
        import openstack
        from openstack import exceptions as sdk_errors
        from openstack.config import OpenStackConfig

        files = [self.clouds_yaml] if self.clouds_yaml else None
        if self.clouds_yaml and not Path(self.clouds_yaml).is_file():
            raise OpenStackError(f"clouds.yaml {self.clouds_yaml} does not exist")
        try:
            config = OpenStackConfig(config_files=files) if files else OpenStackConfig()
            extra: dict[str, Any] = {"api_timeout": self.api_timeout_s}
            if self.secret():
                extra["password"] = self.secret()
            region = config.get_one(cloud=cloud, **extra)
        except sdk_errors.ConfigException as exc:
            where = self.clouds_yaml or "openstacksdk's clouds.yaml search path"
            raise OpenStackError(
                f"cloud {cloud!r} is not configured: {exc} (looked in {where}; the topology's"
                " location names the clouds.yaml entry)"
            ) from None
        connection = openstack.connection.Connection(config=region)
        self._connections[cloud] = connection
        return connection

    def secret(self) -> str | None:
        """The password: the field, else the environment variable `password_env`."""
        return self.password or os.environ.get(self.password_env) or None

    def _call(self, cloud: str, what: str, fn):
        # Here, not at the top (tests/test_imports.py): openstacksdk costs 1.1 s, and keystoneauth1
        # reads /proc/version when imported, which the code location's import must not.
        from keystoneauth1 import exceptions as ks_errors
        from openstack import exceptions as sdk_errors

        try:
            return fn(self.connect(cloud=cloud))
        except (ks_errors.Unauthorized, sdk_errors.HttpException) as exc:
            status = getattr(exc, "status_code", None) or getattr(exc, "http_status", None)
            hint = (
                ": check the user and password (OS_PASSWORD) for this cloud"
                if status == 401
                else ""
            )
            raise OpenStackError(
                f"cloud {cloud!r}: {what} failed: {exc}{hint}", command=f"{cloud}: {what}"
            ) from None
        except (ks_errors.ClientException, sdk_errors.SDKException) as exc:
            raise OpenStackError(
                f"cloud {cloud!r}: {what} failed: {exc}", command=f"{cloud}: {what}"
            ) from None

    def tool_env(self, *, cloud: str) -> dict[str, str]:
        """The environment for a tool that reads clouds.yaml itself (Packer, Terraform's
        OpenStack provider): the file, the cloud and the password."""
        env = {"OS_CLOUD": cloud}
        if self.clouds_yaml:
            env["OS_CLIENT_CONFIG_FILE"] = str(Path(self.clouds_yaml).absolute())
        if self.secret():
            env["OS_PASSWORD"] = self.secret() or ""
        return env

    # --- images ----------------------------------------------------------------------------

    def images(self, *, cloud: str, group: str | None = None) -> list[Image]:
        """The project's images (those of `group` only, if given), newest first."""

        def fetch(conn) -> list[Image]:
            found = []
            for raw in conn.image.images(owner=conn.current_project_id):
                props = dict(getattr(raw, "properties", None) or {})
                image = Image(
                    id=raw.id,
                    name=raw.name or "",
                    status=raw.status or "",
                    created_at=raw.created_at or "",
                    group=props.get(GROUP_PROPERTY),
                    properties=props,
                )
                if group is None or image.group == group:
                    found.append(image)
            return sorted(found, key=lambda i: (i.created_at, i.name), reverse=True)

        return self._call(cloud, "listing images", fetch)

    def latest_images(self, *, cloud: str, groups: list[str]) -> dict[str, Image]:
        """The newest active image of each group; groups without one are left out."""
        latest: dict[str, Image] = {}
        for image in self.images(cloud=cloud):
            if image.group in groups and image.status == "active":
                latest.setdefault(image.group, image)
        return latest

    def find_image(self, *, cloud: str, name_or_id: str) -> Image | None:
        for image in self.images(cloud=cloud):
            if name_or_id in (image.id, image.name):
                return image
        return None

    def prune_images(
        self, *, cloud: str, group: str, keep: int, dry_run: bool = False
    ) -> PruneResult:
        """Delete the group's images beyond the newest `keep` active ones, except any that a
        server (any server of the project) still runs on."""
        if keep < 1:
            raise OpenStackError(f"keep must be at least 1 (the newest image), not {keep}")
        images = self.images(cloud=cloud, group=group)
        active = [i for i in images if i.status == "active"]
        kept = active[:keep]
        used = {s.image_id for s in self.servers(cloud=cloud) if s.image_id}
        older = active[keep:]
        in_use = [i for i in older if i.id in used]
        doomed = [i for i in older if i.id not in used]
        if not dry_run:
            for image in doomed:
                self._call(
                    cloud,
                    f"deleting image {image.name}",
                    lambda conn, image=image: conn.image.delete_image(
                        image.id, ignore_missing=True
                    ),
                )
        return PruneResult(group, keep, kept, doomed, in_use, dry_run)

    # --- servers ---------------------------------------------------------------------------

    def servers(self, *, cloud: str, names: list[str] | None = None) -> list[Server]:
        """The project's servers (those named, if given): status, addresses, image."""

        def fetch(conn) -> list[Server]:
            found = []
            for raw in conn.compute.servers(details=True):
                if names is not None and raw.name not in names:
                    continue
                addresses = {
                    net: [a.get("addr") for a in entries if a.get("addr")]
                    for net, entries in (raw.addresses or {}).items()
                }
                image = raw.image
                image_id = (
                    image.get("id") if isinstance(image, dict) else getattr(image, "id", None)
                )
                found.append(Server(raw.id, raw.name, raw.status, image_id, addresses))
            return sorted(found, key=lambda s: s.name)

        return self._call(cloud, "listing servers", fetch)


def redacted_env(env: dict[str, str]) -> list[str]:
    """The secret values of a tool environment, for the CLI runner's `redact`."""
    return [v for k, v in env.items() if k in ("OS_PASSWORD",) and v]


__all__ = [
    "GROUP_PROPERTY",
    "Image",
    "OpenStackError",
    "OpenStackResource",
    "PruneResult",
    "Server",
    "redacted_env",
]
