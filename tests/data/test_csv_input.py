"""The one CSV reader (files.read_csv) on what users' spreadsheets and editors really save (issue 28):
a BOM, another encoding, binary data, an oversized field, odd digits, a header without rows."""

from __future__ import annotations

import pytest

from label_refinery import UserError
from label_refinery.data.overrides import read_overrides
from label_refinery.tools.relabel import relabel

CLASSES = [str(i) for i in range(10)]


def test_overrides_accept_a_bom_and_refuse_bad_files_in_one_line(tmp_path):
    path = tmp_path / "o.csv"
    path.write_bytes("\ufeffindex,label\n3,7\n5,2\n".encode())  # as spreadsheets save UTF-8 CSV
    assert read_overrides(path, CLASSES) == {3: 7, 5: 2}
    cases = {
        "index,label\n3,caf\xe9\n".encode("latin-1"): r"not UTF-8 text \(byte 0xe9 on line 2\)",
        b"\x89PNG\r\n\x1a\n\0\0\0": "is a binary file",
        ("index,label\n1," + "x" * 140_000 + "\n").encode(): "line 2: a field is longer than 128 KiB",
        "index,label\n1,\u00b2\n".encode(): "unknown class '\u00b2'",  # a superscript two is not a class number
        b"index,label\n": "a header and no rows",
        b"idx,lab\n1,2\n": "lacks the column",
    }
    for data, message in cases.items():
        path.write_bytes(data)
        with pytest.raises(UserError, match=message) as err:
            read_overrides(path, CLASSES)
        assert len(str(err.value)) < 400  # never the 140 KB field itself


def test_relabel_reads_audit_tables_through_the_same_reader(tmp_path):
    audit = tmp_path / "audit.csv"
    audit.write_bytes("index,given,suggested,suggested_p,flag\n4,caf\xe9,1,0.9,wrong\n".encode("latin-1"))
    with pytest.raises(UserError, match="audit table .*not UTF-8 text \\(byte 0xe9 on line 2\\)"):
        relabel(audit, tmp_path / "fixes.csv", top=3)
    audit.write_bytes("\ufeffindex,given,suggested,suggested_p,flag\n4,3,1,0.9,wrong\n".encode())
    assert relabel(audit, tmp_path / "fixes.csv", top=3) == 1
