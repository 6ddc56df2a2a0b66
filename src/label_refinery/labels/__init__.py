"""Label sources: each has one job, refined labels ``[B, C]`` (probabilities) for a batch.

- :class:`GroundTruth`: one-hot targets, optionally smoothed (generation 1).
- :class:`LiveRefinery`: ``softmax(refinery(images) / T)`` on exactly the student's crop tensor; the
  refinery is frozen (``requires_grad_(False)``), in eval mode and run under ``inference_mode``. It
  may be an ensemble of checkpoints, averaged in probability (``LiveRefinery.from_checkpoints``).
- :class:`~label_refinery.labels.store.StoredLabels`: the same labels read from a baked label store
  (``store.py``; ``bake.py`` writes it), per crop or static (one per image).

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
from ..data.mixing import mix_labels
from ..errors import UserError, brief
from ..losses import one_hot_labels


def refine(model: nn.Module, images: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Refined labels: ``softmax(model(images) / T)`` in float32, ``[B, C]``. The one place the
    refinery's probabilities are computed (live labels, label stores, jittering, the label tools)."""
    return F.softmax(model(images).float() / temperature, dim=1)


class LabelSource(Protocol):
    num_classes: int

    def __call__(self, batch: Batch) -> torch.Tensor:  # [B, C], rows sum to 1, no grad
        ...


class GroundTruth:
    """Generation 1: the dataset's labels as (optionally smoothed) one-hot probabilities."""

    def __init__(self, num_classes: int, smoothing: float = 0.0):
        self.num_classes, self.smoothing = num_classes, smoothing

    def __call__(self, batch: Batch) -> torch.Tensor:
        q = one_hot_labels(batch.targets, self.num_classes, self.smoothing)  # [B, C]
        return mix_labels(q, batch.mix_lam)  # a mixed batch (mixing.py) gets its labels mixed alike

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

    def __init__(
        self, model: nn.Module, temperature: float = 1.0, bn_train: bool = False, provenance: dict | None = None
    ):
        self.model = model.requires_grad_(False).eval()
        if bn_train:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        self.temperature, self.bn_train = temperature, bn_train
        self.provenance = provenance or {}
        self.num_classes = _num_outputs(model, provenance)

    @classmethod
    def from_checkpoint(
        cls, path: str, device="cpu", channels_last: bool = False, *, ds=None, options=None, log=None, **kwargs
    ) -> "LiveRefinery":
        """One of our checkpoints, or a library's model (``timm:NAME`` ...: :mod:`.external`, which needs
        the dataset ``ds`` it labels and its :class:`~.external.Options`)."""
        from ..checkpoint import load_checkpoint
        from .external import Options, is_external, member

        if is_external(path):
            if ds is None:
                raise ValueError("a library model as the refinery needs the dataset it labels (ds=)")
            model, prov = member(path, ds, options or Options(), device, channels_last, log)
            return cls(model, provenance=prov, **kwargs)

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
            "image_size": ckpt.meta.get("image_size"),
            "mean": ckpt.meta.get("mean"),
            "std": ckpt.meta.get("std"),
            "generation": ckpt.meta.get("generation"),
            "dataset_fingerprint": ckpt.meta.get("dataset_fingerprint"),
        }
        return cls(model, provenance=prov, **kwargs)

    @classmethod
    def from_checkpoints(
        cls, paths, device="cpu", channels_last: bool = False, *, ds=None, options=None, log=None, **kwargs
    ) -> "LiveRefinery":
        """One checkpoint, or several averaged in probability (a refinery ensemble).

        The ensemble's refined labels are ``softmax(log(mean_m softmax(f_m(x))) / T)``: at ``T = 1`` the
        members' mean probability on the student's crop (:class:`ProbabilityEnsemble`). Its members
        must agree on what they see (classes, channels, view size, normalisation); its ``sha256`` is
        :func:`~label_refinery.checkpoint.ensemble_sha256` of theirs, ``path`` the list of members."""
        paths = [paths] if isinstance(paths, str) else list(paths)
        where = dict(ds=ds, options=options, log=log)
        if len(paths) == 1:
            return cls.from_checkpoint(paths[0], device, channels_last, **where, **kwargs)
        from ..checkpoint import ensemble_sha256
        from ..models.ensemble import ProbabilityEnsemble

        members = [cls.from_checkpoint(p, device, channels_last, **where) for p in paths]
        prov = members_provenance(members, "ensemble")
        prov["sha256"] = ensemble_sha256([m.provenance["sha256"] for m in members])
        return cls(ProbabilityEnsemble([m.model for m in members]), provenance=prov, **kwargs)

    def __call__(self, batch: Batch) -> torch.Tensor:
        grad_free = torch.no_grad() if self.bn_train else torch.inference_mode()
        images = batch.images if batch.label_images is None else batch.label_images
        with grad_free:
            probs = refine(self.model, images, self.temperature)  # [B, C]
        # An inference tensor cannot be saved for the student's backward; a clone outside is normal.
        return probs.clone()

    def describe(self) -> dict:
        return {"kind": "live-refinery", "temperature": self.temperature, "bn_train": self.bn_train, **self.provenance}


