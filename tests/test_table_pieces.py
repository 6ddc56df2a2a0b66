"""Issue 24's pieces: fashion-pairs options (pairing seed, validation pairs of held-out items),
stratified training subsets of any seed, the MLP and VGG-style students, the cross-fitted refinery."""

import json

import numpy as np
import pytest
import torch

from label_refinery import UserError, load_config, train_generation
from label_refinery.config import DataConfig
from label_refinery.data import dataset_from_config, fold_of, load_dataset, subset_positions
from label_refinery.labels.crossfit import CrossFitRefinery
from label_refinery.models import count_parameters, create_model


def _fashion_pairs(name: str):
    try:
        return load_dataset(name)
    except UserError as err:  # the Fashion-MNIST files are absent and cannot be downloaded
        pytest.skip(f"Fashion-MNIST not available here: {err}")


def test_stratified_subsets_hold_every_class_equally_and_seeds_choose_others():
    y = np.repeat(np.arange(10), [50, 60, 70, 80, 90, 100, 110, 120, 130, 140])
    a = subset_positions(y, 205, seed=3, stratified=True)
    counts = np.bincount(y[a], minlength=10)
    assert len(a) == 205 and sorted(counts.tolist()) == [20] * 5 + [21] * 5
    assert np.array_equal(a, subset_positions(y, 205, seed=3, stratified=True))  # a pure function of the seed
    assert not np.array_equal(a, subset_positions(y, 205, seed=4, stratified=True))
    assert np.array_equal(subset_positions(y, 100), np.sort(np.random.default_rng(0).permutation(len(y))[:100]))
    with pytest.raises(UserError, match="needs 60 images of class 0, which has 50"):
        subset_positions(y, 600, stratified=True)


def test_subset_seed_and_stratify_reach_the_dataset():
    base = dataset_from_config(DataConfig("digits", train_subset=300))
    assert base.fingerprint() == load_dataset("digits", train_subset=300).fingerprint()  # seed 0: as before
    other = dataset_from_config(DataConfig("digits", train_subset=300, subset_seed=1))
    strat = dataset_from_config(DataConfig("digits", train_subset=300, stratify=True))
    assert set(other.train.ids.tolist()) != set(base.train.ids.tolist())
    assert np.bincount(strat.train.targets.numpy()).tolist() == [30] * 10
    assert load_config(overrides={"data.subset_seed": 2, "data.stratify": True}).data.stratify


def test_fashion_pairs_options_pair_otherwise_and_keep_validation_items_apart():
    plain = _fashion_pairs("fashion-pairs")
    other = load_dataset("fashion-pairs:seed=5")
    assert plain.name == "fashion-pairs" and other.name == "fashion-pairs:seed=5"
    assert not torch.equal(plain.train.images[:100], other.train.images[:100])
    assert torch.equal(plain.test.images, other.test.images)  # every pairing is tested on the same test set
    ds = load_dataset("fashion-pairs:seed=5,val_items=2000")
    assert (len(ds.train), len(ds.val)) == (58000, 2000)
    # no validation image shares an item (a 16x16 half) with a training image
    halves = lambda x: {bytes(h) for img in x.numpy()[:, 0] for h in (img[:16], img[16:])}  # noqa: E731
    assert not halves(ds.val.images) & halves(ds.train.images)
    with pytest.raises(UserError, match="brings its own validation split"):
        dataset_from_config(DataConfig("fashion-pairs:val_items=2000", val_split=100))
    with pytest.raises(UserError, match="options are seed=N, val_items=N"):
        load_dataset("fashion-pairs:nope=1")


def test_the_table_students_build_and_span_parameters():
    sizes = {}
    for name in ("mlp", "cnn-small:width=0.25", "vgg-small", "mlp:hidden=64,side=8", "vgg-small:width=8"):
        m = create_model(name, 1, 100).eval()
        assert m(torch.zeros(3, 1, 32, 32)).shape == (3, 100), name
        sizes[name] = count_parameters(m)
    assert sizes["mlp"] == 16 * 16 * 256 + 2 * 256 + 256 * 256 + 2 * 256 + 256 * 100 + 100
    assert sizes["vgg-small"] / sizes["cnn-small:width=0.25"] > 10


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
