"""Every download from outside the co-op is pinned (issue 10, "pinned bootstrap").

The test reads every file of salt/, packer/, terraform/, scripts/, lab/ and resources/, finds each
URL outside comments, and fails on one that is neither pinned in salt/lib/pins.yaml (a key's full
fingerprint, or a file's sha256, with the source it was taken from) nor in the short list below of
URLs whose own tool checks what comes from them against keys or hashes committed elsewhere, each
with the reason. Lockfiles are checked entry by entry: every npm package carries its sha512, every
Python requirement its sha256.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PINS = REPO / "salt" / "lib" / "pins.yaml"
SCANNED = ("salt", "packer", "terraform", "scripts", "lab", "resources")

# Written by hand: a URL here is not a download of a file this project trusts as it comes.
CHECKED_ELSEWHERE = {
    "http://deb.debian.org/debian": "debootstrap --keyring: Debian's archive keyring",
    "http://deb.debian.org/debian-security": "debootstrap --keyring: Debian's archive keyring",
    "https://registry.npmjs.org/": "verdaccio's upstream: npm checks each package's sha512 from"
    " the lockfile that asked for it (salt/npm-cache/files/package-lock.json for verdaccio)",
}

_URL = re.compile(r"""https?://[^\s"'`<>()\\]+""")
_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.S)
_HCL_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_DOCSTRING = re.compile(r'"""(.*?)"""', re.S)
_PLACEHOLDER = ("{", "~", "%s", "ADDRESS")  # Jinja, HCL, an f-string, a docstring's example


def _code(path: Path) -> str:
    """The file without its comments (documentation, not downloads)."""
    text = path.read_text(errors="replace")
    text = _JINJA_COMMENT.sub("", text)
    if path.suffix in (".tf", ".hcl", ".tftpl"):
        text = _HCL_COMMENT.sub("", text)
    if path.suffix == ".py":
        text = _DOCSTRING.sub("", text)
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("#", "//", "Documentation=")):
            continue
        if path.suffix == ".py" and " # " in line:
            line = line.split(" # ", 1)[0]
        kept.append(line)
    return "\n".join(kept)


def _is_ours(url: str) -> bool:
    """An address of the co-op's own: a host made of a placeholder (an address the states or
    the code fill in from the topology), loopback, the private network, an example domain. A
    placeholder in the path of an outside host's URL does not make it ours."""
    host = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0]
    return (
        any(mark in host for mark in _PLACEHOLDER)
        or host in ("localhost", "127.0.0.1")
        or host.startswith(("10.", "app-"))
        or host.endswith((".example.coop", ".example.org", ".internal"))
        or not host
    )


def _files(root: Path) -> list[Path]:
    """Every file the scan reads under `root` (a checkout: the repo's, or a test's own tree)."""
    files = []
    for top in SCANNED:
        for path in sorted((root / top).rglob("*")):
            parts = set(path.relative_to(root).parts)
            if not path.is_file() or parts & {".terraform", "__pycache__"}:
                continue
            if path.name in ("package-lock.json", "pins.yaml") or path.suffix in (".pyc",):
                continue
            files.append(path)
    return files


def _pins(path: Path) -> dict[str, dict]:
    """A pins.yaml's entries by name."""
    return yaml.safe_load(path.read_text())


def _by_url(pins: dict[str, dict]) -> dict[str, dict]:
    return {entry["url"]: entry for entry in pins.values()}


def _pin_problem(entry: dict, pins: dict[str, dict]) -> str | None:
    """What is missing from a pins.yaml entry (`pins`: all of them, by name), or None."""
    if not entry.get("source"):
        return "no source (where the value was taken from)"
    if "checked_here" not in entry:
        return "no checked_here (was the value verified on a machine of ours?)"
    if "signed_by" in entry:
        by = pins.get(entry["signed_by"])
        if not by or not re.fullmatch(r"[0-9A-F]{40}", by.get("fingerprint", "")):
            return f"signed_by {entry['signed_by']!r} is not an entry with a full fingerprint"
        return None
    if re.fullmatch(r"[0-9A-F]{40}", entry.get("fingerprint", "")):
        return None
    if re.fullmatch(r"[0-9a-f]{64}", entry.get("sha256", "")):
        return None
    return "neither a full 40-digit fingerprint nor a sha256"


