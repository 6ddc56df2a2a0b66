"""Close the audit's loop: ``label-refinery relabel AUDIT.csv`` writes a label-override file.

    label-refinery audit runs/fmnist --folds 5
    label-refinery relabel runs/fmnist/audit/audit.csv --top 200 --out fixes.csv   # the top 200 flagged rows
    label-refinery relabel reviewed.csv --reviewed --out fixes.csv                 # decisions from audit.html
    label-refinery relabel review-fo/samples.json --reviewed --out fixes.csv       # FiftyOne, exported again
    label-refinery relabel project-export.json --reviewed --out fixes.csv          # Label Studio's JSON (or CSV) export
    label-refinery chain --label-overrides fixes.csv --out runs/fmnist-fixed        # retrain on the fixed labels

``--top N`` takes, in the audit's order, the first ``N`` rows whose flag is one of ``--flags``
(default: wrong) and whose suggested label differs from the given one, and replaces the label by
the suggestion. ``--reviewed`` reads what a reviewer decided, in any of the hand-offs (handoff.py):
the CSV that audit.html's "download reviewed CSV" button saves (rows marked *accept*, with their
``label``; *keep given* and undecided rows change nothing); a FiftyOne ``samples.json`` exported again
in the ``LegacyFiftyOneDataset`` format (a sample's ``label`` field if the reviewer set one, else its
suggestion if tagged ``accept``); Label Studio's JSON export (each task's latest annotation that was
not cancelled) or CSV export (its ``label`` column). A decision equal to the given label changes nothing. The output is ``index,label,given,suggested_p,source`` (``data.label_overrides`` reads
``index`` and ``label``); the dataset on disk is never modified.
"""

from __future__ import annotations

import json
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
        fixes = [
            {"index": str(i), "label": label, "given": given, "suggested_p": p, "source": f"reviewed ({tool})"}
            for i, label, given, p, tool in _decisions(source) if label and label != given
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


def _decisions(source: Path):
    """``(index, label, given, suggested_p, tool)`` per reviewed image, from any hand-off's return file."""
    if source.suffix.lower() != ".json":
        with open(source, encoding="utf-8-sig", errors="replace") as f:
            header = f.readline()
        if "decision" in header.split(","):  # audit.html's reviewed CSV
            for r in _rows(source, {"index", "given", "decision", "label"}):
                if r["decision"] == "accept":
                    yield r["index"], r["label"], r["given"], r.get("suggested_p", ""), "audit.html"
            return
        for r in _rows(source, {"index", "given", "label"}):  # Label Studio's CSV export
            yield r["index"], r["label"].strip(), r["given"], "", "Label Studio"
        return
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{source}: not a readable JSON file ({e})") from None
    if isinstance(doc, dict) and isinstance(doc.get("samples"), list):
        yield from _fiftyone(source, doc["samples"])
    elif isinstance(doc, list):
        yield from _label_studio(source, doc)
    else:
        raise UserError(f"{source}: neither a FiftyOne samples.json (a 'samples' list) nor a Label Studio export (a list of tasks)")


def _fiftyone(source: Path, samples: list):
    for s in samples:
        if not isinstance(s, dict) or "index" not in s or not isinstance(s.get("given"), dict):
            raise UserError(f"{source}: a sample without 'index' and 'given': export it from `label-refinery export --format fiftyone`")
        label = s.get("label")
        label = label.get("label") if isinstance(label, dict) else label  # a Classification field or a string
        if not label and "accept" in (s.get("tags") or []):
            label = (s.get("suggested") or {}).get("label")
        yield s["index"], label, s["given"].get("label"), (s.get("suggested") or {}).get("confidence", ""), "FiftyOne"


def _label_studio(source: Path, tasks: list):
    for t in tasks:
        data = t.get("data") if isinstance(t, dict) else None
        if not isinstance(data, dict) or "index" not in data or "given" not in data:
            raise UserError(f"{source}: a task without data.index and data.given: import tasks from `label-refinery export --format label-studio`")
        done = [a for a in t.get("annotations") or [] if not a.get("was_cancelled")]
        choices = [r["value"]["choices"] for a in done[-1:] for r in a.get("result", [])
                   if r.get("from_name") == "label" and r.get("value", {}).get("choices")]  # fmt: skip
        if choices:
            yield data["index"], choices[0][0], data["given"], "", "Label Studio"


__all__ = ["relabel"]
