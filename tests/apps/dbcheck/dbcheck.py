"""Log in to the app's database as the app would, with only the standard library: DATABASE_URL's
host, port, role, password and database, TLS first (PostgreSQL's SSLRequest), then SCRAM-SHA-256
(RFC 5802, RFC 7677), then a query. The lab's release tests run it as an image's release command
(tests/lab/test_lab_releases.py): it proves that a release's container reaches the environment's
database over TLS with the credentials the release gave it. Prints one line; exits 1 on failure.
"""

import base64
import hashlib
import hmac
import os
import secrets
import socket
import ssl
import struct
import sys
import urllib.parse


def message(sock, kind: bytes, payload: bytes) -> None:
    sock.sendall(kind + struct.pack("!I", len(payload) + 4) + payload)


def receive(sock) -> tuple[bytes, bytes]:
    head = read(sock, 5)
    length = struct.unpack("!I", head[1:])[0]
    return head[:1], read(sock, length - 4)


def read(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def expect(sock, kind: bytes) -> bytes:
    got, payload = receive(sock)
    if got == b"E":
        fields = dict((f[:1], f[1:].decode()) for f in payload.split(b"\0") if f)
        raise RuntimeError(f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', payload)}")
    if got != kind:
        raise RuntimeError(f"expected message {kind!r}, got {got!r}")
    return payload


def scram(sock, password: str) -> None:
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    message(sock, b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
    payload = expect(sock, b"R")
    if struct.unpack("!I", payload[:4])[0] != 11:
        raise RuntimeError("the server did not continue SCRAM")
    server_first = payload[4:].decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth, hashlib.sha256).digest()
    proof = base64.b64encode(
        bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    ).decode()
    message(sock, b"p", f"{without_proof},p={proof}".encode())
    final = expect(sock, b"R")
    if struct.unpack("!I", final[:4])[0] != 12:
        raise RuntimeError("the server did not finish SCRAM")
    if struct.unpack("!I", expect(sock, b"R")[:4])[0] != 0:
        raise RuntimeError("not authenticated")


def login(url) -> str:
    user, password = urllib.parse.unquote(url.username), urllib.parse.unquote(url.password)
    database = url.path.lstrip("/")
    raw = socket.create_connection((url.hostname, url.port or 5432), timeout=10)
    raw.sendall(struct.pack("!II", 8, 80877103))  # SSLRequest
    if read(raw, 1) != b"S":
        raise RuntimeError("the server refused TLS")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # sslmode=require: encrypted, the server not verified
    sock = context.wrap_socket(raw)
    startup = struct.pack("!I", 196608)
    startup += f"user\0{user}\0database\0{database}\0\0".encode()
    sock.sendall(struct.pack("!I", len(startup) + 4) + startup)
    payload = expect(sock, b"R")
    if struct.unpack("!I", payload[:4])[0] != 10 or b"SCRAM-SHA-256" not in payload:
        raise RuntimeError("the server does not ask for SCRAM-SHA-256")
    scram(sock, password)
    while True:
        kind, payload = receive(sock)
        if kind == b"Z":
            break
    message(sock, b"Q", b"SELECT current_user, current_database()\0")
    row = []
    while True:
        kind, payload = receive(sock)
        if kind == b"E":
            raise RuntimeError(payload.decode(errors="replace"))
        if kind == b"D":
            count = struct.unpack("!H", payload[:2])[0]
            at = 2
            for _ in range(count):
                size = struct.unpack("!i", payload[at : at + 4])[0]
                row.append(payload[at + 4 : at + 4 + size].decode())
                at += 4 + size
        if kind == b"Z":
            break
    version = sock.version()
    sock.close()
    return f"logged in as {row[0]} to {row[1]} over {version}"


if __name__ == "__main__":
    try:
        where = urllib.parse.urlsplit(os.environ.get("DATABASE_URL", ""))
        if where.scheme not in ("postgresql", "postgres"):
            raise RuntimeError("DATABASE_URL is not set, or not a postgresql:// URL")
        print(f"dbcheck: {login(where)}", flush=True)
    except Exception as err:  # noqa: BLE001 - one line saying why, for the release's output
        print(f"dbcheck: failed: {err}", flush=True)
        sys.exit(1)
