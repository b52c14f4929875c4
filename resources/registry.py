"""RegistryResource: the private Docker registry (Docker Distribution's HTTP API v2).

Catalog, tags, manifests and their digests (OCI and Docker media types), an image's config (its
labels name the commit it was built from), and tagging a manifest that is already there. Basic
auth (the registry's htpasswd), TLS verified against `ca_file` (the registry's own certificate or
its CA; empty: the system's trust store). The production registry is configured with `url`,
`username`, `password` (a `dg.EnvVar`) and `ca_file`; the lab's (infra_assets/definitions.py,
`lab_resources`) with `password_file` and `route_device`, the lab's link, so that nothing for a
lab address leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import requests
from pydantic import Field

from resources.cli_runner import ToolError
from resources.lab_link import read_secret_file, route_problem

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# Without an Accept header the registry would convert to the old schema 1 (another digest).
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST)
# The commit an image was built from, as its builds label it (OCI's annotation key).
REVISION_LABEL = "org.opencontainers.image.revision"


class RegistryError(ToolError):
    """The registry could not be reached, or answered with an error."""


class RegistryUnreachable(RegistryError):
    """No answer at all (connection refused, timeout, DNS)."""


class RegistryAuthError(RegistryError):
    """401/403: wrong or missing credentials."""


@dataclass(frozen=True)
class Endpoint:
    url: str  # https://127.0.0.1:5000, no trailing slash
    username: str
    password: str = field(repr=False)
    ca_file: str = ""  # PEM to verify the registry's TLS certificate; empty: the system's

    @property
    def verify(self) -> str | bool:
        """What `requests` takes as `verify`."""
        return self.ca_file or True

    @property
    def host(self) -> str:
        """`host:port`, as image names and podman's auth files spell the registry."""
        return urlsplit(self.url).netloc

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    def image(self, repository: str, reference: str = "") -> str:
        """`host:port/repository[:tag | @digest]`."""
        if not reference:
            return f"{self.host}/{repository}"
        sep = "@" if reference.startswith("sha256:") else ":"
        return f"{self.host}/{repository}{sep}{reference}"


@dataclass(frozen=True)
class Manifest:
    repository: str
    reference: str
    digest: str  # sha256 of the manifest's bytes, as the registry serves them
    media_type: str
    raw: bytes = field(repr=False)
    config_digest: str | None
    layers: tuple[dict[str, Any], ...]
    config_size: int

    @property
    def size(self) -> int:
        """Bytes stored in the registry for this image: its compressed layers and its config."""
        return sum(int(layer.get("size", 0)) for layer in self.layers) + self.config_size

    @property
    def is_index(self) -> bool:
        return self.media_type in (OCI_INDEX, DOCKER_LIST)


