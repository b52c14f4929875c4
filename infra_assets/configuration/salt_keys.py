"""Salt key pairs made ahead of the hosts, as salt-cloud makes them: the minions' and the master's.

A minion that boots with a key pair of ours, whose public half the master already holds under
`pki/master/minions/<id>`, is accepted without anyone ever accepting a pending key; a key that
some other machine presents under a declared host's name is a different key, and the master
rejects it (salt's `pki/master/minions_rejected`, or `minions_denied` when the name is taken).
Minions pin the master's key too (`master_finger`), so a stranger cannot pose as the master.

The pairs live in a folder outside git, mode 0700 (`Site.keys_dir()`): `master.pem`/`master.pub`
and `minions/<id>.pem`/`<id>.pub`. The private halves are secrets: they reach their own host
only (lab: written into the container before its first boot; a cloud: its user-data).

The formats are salt's own (`salt.crypt.gen_keys`): RSA 2048, the private key in the
traditional OpenSSL PEM form, the public key as a SubjectPublicKeyInfo PEM; the fingerprint is
`salt.utils.crypt.pem_finger`'s over the PEM's body lines (sha256), the form a minion's
`master_finger` and its `key.finger` use (the master's `salt-key -F` hashes the whole PEM).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

MASTER = "master"
KEY_BITS = 2048


@dataclass(frozen=True)
class KeyPair:
    name: str
    private_pem: str = field(repr=False)
    public_pem: str

    @property
    def finger(self) -> str:
        return pem_finger(self.public_pem)


@dataclass(frozen=True)
class KeyChanges:
    created: tuple[str, ...]
    kept: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.created or self.removed)


def generate(name: str) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return KeyPair(name, private, public)


def pem_finger(pem: str) -> str:
    """salt's fingerprint of a PEM key as a minion checks it (`master_finger`)."""
    lines = [line for line in pem.encode().splitlines(keepends=True) if line.strip()][1:-1]
    digest = hashlib.sha256(b"".join(lines).replace(b"\r\n", b"\n")).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class KeyStore:
    """The folder of key pairs (created with mode 0700 on first write)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _paths(self, name: str) -> tuple[Path, Path]:
        base = self.folder / MASTER if name == MASTER else self.folder / "minions" / name
        return base.with_suffix(".pem"), base.with_suffix(".pub")

    def get(self, name: str) -> KeyPair | None:
        private, public = self._paths(name)
        if not (private.is_file() and public.is_file()):
            return None
        return KeyPair(name, private.read_text(), public.read_text())

    def master(self) -> KeyPair:
        pair = self.get(MASTER)
        if pair is None:
            raise FileNotFoundError(f"no master key in {self.folder}: run `minion_keys` first")
        return pair

    def minion(self, name: str) -> KeyPair:
        pair = self.get(name)
        if pair is None:
            raise FileNotFoundError(f"no key for minion {name!r} in {self.folder}")
        return pair

    def minions(self) -> list[str]:
        folder = self.folder / "minions"
        return sorted(p.stem for p in folder.glob("*.pub")) if folder.is_dir() else []

    def ensure(self, minion_ids: list[str]) -> KeyChanges:
        """A pair for the master and for each of `minion_ids`; pairs of other minions go."""
        created, kept = [], []
        for name in [MASTER, *sorted(minion_ids)]:
            if self.get(name) is None:
                self._write(generate(name))
                created.append(name)
            else:
                kept.append(name)
        removed = [m for m in self.minions() if m not in minion_ids]
        for name in removed:
            for path in self._paths(name):
                path.unlink(missing_ok=True)
        return KeyChanges(tuple(created), tuple(kept), tuple(removed))

    def _write(self, pair: KeyPair) -> None:
        private, public = self._paths(pair.name)
        for folder in {self.folder, private.parent}:
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        _write_private(private, pair.private_pem)
        public.write_text(pair.public_pem)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