INPUTS = ("classes", "in_chans", "image_size", "mean", "std")  # what a refinery sees, from its checkpoint


def members_provenance(members: list["LiveRefinery"], kind: str) -> dict:
    """The provenance of several checkpoints acting as one refinery (an ``ensemble``, a ``cross-fit``):
    they must see the same inputs (:data:`INPUTS`); ``path`` lists them, ``members`` records each.
    The caller sets ``sha256``, the identity of the combination."""
    first = members[0].provenance
    for m in members[1:]:
        for key in INPUTS:
            if m.provenance.get(key) != first.get(key):
                raise UserError(
                    f"the refinery {kind}'s members see different inputs: {m.provenance['path']} has {key} "
                    f"{brief(m.provenance.get(key))}, {first['path']} has {brief(first.get(key))}; an {kind} combines "
                    "models trained on the same kind of data"
                )
    fingerprints = {m.provenance.get("dataset_fingerprint") for m in members}
    return {
        **{key: first.get(key) for key in INPUTS},
        "path": [m.provenance["path"] for m in members],
        "model": f"{kind} of {len(members)}: " + ", ".join(m.provenance["model"] for m in members),
        "generation": max(int(m.provenance.get("generation") or 0) for m in members),
        "dataset_fingerprint": fingerprints.pop() if len(fingerprints) == 1 else None,
        "members": [{k: m.provenance.get(k) for k in ("path", "sha256", "model", "generation")} for m in members],
    }


def refinery_sha256(refinery) -> str | None:
    """The SHA-256 a run records for the refinery a :class:`~label_refinery.config.RefineryConfig`
    names (None: ground truth): a checkpoint's weights file, a library model's
    :func:`~.external.identity`, and for several, :func:`~label_refinery.checkpoint.ensemble_sha256`
    of theirs (prefixed ``cross-fit`` for fold models). Equal to the label source's ``sha256``."""
    from ..checkpoint import ensemble_sha256, resolve
    from ..files import sha256_file
    from .external import Options, identity, is_external

    paths = [refinery.path] if isinstance(refinery.path, str) else list(refinery.path or ())
    if not paths:
        return None
    shas = [identity(p, Options.of(refinery)) if is_external(p) else sha256_file(resolve(p)) for p in paths]
    if refinery.cross_fit:
        return ensemble_sha256(["cross-fit"] + shas)
    return shas[0] if len(shas) == 1 else ensemble_sha256(shas)


def _num_outputs(model: nn.Module, provenance: dict | None) -> int:
    if provenance and "classes" in provenance:
        return len(provenance["classes"])
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else -1


def check_compatible(refinery: LiveRefinery, ds) -> None:
    """Refuse a refinery that would see other tensors than it was trained on: other classes, input
    channels, view size or normalisation than the dataset ``ds`` (an :class:`ImageDataset`) gives.
    Each is recorded in the refinery's checkpoint metadata; a field it lacks is not checked."""
    p, name = refinery.provenance, refinery.provenance.get("path", "")
    if refinery.num_classes != ds.num_classes:
        raise UserError(
            f"the refinery {name} predicts {refinery.num_classes} classes but the dataset has {ds.num_classes}; "
            "use a refinery trained on the same classes"
        )
    if p.get("classes") is not None and list(p["classes"]) != list(ds.classes):
        diff = [f"{brief(a)} vs {brief(b)}" for a, b in zip(p["classes"], ds.classes) if a != b][:3]
        raise UserError(
            f"the refinery's classes differ from the dataset's ({', '.join(diff)}); use a refinery trained on the same classes"
        )
    if p.get("in_chans") is not None and p["in_chans"] != ds.in_chans:
        raise UserError(
            f"the refinery {name} takes {p['in_chans']}-channel images but the dataset has {ds.in_chans} channels; "
            "use a refinery trained on this kind of images"
        )
    if p.get("image_size") is not None and p["image_size"] != ds.image_size:
        raise UserError(
            f"the refinery {name} was trained on {p['image_size']}-px views but this run cuts {ds.image_size}-px crops "
            f"(data.image_size): it would label differently prepared images. Train with --image-size {p['image_size']}, "
            f"or use a refinery trained at {ds.image_size} px"
        )
    for key in ("mean", "std"):
        theirs, ours = p.get(key), list(ds.mean if key == "mean" else ds.std)
        if theirs is not None and (len(theirs) != len(ours) or any(abs(a - b) > 1e-4 for a, b in zip(theirs, ours))):
            raise UserError(
                f"the refinery {name} was trained on images normalised with {key} {list(theirs)}, but this dataset's "
                f"{key} is {ours}: it would label differently prepared images. Use a refinery trained on this dataset "
                "(the normalisation is the dataset's, recorded in each checkpoint's meta.json)"
            )


__all__ = ["GroundTruth", "LabelSource", "LiveRefinery", "check_compatible", "refine", "refinery_sha256"]
