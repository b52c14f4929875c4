"""The local site's private registry: Debian's `docker-registry` (Docker Distribution 2.8) on
127.0.0.1, with htpasswd auth.

Everything lives under `<site>/registry/`: `config.yml`, the image storage (`data/`), the
htpasswd file, the generated password (`password`, mode 0600, never printed) and the log. The
port is chosen once and kept while it stays free, so the registry's URL (and the image names that
carry it) survive `infra local down` / `up`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import yaml

from infra_assets.local_site.processes import free_port, port_open
from infra_assets.local_site.site import LocalSite
from resources.cli_runner import run_cli

USERNAME = "coop"
PROCESS = "registry"


class RegistryService:
    name = "registry"

    # --- paths ------------------------------------------------------------------------------

    @staticmethod
    def folder(site: LocalSite) -> Path:
        return site.path("registry")

    def password_file(self, site: LocalSite) -> Path:
        return self.folder(site) / "password"

    def _settings_file(self, site: LocalSite) -> Path:
        return self.folder(site) / "settings.json"

    def url(self, site: LocalSite) -> str | None:
        try:
            port = json.loads(self._settings_file(site).read_text())["port"]
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            return None
        return f"http://127.0.0.1:{port}"

    # --- LocalService -----------------------------------------------------------------------

    def up(self, site: LocalSite) -> None:
        if site.supervisor.get(PROCESS) is not None:
            return
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError(
                "docker-registry is not installed: `apt-get install docker-registry`"
                " (scripts/apt-packages.txt lists it; `make setup` installs it)"
            )
        folder = self.folder(site)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)  # the password, the htpasswd file and the http secret live here
        password = self._password(site)
        self._htpasswd(folder / "htpasswd", password)
        port = self._port(site)
        config = folder / "config.yml"
        config.write_text(yaml.safe_dump(self._config(folder, port), sort_keys=False))
        config.chmod(0o600)  # holds the http secret
        site.supervisor.start(
            PROCESS,
            [binary, "serve", str(config)],
            log=folder / "registry.log",
            ready=lambda: _answers(port),
            ready_timeout_s=30,
        )

    def down(self, site: LocalSite) -> None:
        site.supervisor.stop(PROCESS)

    def status(self, site: LocalSite) -> dict[str, Any]:
        record = site.supervisor.get(PROCESS)
        return {
            "url": self.url(site),
            "running": record is not None,
            "pid": record.pid if record else None,
            "username": USERNAME,
            "password_file": str(self.password_file(site)),
            "storage": str(self.folder(site) / "data"),
        }

    # --- set-up -----------------------------------------------------------------------------

    def _password(self, site: LocalSite) -> str:
        """The site's registry password: generated once, kept in a 0600 file."""
        path = self.password_file(site)
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        return password

    @staticmethod
    def _htpasswd(path: Path, password: str) -> None:
        # bcrypt (-B), the only hash the registry accepts; the password goes in on stdin (-i),
        # never on a command line.
        run_cli(
            ["htpasswd", "-c", "-i", "-B", str(path), USERNAME],
            stdin=password + "\n",
            redact=[password],
            log=lambda _line: None,
        )
        path.chmod(0o600)

    def _port(self, site: LocalSite) -> int:
        settings = self._settings_file(site)
        try:
            port = int(json.loads(settings.read_text())["port"])
        except (FileNotFoundError, KeyError, ValueError):
            port = 0
        if not port or port_open(port):  # first start, or another process took it meanwhile
            port = free_port()
        settings.write_text(json.dumps({"port": port}) + "\n")
        return port

    @staticmethod
    def _config(folder: Path, port: int) -> dict[str, Any]:
        return {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(folder / "data")},
                "delete": {"enabled": True},
            },
            "http": {
                "addr": f"127.0.0.1:{port}",
                # Signs upload state between requests; a fresh one per start is fine.
                "secret": secrets.token_hex(16),
            },
            "auth": {"htpasswd": {"realm": "coop-registry", "path": str(folder / "htpasswd")}},
        }


def _answers(port: int) -> bool:
    """The registry is up when `/v2/` asks for credentials (401)."""
    import http.client

    if not port_open(port):
        return False
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 401
    except OSError:
        return False
    finally:
        conn.close()