def test_every_download_url_is_pinned_or_checked_by_its_own_tool():
    pins = _pins(PINS)
    by_url = _by_url(pins)
    found: dict[str, list[str]] = {}
    for path in _files(REPO):
        for url in _URL.findall(_code(path)):
            url = url.rstrip(".,;")
            if not _is_ours(url):
                found.setdefault(url, []).append(str(path.relative_to(REPO)))
    unpinned = {}
    for url, where in sorted(found.items()):
        if url in CHECKED_ELSEWHERE:
            continue
        entry = next((e for p, e in by_url.items() if url == p or url.startswith(p + "/")), None)
        if entry is None:
            unpinned[url] = f"not in salt/lib/pins.yaml ({', '.join(sorted(set(where)))})"
        elif problem := _pin_problem(entry, pins):
            unpinned[url] = problem
    assert not unpinned, "downloads without a pinned fingerprint or checksum:\n" + "\n".join(
        f"  {url}: {why}" for url, why in unpinned.items()
    )
    # The scan sees what it must (the uplink verdaccio really fetches from), and each pin is used:
    # a state takes its URL and value from pins.yaml, so none is written twice.
    assert "https://registry.npmjs.org/" in found
    states = "".join(p.read_text() for p in (REPO / "salt").rglob("*.sls"))
    for name in pins:
        assert f"pins['{name}']" in states, f"pins.yaml's {name} is used by no state"
    assert "http://deb.debian.org/debian" in found


def test_the_scan_fails_on_a_new_unpinned_download(tmp_path):
    """A state that downloads from a URL nobody pinned is named by the scan (the test above
    would fail), and a pins.yaml entry without its source is refused too."""
    salt = tmp_path / "salt"
    (salt / "lib").mkdir(parents=True)
    (salt / "tool.sls").write_text(
        "# https://docs.example.net/ in a comment is documentation\n"
        "tool:\n  file.managed:\n    - source: https://downloads.example.net/tool.tar.gz\n"
        "jar:\n  file.managed:\n    - source: https://github.com/x/releases/{{ v }}/x.jar\n"
        "ours:\n  file.managed:\n    - source: http://{{ registry }}:5000/v2/\n"
    )
    (salt / "lib" / "pins.yaml").write_text(
        "tool:\n  url: https://downloads.example.net/tool.tar.gz\n  sha256: "
        + "a" * 64
        + "\n  checked_here: true\n"
    )
    urls = [u for p in _files(tmp_path) for u in _URL.findall(_code(p)) if not _is_ours(u)]
    # the comment's is not a download; a placeholder in an outside host's path hides nothing
    assert urls == [
        "https://downloads.example.net/tool.tar.gz",
        "https://github.com/x/releases/{{",
    ]
    pins = _pins(salt / "lib" / "pins.yaml")
    entry = _by_url(pins)["https://downloads.example.net/tool.tar.gz"]
    assert _pin_problem(entry, pins) == "no source (where the value was taken from)"
    entry["source"] = "https://downloads.example.net/SHA256SUMS"
    assert _pin_problem(entry, pins) is None
    entry["sha256"] = "not-a-sha"
    assert _pin_problem(entry, pins) == "neither a full 40-digit fingerprint nor a sha256"


def test_every_npm_package_in_the_lockfile_carries_its_sha512():
    lock = json.loads((REPO / "salt" / "npm-cache" / "files" / "package-lock.json").read_text())
    packages = {k: v for k, v in lock["packages"].items() if k}  # "" is the project itself
    assert packages
    missing = [
        name
        for name, entry in packages.items()
        if "resolved" in entry and not str(entry.get("integrity", "")).startswith("sha512-")
    ]
    assert not missing, f"packages without a sha512 integrity: {missing}"
    assert all("resolved" in entry for entry in packages.values() if not entry.get("link"))


def test_every_python_requirement_that_pip_downloads_carries_a_sha256():
    for name in (
        "packer/salt-requirements.txt",
        "packer/salt-build-requirements.txt",
        "scripts/uv-requirements.txt",
        "salt/dagster/files/requirements.txt",
        "salt/dagster/files/build-requirements.txt",
    ):
        lines = [
            line
            for line in (REPO / name).read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert lines, name
        for line in lines:
            # (with the extras a dependency asks for: `gql[requests]==4.0.0 --hash=...`)
            pin = r"[a-z0-9-]+(\[[a-z0-9-]+(,[a-z0-9-]+)*\])?==[^ ]+( --hash=sha256:[0-9a-f]{64})+"
            assert re.fullmatch(pin, line), f"{name}: {line[:80]}"
    setup = (REPO / "scripts" / "setup").read_text()
    assert setup.count("--require-hashes -r scripts/uv-requirements.txt") == 2
