"""The standard build's rules (salt/jenkins/files/standard_build.py, which the build agents run
for a repository without a Dockerfile): which runtime, which commands, which warnings and which
errors, read from repositories laid out as the co-op's apps are. The images it makes are built
on the lab: tests/lab/test_lab_standard_build.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra_assets.delivery.app_images import STANDARD_BUILD as SCRIPT
from infra_assets.delivery.app_images import standard_build_module

standard = standard_build_module()

RUNTIMES = {"node": "18.19.0", "python": "3.11.2"}
NPM = "http://10.1.10.1:4873"
PIP = "http://10.1.11.1:3141/root/pypi/+simple/"


def _repo(tmp_path: Path, files: dict[str, str | dict]) -> Path:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content) if isinstance(content, dict) else content)
    return tmp_path


def _plan(src: Path):
    return standard.plan(src, RUNTIMES, NPM, PIP)


def _lines(dockerfile: str) -> list[str]:
    return dockerfile.splitlines()


def test_a_node_app_without_a_lockfile_is_installed_from_the_cache_and_runs_its_procfile(
    tmp_path,
):
    src = _repo(
        tmp_path,
        {
            "package.json": {"name": "x", "dependencies": {"express": "^4.19.2"}},
            "Procfile": "web: node index.js\n",
            "index.js": "",
        },
    )
    plan = _plan(src)
    assert plan.runtime == "node" and plan.warnings == []
    lines = _lines(plan.dockerfile)
    assert "FROM ${BASE_IMAGE}" in lines
    assert any(f"npm_config_registry={NPM}" in line for line in lines)
    assert "RUN npm install --no-progress" in lines
    assert "RUN npm run build" not in lines
    assert "USER 65534:65534" in lines
    assert lines[-1] == 'CMD ["/bin/bash", "-c", "node index.js"]'


def test_a_lockfile_means_npm_ci_and_a_build_script_is_run(tmp_path):
    src = _repo(
        tmp_path,
        {
            "package.json": {"name": "x", "scripts": {"build": "tsc", "start": "node dist/a.js"}},
            "package-lock.json": {"lockfileVersion": 3},
        },
    )
    lines = _lines(_plan(src).dockerfile)
    assert "RUN npm ci --no-progress" in lines
    assert "RUN npm run build" in lines
    # No Procfile: the package's start script.
    assert lines[-1] == 'CMD ["/bin/bash", "-c", "npm start"]'


def test_a_python_app_gets_a_venv_from_the_pypi_cache_and_keeps_its_release_command(tmp_path):
    src = _repo(
        tmp_path,
        {
            "requirements.txt": "Django>=4.2,<5\npsycopg[binary]\n",
            "Procfile": "release: ./manage.py migrate --no-input\n"
            "web: gunicorn site.wsgi --bind 0.0.0.0:$PORT\n",
        },
    )
    plan = _plan(src)
    assert plan.runtime == "python"
    lines = _lines(plan.dockerfile)
    assert any(line.startswith(f"ENV PIP_INDEX_URL={PIP} ") for line in lines)
    assert (
        "RUN python3 -m venv /app/.venv && /app/.venv/bin/pip install -r requirements.txt" in lines
    )
    assert 'LABEL org.coop-infra.release="./manage.py migrate --no-input"' in lines
    assert lines[-1] == 'CMD ["/bin/bash", "-c", "gunicorn site.wsgi --bind 0.0.0.0:$PORT"]'


def test_a_pyproject_is_installed_as_a_package(tmp_path):
    src = _repo(
        tmp_path, {"pyproject.toml": '[project]\nname = "x"\n', "Procfile": "web: x-serve\n"}
    )
    assert "/app/.venv/bin/pip install ." in _plan(src).dockerfile


@pytest.mark.parametrize(
    ("files", "warned"),
    [
        ({".nvmrc": "18\n"}, False),
        ({".nvmrc": "v18.19.1\n"}, False),
        ({".nvmrc": "lts/hydrogen\n"}, False),
        ({".nvmrc": "20\n"}, True),
        ({".nvmrc": "lts/iron\n"}, True),
        ({"engines": ">=16"}, False),
        ({"engines": "^18.0.0 || ^20.0.0"}, False),
        ({"engines": "18.x"}, False),
        ({"engines": ">=20.9.0"}, True),
        ({"engines": "^20"}, True),
        ({"engines": "<18"}, True),
        ({"engines": "16 - 18"}, False),
        ({"engines": ">18.0.0"}, False),  # 18.19 is later than 18.0.0
        ({"engines": ">18"}, True),
        ({"engines": "<18.x"}, True),
        ({"engines": "<18.2"}, False),
        ({"engines": ">=18.0.0-rc.1"}, False),  # the prerelease's digits are no version
        ({"engines": "^20.0.0-0"}, True),
    ],
)
def test_node_versions_are_checked_by_major(tmp_path, files, warned):
    package = {"name": "x", "scripts": {"start": "node a.js"}}
    if "engines" in files:
        package["engines"] = {"node": files.pop("engines")}
    src = _repo(tmp_path, {"package.json": package, **files})
    warnings = _plan(src).warnings
    assert bool(warnings) is warned, warnings
    if warned:
        assert "the base image has node 18.19.0" in warnings[0]


@pytest.mark.parametrize(
    ("files", "warned"),
    [
        ({"runtime.txt": "python-3.11.4\n"}, False),
        ({".python-version": "3.11\n"}, False),
        ({"runtime.txt": "python-3.12.1\n"}, True),
        ({".python-version": "3.10.13\n"}, True),
        ({".python-version": "3\n"}, False),
    ],
)
def test_python_versions_are_checked_by_major_and_minor(tmp_path, files, warned):
    src = _repo(tmp_path, {"requirements.txt": "", "Procfile": "web: python app.py\n", **files})
    warnings = _plan(src).warnings
    assert bool(warnings) is warned, warnings
    if warned:
        assert "the base image has python 3.11.2" in warnings[0]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"index.html": ""}, "no Dockerfile, package.json, requirements.txt or pyproject.toml"),
        ({"package.json": {}, "requirements.txt": ""}, "cannot tell Node from Python"),
        ({"package.json": {"name": "x"}}, "add a Procfile with a `web:` line"),
        ({"requirements.txt": ""}, "add a Procfile with a `web:` line"),
        ({"package.json": "{not json"}, "package.json is not JSON"),
        (
            {"requirements.txt": "", "Procfile": "web node app.js\n"},
            "Procfile line 1: 'web node app.js' is not `<process>: <command>`",
        ),
    ],
)
def test_what_cannot_be_built_by_convention_says_what_to_do(tmp_path, files, message):
    src = _repo(tmp_path, files)
    with pytest.raises(standard.BuildError, match=None) as err:
        _plan(src)
    assert message in str(err.value)


def test_a_symbolic_link_or_a_file_that_is_not_text_is_refused_and_never_printed(tmp_path):
    """A file of the repository that links outside it (a key of the build host, say) is not
    read, and nothing of it reaches the log; a file that is not UTF-8 is a clear error."""
    secret = tmp_path / "host-secret"
    secret.write_text("the build host's key\n")
    src = _repo(tmp_path / "src", {"package.json": {"scripts": {"start": "node a.js"}}})
    (src / ".nvmrc").symlink_to(secret)
    with pytest.raises(standard.BuildError) as err:
        _plan(src)
    assert ".nvmrc is a symbolic link" in str(err.value)
    assert "key" not in str(err.value)
    (src / ".nvmrc").unlink()
    (src / "Procfile").write_bytes(b"web: node \xff.js\n")
    with pytest.raises(standard.BuildError, match="Procfile is not UTF-8 text"):
        _plan(src)


def test_what_the_repository_says_is_shown_escaped_and_short(tmp_path):
    """A value of the repository in a warning cannot make a line of its own (the build script's
    BUILD_ERROR= line, a fake PUSHED_DIGEST=): it is quoted, its newlines escaped."""
    src = _repo(
        tmp_path,
        {"package.json": {"scripts": {"start": "node a.js"}}, ".nvmrc": "x\nBUILD_ERROR=no\n"},
    )
    [warning] = _plan(src).warnings
    assert "\n" not in warning and "'x\\nBUILD_ERROR=no'" in warning


def test_a_release_command_is_labelled_as_written(tmp_path):
    src = _repo(
        tmp_path,
        {"requirements.txt": "", "Procfile": "web: app\nrelease: migrate --to $TARGET\n"},
    )
    assert 'LABEL org.coop-infra.release="migrate --to \\$TARGET"' in _plan(src).dockerfile


def test_no_cache_given_is_an_error_not_a_build_from_the_internet(tmp_path):
    src = _repo(tmp_path, {"package.json": {"scripts": {"start": "node a.js"}}})
    with pytest.raises(standard.BuildError, match="npm cache"):
        standard.plan(src, RUNTIMES, npm_registry="", pip_index="")


def test_the_runtime_is_told_from_the_top_level_names_and_a_dockerfile_wins():
    assert standard.runtime_of({"package.json", "Procfile"}) == "node"
    assert standard.runtime_of({"pyproject.toml"}) == "python"
    assert standard.runtime_of({"Dockerfile", "package.json"}) is None
    assert standard.runtime_of({"README.md"}) is None


def test_the_command_prints_its_answer_and_writes_the_dockerfile(tmp_path):
    src = _repo(
        tmp_path / "src",
        {"package.json": {"engines": {"node": ">=22"}}, "Procfile": "web: node index.js\n"},
    )
    out = tmp_path / "Dockerfile"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(src), "--runtimes", "node=18.19.0,python=3.11.2",
         "--dockerfile", str(out), "--npm-registry", NPM],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines() == [
        "RUNTIME=node",
        "AVAILABLE=node 18.19.0",
        "WARNING: package.json engines.node is '>=22'; the base image has node 18.19.0",
    ]
    assert out.read_text().startswith("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    broken = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "missing-src"), "--runtimes", "node=18.19.0",
         "--dockerfile", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert broken.returncode == 3 and broken.stdout.startswith("ERROR: ")


# git and podman stand-ins for the build script (test_jenkins.py runs the script the same way;
# the lab runs it with the real ones: tests/lab/test_lab_standard_build.py). The checkout writes an
# app that asks for Node 22; the image build fails.
FAKE_GIT = """#!/bin/bash
if [[ " $* " == *" checkout "* ]]; then
  printf '{"engines": {"node": ">=22"}}' > "$2/package.json"
  printf 'web: node index.js\\n' > "$2/Procfile"
