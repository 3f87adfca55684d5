"""The house rules a reader relies on, checked: units of one job (docs/decisions.md,
"Layers"), and tests grouped by what they need, sharing helpers only through tests/support/."""

from __future__ import annotations

import ast

from tests.support.paths import PACKAGE, ROOT

TESTS = ROOT / "tests"
GROUPS = ("unit", "e2e", "system", "real_model")

MAX_FUNCTION_LINES = 100


def test_no_function_in_the_package_is_over_a_hundred_lines() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines})")
    assert not long, f"split these: {long}"


def _imported_modules(tree: ast.Module) -> list[str]:
    """Every module a file imports, relative imports written with their leading dots."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.append(base)
            if not node.module:  # ``from . import test_x``
                names += [base + alias.name for alias in node.names]
    return names


def test_no_test_file_imports_a_test_module_or_conftest() -> None:
    """Shared helpers live in tests/support/; a test module is never a library for another."""
    wrong = []
    for path in sorted(TESTS.rglob("*.py")):
        for name in _imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            last = name.rsplit(".", 1)[-1]
            if last.startswith("test_") or last == "conftest":
                wrong.append(f"{path.relative_to(TESTS)} imports {name}")
    assert not wrong, f"move what they need to tests/support/: {wrong}"


def test_every_test_module_sits_in_the_folder_of_its_group() -> None:
    """The folder gives the marker (tests/conftest.py): a test module outside unit/, e2e/,
    system/ and real_model/ would run in no group."""
    stray = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("test_*.py")
        if path.relative_to(TESTS).parts[0] not in GROUPS
    ]
    assert not stray, (
        f"put these in tests/unit/, tests/e2e/, tests/system/ or tests/real_model/: {stray}"
    )
