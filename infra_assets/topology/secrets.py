"""The secrets pillar's source: one YAML file outside git, its path from `$INFRA_SECRETS_FILE`.

    registry:                      # when a host has the role docker-registry
      http_secret: ...             # the registry's upload-state HMAC key
      users: {ci: ..., deploy: ...}  # htpasswd: ci pushes (jenkins agents), deploy pulls (web)
      tls: {cert: PEM, key: PEM}   # the registry's certificate (self-signed or from the co-op's CA)
    postgres:                      # per app with `database: true` and environment that has a
      hello: {staging: ..., production: ...}  # postgres-<env> host: its role's password
    apps:                          # per app, environment (with web hosts) and name of its
      hello:                       # `secrets:` in the topology: the values the app gets as
        staging: {SESSION_KEY: ...}  # environment variables
        production: {SESSION_KEY: ...}
    jenkins:                       # when a host has the role jenkins-master
      admin_password: ...
    webhooks:                      # the webhook endpoint (webhooks/): read by it alone
      secret: ...                  # the HMAC key git hooks and forges sign pushes with
    chat:                          # optional: the notices (sensors/notifications.py)
      webhook_url: https://...     # the chat's incoming webhook (Slack, Mattermost, Rocket.Chat)
    dagster:                       # when a host has the role dagster (salt/dagster)
      postgres_password: ...       # its instance's database role (on the production postgres)
      accounts: {alice: ...}       # who may open the UI: name -> password (basic auth, TLS)
      app_accounts: {deploybot: ...}  # per app with `dagster: true`: its account (app-<app>)
      tls: {cert: PEM, key: PEM}   # the UI's certificate (self-signed or from the co-op's CA)
    salt:                          # the lab and the cloud: how Dagster reaches the master
      api:                         # salt-api (rest_cherrypy) on the salt-master host
        password: ...              # the eauth account's shared secret (the account: `dagster`)
        tls: {cert: PEM, key: PEM} # salt-api's certificate (its CA file is the cert itself)

Which keys are required follows from the topology (`required_keys`); `webhooks.secret` is
required by the webhook endpoint when it starts (`webhook_secret`). The pillar hands each minion
only the values its roles need (`infra_assets/configuration/pillar.py`). The lab generates throwaway
values (`ensure_secrets`) under the gitignored state folder; a real site's file is written by a
person and never generated.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets as random
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from infra_assets.topology.model import ENVIRONMENTS, Topology, address_plan

# The registry's accounts: the push account (builds; the push door only) and the pull accounts
# (web hosts; the read-only door only).
PUSH_ACCOUNT = "ci"
PULL_ACCOUNTS = ("deploy",)
REGISTRY_USERS = (PUSH_ACCOUNT, *PULL_ACCOUNTS)
# What a YAML error quotes ('...' or "..."): blanked, it may be a secret.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class SecretsError(Exception):
    """The secrets file is missing, unreadable or lacks keys. Lists every problem at once."""

    def __init__(self, file: Path, problems: list[str]):
        self.file = file
        self.problems = problems
        head = f"{file}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the secrets"
        super().__init__("\n".join([head, *(f"  {p}" for p in problems)]))


@dataclass(frozen=True)
class Secrets:
    file: Path
    data: dict[str, Any]

    def get(self, *path: str) -> Any:
        node: Any = self.data
        for key in path:
            node = node[key]
        return node

    def webhook_key(self) -> bytes | None:
        """`webhooks.secret` as the HMAC key (None: not there, or not a string)."""
        value = _lookup(self.data, WEBHOOK_SECRET)
        return value.strip().encode() if isinstance(value, str) and value.strip() else None

    def values(self) -> list[str]:
        """Every secret value and every encoded form of it that a state writes, longest first:
        what logs and metadata must never show.

        Besides the values: each value JSON-escaped (`| json` in the states, auth.json) and
        URL-quoted (all escaped, "/" kept, or as a form), its base64, and the base64 of each
        registry account's `user:password` (the `auth` of an auth.json, written by the web and
        jenkins-agent states).
        """
        found: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, str) and node:
                found.append(node)
                # A PEM key also shows up line by line in a diff.
                if "\n" in node:
                    found.extend(line for line in node.splitlines() if len(line) >= 16)

        walk(self.data)
        plain = list(found)
        for value in plain:
            found.append(json.dumps(value)[1:-1])
            found.append(json.dumps(value, ensure_ascii=False)[1:-1])
            found.append(urllib.parse.quote(value, safe=""))
            found.append(urllib.parse.quote(value))  # "/" kept: Jinja's urlencode, a URL's path
            found.append(urllib.parse.quote_plus(value))  # a form's or a query's encoding
            found.append(_b64(value))
        key = self.webhook_key()
        if key:
            found.append(registry_notify_token(key))
        registry = self.data.get("registry")
        users = registry.get("users") if isinstance(registry, dict) else None
        for user, password in users.items() if isinstance(users, dict) else ():
            if isinstance(password, str) and password:
                found.append(_b64(f"{user}:{password}"))
        return sorted(set(found), key=len, reverse=True)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def postgres_environments(topo: Topology) -> list[str]:
    """The environments that have a PostgreSQL host somewhere in the topology."""
    return [env for env in ENVIRONMENTS if topo.hosts_with_role(f"postgres-{env}")]


def web_environments(topo: Topology) -> list[str]:
    """The environments that have a web host somewhere in the topology (where apps run)."""
    return [env for env in ENVIRONMENTS if topo.hosts_with_role(f"web-{env}")]


def required_keys(topo: Topology) -> list[tuple[str, ...]]:
    keys: list[tuple[str, ...]] = []
    if topo.hosts_with_role("docker-registry"):
        keys.append(("registry", "http_secret"))
        keys += [("registry", "users", user) for user in REGISTRY_USERS]
        keys += [("registry", "tls", "cert"), ("registry", "tls", "key")]
    for name, app in topo.apps.items():
        if app.database:
            keys += [("postgres", name, env) for env in postgres_environments(topo)]
        for env in web_environments(topo):
            keys += [("apps", name, env, secret) for secret in app.secrets]
    if topo.hosts_with_role("jenkins-master"):
        keys.append(("jenkins", "admin_password"))
    if topo.hosts_with_role("salt-master"):
        keys += [("salt", "api", "password"), ("salt", "api", "tls", "cert")]
        keys.append(("salt", "api", "tls", "key"))
    if topo.hosts_with_role("dagster"):
        keys += [("dagster", "postgres_password"), ("dagster", "tls", "cert")]
        keys.append(("dagster", "tls", "key"))
        # an account of its own for each app that asks for Dagster's API (a chat-ops bot)
        keys += [
            ("dagster", "app_accounts", name) for name, app in topo.apps.items() if app.dagster
        ]
    return keys


DAGSTER_ACCOUNTS = ("dagster", "accounts")
ACCOUNT_NAME = re.compile(r"\A[a-z][a-z0-9._-]{0,31}\Z")


def _accounts_problems(data: dict, topo: Topology) -> list[str]:
    """`dagster.accounts` (when a host has the role dagster): a mapping of at least one account
    name to its password, a non-empty string. Values are never shown."""
    if not topo.hosts_with_role("dagster"):
        return []
    accounts = _lookup(data, DAGSTER_ACCOUNTS)
    if accounts is _MISSING:
        return [
            "dagster.accounts: missing: the topology needs it (a host has the role dagster: who"
            " may open its UI, name -> password)"
        ]
    if not isinstance(accounts, dict) or not accounts:
        return ["dagster.accounts: must be a mapping of account name -> password, at least one"]
    problems = []
    for name, password in accounts.items():
        if isinstance(name, str) and name.startswith("app-"):
            problems.append(
                f"dagster.accounts: {name[:32]!r}: names starting with app- are the apps' (an app"
                " with `dagster: true` logs in as app-<app>): name the person otherwise"
            )
        elif not isinstance(name, str) or not ACCOUNT_NAME.match(name):
            problems.append(
                f"dagster.accounts: {str(name)[:32]!r} is not an account name (a-z, 0-9, . _ -;"
                " a letter first; at most 32)"
            )
        elif not isinstance(password, str) or not password.strip():
            problems.append(f"dagster.accounts.{name}: must be a non-empty string")
    return problems


def dagster_names(topo: Topology, hosts: Iterable[str] | None = None) -> list[str]:
    """What the Dagster UI's certificate covers (its hosts', or `hosts'`, addresses and DNS
    names): the names nginx serves it under."""
    plan = address_plan(topo)
    names: list[str] = []
    for host in sorted(topo.hosts_with_role("dagster") if hosts is None else hosts):
        spec = topo.hosts[host]
        names += [a.address for a in plan.for_host(host) if a.role == "dagster"]
        names.append(f"{host}.{spec.location}.{topo.domain}")
    return names


def salt_api_names(topo: Topology) -> list[str]:
    """What salt-api's certificate covers: the master host's addresses and DNS names."""
    master = topo.salt_master()
    plan = address_plan(topo)
    spec = topo.hosts[master]
    return [a.address for a in plan.for_host(master)] + [f"{master}.{spec.location}.{topo.domain}"]


def _read(path: Path, keys: list[tuple[str, ...]], *, missing_ok: bool = False) -> dict[str, Any]:
    """The secrets file as a mapping, or `SecretsError` naming the file, the line and the key.

    Never shows a line of the file: a YAML error's excerpt would print the secret on it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise SecretsError(
            path, ["no such file: write it (README, 'Secrets') or set $INFRA_SECRETS_FILE"]
        ) from None
    except OSError as exc:
        raise SecretsError(path, [f"cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise SecretsError(path, ["cannot read the file: it is not UTF-8 text"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The construct's start (an unclosed quote's line) names the key better than the point
        # where the parser gave up (often the end of the file).
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        where = f" on line {mark.line + 1}" if mark else ""
        # PyYAML quotes what it could not read (a tag, an alias): that may be the secret.
        problem = _QUOTED.sub("'…'", getattr(exc, "problem", None) or "cannot parse it")
        key = _key_before(text, mark.line, keys) if mark else None
        near = f" (in or after the key {key})" if key else ""
        raise SecretsError(
            path, [f"not valid YAML{where}{near}: {problem}; the line is not shown (secrets)"]
        ) from None
    except (ValueError, TypeError, RecursionError):
        # A value YAML parsed but could not convert (`2024-13-45`, `!!int abc`), or an alias
        # that holds itself; the error's text would quote the value.
        raise SecretsError(
            path,
            [
                "a value could not be read (an unquoted value YAML takes for a date or a number,"
                " a !!tag, or an alias that refers to itself): quote each secret value; the"
                " value is not shown (secrets)"
            ],
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SecretsError(path, ["the file must be a YAML mapping (registry:, postgres:, ...)"])
    problems = _shape_problems(data, keys)
    if problems:
        raise SecretsError(path, problems)
    return data


def _shape_problems(data: dict, keys: list[tuple[str, ...]]) -> list[str]:
    """The groups on the way to a required key that are not mappings (`registry: x`).
    Values are never shown, only their type."""
    found: list[str] = []
    for key in keys:
        node: Any = data
        for depth, part in enumerate(key[:-1], start=1):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
            if not isinstance(node, dict):
                problem = (
                    f"{'.'.join(key[:depth])}: must be a mapping of "
                    f"{', '.join(sorted({k[depth] for k in keys if k[:depth] == key[:depth]}))}"
                    f" (found a {type(node).__name__})"
                )
                if problem not in found:
                    found.append(problem)
                break
    return found


def _key_before(text: str, line: int, keys: list[tuple[str, ...]]) -> str | None:
    """The dotted key of the last mapping key at or above `line` (0-based), from indentation
    alone, for an error message that names where without showing the value. Only names the
    topology's keys are made of are shown (text before a colon inside a value could be a secret).
    """
    known = {part for key in keys for part in key}
    stack: list[tuple[int, str]] = []
    found = None
    for raw in text.splitlines()[: line + 1]:
        stripped = raw.lstrip(" ")
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        name = stripped.split(":", 1)[0].strip().strip("'\"")
        if not name or any(c in name for c in "{}[],&*!|>'\"%@`"):
            continue
        indent = len(raw) - len(stripped)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, name))
        found = ".".join(n for _, n in stack) if all(n in known for _, n in stack) else None
    return found


def load_secrets(path: Path, topo: Topology) -> Secrets:
    """Read and check the secrets file for `topo`. Raises `SecretsError` (never shows a value)."""
    path = Path(path)
    data = _read(path, required_keys(topo))
    problems = []
    for key in required_keys(topo):
        value = _lookup(data, key)
        dotted = ".".join(key)
        if value is _MISSING:
            problems.append(f"{dotted}: missing: the topology needs it ({_why(key)})")
        elif not isinstance(value, str) or not value.strip():
            problems.append(f"{dotted}: must be a non-empty string")
    problems += _accounts_problems(data, topo)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        problems.append(f"readable by others (mode {oct(mode)}): chmod 600 {path}")
    if problems:
        raise SecretsError(path, problems)
    return Secrets(path, data)


WEBHOOK_SECRET = ("webhooks", "secret")


def registry_notify_token(secret: bytes) -> str:
    """The bearer token the registry's notifications carry to the webhook endpoint: derived
    from `webhooks.secret` (a key of its own, not the secret itself, in the registry's config)."""
    return hmac.new(secret, b"coop-infra registry notifications", hashlib.sha256).hexdigest()


CHAT_WEBHOOK = ("chat", "webhook_url")


def chat_webhook_url(path: Path) -> str | None:
    """`chat.webhook_url` of the secrets file at `path`: where the notices go (None: no chat, or
    no secrets file). Raises `SecretsError` for a value that is no http(s) URL or a file others
    can read (never shows a value)."""
    path = Path(path)
    data = _read(path, [CHAT_WEBHOOK], missing_ok=True)
    value = _lookup(data, CHAT_WEBHOOK)
    if value is _MISSING:
        return None
    if not isinstance(value, str) or not _is_webhook_url(value.strip()):
        raise SecretsError(path, ["chat.webhook_url: must be the chat's incoming webhook, an"
                                  " https:// URL (Slack, Mattermost, Rocket.Chat) on one line,"
                                  " with no space in it"])  # fmt: skip
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretsError(path, [f"readable by others (mode {oct(mode)}): chmod 600 {path}"])
    return value.strip()


def _is_webhook_url(value: str) -> bool:
    """An http(s) URL with a host (and a port, if any, that is one), and no space or control
    character (a URL folded over two lines in YAML gets one)."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return False
    parts = urllib.parse.urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is none
    except ValueError:
        return False
    return parts.scheme in ("https", "http") and bool(parts.hostname)


def secret_values(path: Path) -> list[str]:
    """What must never be shown, from the secrets file at `path` whatever the topology needs of
    it (`Secrets.values`; none without a file)."""
    return Secrets(Path(path), _read(Path(path), [], missing_ok=True)).values()


def webhook_secret(path: Path) -> bytes:
    """The key pushes are signed with (HMAC-SHA256): `webhooks.secret` of the secrets file at
    `path`, at least 16 characters. Raises `SecretsError` (never shows a value)."""
    path = Path(path)
    secrets = Secrets(path, _read(path, [WEBHOOK_SECRET]))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretsError(path, [f"readable by others (mode {oct(mode)}): chmod 600 {path}"])
    if _lookup(secrets.data, WEBHOOK_SECRET) is _MISSING:
        raise SecretsError(
            path,
            [
                "webhooks.secret: missing: the webhook endpoint checks each push's signature with"
                " it (a random string of 16 characters or more; the same in the git hook's"
                " secret file and the forge's webhook)"
            ],
        )
    key = secrets.webhook_key()
    if key is None or len(key.decode()) < 16:
        raise SecretsError(path, ["webhooks.secret: must be a string of 16 characters or more"])
    return key


def ensure_secrets(path: Path, topo: Topology, *, tls_names: Iterable[str] = ()) -> Secrets:
    """The lab's throwaway secrets: create the file, or add what the topology now needs.

    Values already in the file are kept. Never call this for a real site.
    """
    path = Path(path)
    data = _read(path, required_keys(topo), missing_ok=True)
    changed = False
    wanted = required_keys(topo) + ([WEBHOOK_SECRET] if topo.apps else [])
    for key in wanted:
        if _lookup(data, key) is _MISSING:
            _store(data, key, _generate(key, data, tls_names, topo))
            changed = True
    if topo.hosts_with_role("dagster") and _lookup(data, DAGSTER_ACCOUNTS) is _MISSING:
        data.setdefault("dagster", {})["accounts"] = {"coop": random.token_urlsafe(24)}
        changed = True
    if changed or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("# Throwaway secrets of the lab, generated by coop-infra. Not in git.\n")
            yaml.safe_dump(data, out, sort_keys=True, default_flow_style=False)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return load_secrets(path, topo)


_MISSING = object()


def _lookup(data: Any, key: tuple[str, ...]) -> Any:
    node = data
    for part in key:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _store(data: dict, key: tuple[str, ...], value: str) -> None:
    node = data
    for part in key[:-1]:
        node = node.setdefault(part, {})
    node[key[-1]] = value


def _why(key: tuple[str, ...]) -> str:
    if key[0] == "registry":
        return "a host has the role docker-registry"
    if key[0] == "postgres":
        return f"app {key[1]!r} (database: true) and a host with the role postgres-{key[2]}"
    if key[0] == "apps":
        return f"app {key[1]!r} names {key[3]} among its secrets, and {key[2]} has web hosts"
    if key[0] == "salt":
        return "a host has the role salt-master (salt-api, how Dagster reaches it)"
    if key[:2] == ("dagster", "app_accounts"):
        return f"app {key[2]!r} has `dagster: true` (its account of Dagster's UI)"
    if key[0] == "dagster":
        return "a host has the role dagster (its instance's database, its UI's certificate)"
    return "a host has the role jenkins-master"


def _generate(key: tuple[str, ...], data: dict, tls_names: Iterable[str], topo: Topology) -> str:
    if key[:2] == ("registry", "tls"):
        cert, pem_key = self_signed_certificate(list(tls_names) or ["localhost"])
        # Both halves at once, so that they match.
        data.setdefault("registry", {}).setdefault("tls", {}).update(cert=cert, key=pem_key)
        return cert if key[2] == "cert" else pem_key
    if key[:3] == ("salt", "api", "tls"):
        cert, pem_key = self_signed_certificate(salt_api_names(topo))
        data.setdefault("salt", {}).setdefault("api", {}).setdefault("tls", {}).update(
            cert=cert, key=pem_key
        )
        return cert if key[3] == "cert" else pem_key
    if key[:2] == ("dagster", "tls"):
        cert, pem_key = self_signed_certificate(dagster_names(topo))
        data.setdefault("dagster", {}).setdefault("tls", {}).update(cert=cert, key=pem_key)
        return cert if key[2] == "cert" else pem_key
    return random.token_urlsafe(24)


def self_signed_certificate(names: list[str]) -> tuple[str, str]:
    """A self-signed certificate (PEM) for `names` (DNS names and IP addresses), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )
