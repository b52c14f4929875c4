#!/usr/bin/env python3
"""The standard build: the Dockerfile of an app repository that has none, by convention.

The co-op's one practice across projects (README, "The standard build"):
- `package.json` means Node: `npm ci` when a lockfile is there, else `npm install`, both from the
  co-op's npm cache; `npm run build` when the package has that script.
- `requirements.txt` or `pyproject.toml` means Python: a venv at /app/.venv and pip, from the
  co-op's PyPI cache.
- `Procfile`'s `web:` line is the command (for Node without one: `npm start`, when the package
  has that script); `release:`, when there is one, is kept in the image's labels.
- The app's own tests run in the build, before anything is pushed (CI by default): `npm test`
  when package.json has a `test` script that is not npm's placeholder; `pytest` when the
  repository has tests (a `tests/` or `test/` folder, `test_*.py` or `*_test.py` at its top, or
  pytest's configuration), with requirements-dev.txt, requirements-test.txt or the `test`/`dev`
  extra of pyproject.toml, and pytest, installed for the run only. A failing test fails the
  build with its output; the tests have no network but the caches (no database).
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
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

# nvm's names for the Node LTS lines.
NODE_LTS = {"argon": 4, "boron": 6, "carbon": 8, "dubnium": 10, "erbium": 12, "fermium": 14,
            "gallium": 16, "hydrogen": 18, "iron": 20, "jod": 22, "krypton": 24}  # fmt: skip


# `npm init`'s test script: no tests.
NPM_PLACEHOLDER = 'echo "Error: no test specified" && exit 1'
# The line a failed test run ends with (build-app-image.sh reads it: the app's own failure).
TESTS_FAILED = "coop-infra: the app's tests failed"
PYTEST_CONFIG = {"pytest.ini": None, "pyproject.toml": "[tool.pytest.ini_options]",
                 "setup.cfg": "[tool:pytest]", "tox.ini": "[pytest]"}  # fmt: skip
TEST_REQUIREMENTS = ("requirements-dev.txt", "requirements-test.txt", "requirements-tests.txt")


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


def read(src: Path, name: str) -> str | None:
    """The text of the repository's file `name` (None: there is none). A symbolic link is
    refused (it could name a file of the build host, which would then reach the log), and so is
    a file that is not UTF-8."""
    path = src / name
    if path.is_symlink():
        raise BuildError(f"{name} is a symbolic link: the standard build reads only the"
                         " repository's own files; commit the file itself")  # fmt: skip
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BuildError(f"{name} is not UTF-8 text") from None
    except OSError as err:
        raise BuildError(f"{name} cannot be read: {err.strerror}") from None


def shown(text: str, limit: int = 60) -> str:
    """A value from the repository as the log shows it: quoted, escaped, cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def read_procfile(src: Path) -> dict[str, str]:
    text = read(src, "Procfile")
    if text is None:
        return {}
    processes: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name.strip()) or not command.strip():
            raise BuildError(
                f"Procfile line {number}: {shown(line)} is not `<process>: <command>`"
                " (e.g. `web: node index.js`)"
            )
        processes[name.strip()] = command.strip()
    return processes


def _major_satisfies(range_text: str, major: int) -> bool | None:
    """Whether a Node version of major `major` can satisfy npm's semver range `range_text`,
    judged by major versions alone (a prerelease or build suffix is set aside); None when the
    range is not understood."""
    understood = False
    for alternative in (a.strip() for a in range_text.split("||")):
        if alternative in ("", "*", "x", "X", "latest"):
            return True
        hyphen = re.fullmatch(r"v?(\d+)\S*\s+-\s+v?(\d+)\S*", alternative)
        if hyphen:
            understood = True
            if int(hyphen[1]) <= major <= int(hyphen[2]):
                return True
            continue
        tokens = re.findall(r"(>=|<=|>|<|\^|~|=)?\s*v?([0-9xX*][^\s]*)", alternative)
        if not tokens:
            continue
        understood = True
        if all(_comparator(op, version, major) for op, version in tokens):
            return True
    return False if understood else None


