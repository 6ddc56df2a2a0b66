"""Label noise (data.label_noise): the stated share flipped to other classes, deterministically."""

from __future__ import annotations

import numpy as np
import torch

from label_refinery.data import load_dataset


def test_symmetric_noise_flips_the_stated_share_to_other_classes_deterministically():
    clean = load_dataset("digits", train_subset=1000)
    a = load_dataset("digits", train_subset=1000, label_noise=0.3, noise_seed=4)
    b = load_dataset("digits", train_subset=1000, label_noise=0.3, noise_seed=4)
    c = load_dataset("digits", train_subset=1000, label_noise=0.3, noise_seed=5)
    changed = (a.train.targets != clean.train.targets).nonzero().squeeze(1)
    assert len(changed) == 300  # exactly round(0.3 * 1000), every one of them wrong
    assert a.label_changes.ids.tolist() == a.train.ids[changed].tolist()
    assert np.array_equal(a.label_changes.original, clean.train.targets[changed].numpy())
    assert torch.equal(a.train.targets, b.train.targets) and not torch.equal(a.train.targets, c.train.targets)
    assert torch.equal(a.test.targets, clean.test.targets)  # evaluation stays clean
    # roughly uniform over the other classes: no class receives more than twice its share
    shifts = (a.label_changes.given - a.label_changes.original) % 10
    assert set(shifts.tolist()) <= set(range(1, 10)) and np.bincount(shifts, minlength=10)[1:].max() < 2 * 300 / 9
    assert len({clean.fingerprint(), a.fingerprint(), c.fingerprint()}) == 3  # runs on other labels never mix
