"""fashion-scenes: deterministic 48x48 scenes of a labelled item and a distractor of another class."""

from __future__ import annotations

import pytest
import torch

from label_refinery.data import load_dataset
from label_refinery.data.scenes import SIZE, compose


def items(n: int = 200):
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 4:24, 4:24] = torch.randint(100, 256, (n, 1, 20, 20), generator=g, dtype=torch.uint8)
    return images, torch.arange(n) % 10


def test_compose_is_deterministic_and_keeps_both_items():
    images, targets = items()
    a, da = compose(images, targets, seed=1)
    b, db = compose(images, targets, seed=1)
    assert torch.equal(a, b) and torch.equal(da, db)  # the same scenes every time
    assert a.shape == (200, 1, SIZE, SIZE) and a.dtype == torch.uint8
    assert (da != targets).all()  # the distractor is always of another class
    c, _ = compose(images, targets, seed=2)
    assert not torch.equal(a, c)
    # both items are on the canvas: more lit pixels than the main item alone (>= 30x30 * 20/28 squared)
    lit = (a > 0).flatten(1).sum(1)
    assert (lit >= int((30 * 20 / 28) ** 2)).all() and (lit < SIZE * SIZE).all()


def test_fashion_scenes_dataset():
    try:
        ds = load_dataset("fashion-scenes")
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not available here: {err}")
    assert (ds.name, ds.image_size, ds.in_chans, len(ds.train), len(ds.test)) == ("fashion-scenes", 48, 1, 60000, 10000)
    fm = load_dataset("fashion-mnist")
    assert torch.equal(ds.train.targets, fm.train.targets) and ds.classes == fm.classes  # the label is the main item's
    for split in (ds.train, ds.test):
        assert split.distractors.shape == split.targets.shape and (split.distractors != split.targets).all()
    sub = ds.train.subset([5, 3])
    assert sub.distractors.tolist() == [int(ds.train.distractors[5]), int(ds.train.distractors[3])]
    assert 0.1 < ds.mean[0] < 0.3 and 0.2 < ds.std[0] < 0.4  # mostly black canvas
