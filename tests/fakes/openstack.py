"""A FAKE OpenStack API, for tests only: no OpenStack cloud can be reached from this machine.

It speaks the real wire protocol (HTTP + JSON, on 127.0.0.1) to the real clients, openstacksdk
and Packer's openstack builder (gophercloud), for the subset they use here:

- Keystone v3: version discovery, `POST /v3/auth/tokens` (password auth, 201 with an
  `X-Subject-Token` header and a service catalog), token validation;
- Glance v2: list (with `limit`/`marker` paging and a few filters), show, create, delete images;
- Nova v2.1: version discovery with microversions, list (`/servers/detail`), show, delete servers;
- Neutron v2.0: list networks and ports.

Every service call needs a token that Keystone issued. State lives in memory; tests seed it with
`add_image` / `add_server` / `add_network` and read it back (`images`, `requests`). The product
never uses this module: it is named as a fake and lives under tests/.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PROJECT_ID = "0f3e4a5b6c7d4e8f9a0b1c2d3e4f5a6b"
USER_ID = "8e2d1c0b9a8f4e7d6c5b4a3f2e1d0c9b"
REGION = "nz-por-1"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Credentials:
    username: str = "coop-ci"
    password: str = "fake-password-not-a-secret"
    project_name: str = "coop"
    user_domain: str = "Default"
    project_domain: str = "Default"


@dataclass
class FakeState:
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    ports: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)


class FakeOpenStack:
    """Start with `start()` (returns the Keystone URL, `.../identity/v3`), stop with `stop()`."""

    def __init__(self, credentials: Credentials | None = None):
        self.credentials = credentials or Credentials()
        self.state = FakeState()
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            openstack = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self.auth_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def auth_url(self) -> str:
        return f"{self.base_url}/identity/v3"

    def clouds_yaml(self, cloud: str = "fake", *, with_password: bool = False) -> dict:
        """A clouds.yaml document for this fake (the password only if asked: it is a secret)."""
        auth = {
            "auth_url": self.auth_url,
            "username": self.credentials.username,
            "project_name": self.credentials.project_name,
            "user_domain_name": self.credentials.user_domain,
            "project_domain_name": self.credentials.project_domain,
        }
        if with_password:
            auth["password"] = self.credentials.password
        return {
            "clouds": {
                cloud: {
                    "auth": auth,
                    "region_name": REGION,
                    "identity_api_version": 3,
                    "interface": "public",
                }
            }
        }

    # --- seeding and reading ---------------------------------------------------------------

    def add_image(
        self,
        name: str,
        *,
        properties: dict[str, str] | None = None,
        created_at: datetime | None = None,
        status: str = "active",
        visibility: str = "private",
        image_id: str | None = None,
    ) -> str:
        image_id = image_id or str(uuid.uuid4())
        created = (created_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        image = {
            "id": image_id,
            "name": name,
            "status": status,
            "visibility": visibility,
            "owner": PROJECT_ID,
            "created_at": created,
            "updated_at": created,
            "disk_format": "qcow2",
            "container_format": "bare",
            "min_disk": 0,
            "min_ram": 0,
            "size": 2147483648,
            "checksum": uuid.uuid4().hex,
            "protected": False,
            "os_hidden": False,
            "tags": [],
            "self": f"/v2/images/{image_id}",
            "file": f"/v2/images/{image_id}/file",
            "schema": "/v2/schemas/image",
            **(properties or {}),
        }
        with self.lock:
            self.state.images[image_id] = image
        return image_id

    def add_network(self, name: str, cidr: str | None = None) -> str:
        network_id = str(uuid.uuid4())
        with self.lock:
            self.state.networks[network_id] = {
                "id": network_id,
                "name": name,
                "status": "ACTIVE",
                "admin_state_up": True,
                "project_id": PROJECT_ID,
                "tenant_id": PROJECT_ID,
                "shared": False,
                "subnets": [],
                "router:external": False,
                "mtu": 1450,
                "description": cidr or "",
                "created_at": _now(),
                "updated_at": _now(),
            }
        return network_id

    def add_server(
        self,
        name: str,
        *,
        image_id: str,
        network: str = "coop",
        addresses: list[str] | None = None,
        status: str = "ACTIVE",
        flavor: str = "c1.c1r2",
    ) -> str:
        server_id = str(uuid.uuid4())
        network_id = next(
            (n["id"] for n in self.state.networks.values() if n["name"] == network), None
        ) or self.add_network(network)
        server_addresses = {
            network: [
                {
                    "version": 4,
                    "addr": ip,
                    "OS-EXT-IPS:type": "fixed",
                    "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:%02x" % (i + 1),
                }
                for i, ip in enumerate(addresses or [])
            ]
        }
        with self.lock:
            self.state.servers[server_id] = {
                "id": server_id,
                "name": name,
                "status": status,
                "tenant_id": PROJECT_ID,
                "user_id": USER_ID,
                "image": {"id": image_id, "links": []},
                "flavor": {"original_name": flavor, "vcpus": 1, "ram": 2048, "disk": 10},
                "addresses": server_addresses,
                "metadata": {},
                "created": _now(),
                "updated": _now(),
                "OS-EXT-STS:vm_state": status.lower(),
                "OS-EXT-AZ:availability_zone": "nova",
                "key_name": None,
                "security_groups": [{"name": "default"}],
                "links": [],
            }
            port_id = str(uuid.uuid4())
            self.state.ports[port_id] = {
                "id": port_id,
                "name": f"{name}-port",
                "network_id": network_id,
                "device_id": server_id,
                "device_owner": "compute:nova",
                "status": "ACTIVE",
                "admin_state_up": True,
                "mac_address": "fa:16:3e:00:00:01",
                "fixed_ips": [{"subnet_id": "", "ip_address": ip} for ip in addresses or []],
                "project_id": PROJECT_ID,
                "tenant_id": PROJECT_ID,
                "security_groups": [],
                "created_at": _now(),
                "updated_at": _now(),
            }
        return server_id

    def image_names(self) -> list[str]:
        with self.lock:
            return sorted(i["name"] for i in self.state.images.values())

    def requests(self, method: str | None = None, path_re: str = "") -> list[tuple[str, str]]:
        with self.lock:
            return [
                (m, p)
                for m, p in self.state.requests
                if (method is None or m == method) and re.search(path_re, p)
            ]

    # --- the API ---------------------------------------------------------------------------

    def catalog(self) -> list[dict]:
        def entry(kind: str, name: str, path: str) -> dict:
            url = f"{self.base_url}{path}"
            return {
                "type": kind,
                "name": name,
                "id": uuid.uuid5(uuid.NAMESPACE_URL, url).hex,
                "endpoints": [
                    {
                        "id": uuid.uuid5(uuid.NAMESPACE_URL, url + iface).hex,
                        "interface": iface,
                        "region": REGION,
                        "region_id": REGION,
                        "url": url,
                    }
                    for iface in ("public", "internal", "admin")
                ],
            }

        return [
            entry("identity", "keystone", "/identity/v3"),
            entry("image", "glance", "/image"),
            entry("compute", "nova", "/compute/v2.1"),
            entry("network", "neutron", "/network"),
        ]

    def issue_token(self, body: dict) -> tuple[int, dict, str | None]:
        identity = (body.get("auth") or {}).get("identity") or {}
        password = (identity.get("password") or {}).get("user") or {}
        creds = self.credentials
        domain = (password.get("domain") or {}).get("name") or (password.get("domain") or {}).get(
            "id"
        )
        if (
            "password" not in (identity.get("methods") or [])
            or password.get("name") != creds.username
            or password.get("password") != creds.password
            or domain not in (creds.user_domain, "default")
        ):
            return (
                401,
                {
                    "error": {
                        "code": 401,
                        "title": "Unauthorized",
                        "message": "The request you have made requires authentication.",
                    }
                },
                None,
            )
        token = uuid.uuid4().hex
        with self.lock:
            self.state.tokens.add(token)
        now = datetime.now(UTC)
        payload = {
            "token": {
                "methods": ["password"],
                "user": {
                    "id": USER_ID,
                    "name": creds.username,
                    "domain": {"id": "default", "name": creds.user_domain},
                    "password_expires_at": None,
                },
                "audit_ids": [uuid.uuid4().hex[:22]],
                "expires_at": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                "project": {
                    "id": PROJECT_ID,
                    "name": creds.project_name,
                    "domain": {"id": "default", "name": creds.project_domain},
                },
                "is_domain": False,
                "roles": [{"id": uuid.uuid4().hex, "name": "member"}],
                "catalog": self.catalog(),
            }
        }
        return 201, payload, token


class _Handler(BaseHTTPRequestHandler):
    openstack: FakeOpenStack
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # --- plumbing --------------------------------------------------------------------------

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Openstack-Request-Id", f"req-{uuid.uuid4()}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        try:
            return json.loads(self.rfile.read(length))
        except json.JSONDecodeError:
            return {}

    def _authorised(self) -> bool:
        token = self.headers.get("X-Auth-Token")
        with self.openstack.lock:
            return token in self.openstack.state.tokens

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.openstack.lock:
            self.openstack.state.requests.append((self.command, url.path))
        base = self.openstack.base_url
        method = self.command
        try:
            if path == "/identity" or path == "/identity/v3":
                return self._reply(200, _identity_versions(base, path))
            if path == "/identity/v3/auth/tokens":
                if method == "POST":
                    status, payload, token = self.openstack.issue_token(self._body())
                    headers = {"X-Subject-Token": token} if token else {}
                    return self._reply(status, payload, headers)
                if method in ("GET", "HEAD"):
                    subject = self.headers.get("X-Subject-Token")
                    if self._authorised() and subject in self.openstack.state.tokens:
                        return self._reply(200, {"token": {}}, {"X-Subject-Token": subject})
                    return self._reply(404, {"error": {"code": 404, "message": "no token"}})
            if path in ("/image", "/compute", "/network"):
                return self._reply(300 if path == "/image" else 200, _versions(base, path))
            if path == "/compute/v2.1":
                return self._reply(200, {"version": _nova_version(base)})
            if path == "/network/v2.0":
                return self._reply(200, {"resources": []})
            if not self._authorised():
                return self._reply(401, {"error": {"code": 401, "message": "Unauthorized"}})
            if path.startswith("/image/v2/images"):
                return self._images(method, path, query)
            if path.startswith("/compute/v2.1/"):
                return self._compute(method, path.removeprefix("/compute/v2.1"), query)
            if path.startswith("/network/v2.0/"):
                return self._network(method, path.removeprefix("/network/v2.0"), query)
            return self._reply(404, {"error": {"code": 404, "message": f"no route {path}"}})
        except Exception as exc:  # a bug in the fake: say so to the client
            return self._reply(500, {"error": {"code": 500, "message": f"fake: {exc!r}"}})

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = _dispatch

    # --- Glance ----------------------------------------------------------------------------

    def _images(self, method: str, path: str, query: dict[str, str]) -> None:
        state = self.openstack.state
        lock = self.openstack.lock
        rest = path.removeprefix("/image/v2/images").strip("/")
        if not rest:
            if method == "POST":
                body = self._body()
                name = body.pop("name", None) or "unnamed"
                image_id = self.openstack.add_image(
                    name, properties={k: v for k, v in body.items() if isinstance(v, str)}
                )
                with lock:
                    return self._reply(201, state.images[image_id])
            with lock:
                images = sorted(
                    state.images.values(), key=lambda i: (i["created_at"], i["id"]), reverse=True
                )
            for key in ("name", "status", "visibility", "owner"):
                if key in query:
                    images = [i for i in images if i.get(key) == query[key]]
            if "marker" in query:
                ids = [i["id"] for i in images]
                images = images[ids.index(query["marker"]) + 1 :] if query["marker"] in ids else []
            limit = int(query.get("limit") or 25)
            page = images[:limit]
            body: dict[str, Any] = {
                "images": page,
                "first": "/v2/images",
                "schema": "/v2/schemas/images",
            }
            if len(images) > limit:
                body["next"] = f"/v2/images?limit={limit}&marker={page[-1]['id']}"
            return self._reply(200, body)
        image_id = rest.split("/")[0]
        with lock:
            image = state.images.get(image_id)
            if image is None:
                return self._reply(404, {"message": f"No image found with ID {image_id}"})
            if method == "DELETE":
                in_use = [s["name"] for s in state.servers.values() if s["image"]["id"] == image_id]
                if image.get("protected"):
                    return self._reply(403, {"message": "Image is protected"})
                del state.images[image_id]
                self.openstack.state.requests.append(("DELETED", image["name"]))
                # Glance lets an image in use be deleted; recording it lets tests prove we
                # never asked for that.
                if in_use:
                    self.openstack.state.requests.append(("DELETED-IN-USE", image["name"]))
                return self._reply(204)
            return self._reply(200, image)

    # --- Nova ------------------------------------------------------------------------------

    def _compute(self, method: str, path: str, query: dict[str, str]) -> None:
        state = self.openstack.state
        with self.openstack.lock:
            servers = list(state.servers.values())
            if path in ("/servers/detail", "/servers"):
                if "name" in query:
                    servers = [s for s in servers if re.search(query["name"], s["name"])]
                if "status" in query:
                    servers = [s for s in servers if s["status"] == query["status"]]
                if path == "/servers":
                    servers = [{"id": s["id"], "name": s["name"], "links": []} for s in servers]
                return self._reply(200, {"servers": servers})
            match = re.fullmatch(r"/servers/([^/]+)", path)
            if match:
                server = state.servers.get(match.group(1))
                if server is None:
                    return self._reply(404, {"itemNotFound": {"code": 404, "message": "no"}})
                if method == "DELETE":
                    del state.servers[server["id"]]
                    return self._reply(204)
                return self._reply(200, {"server": server})
            if path == "/flavors/detail":
                return self._reply(200, {"flavors": []})
        return self._reply(404, {"itemNotFound": {"code": 404, "message": f"no route {path}"}})

    # --- Neutron ---------------------------------------------------------------------------

    def _network(self, method: str, path: str, query: dict[str, str]) -> None:
        state = self.openstack.state
        with self.openstack.lock:
            for name, table in (("networks", state.networks), ("ports", state.ports)):
                if path in (f"/{name}", f"/{name}.json"):
                    items = list(table.values())
                    for key, value in query.items():
                        if key in ("limit", "marker", "fields"):
                            continue
                        items = [i for i in items if str(i.get(key)) == value]
                    return self._reply(200, {name: items})
                match = re.fullmatch(rf"/{name}/([^/]+)", path)
                if match:
                    item = table.get(match.group(1))
                    if item is None:
                        return self._reply(404, {"NeutronError": {"message": "not found"}})
                    return self._reply(200, {name[:-1]: item})
        return self._reply(404, {"NeutronError": {"message": f"no route {path}"}})


def _identity_versions(base: str, path: str) -> dict:
    version = {
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": f"{base}/identity/v3/"}],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
        ],
    }
    if path.endswith("/v3"):
        return {"version": version}
    return {"versions": {"values": [version]}}


def _nova_version(base: str) -> dict:
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": "2.79",
        "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": f"{base}/compute/v2.1/"}],
    }


def _versions(base: str, path: str) -> dict:
    if path == "/image":
        return {
            "versions": [
                {
                    "id": "v2.9",
                    "status": "CURRENT",
                    "links": [{"rel": "self", "href": f"{base}/image/v2/"}],
                }
            ]
        }
    if path == "/compute":
        return {"versions": [_nova_version(base)]}
    return {
        "versions": [
            {
                "id": "v2.0",
                "status": "CURRENT",
                "links": [{"rel": "self", "href": f"{base}/network/v2.0/"}],
            }
        ]
    }