def _comparator(op: str, version: str, major: int) -> bool:
    """One comparator of a range (`>=18.2.0`, `^20`, `18.x`), for a version of major `major`."""
    parts = re.split(r"[-+]", version, maxsplit=1)[0].split(".")  # no prerelease, no build
    if not parts[0].isdigit():
        return True  # x, *: any
    want = int(parts[0])
    rest = [p for p in parts[1:3] if p.isdigit()]  # the minor and patch given, x left out
    if op == ">=":
        return major >= want
    if op == ">":  # >18 wants 19 or more; >18.2.0 is met by a later 18 too
        return major > want if not rest else major >= want
    if op == "<=":
        return major <= want
    if op == "<":  # <18 and <18.0.0 want 17 or less; <18.2 is met by an early 18
        return major < want if not any(int(p) for p in rest) else major <= want
    return major == want  # ^ ~ = or none: the same major


def check_node(src: Path, package: dict, available: str) -> list[str]:
    major = parse_version(available)[0]
    warnings = []
    nvmrc = read(src, ".nvmrc")
    if nvmrc is not None:
        wanted = nvmrc.strip()
        name = wanted.lower().removeprefix("lts/")
        if name in NODE_LTS:
            wanted_major = NODE_LTS[name]
        elif re.match(r"v?\d", wanted):
            wanted_major = parse_version(wanted)[0]
        else:
            wanted_major = None
        if wanted_major is None:
            warnings.append(f".nvmrc asks for {shown(wanted)}, which is not a version: node"
                            f" {available} is what the base image has")  # fmt: skip
        elif wanted_major != major:
            warnings.append(
                f".nvmrc asks for node {shown(wanted)}; the base image has node {available}"
            )
    engines = package.get("engines") if isinstance(package.get("engines"), dict) else {}
    wanted_range = engines.get("node")
    if isinstance(wanted_range, str) and wanted_range.strip():
        fits = _major_satisfies(wanted_range, major)
        if fits is False:
            warnings.append(
                f"package.json engines.node is {shown(wanted_range)}; the base image has node"
                f" {available}"
            )
        elif fits is None:
            warnings.append(
                f"package.json engines.node {shown(wanted_range)} is not a range this build reads:"
                f" node {available} is what the base image has"
            )
    return warnings


def check_python(src: Path, available: str) -> list[str]:
    have = parse_version(available)[:2]
    warnings = []
    for name, strip in (("runtime.txt", "python-"), (".python-version", "")):
        text = read(src, name)
        if text is None:
            continue
        lines = text.split()
        wanted = lines[0] if lines else ""
        wanted = wanted.removeprefix(strip) if strip else wanted
        numbers = parse_version(wanted)
        if len(numbers) < 2 and numbers:
            mismatch = numbers[0] != have[0]
        else:
            mismatch = numbers[:2] != have
        if not numbers or mismatch:
            warnings.append(f"{name} asks for python {shown(wanted)}; the base image has"
                            f" python {available}")  # fmt: skip
    return warnings


def _cmd(command: str) -> str:
    # bash runs it (Procfile lines are shell lines: `cd srv && node i.js`, `FOO=1 node x`); a
    # lone command replaces bash (it execs the last simple command), so `podman stop` reaches it.
    return "CMD " + json.dumps(["/bin/bash", "-c", command])


def _labels(processes: dict[str, str], runtime: str, available: str) -> list[str]:
    labels = [f"LABEL org.coop-infra.build={json.dumps(f'standard {runtime} {available}')}"]
    if "release" in processes:
        # As written: LABEL would expand $NAME, so each $ is escaped.
        value = json.dumps(processes["release"]).replace("$", "\\$")
        labels.append(f"LABEL org.coop-infra.release={value}")
    return labels


def _tests_step(command: str, passing: str = "0", keep_log: bool = False) -> str:
    """The app's tests as a build step (CI=true, as test runners expect in CI): their output in
    the build's log, and a failure stops the build, saying so on its last line. `passing`: the
    exit codes that pass; `keep_log`: /tmp/tests.log stays (the Python image copies it from its
    tests' stage). (Dockerfile substitution does not touch RUN: $code is the shell's.)"""
    ok = " && ".join(f"[ $code -ne {c} ]" for c in passing.split())
    drop = "" if keep_log else " rm -f /tmp/tests.log;"
    return (
        f"RUN CI=true {command} >/tmp/tests.log 2>&1; code=$?; cat /tmp/tests.log;{drop}"
        f' if {ok}; then echo "{TESTS_FAILED}: {command} exited $code"; exit $code; fi'
    )


