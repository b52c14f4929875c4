"""How the machine opens an app's site in the lab, as a browser would open it on the internet.

An app's domain (`apps.<app>.domains.<environment>`) is answered by the lab's DNS, which the
machine does not ask; so the machine connects to the web host's planned address, through the
lab's link, and speaks to it as to the domain: HTTPS with the domain as the TLS server name,
the certificate checked against the root of the lab's ACME server (pebble's, which signed it),
and the domain as the Host header. An app without a domain in that environment is reached over
HTTP at the host's address with its name as the Host header (nginx's site for it).

Before any packet, the machine's route to the address must go through the lab's link
(`route_device`): nothing is ever sent to a 10.x address outside the lab.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from resources.lab_link import route_problem


class ReachError(RuntimeError):
    """The machine may not send to the site's address (its route does not go into the lab)."""


@dataclass(frozen=True)
class Site:
    """An app's site in the lab: `url` as a person would open it, `address` of the web host
    that serves it, `cafile` (for HTTPS) the root its certificate must chain to."""

    url: str
    address: str
    route_device: str
    cafile: Path | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def curl(self, path: str = "/") -> str:
        """The same request as a command a person can paste."""
        url = self.url.rstrip("/") + path
        if urlsplit(self.url).scheme == "https":
            pin = f"{self.host}:{self.port}:{self.address}"
            return f"curl --cacert {self.cafile} --resolve {pin} {url}"
        return f"curl -H 'Host: {self.host}' http://{self.address}:{self.port}{path}"

    def session(self) -> SiteSession:
        """A session that keeps its connections (as a browser does) to this site."""
        return SiteSession(self)

    def get(self, path: str = "/", *, timeout_s: float = 2.0) -> requests.Response:
        """GET `path` of the site on a connection of its own (`SiteSession.get`)."""
        with self.session() as session:
            return session.get(path, timeout_s=timeout_s)


class SiteSession:
    """requests to one site, at its web host's address: the TLS server name, the name the
    certificate is checked for and the Host header are the site's domain; redirects are not
    followed; $http_proxy is ignored (a lab address is reached through the link, never a
    proxy)."""

    def __init__(self, site: Site):
        self.site = site
        self.http = requests.Session()
        self.http.trust_env = False
        parts = urlsplit(site.url)
        self.base = f"{parts.scheme}://{site.address}:{site.port}"
        if parts.scheme == "https":
            self.http.mount(self.base + "/", _NamedTLS(site.host))
            self.http.verify = str(site.cafile) if site.cafile else True

    def get(self, path: str = "/", *, timeout_s: float = 5.0) -> requests.Response:
        """GET `path`: ReachError when the machine's route to the address does not go into
        the lab (nothing sent); requests' errors (an SSLError for a certificate that does not
        check) as they come."""
        return self.request("GET", path, timeout_s=timeout_s)

    def post(
        self, path: str, body: str, *, headers: dict[str, str] | None = None,
        timeout_s: float = 5.0,
    ) -> requests.Response:  # fmt: skip
        """POST `body` (text, unless `headers` say another Content-Type) to `path`, as `get`
        does a GET."""
        return self.request("POST", path, body=body, headers=headers, timeout_s=timeout_s)

    def request(
        self, method: str, path: str, *, body: str | None = None,
        headers: dict[str, str] | None = None, timeout_s: float = 5.0,
    ) -> requests.Response:  # fmt: skip
        problem = route_problem(self.base + "/", self.site.route_device)
        if problem:
            raise ReachError(f"{self.site.url}: {problem}")
        given = dict(headers or {})
        headers = {"Host": self.site.host}
        if body is not None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        headers.update(given)
        return self.http.request(
            method,
            self.base + path,
            headers=headers,
            data=body.encode() if body is not None else None,
            timeout=timeout_s,
            allow_redirects=False,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SiteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NamedTLS(HTTPAdapter):
    """TLS to an address, speaking to it as `name` (SNI) and checking the certificate for it."""

    def __init__(self, name: str):
        self.name = name
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["server_hostname"] = self.name
        kwargs["assert_hostname"] = self.name
        return super().init_poolmanager(*args, **kwargs)
