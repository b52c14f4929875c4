"""Key pairs made ahead of the hosts (infra_assets/salt_keys.py), checked against salt itself."""

from __future__ import annotations

import stat

import salt.crypt
import salt.utils.crypt

from infra_assets.salt_keys import MASTER, KeyStore


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
    path = tmp_path / "master.pub"
    path.write_text(pair.public_pem)
    assert salt.utils.crypt.pem_finger(str(path), sum_type="sha256") == pair.finger
    # salt loads both halves: the private key signs, the public key verifies
    key = salt.crypt.PrivateKey(pair.private_pem.encode())
    signature = key.sign(b"hello")
    assert salt.crypt.PublicKey.from_file(str(path)).verify(b"hello", signature)
