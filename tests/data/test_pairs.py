"""fashion-pairs: a deterministic 100-class task of two Fashion-MNIST items stacked in 32x32."""

from __future__ import annotations

import pytest
import torch

from label_refinery.data import load_dataset
from label_refinery.data.pairs import ITEM, SIZE, class_names, compose


def items(n: int = 50):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)  # no black pixel
    return images, torch.arange(n) % 10


def test_compose_is_deterministic_and_labels_are_ordered_pairs():
    images, targets = items()
    a, ya = compose(images, targets, seed=1)
    b, yb = compose(images, targets, seed=1)
    assert torch.equal(a, b) and torch.equal(ya, yb) and a.shape == (50, 1, SIZE, SIZE) and a.dtype == torch.uint8
    assert not torch.equal(a, compose(images, targets, seed=2)[0])
    top, bottom = ya // 10, ya % 10
    assert torch.equal(top, targets)  # image i has item i on top
    assert sorted(bottom.tolist()) == sorted(targets.tolist())  # every item once below: a permutation
    # each half holds exactly one 16x16 item (all its pixels lit), nothing else
    for half in (a[:, 0, :ITEM], a[:, 0, ITEM:]):
        assert ((half > 0).flatten(1).sum(1) == ITEM * ITEM).all()


def test_class_names():
    names = class_names(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])
    assert len(names) == 100 and names[0] == "a above a" and names[12] == "b above c"


def test_fashion_pairs_dataset():
    try:
        ds = load_dataset("fashion-pairs", train_subset=1000, val_split=500)
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not available here: {err}")
    assert (ds.name, ds.num_classes, ds.image_size, ds.in_chans) == ("fashion-pairs", 100, 32, 1)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1000, 500, 10000)
    assert ds.classes[10 * 9 + 1] == "Ankle boot above Trouser"
    counts = torch.bincount(ds.test.targets, minlength=100)
    assert counts.min() > 50 and counts.max() < 160  # about 100 test images per class
