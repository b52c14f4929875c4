#!/usr/bin/env python3
"""The standard build: the Dockerfile of an app repository that has none, by convention.

The co-op's one practice across projects (README, "The standard build"):
- `package.json` means Node: `npm ci` when a lockfile is there, else `npm install`, both from the
  co-op's npm cache; `npm run build` when the package has that script.
- `requirements.txt` or `pyproject.toml` means Python: a venv at /app/.venv and pip, from the
  co-op's PyPI cache.
- `Procfile`'s `web:` line is the command (for Node without one: `npm start`, when the package
  has that script); `release:`, when there is one, is kept in the image's labels.
- Version files are read and checked against the runtime the base image has: `.nvmrc` and
  `engines.node` (the major version), `runtime.txt` and `.python-version` (major and minor). A
  mismatch is a warning; should the build then fail, the failure names what is available.

Run by build-app-image.sh on the build host (stdlib only: the agent's own Python 3):

    standard_build.py SRC --runtimes node=18.19.0,python=3.11.2 --dockerfile OUT
                      [--npm-registry URL] [--pip-index URL]

It writes the Dockerfile to OUT (outside the build context) and prints, one per line:
`RUNTIME=<node|python>`, `WARNING: ...` for each mismatch, and `AVAILABLE=<what the base has>`.
A repository it cannot build prints `ERROR: ...` and exits 3; bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# nvm's names for the Node LTS lines.
NODE_LTS = {"argon": 4, "boron": 6, "carbon": 8, "dubnium": 10, "erbium": 12, "fermium": 14,
            "gallium": 16, "hydrogen": 18, "iron": 20, "jod": 22, "krypton": 24}  # fmt: skip


class BuildError(Exception):
    """The repository cannot be built by convention: what is wrong and what to do."""


@dataclass
class Plan:
    runtime: str  # node | python
    available: str  # the base image's runtime version
    dockerfile: str
    warnings: list[str] = field(default_factory=list)


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def read_procfile(src: Path) -> dict[str, str]:
    path = src / "Procfile"
    if not path.is_file():
        return {}
    processes: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name.strip()) or not command.strip():
            raise BuildError(
                f"Procfile line {number}: {line!r} is not `<process>: <command>`"
                " (e.g. `web: node index.js`)"
            )
        processes[name.strip()] = command.strip()
    return processes


def _major_satisfies(range_text: str, major: int) -> bool | None:
    """Whether a Node version of major `major` can satisfy npm's semver range `range_text`,
    judged by major versions alone; None when the range is not understood."""
    alternatives = [a.strip() for a in range_text.split("||")]
    understood = False
    for alternative in alternatives:
        if alternative in ("", "*", "x", "latest"):
            return True
        ok = True
        parts = re.findall(r"(>=|<=|>|<|\^|~|=)?\s*v?(\d+|x|\*)(?:\.(\d+|x|\*))?(?:\.(\d+|x|\*))?",
                           alternative)  # fmt: skip
        if not parts:
            continue
        understood = True
        hyphen = re.fullmatch(r"v?(\d+)\S*\s+-\s+v?(\d+)\S*", alternative)
        if hyphen:
            if int(hyphen[1]) <= major <= int(hyphen[2]):
                return True
            continue
        for op, first, second, third in parts:
            if first in ("x", "*"):
                continue
            want = int(first)
            rest_zero = all(p in ("", "0") for p in (second, third))
            if op == ">=":
                ok &= major >= want
            elif op == ">":
                ok &= major > want or (major == want and not rest_zero)
            elif op == "<=":
                ok &= major <= want
            elif op == "<":
                ok &= major < want or (major == want and not rest_zero)
            else:  # ^ ~ = or none: the same major
                ok &= major == want
        if ok:
            return True
    return False if understood else None


def check_node(src: Path, package: dict, available: str) -> list[str]:
    major = parse_version(available)[0]
    warnings = []
    nvmrc = src / ".nvmrc"
    if nvmrc.is_file():
        wanted = nvmrc.read_text(encoding="utf-8").strip()
        name = wanted.lower().removeprefix("lts/")
        if name in NODE_LTS:
            wanted_major = NODE_LTS[name]
        elif re.match(r"v?\d", wanted):
            wanted_major = parse_version(wanted)[0]
        else:
            wanted_major = None
        if wanted_major is None:
            warnings.append(f".nvmrc asks for {wanted!r}, which is not a version: node {available}"
                            " is what the base image has")  # fmt: skip
        elif wanted_major != major:
            warnings.append(f".nvmrc asks for node {wanted}; the base image has node {available}")
    engines = package.get("engines") if isinstance(package.get("engines"), dict) else {}
    wanted_range = engines.get("node")
    if isinstance(wanted_range, str) and wanted_range.strip():
        fits = _major_satisfies(wanted_range, major)
        if fits is False:
            warnings.append(
                f"package.json engines.node is {wanted_range!r}; the base image has node"
                f" {available}"
            )
        elif fits is None:
            warnings.append(
                f"package.json engines.node {wanted_range!r} is not a range this build reads:"
                f" node {available} is what the base image has"
            )
    return warnings


def check_python(src: Path, available: str) -> list[str]:
    have = parse_version(available)[:2]
    warnings = []
    for name, strip in (("runtime.txt", "python-"), (".python-version", "")):
        path = src / name
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").split()
        wanted = lines[0] if lines else ""
        wanted = wanted.removeprefix(strip) if strip else wanted
        numbers = parse_version(wanted)
        if len(numbers) < 2 and numbers:
            mismatch = numbers[0] != have[0]
        else:
            mismatch = numbers[:2] != have
        if not numbers or mismatch:
            warnings.append(f"{name} asks for python {wanted or '(nothing)'}; the base image has"
                            f" python {available}")  # fmt: skip
    return warnings


def _cmd(command: str) -> str:
    # A shell runs it (Procfiles are shell lines), as the process itself: exec, so signals reach
    # it and `podman stop` stops it at once.
    return "CMD " + json.dumps(["/bin/sh", "-c", f"exec {command}"])


def _labels(processes: dict[str, str], runtime: str, available: str) -> list[str]:
    labels = [f"LABEL org.coop-infra.build={json.dumps(f'standard {runtime} {available}')}"]
    if "release" in processes:
        labels.append(f"LABEL org.coop-infra.release={json.dumps(processes['release'])}")
    return labels


def node_plan(src: Path, available: str, npm_registry: str) -> Plan:
    try:
        package = json.loads((src / "package.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BuildError(f"package.json cannot be read: {err}") from None
    if not isinstance(package, dict):
        raise BuildError("package.json is not a JSON object")
    scripts = package.get("scripts") if isinstance(package.get("scripts"), dict) else {}
    processes = read_procfile(src)
    web = processes.get("web") or ("npm start" if scripts.get("start") else "")
    if not web:
        raise BuildError(
            "no command to run: add a Procfile with a `web:` line (e.g. `web: node index.js`)"
            " or a `start` script to package.json"
        )
    if not npm_registry:
        raise BuildError(
            "a Node app builds through the co-op's npm cache, and this build was given none"
            " (no host with the npm-cache role in the topology?)"
        )
    locked = any((src / f).is_file() for f in ("package-lock.json", "npm-shrinkwrap.json"))
    install = "npm ci" if locked else "npm install"
    lines = [
        "ARG BASE_IMAGE",
        "FROM ${BASE_IMAGE}",
        "WORKDIR /app",
        "COPY . /app",
        # The registry is the co-op's cache (its only network); npm rewrites a lockfile's
        # registry.npmjs.org addresses to it (replace-registry-host's default).
        f"ENV npm_config_registry={npm_registry} npm_config_update_notifier=false"
        " npm_config_fund=false npm_config_audit=false",
        f"RUN {install} --no-progress",
    ]
    if scripts.get("build"):
        lines.append("RUN npm run build")
    lines += [
        "RUN rm -rf /root/.npm",
        "ARG GIT_SHA=unknown",
        "ENV NODE_ENV=production APP_VERSION=${GIT_SHA} npm_config_cache=/tmp/.npm",
        *_labels(processes, "node", available),
        "USER 65534:65534",
        _cmd(web),
    ]
    return Plan("node", available, "\n".join(lines) + "\n", check_node(src, package, available))


def python_plan(src: Path, available: str, pip_index: str) -> Plan:
    processes = read_procfile(src)
    web = processes.get("web")
    if not web:
        raise BuildError(
            "no command to run: add a Procfile with a `web:` line (e.g. `web: gunicorn app.wsgi`)"
        )
    if (src / "requirements.txt").is_file():
        target = "-r requirements.txt"
    else:
        try:
            tomllib.loads((src / "pyproject.toml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise BuildError(f"pyproject.toml cannot be read: {err}") from None
        target = "."
    if not pip_index:
        raise BuildError(
            "a Python app builds through the co-op's PyPI cache, and this build was given none"
            " (no host with the pypi-cache role in the topology?)"
        )
    lines = [
        "ARG BASE_IMAGE",
        "FROM ${BASE_IMAGE}",
        "WORKDIR /app",
        "COPY . /app",
        f"ENV PIP_INDEX_URL={pip_index} PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        f"RUN python3 -m venv /app/.venv && /app/.venv/bin/pip install {target}",
        "ARG GIT_SHA=unknown",
        "ENV PATH=/app/.venv/bin:$PATH VIRTUAL_ENV=/app/.venv PYTHONUNBUFFERED=1"
        " APP_VERSION=${GIT_SHA}",
        *_labels(processes, "python", available),
        "USER 65534:65534",
        _cmd(web),
    ]
    return Plan("python", available, "\n".join(lines) + "\n", check_python(src, available))


NODE_FILES = {"package.json"}
PYTHON_FILES = {"requirements.txt", "pyproject.toml"}


def runtime_of(names: set[str]) -> str | None:
    """The runtime a repository's top-level file names call for: None when it has a Dockerfile
    (it wins) or names neither runtime (`plan` says what is wrong)."""
    if "Dockerfile" in names:
        return None
    node, python = bool(names & NODE_FILES), bool(names & PYTHON_FILES)
    if node != python:
        return "node" if node else "python"
    return None


def plan(src: Path, runtimes: dict[str, str], npm_registry: str = "", pip_index: str = "") -> Plan:
    if not src.is_dir():
        raise BuildError(f"{src} is not a folder (the checked-out repository)")
    names = {p.name for p in src.iterdir() if p.is_file()}
    node, python = bool(names & NODE_FILES), bool(names & PYTHON_FILES)
    if node and python:
        raise BuildError(
            "both package.json and requirements.txt/pyproject.toml are here: the standard build"
            " cannot tell Node from Python; add a Dockerfile"
        )
    if not (node or python):
        raise BuildError(
            "no Dockerfile, package.json, requirements.txt or pyproject.toml at the top of the"
            " repository: the standard build knows Node and Python apps; add a Dockerfile for"
            " anything else"
        )
    runtime = "node" if node else "python"
    if runtime not in runtimes:
        raise BuildError(f"no {runtime} base image on this build host ({', '.join(runtimes)})")
    if node:
        return node_plan(src, runtimes["node"], npm_registry)
    return python_plan(src, runtimes["python"], pip_index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("--runtimes", required=True, help="node=18.19.0,python=3.11.2")
    parser.add_argument("--dockerfile", required=True, type=Path)
    parser.add_argument("--npm-registry", default="")
    parser.add_argument("--pip-index", default="")
    args = parser.parse_args(argv)
    runtimes = dict(
        item.split("=", 1) for item in args.runtimes.split(",") if "=" in item and item.strip()
    )
    try:
        result = plan(args.src, runtimes, args.npm_registry, args.pip_index)
    except BuildError as err:
        print(f"ERROR: {err}")
        return 3
    args.dockerfile.write_text(result.dockerfile, encoding="utf-8")
    print(f"RUNTIME={result.runtime}")
    print(f"AVAILABLE={result.runtime} {result.available}")
    for warning in result.warnings:
        print(f"WARNING: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