fi
"""
FAKE_PODMAN = """#!/bin/bash
if [ "$1" = build ]; then echo "SyntaxError: Unexpected token '??='"; exit 1; fi
if [ "$1" = image ] && [ "$2" = exists ]; then exit 0; fi
"""


def _run_build_script(tmp_path: Path, runtime_images: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("git", FAKE_GIT), ("podman", FAKE_PODMAN)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    auth = tmp_path / "auth.json"
    auth.write_text("{}")
    return subprocess.run(
        ["bash", str(SCRIPT.parent / "build-app-image.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "APP": "app", "REPO": "https://git.example.coop/app.git", "SHA": "5" * 40,
            "BRANCH": "main", "IMAGE": "registry.example.coop:5001/app",
            "REGISTRY_AUTH_FILE": str(auth), "RUNTIME_IMAGES": runtime_images,
            "NPM_REGISTRY": NPM,
        },
        timeout=60,
    )  # fmt: skip


def test_a_build_given_no_base_image_is_refused_once_with_the_reason(tmp_path):
    """A build given no runtime image (a site whose topology has no cache for the runtime): the
    app cannot be built by convention there, said as the app's own failure (not retried)."""
    run = _run_build_script(tmp_path, "")
    assert run.returncode == 3, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert (
        lines[-2] == "ERROR: no node base image was given to this build (RUNTIME_IMAGES has none)"
    )
    assert lines[-1].startswith("BUILD_ERROR=the standard build cannot build this repository")


