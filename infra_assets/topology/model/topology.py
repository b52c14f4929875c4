"""The shape of `topology.yaml` (DESIGN.md, "The topology file", is the contract).

Structure is checked here, one entry at a time; what ties entries together (references, unique
numbers and addresses) is checked in `load.py`, so that every problem is reported at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from resources.git_url import redact_repo, repo_password
from resources.paths import default_topology

# A DNS label: host, location, type, app and role names all end up in DNS names, salt minion ids
# and container names. \A and \Z, not ^ and $: `$` also matches before a final newline, and a
# name with one would reach top.sls, cloud-init and nginx.
NAME_PATTERN = r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z"
NAME_RE = re.compile(NAME_PATTERN)
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN_RE = re.compile(rf"\A(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*\Z")

# Roles that run a service but take no address of their own (DESIGN.md: `dns` gets no address).
UNTYPED_ROLES: frozenset[str] = frozenset({"dns"})

# The environments an app is released to, in promotion order.
ENVIRONMENTS: tuple[str, ...] = ("staging", "production")

Octet = Annotated[int, Field(ge=1, le=254)]


class _Strict(BaseModel):
    # strict: `instance: "1"` or `instance: true` is a mistake, not a number. Pydantic's own
    # error text leaves the value out (an app's repo URL may hold a token): load.py says what is
    # wrong in its own words, and a ValidationError printed elsewhere shows no secret.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)


class Location(_Strict):
    number: Octet = Field(description="The second octet of every address in the location.")
    cloud: str = Field(
        min_length=1,
        description="An entry of clouds.yaml; `lab` for this machine as a cloud (containers as"
        " servers).",
    )
    auto_apply: bool = Field(
        default=False,
        description="Apply what a commit on main changes without a person (default: plan only).",
    )

    @property
    def is_lab(self) -> bool:
        return self.cloud == "lab"

    @property
    def site_kind(self) -> str:
        """`lab` or `cloud`: one topology has one kind (sites.site_for)."""
        return "lab" if self.is_lab else "cloud"


class Host(_Strict):
    location: str = Field(min_length=1)
    instance: Octet = Field(description="The last octet of each of the host's addresses.")
    roles: list[str] = Field(min_length=1, description="The first role with a type is primary.")
    flavor: str | None = Field(default=None, description="The cloud's instance flavor.")

    @field_validator("roles")
    @classmethod
    def _roles_unique(cls, roles: list[str]) -> list[str]:
        seen = [r for i, r in enumerate(roles) if r in roles[:i]]
        if seen:
            raise ValueError(f"role {seen[0]!r} is listed twice")
        return roles


def _environment(env: str) -> str:
    if env not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {env!r}: use {' or '.join(ENVIRONMENTS)}")
    return env


def _domain(domain: str) -> str:
    if not DOMAIN_RE.match(domain):
        raise ValueError(f"{domain!r} is not a domain name")
    return domain


# Checked entry by entry, so that each bad one is reported with its own key path
# (`apps.hello.domains.staging`).
Environment = Annotated[str, AfterValidator(_environment)]
Domain = Annotated[str, AfterValidator(_domain)]


# git check-ref-format, in short: what a branch name may not contain or start or end with.
_BAD_BRANCH = re.compile(r"(\.\.|[\x00-\x20\x7f~^:?*\[\\]|@\{|//)")


# A health path: what the web hosts' health check asks for (it reaches a shell command line
# there, quoted; this keeps it to what a URL path and query need).
_HEALTH_RE = re.compile(r"/[A-Za-z0-9/._~?=&%-]*")


# An environment variable's name, as POSIX shells take it (and podman, and the app's runtime).
ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
# Set by each release (PORT, HOST: where to listen) or by `database: true` (DATABASE_URL).
RELEASE_ENV = ("PORT", "HOST")
EnvValue = str | int | float | bool


def _env_name(name: str) -> str:
    if not ENV_NAME_RE.match(name):
        raise ValueError(
            f"{name!r} is not an environment variable's name (letters, digits and _, not"
            " starting with a digit)"
        )
    if name in RELEASE_ENV:
        raise ValueError(f"{name} is set by each release (the port and address to listen on)")
    return name


def _env_text(value: EnvValue) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if "\x00" in text:
        raise ValueError("holds a NUL character, which no environment variable can")
    return text


def _env_setting(value: Any) -> str | dict[str, str]:
    """A setting: one value for both environments, or {environment: value}; as text."""
    if isinstance(value, dict):
        out = {}
        for env, one in value.items():
            if env not in ENVIRONMENTS:
                raise ValueError(f"unknown environment {env!r}: use staging or production")
            if isinstance(one, dict):
                raise ValueError(f"{env}: must be a value, not a mapping")
            out[env] = _env_setting(one)
        return out
    if isinstance(value, (str, int, float, bool)):
        return _env_text(value)
    raise ValueError(
        "must be a value (text, a number, true or false), or one per environment"
        " ({staging: ..., production: ...})"
    )


EnvName = Annotated[str, AfterValidator(_env_name)]
EnvSetting = Annotated[Any, BeforeValidator(_env_setting)]


class App(_Strict):
    repo: str = Field(
        min_length=1, description="A git URL, or a path on this machine (the lab serves it)."
    )
    branch: str = Field(default="main", min_length=1)
    kind: Literal["web", "worker"] = Field(
        default="web",
        description="web: serves HTTP behind nginx at `port`, released once its `health` path"
        " answers; worker: a process with no HTTP and no site (a bot, a scheduled job), released"
        " once it has stayed up `up_s` seconds.",
    )
    port: int | None = Field(
        default=None, ge=1, le=65535, description="The port a web app listens on in its container."
    )
    health: str = Field(default="/", description="The path that answers 200 when healthy.")
    up_s: int = Field(
        default=10,
        ge=1,
        le=300,
        description="A worker's new process must stay up this long before the old one stops.",
    )
    domains: dict[Environment, Domain] = Field(
        default_factory=dict, description="Environment -> domain."
    )
    database: bool = Field(
        default=False,
        description="A PostgreSQL database and role named after the app on each environment's"
        " postgres host (its password: the secrets' postgres.<app>.<environment>), given to the"
        " app as DATABASE_URL (TLS required).",
    )
    dagster: bool = Field(
        default=False,
        description="Dagster's GraphQL API for the app (a chat-ops bot): DAGSTER_URL, an account"
        " of its own (DAGSTER_ACCOUNT app-<app>, DAGSTER_PASSWORD: the secrets'"
        " dagster.app_accounts.<app>) and DAGSTER_CA, given as secrets; its containers may"
        " reach the dagster role's UI. Needs a host with the role dagster.",
    )
    env: dict[EnvName, EnvSetting] = Field(
        default_factory=dict,
        description="Plain settings: NAME: value for both environments, or NAME: {staging:"
        " value, production: value}. Never a secret: this file is in git.",
    )
    secrets: list[EnvName] = Field(
        default_factory=list,
        description="Names of settings kept in the secrets file (apps.<app>.<environment>.<NAME>),"
        " given to the app as environment variables and never shown.",
    )

    @field_validator("repo")
    @classmethod
    def _repo_holds_no_password(cls, repo: str) -> str:
        # A token in the URL would reach git's config, the logs, the metadata and the image's
        # source label, and it would be in git with this file. The password is shown as ***.
        if repo_password(repo):
            raise ValueError(
                f"{redact_repo(repo, mask='***')!r} holds a password or token: credentials never"
                " belong in the topology, which is kept in git. Name the repo without one: an"
                " SSH URL with a deploy key on the build hosts (ssh://git@host/org/app.git or"
                " git@host:org/app.git), or https://host/org/app.git with git's credential helper"
                " there; and revoke that token if this file was ever committed or shared"
            )
        return repo

    @field_validator("branch")
    @classmethod
    def _branch_is_a_ref(cls, branch: str) -> str:
        if (
            _BAD_BRANCH.search(branch)
            or branch.startswith(("-", "/", "."))
            or branch.endswith(("/", ".", ".lock"))
            or branch == "@"
        ):
            raise ValueError(
                f"{branch!r} is not a valid git branch name (see `git check-ref-format --branch`)"
            )
        return branch

    @field_validator("secrets")
    @classmethod
    def _secrets_once(cls, names: list[str]) -> list[str]:
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} named more than once")
        return names

    @model_validator(mode="after")
    def _kind_fits(self) -> App:
        if self.kind == "web":
            if self.port is None:
                raise ValueError(
                    "a web app needs `port` (where it listens in its container); an app with no"
                    " HTTP is `kind: worker`"
                )
            if "up_s" in self.model_fields_set:
                raise ValueError("up_s is for workers (a web app's release waits on `health`)")
            return self
        extra = sorted(self.model_fields_set & {"port", "health", "domains"})
        if extra:
            raise ValueError(
                f"a worker has no HTTP: leave out {', '.join(extra)} (it is released once its"
                " process has stayed up `up_s` seconds)"
            )
        return self

    @model_validator(mode="after")
    def _settings_named_once(self) -> App:
        both = sorted(set(self.env) & set(self.secrets))
        if both:
            raise ValueError(
                f"{', '.join(both)}: in both env and secrets; a setting is one or the other"
            )
        if self.database and "DATABASE_URL" in (*self.env, *self.secrets):
            raise ValueError(
                "DATABASE_URL is set by `database: true` (the app's own database): leave it out"
                " of env and secrets, or set database: false to give your own"
            )
        return self

    def env_for(self, environment: str) -> dict[str, str]:
        """The plain settings in `environment`: NAME -> text."""
        out = {}
        for name, value in self.env.items():
            if isinstance(value, dict):
                if environment not in value:
                    continue
                value = value[environment]
            out[name] = value
        return out

    @field_validator("health")
    @classmethod
    def _health_is_a_path(cls, health: str) -> str:
        if not _HEALTH_RE.fullmatch(health):
            raise ValueError(
                f"{health!r} is not a URL path: it must start with '/' and hold only letters,"
                " digits and / . _ ~ ? = & % - (percent-encode anything else)"
            )
        return health


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


class Acme(_Strict):
    """Where the web hosts get their sites' certificates (ACME, HTTP-01 on port 80). A lab's
    web hosts use the lab's own ACME server instead (resources/lab_acme.py)."""

    directory: str = Field(default=LETS_ENCRYPT, description="The ACME server's directory URL.")
    email: str | None = Field(
        default=None, description="Where the ACME server writes about expiring certificates."
    )

    @field_validator("directory")
    @classmethod
    def _directory_is_https(cls, directory: str) -> str:
        if not re.fullmatch(
            r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9/._~-]*)?", directory
        ):
            raise ValueError(
                f"{directory!r} is not an ACME directory URL: https://<host>[:port]/<path>,"
                f" such as Let's Encrypt's {LETS_ENCRYPT}"
            )
        return directory

    @field_validator("email")
    @classmethod
    def _email_is_an_address(cls, email: str | None) -> str | None:
        if email is not None and not _EMAIL_RE.fullmatch(email):
            raise ValueError(f"{email!r} is not an email address")
        return email


