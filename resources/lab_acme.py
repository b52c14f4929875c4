"""The lab's ACME server: Let's Encrypt's stand-in, `pebble` (Debian's, 2.4.0), on the machine's
side of the lab's link.

On a cloud, the web hosts get their sites' certificates from Let's Encrypt over the internet.
In the lab they get them from pebble, a real ACME (RFC 8555) server, run in the lab's own network
namespace (`nsenter --net`) on the namespace's end of lab N's veth link: its directory is
`https://169.254.N.2:14000/dir`. Its validation authority really answers the challenges: it asks
the lab's dnsmasq (`-dnsserver`, which serves the apps' domains) where a domain is and fetches
the HTTP-01 token from that web host's port 80, as Let's Encrypt would from the internet. In the
namespace, its only routes lead into the lab, and the lab's link rules (resources/lab.py) drop
anything the namespace starts towards the machine: a validation, which follows redirects to any
address, reaches the lab's hosts and nothing of the machine's.

Pebble ships no TLS key pair for its own API: the caller passes one (a self-signed certificate
for the link's address, which the web hosts trust for the ACME API alone). Its root, which signs
the sites' certificates, is new at every start and is served on the management port
(`https://169.254.N.2:15000/roots/0`), which only the machine reaches: the tests and the demo
check the sites against it. A restarted pebble has forgotten its accounts and certificates.

`PEBBLE_VA_NOSLEEP=1` (no random wait before a validation) and `PEBBLE_WFE_NONCEREJECT=0` (no
nonce refused at random) keep it quick; `PEBBLE_AUTHZREUSE=0` (pebble's default reuses a valid
authorization half the time, so a test of a challenge would pass by chance) and
`PEBBLE_VA_ALWAYS_VALID` never set: every order's challenge is really answered.

The daemon is started and stopped by its pid (a file in the folder, checked against the
process's command line), never by name; `infra lab down` stops it before the link goes. Nothing
from the project but its link helpers (resources/lab_link.py) and the tools' error base
(resources/cli_runner.py) is imported here.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from resources.cli_runner import ToolError
from resources.lab_link import LinkDaemonError, PidFileDaemon, command_line, start_daemon

ACME_PORT = 14000
MANAGEMENT_PORT = 15000
PEBBLE = "/usr/bin/pebble"


class LabAcmeError(ToolError):
    """Pebble could not be started, or its root could not be read."""


@dataclass(frozen=True)
class LabAcme(PidFileDaemon):
    """The ACME server of lab `number`: its config, API key pair, pid and log under `folder`.
    `listen`: empty for the namespace's end of the lab's link (tests give 127.0.0.1)."""

    number: int
    folder: Path
    listen: str = ""
    port: int = ACME_PORT
    management_port: int = MANAGEMENT_PORT

    @property
    def address(self) -> str:
        """The namespace's end of the lab's link (resources/lab.py, LabNetwork.lab_address)."""
        return self.listen or f"169.254.{self.number}.2"

    @property
    def directory(self) -> str:
        """The ACME directory the web hosts' certbot is given (`--server`)."""
        return f"https://{self.address}:{self.port}/dir"

    @property
    def roots_url(self) -> str:
        return f"https://{self.address}:{self.management_port}/roots/0"

    @property
    def cert_file(self) -> Path:
        """The API's certificate: the CA the web hosts check the directory against."""
        return Path(self.folder) / "api.crt"

    @property
    def key_file(self) -> Path:
        return Path(self.folder) / "api.key"

    @property
    def config_file(self) -> Path:
        return Path(self.folder) / "pebble.json"

    @property
    def pid_file(self) -> Path:
        return Path(self.folder) / "pebble.pid"

    @property
    def log_file(self) -> Path:
        return Path(self.folder) / "pebble.log"

    def write_key_pair(self, cert_pem: str, key_pem: str) -> None:
        """Keep the API's key pair (made by the caller for `address`). An existing pair for
        this address stays, so the hosts' trust in it does too; one for another address (the
        server moved) is replaced."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.key_file.exists() and self.address in self._cert_addresses():
            return
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key_pem)
        self.cert_file.write_text(cert_pem)

    def _cert_addresses(self) -> list[str]:
        """The IP addresses the API's certificate is for ([] without one)."""
        try:
            cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (OSError, ValueError, x509.ExtensionNotFound):
            return []
        return [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]

    def ca_cert(self) -> str:
        """The API's certificate (PEM), for the hosts' trust; "" before `write_key_pair`."""
        try:
            return self.cert_file.read_text()
        except OSError:
            return ""

    # --- the process -------------------------------------------------------------------------

    def pid(self) -> int | None:
        """Pebble's pid when it runs (its pid file names a live pebble with this folder's
        config)."""
        pid = self.recorded_pid()
        if pid is None:
            return None
        args = command_line(pid) or []
        mine = bool(args) and args[0].endswith("pebble") and str(self.config_file) in args
        return pid if mine else None

    def start(self, *, dns_server: str, netns: str | None = None, timeout_s: float = 10.0) -> int:
        """Start pebble unless it runs; returns its pid. `dns_server`: the lab's dnsmasq
        (address:port), which answers the apps' domains; `netns`: the lab's network namespace
        (its path), where pebble runs (None: here, for tests on loopback). The address must be
        there (the lab's link is up) and the key pair written."""
        pid = self.pid()
        if pid is not None:
            return pid
        if not (self.cert_file.exists() and self.key_file.exists()):
            raise LabAcmeError(f"lab {self.number}: no key pair for pebble's API in {self.folder}")
        if not Path(PEBBLE).exists():
            raise LabAcmeError(
                f"{PEBBLE} is missing: install Debian's pebble (scripts/setup does:"
                " scripts/apt-packages.txt)"
            )
        config = {
            "pebble": {
                "listenAddress": f"{self.address}:{self.port}",
                "managementListenAddress": f"{self.address}:{self.management_port}",
                "certificate": str(self.cert_file),
                "privateKey": str(self.key_file),
                "httpPort": 80,
                "tlsPort": 443,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")
        env = {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        }
        argv = [PEBBLE, "-config", str(self.config_file), "-dnsserver", dns_server]
        if netns:  # nsenter execs pebble: the pid is pebble's
            argv = ["nsenter", f"--net={netns}", *argv]
        try:
            return start_daemon(
                argv,
                what="pebble (the lab's ACME server)",
                address=self.address,
                port=self.port,
                pid_file=self.pid_file,
                log_file=self.log_file,
                env=env,
                cwd=self.folder,
                timeout_s=timeout_s,
            )
        except LinkDaemonError as err:
            raise LabAcmeError.from_cli(f"lab {self.number}: {err}", err) from err

    def root(self, *, timeout_s: float = 10.0) -> str:
        """The root (PEM) that signs the certificates pebble issues: new at every start. The
        management port is checked against the API's own certificate."""
        context = ssl.create_default_context(cafile=str(self.cert_file))
        # no $https_proxy: the link's address is reached directly
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        try:
            with opener.open(self.roots_url, timeout=timeout_s) as r:
                return r.read().decode()
        except (OSError, ValueError) as err:
            raise LabAcmeError(
                f"lab {self.number}: pebble's root ({self.roots_url}): {err}"
            ) from None

    @property
    def root_file(self) -> Path:
        """Where `save_root` keeps pebble's root: what a client of the lab's sites trusts."""
        return Path(self.folder) / "root.pem"

    def save_root(self) -> Path:
        """Fetch pebble's current root into `root_file` (it changes at every start); replaced
        whole, so that a reader never sees half a file."""
        partial = self.root_file.with_name(f".root.pem.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(self.root())
        os.replace(partial, self.root_file)
        return self.root_file

    def status(self) -> dict:
        pid = self.pid()
        return {
            "directory": self.directory,
            "root": self.roots_url,
            "running": pid is not None,
            "pid": pid,
            "log": str(self.log_file),
        }
