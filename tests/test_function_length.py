"""No function over 60 lines in the code Dagster loads (infra_assets/, resources/, sensors/),
unless it is a table: read from the code's syntax tree, so a long function is found where it is
written, with its name and length."""

import ast
from pathlib import Path

import pytest

MAX_LINES = 60
PACKAGES = ("infra_assets", "resources", "sensors")


def functions(path: Path):
    """(name, first line, length in lines) of every function in the file, nested ones too. A
    function counts from its `def` to its last line; decorators are not counted."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node, node.lineno, node.end_lineno - node.lineno + 1


def is_table(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A function that only returns a literal (a dict, list, tuple or set display)."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    literal = ast.Dict | ast.List | ast.Tuple | ast.Set
    return len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, literal)


def too_long(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node, line, length in functions(path):
                if length > MAX_LINES and not is_table(node):
                    found.append(f"{path.relative_to(root)}:{line} {node.name}: {length} lines")
    return found


def test_no_function_is_over_60_lines(repo_root):
    assert too_long(repo_root) == []


def test_the_measure_finds_a_long_function_and_lets_a_table_be(tmp_path):
    package = tmp_path / "resources"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    table = "\n".join(f"        {i!r}: {i}," for i in range(MAX_LINES + 5))
    (package / "long.py").write_text(
        f"def long():\n{body}\n\n\ndef short():\n    return 1\n\n\n"
        f'def table():\n    """A table."""\n    return {{\n{table}\n    }}\n'
    )
    for name in ("infra_assets", "sensors"):
        (tmp_path / name).mkdir()
    assert too_long(tmp_path) == [f"resources/long.py:1 long: {MAX_LINES + 1} lines"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_measured(repo_root, package):
    assert list((repo_root / package).rglob("*.py")), f"{package}/ has no code to measure"
