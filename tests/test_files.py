"""The one JSON reader, the one CSV reader and writer, and the bounded repr of messages (issue 28)."""

from __future__ import annotations

import ast
import csv
import io

import pytest

from label_refinery import UserError
from label_refinery.errors import brief
from label_refinery.files import CSV_FIELD_LIMIT, csv_cell, csv_text, read_csv, read_json
from tests.harness import REPO

NAMES = ["=1+2", "+x", "-1", "@SUM(A1)", "\tx", "'quoted", "''", "'plain", "plain", "a,b", 'say "hi"', "²", ""]


def test_csv_cells_that_spreadsheets_would_run_are_quoted_and_read_back(tmp_path):
    text = csv_text(["index", "label"], [{"index": i, "label": n} for i, n in enumerate(NAMES)])
    cells = [row[1] for row in csv.reader(io.StringIO(text))][1:]
    assert not any(c.startswith(("=", "+", "-", "@", "\t")) for c in cells)  # a spreadsheet runs none of them
    assert cells[:3] == ["'=1+2", "'+x", "'-1"] and cells[NAMES.index("plain")] == "plain"
    assert csv_cell(-1.5) == -1.5 and csv_cell(3) == 3  # numbers stay numbers
    (tmp_path / "t.csv").write_text(text)
    rows = read_csv(tmp_path / "t.csv", "table", ["index", "label"])
    assert [r["label"] for _, r in rows] == NAMES  # the round trip is exact
    assert [line for line, _ in rows] == list(range(2, 2 + len(NAMES)))


def test_csv_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeffindex,label\r\n0,cat\r\n".encode())  # as spreadsheets save it
    assert read_csv(tmp_path / "bom.csv", "label overrides", ["index", "label"]) == [(2, {"index": "0", "label": "cat"})]


@pytest.mark.parametrize(
    "data, phrase",
    [
        ("index,label\n0,caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 2): save it as UTF-8"),
        (bytes(range(256)) * 8, "is a binary file, not text (a NUL byte on line 1)"),
        (b"index,label\n0," + b"x" * (CSV_FIELD_LIMIT + 1) + b"\n", "line 2: a field is longer than 128 KiB"),
        (b"index,label\n1,a,b\n", "line 2: 3 fields, the header has 2"),
        (b"image,label\n1,a\n", "lacks the column(s) index (its header: ['image', 'label'])"),
        (b"", "is empty: expected a header with the columns index, label"),
        (b'index,label\n1,"open\n', "line 2: not valid CSV (unexpected end of data)"),
    ],
    ids=["latin-1", "binary", "big-field", "long-row", "no-index", "empty", "open-quote"],
)
def test_bad_csv_files_are_one_line_naming_file_and_line(tmp_path, data, phrase):
    path = tmp_path / "bad.csv"
    path.write_bytes(data)
    with pytest.raises(UserError) as info:
        read_csv(path, "label overrides", ["index", "label"])
    message = str(info.value)
    assert message.startswith(f"label overrides {path}") and phrase in message and "\n" not in message
    assert len(message) < 400


def test_header_only_csv_has_no_rows(tmp_path):
    (tmp_path / "h.csv").write_text("index,label\n\n")
    assert read_csv(tmp_path / "h.csv", "table", ["index"]) == []  # the caller decides (overrides refuse it)


@pytest.mark.parametrize(
    "data, phrase",
    [(b'{"a": [1, 2', "is not valid JSON (truncated?)"), (b"\xff\xfe{}", "is not UTF-8 text"), (b"\x00\x01", "binary")],
    ids=["truncated", "utf-16", "binary"],
)
def test_bad_json_files_are_one_line_naming_the_file(tmp_path, data, phrase):
    (tmp_path / "m.json").write_bytes(data)
    with pytest.raises(UserError, match="restore it") as info:
        read_json(tmp_path / "m.json", "generation metadata", "; restore it")
    assert str(info.value).startswith(f"generation metadata {tmp_path / 'm.json'}") and phrase in str(info.value)
    with pytest.raises(UserError, match="does not exist"):
        read_json(tmp_path / "nope.json", "manifest")


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
