"""The house rules a reader relies on, checked: units of one job (docs/decisions.md,
"Layers")."""

from __future__ import annotations

import ast

from tests.support.paths import PACKAGE

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
