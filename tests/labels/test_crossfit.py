"""The cross-fitted refinery (labels/crossfit.py): each training image labelled only by the fold
model that never trained on it; fold models of other images, or without folds, refused."""

import json

import numpy as np
import pytest
import torch

from label_refinery import UserError, load_config, train_generation
from label_refinery.config import DataConfig
from label_refinery.data import fold_of, load_dataset
from label_refinery.labels.crossfit import CrossFitRefinery


def _fold_models(tmp_path, folds=2):
    base = {"data.dataset": "digits", "data.train_subset": 400, "optim.epochs": 1, "device": "cpu", "model": "cnn-small:width=0.25"}
    paths = []
    for k in range(folds):
        out = tmp_path / f"fold{k}"
        train_generation(load_config(overrides={**base, "data.holdout_fold": [k, folds], "seed": 10 + k}), out, log=lambda _: None)
        paths.append(str(out))
    return base, paths


def test_cross_fit_labels_each_image_with_the_model_that_held_it_out(tmp_path):
    base, paths = _fold_models(tmp_path)
    ds = load_dataset("digits", train_subset=400)
    ref = CrossFitRefinery.from_checkpoints(list(reversed(paths)), train=ds.train, data=DataConfig("digits", train_subset=400))
    batch = next(iter(ds.train.iter_batches(64)))
    got = ref(batch)  # [64, 10]
    fold = fold_of(len(ds.train), 2)[np.searchsorted(ds.train.ids.numpy(), batch.indices.numpy())]
    assert set(fold.tolist()) == {0, 1}
    for k in (0, 1):  # member k (trained without fold k) labels exactly the images of fold k
        model = ref.model[k]
        with torch.no_grad():
            want = torch.softmax(model(batch.images[fold == k]), 1)
        assert torch.allclose(got[fold == k], want, atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(64), atol=1e-5)
    meta = train_generation(load_config(overrides={**base, "refinery.path": paths, "refinery.cross_fit": True}),
                            tmp_path / "student", log=lambda _: None)  # fmt: skip
    assert meta["labels"]["cross_fit"] and len(meta["labels"]["members"]) == 2
    assert json.loads((tmp_path / "student" / "meta.json").read_text())["config"]["refinery"]["cross_fit"]
    # the same run again is finished, not refused (its refinery's identity is the cross-fit's, not an ensemble's)
    again = train_generation(load_config(overrides={**base, "refinery.path": paths, "refinery.cross_fit": True}),
                             tmp_path / "student", log=lambda _: None)  # fmt: skip
    assert again["labels"]["sha256"] == meta["labels"]["sha256"]


def test_cross_fit_refuses_models_of_other_images_or_without_folds(tmp_path):
    base, paths = _fold_models(tmp_path)
    with pytest.raises(UserError, match="trained on other images than this run's .*train_subset: 400 there, 300 here"):
        train_generation(load_config(overrides={**base, "data.train_subset": 300, "refinery.path": paths,
                                                "refinery.cross_fit": True}), tmp_path / "s1", log=lambda _: None)  # fmt: skip
    with pytest.raises(UserError, match="both hold out fold 1 of 2"):
        CrossFitRefinery.from_checkpoints([paths[0], paths[0]], train=load_dataset("digits", train_subset=400).train,
                                          data=DataConfig("digits", train_subset=400))  # fmt: skip
    train_generation(load_config(overrides={**base, "seed": 3}), tmp_path / "full", log=lambda _: None)
    with pytest.raises(UserError, match="no data.holdout_fold"):
        train_generation(load_config(overrides={**base, "refinery.path": [paths[0], str(tmp_path / "full")],
                                                "refinery.cross_fit": True}), tmp_path / "s2", log=lambda _: None)  # fmt: skip
    with pytest.raises(UserError, match="two or more fold models"):
        load_config(overrides={**base, "refinery.path": paths, "refinery.cross_fit": True, "labels.source": "store"})
