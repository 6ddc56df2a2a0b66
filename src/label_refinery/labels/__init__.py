"""Label sources: each has one job, refined labels ``[B, C]`` (probabilities) for a batch.

- :class:`GroundTruth`: one-hot targets, optionally smoothed (generation 1).
- :class:`LiveRefinery`: ``softmax(refinery(images) / T)`` on exactly the student's crop tensor; the
  refinery is frozen (``requires_grad_(False)``), in eval mode and run under ``inference_mode``.
- :class:`~label_refinery.labels.store.StoredLabels`: the same labels read from a baked label store
  (``store.py``), per crop or static (one per image).

``build.py`` picks the source a generation's config asks for.

The training loop calls ``labels(batch)`` and never asks which source it has.

Example:
    >>> from label_refinery.labels import GroundTruth
    >>> GroundTruth(3)(batch).shape                             # doctest: +SKIP
    torch.Size([B, 3])
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import Batch
from ..errors import UserError
from ..losses import one_hot_labels


class LabelSource(Protocol):
    num_classes: int

    def __call__(self, batch: Batch) -> torch.Tensor:  # [B, C], rows sum to 1, no grad
        ...


class GroundTruth:
    """Generation 1: the dataset's labels as (optionally smoothed) one-hot probabilities."""

    def __init__(self, num_classes: int, smoothing: float = 0.0):
        self.num_classes, self.smoothing = num_classes, smoothing

    def __call__(self, batch: Batch) -> torch.Tensor:
        return one_hot_labels(batch.targets, self.num_classes, self.smoothing)  # [B, C]

    def describe(self) -> dict:
        return {"kind": "ground-truth", "label_smoothing": self.smoothing}


class LiveRefinery:
    """A frozen refinery labelling each crop as the student sees it.

    Args:
        model: the refinery; it is frozen here and never becomes part of the student.
        temperature: ``T`` in ``softmax(logits / T)`` (the paper: 1).
        bn_train: keep the refinery's BatchNorm in train mode (batch statistics, running stats
            drift), as the 2018 release did by accident of its wrapper. Off by default.
        provenance: what to record about the refinery (path, SHA-256, architecture).
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0, bn_train: bool = False, provenance: dict | None = None):
        self.model = model.requires_grad_(False).eval()
        if bn_train:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        self.temperature, self.bn_train = temperature, bn_train
        self.provenance = provenance or {}
        self.num_classes = _num_outputs(model, provenance)

    @classmethod
    def from_checkpoint(cls, path: str, device="cpu", channels_last: bool = False, **kwargs) -> "LiveRefinery":
        from ..checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        model = ckpt.build_model(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        prov = {
            "path": str(ckpt.path),
            "sha256": ckpt.sha256,
            "model": ckpt.meta["model"],
            "classes": ckpt.meta["classes"],
            "in_chans": ckpt.meta["in_chans"],
            "generation": ckpt.meta.get("generation"),
            "dataset_fingerprint": ckpt.meta.get("dataset_fingerprint"),
        }
        return cls(model, provenance=prov, **kwargs)

    def __call__(self, batch: Batch) -> torch.Tensor:
        grad_free = torch.no_grad() if self.bn_train else torch.inference_mode()
        with grad_free:
            probs = F.softmax(self.model(batch.images).float() / self.temperature, dim=1)  # [B, C]
        # An inference tensor cannot be saved for the student's backward; a clone outside is normal.
        return probs.clone()

    def describe(self) -> dict:
        return {"kind": "live-refinery", "temperature": self.temperature, "bn_train": self.bn_train, **self.provenance}


def _num_outputs(model: nn.Module, provenance: dict | None) -> int:
    if provenance and "classes" in provenance:
        return len(provenance["classes"])
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else -1


def check_compatible(refinery: LiveRefinery, classes: list[str], in_chans: int | None = None) -> None:
    """Refuse a refinery whose classes or input channels differ from the student's dataset."""
    theirs = refinery.provenance.get("classes")
    if refinery.num_classes != len(classes):
        raise UserError(
            f"the refinery {refinery.provenance.get('path', '')} predicts {refinery.num_classes} classes but the "
            f"dataset has {len(classes)}; use a refinery trained on the same classes"
        )
    if theirs is not None and list(theirs) != list(classes):
        diff = [f"{a!r} vs {b!r}" for a, b in zip(theirs, classes) if a != b][:3]
        raise UserError(f"the refinery's classes differ from the dataset's ({', '.join(diff)}); use a refinery trained on the same classes")
    their_chans = refinery.provenance.get("in_chans")
    if in_chans is not None and their_chans is not None and their_chans != in_chans:
        raise UserError(
            f"the refinery {refinery.provenance.get('path', '')} takes {their_chans}-channel images but the dataset "
            f"has {in_chans} channels; use a refinery trained on this kind of images"
        )


__all__ = ["GroundTruth", "LabelSource", "LiveRefinery", "check_compatible"]
