"""Mixing as function matching: mixup and cutmix of the crops, labelled after mixing.

Beyer et al. 2022 (arXiv 2106.05237, Sec. 3: distillation that is "patient and consistent") found
that distillation works best when the refinery labels *exactly* the image the student sees, mixed
images included ("function matching"). Here mixing is a batch transform that runs before the label
source (docs/design.md), so a live refinery labels the mixed crop; generation 1 mixes its one-hot
labels the same way.

Each batch is mixed with itself in reverse order (image ``i`` with image ``B - 1 - i``), with a ratio
``lam ~ Beta(alpha, alpha)`` drawn from a generator keyed by ``(seed, epoch, the batch's first image
index)``: a pure function of the run's settings and the batch, so a resumed run mixes exactly as the
uninterrupted one (every image appears once per epoch, so the first index names the batch).

- ``mixup`` (Zhang et al. 2018): ``x = lam * x + (1 - lam) * x_rev``; labels mixed with ``lam``.
- ``cutmix`` (Yun et al. 2019): a box of ``(1 - lam)`` of the area, at a random centre, is pasted
  from ``x_rev``; ``lam`` becomes the share of pixels kept after clipping the box to the image.

A label store holds the refinery's labels of *unmixed* crops; labelling a mixed crop needs the
refinery (or ground truth), so stores and static labels refuse mixing rather than approximate it.

Example:
    >>> mix = Mix("mixup", alpha=1.0, seed=0)                     # doctest: +SKIP
    >>> mixed = mix(student, batch); refined = refinery(mixed)     # the refinery sees the mixed crops
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from ..errors import brief
from .base import Batch

KINDS = ("off", "mixup", "cutmix")


class Mix:
    """A batch transform: mixup or cutmix of each batch with its reverse (see the module docstring)."""

    def __init__(self, kind: str, alpha: float, seed: int):
        if kind not in KINDS[1:]:
            raise ValueError(f"mix kind must be mixup or cutmix, got {brief(kind)}")
        self.kind, self.alpha, self.seed = kind, alpha, seed

    def rng(self, batch: Batch) -> np.random.Generator:
        return np.random.default_rng([self.seed, batch.epoch, int(batch.indices[0]), 0x6D6978])

    def __call__(self, student: nn.Module, batch: Batch) -> Batch:
        rng = self.rng(batch)
        lam = float(rng.beta(self.alpha, self.alpha))
        x, rev = batch.images, batch.images.flip(0)  # [B, C, H, W]
        if self.kind == "mixup":
            return dataclasses.replace(batch, images=lam * x + (1.0 - lam) * rev, mix_lam=lam)
        H, W = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        h, w = round(H * cut), round(W * cut)
        cy, cx = int(rng.integers(H)), int(rng.integers(W))
        y0, y1, x0, x1 = max(cy - h // 2, 0), min(cy + h - h // 2, H), max(cx - w // 2, 0), min(cx + w - w // 2, W)
        mixed = x.clone()
        mixed[..., y0:y1, x0:x1] = rev[..., y0:y1, x0:x1]
        return dataclasses.replace(batch, images=mixed, mix_lam=1.0 - (y1 - y0) * (x1 - x0) / (H * W))


def mix_labels(q: torch.Tensor, lam: float | None) -> torch.Tensor:
    """Labels ``[B, C]`` of a batch mixed with its reverse at ratio ``lam`` (``None``: not mixed)."""
    return q if lam is None else lam * q + (1.0 - lam) * q.flip(0)


__all__ = ["KINDS", "Mix", "mix_labels"]
