"""Label noise for experiments: a seeded share of the training labels flipped to another class.

Labels are overridden, never rewritten (docs/design.md): the dataset on disk stays as it is; the
flipped labels live in memory, enter the dataset's fingerprint, and every generation folder records
them in ``label-noise.csv`` (dataset index, original label, given label).

The noise is *symmetric* in the sense of the label-noise literature (e.g. Das & Sanghavi 2022):
``round(rate * N)`` training images, drawn uniformly without replacement, each get a class drawn
uniformly from the ``C - 1`` other classes, so every flipped label is wrong. The draw is a pure
function of ``(seed, the training split's ids and labels)``: the same noise in every generation,
process and run with the same data settings.

Example:
    >>> import torch
    >>> noisy, changes = symmetric_noise(torch.arange(10) % 3, torch.arange(10), 3, 0.2, seed=0)
    >>> len(changes.ids), bool((changes.original != changes.given).all())
    (2, True)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class LabelChanges:
    """Which training labels differ from the dataset's, and how (``[K]`` arrays each)."""

    kind: str  # "symmetric-noise"
    rate: float
    seed: int
    ids: np.ndarray  # dataset indices of the changed images
    original: np.ndarray  # the dataset's label
    given: np.ndarray  # the label training sees

    def digest(self) -> str:
        h = hashlib.sha256(f"{self.kind}|{self.rate}|{self.seed}|".encode())
        for a in (self.ids, self.original, self.given):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()

    def to_csv(self) -> str:
        rows = (f"{i},{o},{g}" for i, o, g in zip(self.ids.tolist(), self.original.tolist(), self.given.tolist()))
        return "index,original,given\n" + "".join(r + "\n" for r in rows)


def symmetric_noise(targets: torch.Tensor, ids: torch.Tensor, num_classes: int, rate: float, seed: int = 0):
    """``(noisy targets [N], LabelChanges)``: ``round(rate * N)`` labels moved to another class."""
    n = len(targets)
    k = round(rate * n)
    rng = np.random.default_rng([seed, 0x6E6F6973])  # independent of the subset and validation draws
    pos = np.sort(rng.choice(n, size=k, replace=False))
    shift = rng.integers(1, num_classes, size=k)  # 1..C-1: never the original class
    noisy = targets.clone()
    original = targets[pos].numpy()
    noisy[pos] = torch.from_numpy((original + shift) % num_classes).to(targets.dtype)
    changes = LabelChanges("symmetric-noise", rate, seed, ids[pos].numpy(), original, noisy[pos].numpy())
    return noisy, changes


__all__ = ["LabelChanges", "symmetric_noise"]