def test_a_failed_build_that_asked_for_another_runtime_says_what_is_available(tmp_path):
    node = "node=18.19.0=registry.example.coop:5001/coop-node@sha256:" + "a" * 64
    run = _run_build_script(tmp_path, node)
    assert run.returncode == 4, run.stdout + run.stderr
    # The app's own failure: not to be retried.
    assert run.stdout.splitlines()[-1] == (
        "BUILD_ERROR=the image's build failed (podman build exited 1)"
    )
    assert "WARNING: package.json engines.node is '>=22'; the base image has node 18.19.0" in (
        run.stdout
    )
    assert run.stderr.strip().splitlines()[-1] == (
        "build-app-image: the build failed, and the app asks for another runtime than the base"
        " image has: package.json engines.node is '>=22'; the base image has node 18.19.0."
        " Available: node 18.19.0"
    )


# --- CI by default: the app's own tests run in the build -------------------------------------


@pytest.mark.parametrize(
    ("scripts", "tested"),
    [
        ({"test": "node --test"}, True),
        ({"test": "jest --ci"}, True),
        ({"test": 'echo "Error: no test specified" && exit 1'}, False),  # npm init's placeholder
        ({"test": "  "}, False),
        ({}, False),
    ],
)
def test_npm_test_runs_in_the_build_when_the_package_has_tests(tmp_path, scripts, tested):
    package = {"name": "x", "scripts": {"start": "node i.js", **scripts}}
    lines = _lines(_plan(_repo(tmp_path, {"package.json": package})).dockerfile)
    steps = [line for line in lines if "npm test" in line]
    assert len(steps) == int(tested), lines
    if tested:
        [step] = steps
        assert step.startswith("RUN CI=true npm test >/tmp/tests.log 2>&1; code=$?;")
        assert "cat /tmp/tests.log; rm -f /tmp/tests.log;" in step  # nothing of it in the image
        assert f'echo "{standard.TESTS_FAILED}: npm test exited $code"; exit $code' in step
        # After the install and the build, before the dev dependencies go.
        assert lines.index(step) < lines.index(
            "RUN npm prune --omit=dev --no-progress && rm -rf /root/.npm"
        )


