"""scikit-learn's 8x8 handwritten digits (1,797 images) with a fixed, seeded 80/20 split: tests."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .base import ImageDataset
from .memory import TensorSplit, channel_stats

SPLIT_SEED = 0  # fixed: the split never depends on the run's seed


def load(data_dir: str | None = None, image_size: int | None = None, download: bool = True) -> ImageDataset:
    """The digits as an in-memory :class:`ImageDataset` (1,438 train, 359 test, 8x8 grey)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise UserError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from err
    d = load_digits()
    images = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)  # [N, 1, 8, 8]
    targets = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(images)))
    n_test = len(images) // 5
    test_pos, train_pos = perm[:n_test].sort().values, perm[n_test:].sort().values
    mean, std = channel_stats(images[train_pos])
    size = image_size or 8
    train = TensorSplit(images[train_pos], targets[train_pos], mean, std, size)
    test = TensorSplit(images[test_pos], targets[test_pos], mean, std, size)
    return ImageDataset("digits", [str(i) for i in range(10)], 1, size, mean, std, train, test)
