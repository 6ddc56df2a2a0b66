"""Datasets (a small registry), crops as values, batches.

Names: ``fashion-mnist`` (default), ``fashion-scenes`` (48x48 scenes with a distractor item: labels
that crops make incomplete), ``fashion-pairs`` (100 classes: two items stacked), ``digits``, ``imagefolder:PATH``.

Example:
    >>> from label_refinery.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> ds.num_classes, ds.image_size, len(ds.train)
    (10, 8, 1438)
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from . import digits, fashion_mnist, imagefolder, pairs, scenes
from .base import Batch, ImageDataset, Split
from .crops import Crop, CropSampler, apply_crops
from .noise import symmetric_noise
from .overrides import apply_overrides

DATASETS = {
    "fashion-mnist": fashion_mnist.load,
    "fashion-scenes": scenes.load,
    "fashion-pairs": pairs.load,
    "digits": digits.load,
}
PREFIXED = {"imagefolder": imagefolder.load}
SUBSET_SEED = 0  # fixed: every generation of a chain sees the same subset
VAL_SEED = 1  # fixed: the validation images never change between runs


def dataset_names() -> list[str]:
    return sorted(DATASETS) + [f"{p}:PATH" for p in sorted(PREFIXED)]


def load_dataset(
    name: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    train_subset: int | None = None,
    workers: int = 0,
    val_split: int = 0,
    label_noise: float = 0.0,
    noise_seed: int = 0,
    *,
    label_overrides: str | None = None,
    holdout_fold: tuple[int, int] | None = None,
) -> ImageDataset:
    """Load a dataset by registry name.

    Args:
        name: ``fashion-mnist``, ``digits`` or ``imagefolder:PATH``.
        data_dir: where to look for files first (Fashion-MNIST).
        image_size: side of training crops and evaluation views (default: the dataset's own).
        train_subset: keep only this many training images (a seeded choice, indices unchanged).
        workers: loader processes for image folders.
        val_split: hold out this many training images as ``ds.val`` (a seeded choice, made before
            ``train_subset``, which then draws from the rest): for choosing settings without
            looking at the test split.
        label_noise: flip this share of the (final) training labels to another class, seeded by
            ``noise_seed`` (:mod:`label_refinery.data.noise`); test and validation stay clean.
        label_overrides: a CSV of ``index,label`` rows (dataset index; class name or number), e.g.
            accepted audit fixes from ``label-refinery relabel``: those training labels are replaced in
            memory, after any label noise (:mod:`label_refinery.data.overrides`).
        holdout_fold: ``(k, K)``: train on the training images outside fold ``k`` of ``K`` (a seeded
            partition of the final training split, :func:`fold_of`): the audit's held-out models.
    """
    prefix, _, arg = name.partition(":")
    if name in DATASETS:
        ds = DATASETS[name](data_dir=data_dir, image_size=image_size)
    elif prefix in PREFIXED and arg:
        ds = PREFIXED[prefix](arg, image_size=image_size, workers=workers)
    else:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())}")
    _choose_images(ds, train_subset, val_split)
    if label_noise:
        if not 0 < label_noise < 1:
            raise UserError(f"label_noise must be a share in [0, 1), got {label_noise}")
        ds.train.targets, ds.label_changes = symmetric_noise(
            ds.train.targets, ds.train.ids, ds.num_classes, label_noise, noise_seed
        )
    if label_overrides:
        ds.train.targets, ds.label_overrides = apply_overrides(
            ds.train.targets, ds.train.ids, ds.classes, label_overrides
        )
    if holdout_fold is not None:
        ds.train = without_fold(ds.train, *holdout_fold)
    return ds


def _choose_images(ds: ImageDataset, train_subset: int | None, val_split: int) -> None:
    """Hold out ``val_split`` training images as ``ds.val``, then keep ``train_subset`` of the rest
    (both seeded choices, fixed for every run: :data:`VAL_SEED`, :data:`SUBSET_SEED`)."""
    if val_split:
        if not 0 < val_split < len(ds.train):
            raise UserError(
                f"val_split must be in 1..{len(ds.train) - 1} images (the training split has {len(ds.train)}), got {val_split}"
            )
        order = np.random.default_rng(VAL_SEED).permutation(len(ds.train))
        ds.val = ds.train.subset(np.sort(order[:val_split]))
        ds.train = ds.train.subset(np.sort(order[val_split:]))
    if train_subset:
        if not 0 < train_subset <= len(ds.train):
            raise UserError(f"train_subset must be in 1..{len(ds.train)}, got {train_subset}")
        pos = np.sort(np.random.default_rng(SUBSET_SEED).permutation(len(ds.train))[:train_subset])
        ds.train = ds.train.subset(pos)


def without_fold(train: Split, k: int, folds: int) -> Split:
    """``train`` without fold ``k`` of ``folds`` (:func:`fold_of`): a fold model's training images."""
    if not (folds >= 2 and 0 <= k < folds and folds <= len(train)):
        raise UserError(f"holdout_fold must be (k, K) with K >= 2 and 0 <= k < K, got {[k, folds]}")
    return train.subset(np.nonzero(fold_of(len(train), folds) != k)[0])


FOLD_SEED = 2  # fixed: every audit of a run partitions its training images the same way


def fold_of(n: int, folds: int) -> np.ndarray:
    """``[n]`` the fold (0..K-1) of each training position: a seeded partition into near-equal folds."""
    out = np.empty(n, dtype=np.int64)
    out[np.random.default_rng([FOLD_SEED, folds]).permutation(n)] = np.arange(n) % folds
    return out


__all__ = [
    "Batch",
    "Crop",
    "CropSampler",
    "ImageDataset",
    "Split",
    "apply_crops",
    "dataset_names",
    "fold_of",
    "load_dataset",
    "without_fold",
]
