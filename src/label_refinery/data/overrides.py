"""Label overrides: training labels replaced from a file, the dataset on disk never touched.

The file is a CSV (UTF-8, as spreadsheets save it) with a header and at least the columns ``index``
(the image's dataset index, as in ``audit.csv``) and ``label`` (a class name, or a class number),
and at least one row. Other columns are kept for people
(``label-refinery relabel`` writes ``given``, ``suggested_p`` and ``source`` beside them) and ignored
here. The replaced labels live in memory, enter the dataset's fingerprint (so checkpoints, stores and
resumes see the difference) and each generation folder records them in ``label-overrides.csv``
(dataset index, label before, label after), like ``label-noise.csv``.

Example::

    label-refinery relabel runs/fmnist/audit/audit.csv --top 200 --out fixes.csv
    label-refinery chain --label-overrides fixes.csv --out runs/fmnist-fixed
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, brief
from ..files import read_csv
from .noise import LabelChanges


def _whole(text: str) -> int | None:
    """A non-negative integer written in ASCII digits (``int`` also takes ``' 3'`` and other scripts'
    digits, and ``'²'.isdigit()`` holds), else None."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def read_overrides(path: str | Path, classes: list[str]) -> dict[int, int]:
    """``{dataset index: class number}`` from an overrides CSV (read by :func:`~label_refinery.files.read_csv`:
    UTF-8, a spreadsheet's byte-order mark allowed); every problem, a file with a header and no rows
    included, is a :class:`UserError` that names the file and the line."""
    p = Path(path)
    names = {c: i for i, c in enumerate(classes)}
    rows = read_csv(p, "label overrides", ("index", "label"))
    if not rows:
        raise UserError(f"label overrides {p} hold a header and no rows: nothing to override; add index,label rows or drop the flag")
    out: dict[int, int] = {}
    for line, row in rows:
        label, index = row["label"].strip(), _whole(row["index"])
        if index is None:
            raise UserError(f"{p}, line {line}: index must be a non-negative integer, got {brief(row['index'])}")
        if label in names:
            cls = names[label]
        elif _whole(label) is not None and _whole(label) < len(classes):
            cls = _whole(label)
        else:
            raise UserError(
                f"{p}, line {line}: unknown class {brief(label)}; classes: {', '.join(classes[:20])[:400]}"
                + (" ..." if len(classes) > 20 else "")
            )
        if out.get(index, cls) != cls:
            raise UserError(f"{p}, line {line}: image {index} is given two different labels")
        out[index] = cls
    return out


def apply_overrides(targets: torch.Tensor, ids: torch.Tensor, classes: list[str], path: str | Path):
    """``(targets [N] with the file's labels, LabelChanges)``; an index that is not a training image
    of this split is refused (a file made for other data)."""
    wanted = read_overrides(path, classes)
    pos_of = {int(i): k for k, i in enumerate(ids.tolist())}
    missing = [i for i in wanted if i not in pos_of]
    if missing:
        raise UserError(
            f"label overrides {path}: {len(missing)} index(es) are not training images of this run (first: "
            f"{missing[0]}); was the file made for other data (another train_subset or val_split)?"
        )
    order = sorted(wanted)
    pos = np.array([pos_of[i] for i in order], dtype=np.int64)
    new = targets.clone()
    before = targets[torch.from_numpy(pos)].numpy() if len(pos) else np.zeros(0, dtype=np.int64)
    after = np.array([wanted[i] for i in order], dtype=np.int64)
    if len(pos):
        new[torch.from_numpy(pos)] = torch.from_numpy(after).to(targets.dtype)
    # the digest of (ids, before, after) is what enters the fingerprint: the changes, not the file's bytes
    return new, LabelChanges("overrides", 0.0, 0, np.array(order, dtype=np.int64), before, after)


__all__ = ["apply_overrides", "read_overrides"]
