"""Label overrides: training labels replaced from a file, the dataset on disk never touched.

The file is a CSV with a header and at least the columns ``index`` (the image's dataset index, as in
``audit.csv``) and ``label`` (a class name, or a class number). Other columns are kept for people
(``label-refinery relabel`` writes ``given``, ``suggested_p`` and ``source`` beside them) and ignored
here. The replaced labels live in memory, enter the dataset's fingerprint (so checkpoints, stores and
resumes see the difference) and each generation folder records them in ``label-overrides.csv``
(dataset index, label before, label after), like ``label-noise.csv``.

Example::

    label-refinery relabel runs/fmnist/audit/audit.csv --top 200 --out fixes.csv
    label-refinery chain --label-overrides fixes.csv --out runs/fmnist-fixed
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, brief
from .noise import LabelChanges


def read_overrides(path: str | Path, classes: list[str]) -> dict[int, int]:
    """``{dataset index: class number}`` from an overrides CSV; every problem is a :class:`UserError`
    that names the file and the line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"label overrides {p} do not exist")
    names = {c: i for i, c in enumerate(classes)}
    out: dict[int, int] = {}
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"index", "label"} <= set(reader.fieldnames):
            raise UserError(
                f"label overrides {p} need a header with the columns index and label, got {reader.fieldnames}"
            )
        for line, row in enumerate(reader, 2):
            label = (row["label"] or "").strip()
            try:
                index = int(row["index"])
            except (TypeError, ValueError):
                raise UserError(f"{p}, line {line}: index must be an integer, got {brief(row['index'])}") from None
            if label in names:
                cls = names[label]
            elif label.isdigit() and int(label) < len(classes):
                cls = int(label)
            else:
                raise UserError(
                    f"{p}, line {line}: unknown class {brief(label)}; classes: {', '.join(classes[:20])}"
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
