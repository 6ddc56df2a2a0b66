"""Issue 24's data: stratified training subsets of any seed (data.subset_seed, data.stratify) and the
fashion-pairs options (its pairing seed; validation pairs made of held-out items)."""

import numpy as np
import pytest
import torch

from label_refinery import UserError, load_config
from label_refinery.data import choose, load_dataset, open_dataset, subset_positions
from label_refinery.training.setup import load_data


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
    base = choose(open_dataset("digits"), train_subset=300)
    assert base.fingerprint() == load_dataset("digits", train_subset=300).fingerprint()  # seed 0: as before
    other = choose(open_dataset("digits"), train_subset=300, subset_seed=1)
    strat = load_data(load_config(overrides={"data.dataset": "digits", "data.train_subset": 300, "data.stratify": True}))
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
        choose(open_dataset("fashion-pairs:val_items=2000"), val_split=100)
    with pytest.raises(UserError, match="options are seed=N, val_items=N"):
        load_dataset("fashion-pairs:nope=1")
