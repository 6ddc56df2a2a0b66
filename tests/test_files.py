"""The bounded repr of messages (issue 28)."""

from __future__ import annotations

import ast

from label_refinery.errors import brief
from tests.harness import REPO


def test_brief_bounds_any_value_without_building_its_repr():
    value = ["x"] * 9
    for _ in range(12):  # 9**13 leaves: its repr would not fit in memory
        value = [value] * 9
    assert len(brief(value)) <= 120 and len(brief("a" * 10_000)) <= 120 and "..." in brief("a" * 10_000)
    assert brief("caf\udce9") == "'caf\\udce9'"  # a non-UTF-8 file name prints (escaped)
    assert brief("cat") == "'cat'" and brief(2.5) == "2.5"


def _repr_in_user_errors(tree: ast.AST) -> list[int]:
    """Lines of ``UserError(f"...{x!r}...")``: a value shown unbounded."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "UserError":
            for arg in ast.walk(node):
                if isinstance(arg, ast.FormattedValue) and arg.conversion == ord("r"):
                    lines.append(arg.lineno)
    return lines


# values bounded before they reach the message: by argparse's choices (audit --rank, export --format), by
# config.validate (bake's prob_dtype is store.dtype)
CHOICES_ONLY = {"tools/audit.py", "tools/export.py", "labels/bake.py"}


def test_no_user_error_shows_a_value_through_a_plain_repr():
    src = REPO / "src" / "label_refinery"
    found = {}
    for path in sorted(src.rglob("*.py")):
        rel = str(path.relative_to(src))
        lines = _repr_in_user_errors(ast.parse(path.read_text()))
        if lines and rel not in CHOICES_ONLY:
            found[rel] = lines
    assert not found, f"show values through errors.brief(value), not {{value!r}}: {found}"
    assert _repr_in_user_errors(ast.parse('raise UserError(f"got {x!r}")')) == [1]
