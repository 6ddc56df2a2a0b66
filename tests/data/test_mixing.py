"""Mixing as function matching (mixing.py): mixup/cutmix before labelling, keyed like crops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from label_refinery.data import CropSampler, load_dataset
from label_refinery.data.mixing import Mix
from label_refinery.labels import GroundTruth


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _batch(ds, epoch=0):
    return next(ds.train.iter_batches(32, epoch=epoch, crops=CropSampler(0), order_seed=0))


def test_mixup_mixes_images_and_ground_truth_alike_and_is_keyed_by_the_batch(digits):
    batch = _batch(digits)
    mixed = Mix("mixup", alpha=1.0, seed=3)(None, batch)
    lam = mixed.mix_lam
    assert 0 < lam < 1 and Mix("mixup", alpha=1.0, seed=3)(None, batch).mix_lam == lam  # a pure function
    assert Mix("mixup", alpha=1.0, seed=4)(None, batch).mix_lam != lam
    assert Mix("mixup", alpha=1.0, seed=3)(None, _batch(digits, epoch=1)).mix_lam != lam
    assert torch.allclose(mixed.images, lam * batch.images + (1 - lam) * batch.images.flip(0))
    q = GroundTruth(10)(mixed)  # generation 1 mixes its one-hot labels
    onehot = F.one_hot(batch.targets, 10).float()
    assert torch.allclose(q, lam * onehot + (1 - lam) * onehot.flip(0)) and torch.allclose(q.sum(1), torch.ones(32))


def test_cutmix_pastes_a_box_whose_share_sets_the_ratio(digits):
    batch = _batch(digits)
    mixed = Mix("cutmix", alpha=1.0, seed=0)(None, batch)
    from_rev = (mixed.images == batch.images.flip(0)) & (mixed.images != batch.images)
    changed = from_rev.any(0).any(0)  # [H, W] pixels taken from the reversed batch (a box)
    rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
    assert changed.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle
    share = 1 - mixed.mix_lam
    assert share * 64 >= changed.sum() - 1e-6  # some pasted pixels may equal the original ones
