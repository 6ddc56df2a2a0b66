"""Datasets (a small registry), crops as values, batches.

Names: ``fashion-mnist`` (default), ``fashion-scenes`` (48x48 scenes with a distractor item: labels
that crops make incomplete), ``fashion-pairs`` (100 classes: two items stacked; options
``fashion-pairs:seed=S,val_items=N``: the pairing, and validation pairs of held-out items),
``digits``, ``imagefolder:PATH``, and the table-like sources ``manifest:FILE.csv|.parquet``,
``hf:PATH_OR_NAME`` (Hugging Face datasets) and ``wds:INDEX.json`` (WebDataset shards), all decoded
by one loader (:mod:`.decoded`).

Example:
    >>> from label_refinery.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> ds.num_classes, ds.image_size, len(ds.train)
    (10, 8, 1438)
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError, brief
from . import digits, fashion_mnist, hfds, imagefolder, manifest, pairs, scenes, shards
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
PREFIXED = {"imagefolder": imagefolder.load, "manifest": manifest.load, "hf": hfds.load, "wds": shards.load}
OPTIONS = {"fashion-pairs": {"seed": int, "val_items": int}}  # NAME:key=value,... (integers)
SUBSET_SEED = 0  # the default subset: every generation of a chain sees the same one (data.subset_seed)
VAL_SEED = 1  # fixed: the validation images never change between runs


def _options(name: str, text: str, types: dict) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in types:
            raise UserError(f"dataset {brief(name)}: options are {', '.join(f'{k}=N' for k in types)}, separated by commas")
        try:
            out[key] = types[key](value)
        except ValueError:
            raise UserError(f"dataset {brief(name)}: {key} must be an integer, got {brief(value)}") from None
    return out


def dataset_names() -> list[str]:
    return sorted(DATASETS) + [f"{p}:{','.join(f'{k}=N' for k in o)}" for p, o in OPTIONS.items()] + [
        f"{p}:PATH" for p in sorted(PREFIXED)
    ]


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
    """Load a dataset by registry name (:func:`open_dataset`) and take a run's images and labels from
    it (:func:`choose`, which also takes ``subset_seed`` and ``stratify``).

    Args:
        name: ``fashion-mnist``, ``digits``, ``imagefolder:PATH``, ``manifest:FILE``, ``hf:PATH`` or ``wds:INDEX.json``.
        data_dir: where to look for files first (Fashion-MNIST).
        image_size: side of training crops and evaluation views (default: the dataset's own).
        train_subset: keep only this many training images (a seeded choice, indices unchanged).
        workers: loader processes for image folders and the other decoded sources.
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
    ds = open_dataset(name, data_dir, image_size, workers)
    return choose(ds, train_subset=train_subset, val_split=val_split, label_noise=label_noise, noise_seed=noise_seed,
                  label_overrides=label_overrides, holdout_fold=holdout_fold)  # fmt: skip


def open_dataset(name: str, data_dir: str | None = None, image_size: int | None = None, workers: int = 0) -> ImageDataset:
    """The whole dataset a registry name gives (see :func:`load_dataset` for the arguments)."""
    prefix, _, arg = name.partition(":")
    if name in DATASETS:
        return DATASETS[name](data_dir=data_dir, image_size=image_size)
    if prefix in OPTIONS and arg:
        return DATASETS[prefix](data_dir=data_dir, image_size=image_size, **_options(name, arg, OPTIONS[prefix]))
    if prefix in PREFIXED and arg:
        return PREFIXED[prefix](arg, image_size=image_size, workers=workers)
    raise UserError(f"unknown dataset {brief(name)}; valid names: {', '.join(dataset_names())}")


def choose(
    ds: ImageDataset,
    *,
    train_subset: int | None = None,
    subset_seed: int = SUBSET_SEED,
    stratify: bool = False,
    val_split: int = 0,
    label_noise: float = 0.0,
    noise_seed: int = 0,
    label_overrides: str | None = None,
    holdout_fold: tuple[int, int] | None = None,
) -> ImageDataset:
    """The images and labels a run takes from ``ds`` (changed in place and returned): a validation
    split, a training subset (``subset_seed`` chooses which; ``stratify``: as many images of every
    class), label noise, label overrides, an audit fold held out; the arguments as for
    :func:`load_dataset` (``data.*`` of the config)."""
    _choose_images(ds, train_subset, val_split, (subset_seed, stratify))
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


def _choose_images(ds: ImageDataset, train_subset: int | None, val_split: int, subset: tuple[int, bool]) -> None:
    """Hold out ``val_split`` training images as ``ds.val`` (a choice fixed for every run,
    :data:`VAL_SEED`), then keep ``train_subset`` of the rest (:func:`subset_positions`)."""
    if val_split and ds.val is not None:
        raise UserError(f"{ds.name} brings its own validation split; drop data.val_split (--val-split)")
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
        ds.train = ds.train.subset(subset_positions(ds.train.targets, train_subset, *subset))


def subset_positions(targets, size: int, seed: int = SUBSET_SEED, stratified: bool = False) -> np.ndarray:
    """Sorted positions of a seeded choice of ``size`` of the images with classes ``targets`` ``[N]``:
    uniform (the default, ``seed`` 0 as it always was), or ``stratified``: ``size // C`` of every
    class plus one more for ``size % C`` classes drawn with the same seed."""
    rng = np.random.default_rng(seed)
    if not stratified:
        return np.sort(rng.permutation(len(targets))[:size])
    y = np.asarray(targets)
    classes = np.unique(y)
    counts = np.full(len(classes), size // len(classes))
    counts[rng.permutation(len(classes))[: size % len(classes)]] += 1
    out = []
    for c, k in zip(classes, counts):
        members = np.nonzero(y == c)[0]
        if k > len(members):
            raise UserError(f"a stratified subset of {size} needs {k} images of class {c}, which has {len(members)}")
        out.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(out))


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
    "choose",
    "dataset_names",
    "fold_of",
    "load_dataset",
    "open_dataset",
    "subset_positions",
    "without_fold",
]
