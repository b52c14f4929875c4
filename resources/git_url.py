"""An app's git repo as the topology names it: a URL or a local path, and never a password.

Plain Python (no Dagster): the topology model checks its apps' repos with it, GitResource hides
a URL's password in what git prints, and every repo URL that is logged, put in metadata or in an
image's `org.opencontainers.image.source` label goes through `redact_repo` first.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

# scheme://..., or scp-like [user@]host:path: git's own rule (connect.c, url_is_local_not_ssh):
# a colon before the first slash (or with no slash at all) is ssh; `./a:b`, `/srv/a:b` are paths.
URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^[^/]*:")
_SCHEME_RE = re.compile(r"\A[a-zA-Z][a-zA-Z0-9+.-]*://")
_AUTHORITY_END = re.compile(r"[/?#]")
_SCP_HOST_END = re.compile(r"/")
# An access token written as the user name (`https://ghp_...@github.com/x`, which GitHub and
# GitLab accept): one of the forges' token prefixes, or 32 or more of a token's characters with
# letters and digits mixed (GitHub's old 40-hex tokens). A person's user name is neither.
_TOKEN_USER = re.compile(
    r"\A(?:(?:gh[pousr]_|github_pat_|glpat-|gldt-|glcbt-)\S+"
    r"|(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{32,})\Z"
)


def resolve_repo(repo: str, base_dir: Path) -> str:
    """A repo as the topology names it, ready for git: URLs unchanged, a relative local path
    made absolute against `base_dir` (the topology file's folder)."""
    if URL_RE.match(repo):
        return repo
    path = Path(repo).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).absolute())


def _password_span(repo: str) -> tuple[int, int, int] | None:
    """Where `repo`'s userinfo starts, and where its password starts and ends (the `:` before
    and the `@` after it excluded); None for a path, or a URL with no password. A user name
    that is an access token counts as the password (it starts where the userinfo does).

    The authority ends at the first `/`, `?` or `#` (an scp-like URL's at the first `/`) and
    the userinfo at the last `@` before that, so a password holding a raw `@` is hidden whole
    (git itself splits at the first one: this hides at least what git would send)."""
    if not URL_RE.match(repo):
        return None
    scheme = _SCHEME_RE.match(repo)
    start = scheme.end() if scheme else 0
    end = (_AUTHORITY_END if scheme else _SCP_HOST_END).search(repo, start)
    stop = end.start() if end else len(repo)
    at = repo.rfind("@", start, stop)
    colon = repo.find(":", start, at) if at > start else -1
    if colon >= 0:
        return (start, colon + 1, at)
    if at > start and scheme and _TOKEN_USER.match(unquote(repo[start:at])):
        return (start, start, at)
    return None


def repo_password(repo: str) -> str:
    """The password (or token) in `repo`'s userinfo, as written (URL-quoted if it is); ''
    when there is none: `https://bob:tok@host/x` -> 'tok'; `ssh://git@host/x` -> ''."""
    span = _password_span(repo)
    return repo[span[1] : span[2]] if span else ""


def redact_repo(repo: str, mask: str = "") -> str:
    """`repo` with the password of its userinfo removed, the user kept (git asks the credential
    helper for it by that name): `https://bob:tok@host:8443/x` -> `https://bob@host:8443/x`.
    With `mask`, the password is replaced instead: `https://bob:***@host:8443/x`, to show a
    person where it was. Anything else (no password, a path) is returned as it is."""
    span = _password_span(repo)
    if span is None:
        return repo
    start, password, at = span
    if mask:
        return repo[:password] + mask + repo[at:]
    user = repo[start : password - 1] if password > start else ""  # a token as the user: none
    return repo[:start] + (f"{user}@" if user else "") + repo[at + 1 :]


def repo_secrets(repo: str) -> list[str]:
    """What must never be printed for `repo`: its password as written and URL-decoded (git and
    curl print either), for a runner's `redact`."""
    password = repo_password(repo)
    return sorted({password, unquote(password)} - {""}, key=len, reverse=True)
