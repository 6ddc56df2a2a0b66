"""Held-out models for the audit: ``K`` fold chains, each trained without one fold of the images.

An audit that scores a training image with a model that trained on it sees the label the model
memorised (generation 1 reproduces its ground truth), which hides exactly the errors it looks for.
``label-refinery audit RUN --folds K`` therefore trains, with the run's own generation-1 config
(model, epochs, crops, seed, label noise and overrides), ``K`` chains on ground truth, chain ``k`` on
the training images outside fold ``k`` (:func:`label_refinery.data.fold_of`: a seeded partition of
the run's training split), and scores fold ``k``'s images with chain ``k`` only.

Cost: ``K x G`` training runs on ``(K - 1) / K`` of the images each (``G`` = ``--fold-generations``,
default 1: ground truth only; ``G = 2`` adds a refined generation per fold, still held out, since
its refinery never saw the fold either). With ``K = 5``, ``G = 1``: four generation-1 trainings' worth
of compute. The fold chains live in ``RUN/audit-folds/K{K}/fold{k}/`` and resume like any chain;
a second audit reuses them.

**Seeds** (``--fold-seeds S``): each fold is trained ``S`` times, with seeds ``seed, seed + 1, ...``
(other initialisation and crops, the same partition), in ``fold{k}/`` then ``fold{k}-seed{s}/``; an
image's probability is the mean over its fold's ``S x G`` models, all held out. Cost: ``K x G x S``
training runs; a later audit with more seeds reuses the ones already trained.

**Epochs** (``--fold-epochs E``): each fold trains ``E`` epochs instead of generation 1's, in
``K{K}-e{E}/``; cost ``E`` over generation 1's epochs times the folds' trainings. The schedule
decides how good the held-out models are: longer helps a model that underfits (issue 27's bar,
docs/analysis.md), shorter one that memorises its flipped labels. Fold models evaluate the test
split at their last epoch only.

The chain's own generations are never held out for its training images (each saw them, or was
labelled by a model that did), so without ``--folds`` the audit says its scores are in-sample.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..checkpoint import META, read_meta
from ..config import Config, config_from_dict
from ..data import ImageDataset, fold_of, without_fold


def fold_config(gen1: Config, k: int, folds: int, generations: int, epochs: int | None = None) -> Config:
    """The chain config of fold ``k`` (0-based): generation 1's, on ground truth, without fold ``k``
    (``epochs``: that many epochs instead of generation 1's)."""
    optim = replace(gen1.optim, epochs=epochs) if epochs else gen1.optim
    labels = replace(gen1.labels, source="live", store=None)
    return replace(
        gen1,
        refinery=replace(gen1.refinery, path=None, cross_fit=False),
        labels=labels,
        jitter=replace(gen1.jitter, enabled=False),
        data=replace(gen1.data, holdout_fold=(k, folds)),
        optim=optim,
        eval_every=max(gen1.eval_every, optim.epochs),  # test top-1 of a fold model at its end only: nobody reads its curve
        chain=replace(gen1.chain, generations=generations, models=(), refined_epochs=None),
    )


def fold_folder(run: Path, folds: int, k: int, seed: int = 0, epochs: int | None = None) -> Path:
    """Fold ``k``'s chain (0-based) with seed offset ``seed`` (0: the run's seed, the first folder);
    ``epochs`` other than generation 1's: a folder of their own (``K5-e30``)."""
    kind = f"K{folds}" + (f"-e{epochs}" if epochs else "")
    return Path(run) / "audit-folds" / kind / (f"fold{k + 1}" + (f"-seed{seed + 1}" if seed else ""))


def train_folds(
    run: Path,
    gen1_folder: Path,
    ds: ImageDataset,
    folds: int,
    generations: int = 1,
    seeds: int = 1,
    *,
    epochs: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> list[tuple[np.ndarray, list[Path]]]:
    """Train (or resume) the ``folds x seeds`` fold chains; returns per fold ``(positions of its
    held-out images in ds.train [n_k], the generation folders of its chains, every seed)``;
    ``epochs``: each fold trains that many epochs (default: generation 1's)."""
    from ..training.chain import run_chain

    gen1 = config_from_dict(read_meta(gen1_folder)["config"])
    epochs = None if epochs == gen1.optim.epochs else epochs  # the run's own epochs: the default folders
    fold = fold_of(len(ds.train), folds)
    out = []
    for k in range(folds):
        gens = []
        for s in range(seeds):
            cfg = replace(fold_config(gen1, k, folds, generations, epochs), seed=gen1.seed + s)
            folder = fold_folder(run, folds, k, s, epochs)
            if not all((folder / f"gen{g}" / META).is_file() for g in range(1, generations + 1)):
                which = f" seed {s + 1}/{seeds}" if seeds > 1 else ""
                log(f"audit: fold {k + 1}/{folds}{which}: training on {int((fold != k).sum())} images -> {folder}")
                fold_ds = replace(ds, train=without_fold(ds.train, k, folds))  # what load_data(cfg) would build
                run_chain(cfg, folder, progress=progress, log=log, dataset=fold_ds)
            gens += [folder / f"gen{g}" for g in range(1, generations + 1)]
        out.append((np.nonzero(fold == k)[0], gens))
    return out


__all__ = ["fold_config", "fold_folder", "train_folds"]
