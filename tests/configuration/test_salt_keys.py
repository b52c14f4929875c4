"""Key pairs made ahead of the hosts (infra_assets/configuration/salt_keys.py), checked against salt itself.

salt is imported in a subprocess only: importing it replaces the interpreter's logger class, which
breaks Dagster's loggers for every later test (resources/salt.py runs salt in a worker for that)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

from infra_assets.configuration.salt_keys import MASTER, KeyStore

SALT_CHECK = """
import json, sys
import salt.crypt, salt.utils.crypt
pub, pem = sys.argv[1], sys.argv[2]
key = salt.crypt.PrivateKey(open(pem, "rb").read())
signature = key.sign(b"hello")
print(json.dumps({
    "finger": salt.utils.crypt.pem_finger(pub, sum_type="sha256"),
    "verified": bool(salt.crypt.PublicKey.from_file(pub).verify(b"hello", signature)),
}))
"""


def test_pairs_are_made_once_kept_and_dropped_with_their_host(tmp_path):
    store = KeyStore(tmp_path / "keys")
    first = store.ensure(["web-1", "db-1"])
    assert first.created == (MASTER, "db-1", "web-1") and first.kept == ()
    web = store.minion("web-1")
    again = store.ensure(["web-1", "db-1"])
    assert again.created == () and not again.changed
    assert store.minion("web-1") == web  # the same pair, not a new one
    gone = store.ensure(["web-1"])
    assert gone.removed == ("db-1",) and store.get("db-1") is None
    assert store.minions() == ["web-1"]
    # private halves are for root only, in a folder only root can list
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "keys" / "minions" / "web-1.pem").stat().st_mode) == 0o600
    assert "PRIVATE" not in repr(web)


def test_salt_reads_the_pairs_and_agrees_on_the_fingerprint(tmp_path):
    store = KeyStore(tmp_path / "keys")
    store.ensure(["web-1"])
    pair = store.master()
    pub, pem = tmp_path / "master.pub", tmp_path / "master.pem"
    pub.write_text(pair.public_pem)
    pem.write_text(pair.private_pem)
    out = subprocess.run(
        [sys.executable, "-c", SALT_CHECK, str(pub), str(pem)],
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["finger"] == pair.finger
    # salt loads both halves: the private key signs, the public key verifies
    assert seen["verified"] is True
