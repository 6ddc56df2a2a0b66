"""Batches of a split: deterministic, keyed by image index, and sharded over processes (data/base.py, data/memory.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from label_refinery.data.base import batch_slices
from label_refinery.data.crops import CropSampler


@pytest.mark.parametrize("world", [2, 3])
def test_shards_cover_each_global_batch_once(world):
    for n, bs, drop in [(100, 8, True), (100, 8, False), (37, 5, False)]:
        single = batch_slices(n, bs * world, drop, (0, 1))
        parts = [batch_slices(n, bs, drop, (r, world)) for r in range(world)]
        covered = sorted(i for p in parts for sl in p for i in range(sl.start, sl.stop))
        assert covered == [i for sl in single for i in range(sl.start, sl.stop)]
        if drop:  # training: every process takes the same number of equal steps
            assert len({len(p) for p in parts}) == 1 and all(sl.stop - sl.start == bs for p in parts for sl in p)


def test_batches_of_in_memory_split_are_deterministic_and_keyed_by_index():
    from label_refinery.data import load_dataset

    ds = load_dataset("digits")
    s = CropSampler(seed=1)
    a = list(ds.train.iter_batches(64, epoch=2, crops=s, order_seed=1))
    b = list(ds.train.iter_batches(64, epoch=2, crops=s, order_seed=1))
    assert all(torch.equal(x.images, y.images) and torch.equal(x.indices, y.indices) for x, y in zip(a, b))
    seen = torch.cat([x.indices for x in a])
    assert sorted(seen.tolist()) == list(range(len(ds.train)))  # every image once per epoch
    first = a[0]
    expected = s.sample_batch(first.indices.numpy(), 2, 8, 8)
    assert np.array_equal(first.crops.numpy(), expected)
    assert torch.equal(first.targets, ds.train.targets[first.indices])


def test_shards_partition_each_global_batch():
    from label_refinery.data import load_dataset

    ds = load_dataset("digits")
    s = CropSampler(seed=0)
    whole = list(ds.train.iter_batches(32, epoch=0, crops=s, order_seed=0, drop_last=True))
    parts = [list(ds.train.iter_batches(16, epoch=0, crops=s, order_seed=0, drop_last=True, shard=(r, 2))) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for w, p0, p1 in zip(whole, *parts):
        assert torch.equal(w.indices, torch.cat([p0.indices, p1.indices]))
        assert torch.allclose(w.images, torch.cat([p0.images, p1.images]))