class RegistryResource(dg.ConfigurableResource):
    """A Docker Distribution registry, given by URL."""

    url: str = Field(
        default="",
        description="The registry, e.g. https://registry.example.coop ($INFRA_REGISTRY_URL).",
    )
    username: str = Field(default="", description="The account ($INFRA_REGISTRY_USER).")
    password: str = Field(
        default="",
        description="Set it with dg.EnvVar ($INFRA_REGISTRY_PASSWORD); or give password_file.",
    )
    ca_file: str = Field(
        default="",
        description="A PEM file to verify the registry's TLS certificate with (its own or its"
        " CA's). Empty: the system's trust store.",
    )
    password_file: str = Field(
        default="",
        description="A file (mode 600, outside git) holding the password, read when the registry"
        " is used: the lab's way (its throwaway secrets), so no value is in config.",
    )
    route_device: str = Field(
        default="",
        description="The network device the route to the registry's address must go through,"
        " checked (`ip -j route get`) before anything is sent: the lab's link, so that nothing"
        " for a lab address ever leaves the machine. Empty: no check.",
    )
    timeout_s: float = Field(default=10.0, description="Per HTTP request.")

    @classmethod
    def from_env(cls) -> RegistryResource:
        """The resource with each field whose environment variable is set taken from it
        (`INFRA_REGISTRY_URL`, `INFRA_REGISTRY_USER`, `INFRA_REGISTRY_PASSWORD`,
        `INFRA_REGISTRY_CA_FILE`), as dg.EnvVar so the password is never shown."""
        names = {
            "url": "INFRA_REGISTRY_URL",
            "username": "INFRA_REGISTRY_USER",
            "password": "INFRA_REGISTRY_PASSWORD",
            "ca_file": "INFRA_REGISTRY_CA_FILE",
        }
        return cls(**{k: dg.EnvVar(v) for k, v in names.items() if os.environ.get(v)})

    # --- where ------------------------------------------------------------------------------

    def endpoint(self) -> Endpoint:
        """Where the registry is and how to reach it. Raises RegistryError when it cannot be
        reached as configured (no URL, the CA file is missing)."""
        if not self.url:
            raise RegistryError(
                "no registry URL is set: set INFRA_REGISTRY_URL to the registry (`infra ips`"
                " lists the docker-registry address), with INFRA_REGISTRY_USER,"
                " INFRA_REGISTRY_PASSWORD and INFRA_REGISTRY_CA_FILE (README, 'App delivery');"
                " on the lab, `infra lab up` configures it"
            )
        password = self.password
        if not password and self.password_file:
            password = _read_password(self.password_file)
        end = Endpoint(self.url.rstrip("/"), self.username, password, self.ca_file)
        if self.route_device:
            check_route(end.url, self.route_device)
        if end.ca_file and not Path(end.ca_file).is_file():
            # requests would raise an OSError of its own on each request (a traceback).
            where = "INFRA_REGISTRY_CA_FILE, the registry resource's ca_file"
            raise RegistryError(
                f"registry {end.url}: its CA file {end.ca_file} does not exist ({where});"
                " give the PEM file the registry's TLS certificate is verified with, or"
                " unset INFRA_REGISTRY_CA_FILE to use the system's trust store"
            )
        return end

    # --- the API ----------------------------------------------------------------------------

    def ping(self) -> None:
        """Raises unless the registry answers `/v2/` with these credentials."""
        self._request("GET", "/v2/")

    def catalog(self) -> list[str]:
        """Every repository in the registry (following the `Link` pagination)."""
        names: list[str] = []
        path = "/v2/_catalog?n=1000"
        while path:
            response = self._request("GET", path)
            names += response.json().get("repositories") or []
            path = _next_link(response.headers.get("Link", ""))
        return names

    def tags(self, *, repository: str) -> list[str]:
        """The repository's tags; empty when the repository does not exist (yet)."""
        response = self._request("GET", f"/v2/{repository}/tags/list", missing_ok=True)
        if response is None:
            return []
        return sorted(response.json().get("tags") or [])

    def digest(self, *, repository: str, reference: str) -> str | None:
        """The digest `repository:reference` resolves to (HEAD, `Docker-Content-Digest`), or
        None when there is no such tag or repository."""
        response = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            missing_ok=True,
        )
        if response is None:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            raise RegistryError(f"{repository}:{reference}: no Docker-Content-Digest in the answer")
        return digest

    def manifest(self, *, repository: str, reference: str) -> Manifest | None:
        """The manifest of `repository:reference` (a tag or a digest), checked against its
        digest; None when there is no such tag or repository."""
        response = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            missing_ok=True,
        )
        if response is None:
            return None
        raw = response.content
        computed = "sha256:" + hashlib.sha256(raw).hexdigest()
        served = response.headers.get("Docker-Content-Digest", computed)
        if served != computed or (reference.startswith("sha256:") and reference != computed):
            raise RegistryError(
                f"{repository}:{reference}: the manifest's bytes hash to {computed}, but the"
                f" registry says {served}"
            )
        body = json.loads(raw)
        media_type = (
            body.get("mediaType")
            or response.headers.get("Content-Type", "").split(";")[0]
            or OCI_MANIFEST
        )
        config = body.get("config") or {}
        return Manifest(
            repository=repository,
            reference=reference,
            digest=computed,
            media_type=media_type,
            raw=raw,
            config_digest=config.get("digest"),
            layers=tuple(body.get("layers") or ()),
            config_size=int(config.get("size", 0)),
        )

    def image_config(self, *, repository: str, manifest: Manifest) -> dict[str, Any]:
        """The image's config blob (architecture, env, labels...)."""
        if manifest.config_digest is None:
            raise RegistryError(f"{repository}@{manifest.digest} has no config (an index?)")
        response = self._request("GET", f"/v2/{repository}/blobs/{manifest.config_digest}")
        return response.json()

    def labels(self, *, repository: str, manifest: Manifest) -> dict[str, str]:
        config = self.image_config(repository=repository, manifest=manifest)
        return dict((config.get("config") or {}).get("Labels") or {})

    def tag(self, *, repository: str, manifest: Manifest, tag: str) -> None:
        """Point `tag` at `manifest` (the same bytes: the same digest), without pulling."""
        self._request(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            headers={"Content-Type": manifest.media_type},
            data=manifest.raw,
        )
        now = self.digest(repository=repository, reference=tag)
        if now != manifest.digest:
            raise RegistryError(f"{repository}:{tag} is {now} after tagging {manifest.digest}")

    # --- HTTP -------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        missing_ok: bool = False,
    ):
        end = self.endpoint()
        url = end.url + path
        auth = (end.username, end.password) if end.username else None
        try:
            response = requests.request(
                method,
                url,
                headers=headers,
                data=data,
                auth=auth,
                timeout=self.timeout_s,
                verify=end.verify,
            )
        except requests.exceptions.SSLError as exc:
            raise RegistryError(
                f"registry {end.url}: its TLS certificate is not trusted ({_short(exc)}); set the"
                " registry's CA file (INFRA_REGISTRY_CA_FILE, the resource's ca_file)",
                command=f"{method} {path}",
            ) from None
        except requests.RequestException as exc:
            raise RegistryUnreachable(
                f"registry {end.url} unreachable: {_short(exc)}", command=f"{method} {path}"
            ) from None
        if response.status_code in (401, 403):
            who = f"user {end.username!r}" if end.username else "no credentials"
            raise RegistryAuthError(
                f"registry {end.url} refused {method} {path} ({response.status_code}, {who}):"
                f" {_errors(response)}; check the registry's username and password",
                command=f"{method} {path}",
            )
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            raise RegistryError(
                f"registry {end.url}: {method} {path} -> {response.status_code}:"
                f" {_errors(response)}",
                command=f"{method} {path}",
            )
        return response


def _read_password(path: str) -> str:
    try:
        return read_secret_file(path)
    except OSError as err:
        raise RegistryError(
            f"the registry's password file {path} cannot be read ({err.strerror}): on the lab,"
            " run `infra lab up`; elsewhere set the registry resource's password"
        ) from None


def check_route(url: str, device: str) -> None:
    """Refuse to talk to `url` unless its route goes through `device` (the lab's link)."""
    problem = route_problem(url, device)
    if problem:
        raise RegistryUnreachable(f"registry {url}: refusing to send: {problem}")


def _next_link(link: str) -> str:
    # Link: </v2/_catalog?last=x&n=1000>; rel="next"
    if 'rel="next"' in link and "<" in link:
        return link[link.index("<") + 1 : link.index(">")]
    return ""


def _errors(response) -> str:
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        if text:
            return text
    except ValueError:
        pass
    return (response.text or response.reason or "").strip()[:200]


def _short(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Failed to establish a new connection: ", "Read timed out"):
        if marker in text:
            return text[text.index(marker) :].rstrip("'\")")
    return text[:200]
