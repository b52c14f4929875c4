"""Imports sit at the top of a module. The exceptions save a measured start-up cost, and each is
listed here with it: a module imported inside a function anywhere else fails this test.

Measured with `python -X importtime` (2026-12-02): what importing the module costs after
`infra_assets.definitions` is already imported, or after nothing for the commands.
"""

import ast
from pathlib import Path

PACKAGES = ("infra_assets", "resources", "sensors", "lab", "webhooks", "infra_cli")

# (file, imported module) -> why it waits until it is needed.
DEFERRED = {
    # The commands' entry points: `infra check` starts in about 1 s; importing the lab's side,
    # Dagster and the webhook endpoint at start would make it about 9 s (infra_assets.topology.sites
    # alone 1.35 s, resources.lab 1.2 s; lab.site and lab.demo import Dagster).
    **{
        ("infra_cli/main.py", m): "the command's start-up"
        for m in (
            "infra_assets.topology.sites",
            "lab.demo",
        )
    },
    **{
        ("lab/cli.py", m): "the command's start-up"
        for m in (
            "infra_assets.topology.sites",
            "lab.site",
            "resources.lab",
            "lab",
        )
    },
    **{
        ("webhooks/cli.py", m): "the command's start-up"
        for m in (
            "infra_assets.topology.model",
            "infra_assets.topology.secrets",
            "infra_assets.topology.sites",
            "resources.dagster_api",
            "webhooks.push",
            "webhooks.server",
        )
    },
    # Dagster (1.2 s): the topology model and `infra check` run without it.
    ("resources/cli_runner.py", "dagster"): "1.2 s, for `infra check`",
    # openstacksdk: 1.1 s more than the code location, paid only where a cloud is used.
    ("resources/openstack.py", "openstack"): "1.1 s",
    ("resources/openstack.py", "openstack.config"): "1.1 s",
    # keystoneauth1 reads /proc/version when imported: the code location's import does no I/O
    # (tests/test_definitions.py).
    ("resources/openstack.py", "keystoneauth1"): "I/O at import",
    # salt's client and wheel: 1.2 s and 0.9 s, in the worker process only, after it has put its
    # stdout aside (importing salt changes the interpreter).
    ("resources/salt_worker.py", "salt.client"): "1.2 s",
    ("resources/salt_worker.py", "salt.wheel"): "0.9 s",
}


def deferred_imports(root: Path) -> list[tuple[str, str, int]]:
    """(file, module, line) of every import inside a function in the project's packages."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            name = str(path.relative_to(root))
            for function in ast.walk(tree):
                if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(function):
                    if isinstance(node, ast.ImportFrom):
                        found.append((name, node.module or "", node.lineno))
                    elif isinstance(node, ast.Import):
                        found += [(name, alias.name, node.lineno) for alias in node.names]
    return found


def test_imports_inside_functions_are_only_the_measured_ones(repo_root):
    unlisted = [
        f"{file}:{line} imports {module} inside a function"
        for file, module, line in deferred_imports(repo_root)
        if (file, module) not in DEFERRED
    ]
    assert unlisted == []


def test_every_listed_exception_is_still_there(repo_root):
    present = {(file, module) for file, module, _ in deferred_imports(repo_root)}
    assert sorted(set(DEFERRED) - present) == []


def test_the_scan_finds_an_import_in_a_method(tmp_path):
    (tmp_path / "resources").mkdir()
    (tmp_path / "resources" / "x.py").write_text(
        "class A:\n    def f(self):\n        from json import dumps\n        return dumps\n"
    )
    assert deferred_imports(tmp_path) == [("resources/x.py", "json", 3)]
