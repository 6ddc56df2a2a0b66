"""Close the audit's loop: ``label-refinery relabel AUDIT.csv`` writes a label-override file.

    label-refinery audit runs/fmnist --folds 5
    label-refinery relabel runs/fmnist/audit/audit.csv --top 200 --out fixes.csv   # the top 200 flagged rows
    label-refinery relabel reviewed.csv --reviewed --out fixes.csv                 # decisions from audit.html
    label-refinery chain --label-overrides fixes.csv --out runs/fmnist-fixed        # retrain on the fixed labels

``--top N`` takes, in the audit's order, the first ``N`` rows whose flag is one of ``--flags``
(default: wrong) and whose suggested label differs from the given one, and replaces the label by
the suggestion. ``--reviewed`` reads the CSV that audit.html's "download reviewed CSV" button saves
and keeps the rows marked *accept* (with their ``label``); *keep given* and undecided rows change
nothing. The output is ``index,label,given,suggested_p,source`` (``data.label_overrides`` reads
``index`` and ``label``); the dataset on disk is never modified.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..files import atomic_write, csv_text, read_csv
from ..locks import claim_file

FIELDS = ("index", "label", "given", "suggested_p", "source")


def _rows(path: Path, needed: set[str]) -> list[dict]:
    """The rows of an audit.csv or reviewed CSV, through the one CSV reader (files.read_csv)."""
    fix = ": pass an audit.csv (with --top) or the reviewed CSV that audit.html downloads (with --reviewed)"
    return [row for _, row in read_csv(path, "audit table", sorted(needed), fix)]


def relabel(
    source: str | Path,
    out: str | Path,
    *,
    top: int | None = None,
    reviewed: bool = False,
    flags=("wrong",),
    force: bool = False,
) -> int:
    """Write the override file ``out`` from an audit or a reviewed CSV; returns how many labels change.
    An existing ``out`` (perhaps fixes edited by hand) is replaced only with ``force``."""
    source = Path(source)
    if reviewed == (top is not None):
        raise UserError("relabel needs exactly one of --top N (an audit.csv) or --reviewed (a reviewed CSV)")
    if reviewed:
        rows = _rows(source, {"index", "given", "decision", "label"})
        fixes = [
            {"index": r["index"], "label": r["label"], "given": r["given"], "suggested_p": r.get("suggested_p", ""),
             "source": "reviewed"}
            for r in rows if r["decision"] == "accept" and r["label"] and r["label"] != r["given"]
        ]  # fmt: skip
    else:
        rows = _rows(source, {"index", "given", "suggested", "suggested_p", "flag"})
        chosen = [r for r in rows if r["flag"] in flags and r["suggested"] != r["given"]][:top]
        fixes = [
            {"index": r["index"], "label": r["suggested"], "given": r["given"], "suggested_p": r["suggested_p"],
             "source": f"audit top {top} ({'/'.join(flags)})"}
            for r in chosen
        ]  # fmt: skip
    with claim_file(out, force=force):  # class names a spreadsheet would run get a ' (read_csv removes it)
        atomic_write(out, csv_text(FIELDS, fixes).encode())
    return len(fixes)


__all__ = ["relabel"]