class Topology(_Strict):
    """A validated topology. Build it with `load_topology` or `parse_topology`."""

    domain: str = Field(
        default="coop.internal", description="The private DNS domain: <host>.<location>.<domain>."
    )
    locations: dict[str, Location]
    types: dict[str, Octet]
    hosts: dict[str, Host]
    apps: dict[str, App] = Field(default_factory=dict)
    acme: Acme = Field(default_factory=Acme)
    infra_repo: str | None = Field(
        default=None,
        description="This repository's git URL, where the dagster role's host checks it out.",
    )

    # The file it was read from and its text as read (load.py sets them): what a site hands on
    # (the Dagster host's copy of the file, the lab's git exports) without reading it again.
    _source_file: Path | None = PrivateAttr(default=None)
    _source_text: str | None = PrivateAttr(default=None)

    def source_file(self) -> Path:
        """The file this topology was read from. One built another way (a test's, parsed from a
        commit, stored by an older version) has none: then the file Dagster works on
        ($INFRA_TOPOLOGY, else topology.yaml)."""
        return self._recorded("_source_file") or default_topology()

    def source(self) -> tuple[Path, str]:
        """(the file, its text as read). Without a recorded text: `source_file()`, read now."""
        file, text = self._recorded("_source_file"), self._recorded("_source_text")
        if file is not None and text is not None:
            return file, text
        path = default_topology()
        return path, path.read_text(encoding="utf-8")

    def _recorded(self, name: str) -> Any:
        # A topology pickled before these attributes existed has no private values at all.
        return (self.__pydantic_private__ or {}).get(name)

    def roles(self) -> set[str]:
        """Every role a host may have: the typed roles and the untyped ones."""
        return set(self.types) | UNTYPED_ROLES

    def hosts_with_role(self, role: str) -> dict[str, Host]:
        return {name: host for name, host in self.hosts.items() if role in host.roles}

    def typed_roles(self, host: Host) -> list[str]:
        """The host's roles that take an address, primary first."""
        return [r for r in host.roles if r in self.types]

    def location_of(self, host_name: str) -> Location:
        return self.locations[self.hosts[host_name].location]

    def salt_master(self) -> str:
        """The name of the host that runs the salt master (validated to be exactly one)."""
        return next(iter(self.hosts_with_role("salt-master")))
