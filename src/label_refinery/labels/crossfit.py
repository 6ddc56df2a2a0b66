"""A cross-fitted refinery: every training image labelled only by a model that never trained on it.

A refinery trained on the student's own images has memorised many of their labels: on those images
its softmax is close to one-hot, and refined labels carry little beyond the ground truth. K fold
models, model ``k`` trained on every fold but ``k`` (the audit's held-out fold chains,
``data.holdout_fold = (k, K)``), label each crop of an image of fold ``k`` with model ``k``: the
labels a strong model gives to images it has not seen, on every image of the training set (issue 24).

The folds are :func:`~label_refinery.data.fold_of` over the positions of the run's training split,
exactly as the fold models were trained, so the student must train on the same images as the fold
models' full split (same dataset, subset, validation split and labels); that is checked from each
member's recorded config. Live labels only: each step runs every fold model on its share of the
batch (one forward per image in all, like a single refinery).

Example:
    >>> ref = CrossFitRefinery.from_checkpoints([f"runs/folds/fold{k}/gen1" for k in range(5)],
    ...                                         train=ds.train, device="cpu")    # doctest: +SKIP
    >>> refined = ref(batch)                                                     # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..checkpoint import META, ensemble_sha256, read_meta, resolve
from ..config import config_from_dict
from ..data import fold_of
from ..data.base import Batch, Split
from ..errors import UserError, brief
from . import LiveRefinery, members_provenance, refine

# The data settings that decide which images (and labels) make the training split.
SAME_IMAGES = ("dataset", "train_subset", "subset_seed", "stratify", "val_split", "label_noise",
               "label_noise_seed", "label_overrides")  # fmt: skip


def _member_fold(path: str) -> tuple[int, int, dict]:
    """``(k, K, data settings)`` of a fold model's checkpoint."""
    sidecar = resolve(path).parent / META
    if not sidecar.is_file():
        raise UserError(f"a cross-fitted refinery needs fold models with their meta.json; {path} has none")
    data = config_from_dict(read_meta(sidecar)["config"]).data
    if data.holdout_fold is None:
        raise UserError(
            f"{path} was trained on every training image (no data.holdout_fold): a cross-fitted refinery is made of "
            "fold models, each trained without one fold (e.g. audit --folds K, or arms with data.holdout_fold [k, K])"
        )
    k, folds = data.holdout_fold
    return k, folds, {key: getattr(data, key) for key in SAME_IMAGES}


def fold_members(paths: list[str], data) -> list[str]:
    """``paths`` ordered by fold (member ``k`` held fold ``k`` out), checked: one model per fold of the
    same K, each trained on ``data``'s images (a :class:`~label_refinery.config.DataConfig`)."""
    found = {}
    wanted = {key: getattr(data, key) for key in SAME_IMAGES}
    for path in paths:
        k, folds, theirs = _member_fold(path)
        if folds != len(paths):
            raise UserError(f"{path} is fold {k + 1} of {folds}, but the cross-fitted refinery has {len(paths)} members")
        if k in found:
            raise UserError(f"{found[k]} and {path} both hold out fold {k + 1} of {folds}")
        diff = [f"{key}: {brief(theirs[key])} there, {brief(wanted[key])} here" for key in SAME_IMAGES if theirs[key] != wanted[key]]
        if diff:
            raise UserError(f"the fold model {path} was trained on other images than this run's ({'; '.join(diff)})")
        found[k] = path
    return [found[k] for k in range(len(paths))]


class CrossFitRefinery(LiveRefinery):
    """Refined labels of each image from the fold model that held that image out (module docstring).

    Args:
        members: fold models, member ``k`` trained without fold ``k``.
        train: the run's training split (its positions define the folds, its ids the images).
        temperature, provenance: as for :class:`LiveRefinery`.
    """

    def __init__(self, members: list[nn.Module], train: Split, temperature: float = 1.0, provenance: dict | None = None):
        super().__init__(nn.ModuleList(members), temperature, False, provenance)
        ids = train.ids.numpy()
        fold = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
        fold[ids] = fold_of(len(ids), len(members))  # [max id + 1]: the fold of each training image
        self.fold_of_index = torch.from_numpy(fold)

    @classmethod
    def from_checkpoints(cls, paths, device="cpu", channels_last: bool = False, *, train: Split, data, **kwargs):
        """Fold models from their checkpoints (any order; sorted by fold and checked by :func:`fold_members`)."""
        ordered = fold_members(list(paths), data)
        members = [LiveRefinery.from_checkpoint(p, device, channels_last) for p in ordered]
        prov = members_provenance(members, "cross-fit")
        prov["sha256"] = ensemble_sha256(["cross-fit"] + [m.provenance["sha256"] for m in members])
        prov["dataset_fingerprint"] = None  # each member saw other images, by design
        prov["cross_fit"] = True
        return cls([m.model for m in members], train, provenance=prov, **kwargs)

    def __call__(self, batch: Batch) -> torch.Tensor:
        images = batch.images if batch.label_images is None else batch.label_images
        folds = self.fold_of_index[batch.indices.cpu()]  # [B]
        if bool((folds < 0).any()):
            raise UserError("a cross-fitted refinery labels the training images it was built for; this batch has others")
        out = None
        with torch.inference_mode():
            for k, member in enumerate(self.model):
                rows = torch.nonzero(folds == k).squeeze(1).to(images.device)
                if len(rows):
                    probs = refine(member, images[rows], self.temperature)  # [b, C]
                    out = probs.new_zeros(len(images), probs.shape[1]) if out is None else out
                    out[rows] = probs
        return out.clone()  # an inference tensor cannot be saved for the student's backward


__all__ = ["CrossFitRefinery", "fold_members"]
