"""The lab's ACME server (resources/lab_acme.py): Debian's pebble, run for real on loopback at
free ports (the lab runs it on its link; tests/lab/test_lab_releases.py gets certificates from it)."""

from __future__ import annotations

import json
import os
import ssl
import urllib.request

import pytest

from infra_assets.topology.secrets import self_signed_certificate
from lab.processes import free_port
from resources.lab_acme import LabAcme, LabAcmeError

pytestmark = pytest.mark.slow


@pytest.fixture
def acme(tmp_path):
    server = LabAcme(
        7, tmp_path / "acme", listen="127.0.0.1", port=free_port(), management_port=free_port()
    )
    yield server
    server.stop()


def test_pebble_serves_its_directory_with_the_key_pair_it_was_given_and_stops_by_its_pid(acme):
    with pytest.raises(LabAcmeError, match="no key pair for pebble's API"):
        acme.start(dns_server="127.0.0.1:53")
    cert, key = self_signed_certificate(["127.0.0.1"])
    acme.write_key_pair(cert, key)
    assert (acme.key_file.stat().st_mode & 0o777) == 0o600
    acme.write_key_pair(*self_signed_certificate(["127.0.0.1"]))  # an existing pair stays
    assert acme.ca_cert() == cert
    # ... unless it is for another address (the server moved): then it is replaced.
    moved = LabAcme(7, acme.folder, listen="127.0.0.2", port=acme.port)
    other, _ = self_signed_certificate(["127.0.0.2"])
    moved.write_key_pair(other, key)
    assert moved.ca_cert() == other
    acme.write_key_pair(cert, key)
    assert acme.ca_cert() == cert

    pid = acme.start(dns_server="127.0.0.1:53")
    assert acme.start(dns_server="127.0.0.1:53") == pid  # running: not started twice
    context = ssl.create_default_context(cafile=str(acme.cert_file))
    with urllib.request.urlopen(acme.directory, context=context, timeout=5) as answer:
        directory = json.load(answer)
    assert directory["newAccount"].startswith(f"https://127.0.0.1:{acme.port}/")
    # Only the API's own certificate is trusted for it: the default trust store refuses it.
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(acme.directory, timeout=5)

    # The root that signs the sites: fetched from the management port, new at each start.
    first = acme.root()
    assert first.startswith("-----BEGIN CERTIFICATE-----")
    assert acme.save_root().read_text() == first
    # Every challenge is really answered: no always-valid switch in pebble's environment.
    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read().decode().split("\0")
    assert "PEBBLE_VA_NOSLEEP=1" in environ and "PEBBLE_WFE_NONCEREJECT=0" in environ
    assert not [v for v in environ if v.startswith("PEBBLE_VA_ALWAYS_VALID")]
    status = acme.status()
    assert status["running"] and status["pid"] == pid and status["directory"] == acme.directory

    assert acme.stop() == pid and not acme.running()
    assert acme.stop() is None
    acme.start(dns_server="127.0.0.1:53")
    assert acme.root() != first


def test_a_pid_file_naming_another_process_is_not_trusted(acme, tmp_path):
    acme.folder.mkdir(parents=True)
    acme.pid_file.write_text(f"{os.getpid()}\n")  # this test's own process: not a pebble
    assert acme.pid() is None and acme.stop() is None