@pytest.mark.parametrize(
    ("files", "installs"),
    [
        ({"tests/test_app.py": ""}, "pytest"),
        ({"test_app.py": ""}, "pytest"),
        ({"app_test.py": ""}, "pytest"),
        ({"pytest.ini": "[pytest]\n", "app.py": ""}, "pytest"),
        ({"tests/test_app.py": "", "requirements-dev.txt": "pytest-django\n"},
         "-r requirements-dev.txt pytest"),
        ({"test/test_x.py": "", "requirements-test.txt": "hypothesis\n"},
         "-r requirements-test.txt pytest"),
    ],
)  # fmt: skip
def test_pytest_runs_in_a_stage_of_its_own_when_the_repository_has_tests(tmp_path, files, installs):
    src = _repo(tmp_path, {"requirements.txt": "flask\n", "Procfile": "web: flask run\n", **files})
    lines = _lines(_plan(src).dockerfile)
    assert lines[1] == "FROM ${BASE_IMAGE} AS app"
    tests = lines.index("FROM app AS tests")
    assert lines[tests + 1] == f"RUN pip install {installs}"
    assert lines[tests + 2].startswith("RUN CI=true python -m pytest -p no:cacheprovider")
    assert "[ $code -ne 0 ] && [ $code -ne 5 ]" in lines[tests + 2]  # 5: no test collected
    # The image is the app's stage, which copies the summary (so the tests' stage always runs).
    assert lines[tests + 3 : tests + 5] == [
        "FROM app",
        "COPY --from=tests /tmp/tests.log /app/.coop-tests.log",
    ]
    assert lines[-1] == 'CMD ["/bin/bash", "-c", "flask run"]'


def test_a_pyproject_test_extra_is_installed_for_the_tests(tmp_path):
    pyproject = (
        '[project]\nname = "x"\nversion = "1"\n'
        '[project.optional-dependencies]\ntest = ["pytest-cov"]\n'
        "[tool.pytest.ini_options]\naddopts = '-q'\n"
    )
    src = _repo(tmp_path, {"pyproject.toml": pyproject, "Procfile": "web: x\n"})
    assert 'RUN pip install ".[test]" pytest' in _lines(_plan(src).dockerfile)


def test_a_python_app_without_tests_is_one_stage(tmp_path):
    src = _repo(tmp_path, {"requirements.txt": "flask\n", "Procfile": "web: flask run\n"})
    dockerfile = _plan(src).dockerfile
    assert "pytest" not in dockerfile and "AS tests" not in dockerfile


def test_a_failing_test_step_fails_with_its_output_and_says_so_on_its_last_line(tmp_path):
    """The step itself, run by the shell a build runs it with: the output, then the line
    build-app-image.sh reads."""
    step = standard._tests_step("sh -c 'echo 1 failed; exit 1'")
    command = step.removeprefix("RUN ").replace("/tmp/tests.log", str(tmp_path / "t.log"))
    ran = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True)
    assert ran.returncode == 1
    assert ran.stdout.splitlines() == [
        "1 failed",
        f"{standard.TESTS_FAILED}: sh -c 'echo 1 failed; exit 1' exited 1",
    ]
    passing = step.replace("exit 1'", "exit 0'")
    command = passing.removeprefix("RUN ").replace("/tmp/tests.log", str(tmp_path / "t.log"))
    ran = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout == "1 failed\n"