def node_tests(scripts: dict) -> str | None:
    """`npm test` when package.json has a test script that is not npm's placeholder."""
    test = scripts.get("test")
    if not isinstance(test, str) or not test.strip() or test.strip() == NPM_PLACEHOLDER:
        return None
    return "npm test"


def python_tests(src: Path) -> list[str] | None:
    """What pip installs for the tests when the repository has tests for pytest (None: it has
    none): its test requirements, or its `test`/`dev` extra, and pytest."""
    found = any((src / d).is_dir() for d in ("tests", "test")) or any(
        p.is_file() and (p.name.startswith("test_") or p.name.endswith("_test.py"))
        for p in src.glob("*.py")
    )
    for name, section in PYTEST_CONFIG.items():
        if (src / name).is_file() and (section is None or section in (read(src, name) or "")):
            found = True
    if not found:
        return None
    wanted = [f"-r {name}" for name in TEST_REQUIREMENTS if (src / name).is_file()]
    if not wanted and (src / "pyproject.toml").is_file():
        project = tomllib.loads(read(src, "pyproject.toml") or "").get("project") or {}
        extras = project.get("optional-dependencies") or {}
        wanted += [f'".[{extra}]"' for extra in ("test", "dev") if extra in extras][:1]
    return [*wanted, "pytest"]


def node_plan(src: Path, available: str, npm_registry: str) -> Plan:
    try:
        package = json.loads(read(src, "package.json") or "")
    except json.JSONDecodeError as err:
        raise BuildError(f"package.json is not JSON: {err}") from None
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
    tests = node_tests(scripts)
    if tests:
        lines.append(_tests_step(tests))
    lines += [
        # What the app runs on: its dependencies, not the ones to build and test it.
        "RUN npm prune --omit=dev --no-progress && rm -rf /root/.npm",
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
            tomllib.loads(read(src, "pyproject.toml") or "")
        except tomllib.TOMLDecodeError as err:
            raise BuildError(f"pyproject.toml is not TOML: {err}") from None
        target = "."
    trusted = urllib.parse.urlsplit(pip_index).hostname
    lines = [
        "ARG BASE_IMAGE",
        "FROM ${BASE_IMAGE} AS app",
        "WORKDIR /app",
        "COPY . /app",
        # (plain HTTP inside the co-op's network: pip takes it from a host it is told to trust)
        f"ENV PIP_INDEX_URL={pip_index} PIP_TRUSTED_HOST={trusted}"
        " PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        f"RUN python3 -m venv /app/.venv && /app/.venv/bin/pip install {target}",
        "ENV PATH=/app/.venv/bin:$PATH VIRTUAL_ENV=/app/.venv PYTHONUNBUFFERED=1",
    ]
    tests = python_tests(src)
    if tests:
        # The tests in a stage of their own, whose tools the image does not keep; the image
        # copies the run's summary from it, so the stage is always built (and must pass).
        lines += [
            "FROM app AS tests",
            f"RUN pip install {' '.join(tests)}",
            # (pytest's 5: it collected no test)
            _tests_step("python -m pytest -p no:cacheprovider", passing="0 5", keep_log=True),
            "FROM app",
            "COPY --from=tests /tmp/tests.log /app/.coop-tests.log",
        ]
    lines += [
        "ARG GIT_SHA=unknown",
        "ENV APP_VERSION=${GIT_SHA}",
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
    # Packages come from the co-op's caches alone (the build has no other network).
    if node and not npm_registry:
        raise BuildError(
            "a Node app builds through the co-op's npm cache, and this build was given none"
            " (no host with the npm-cache role in the topology, or a builder that does not"
            " pass NPM_REGISTRY)"
        )
    if python and not pip_index:
        raise BuildError(
            "a Python app builds through the co-op's PyPI cache, and this build was given none"
            " (no host with the pypi-cache role in the topology, or a builder that does not"
            " pass PIP_INDEX_URL)"
        )
    if runtime not in runtimes:
        raise BuildError(
            f"no {runtime} base image was given to this build (RUNTIME_IMAGES has"
            f" {', '.join(runtimes) or 'none'})"
        )
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
