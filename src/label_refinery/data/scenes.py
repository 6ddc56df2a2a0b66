"""``fashion-scenes``: Fashion-MNIST items composed into 48x48 scenes whose labels are incomplete.

Fashion-MNIST has one centred object per image, so a crop almost always shows the labelled object.
Here each scene holds the **main item** (its class is the label; 30-36 px) and a smaller
**distractor** of another class (14-20 px), at seeded random positions on a black 48x48 canvas
(where they overlap, the brighter pixel wins). A random crop may show only part of the main item,
or mostly the distractor: the Label Refinery paper's premise, with the truth known. Each split's
``distractors`` tensor ``[N]`` records every scene's distractor class, so an analysis can measure
how much refined-label mass goes to it.

Deterministic: the same scenes on every machine (seed ``SEED``; train and test use different
streams and draw items from their own Fashion-MNIST split).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import ImageDataset
from .memory import TensorSplit, channel_stats

SIZE = 48
MAIN_PX, DISTRACTOR_PX = (30, 36), (14, 20)  # side ranges, inclusive
SEED = 48


def _resized(images: torch.Tensor, sides: np.ndarray) -> list[np.ndarray]:
    """Each uint8 ``[1, 28, 28]`` image resized (antialiased bilinear) to its side in ``sides``."""
    out: list[np.ndarray] = [None] * len(images)  # type: ignore[list-item]
    for side in np.unique(sides):
        idx = np.nonzero(sides == side)[0]
        small = F.interpolate(
            images[idx].float(), size=(int(side), int(side)), mode="bilinear", antialias=True, align_corners=False
        )
        small = small.round().clamp(0, 255).byte().numpy()
        for k, i in enumerate(idx):
            out[i] = small[k, 0]
    return out


def compose(images: torch.Tensor, targets: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes ``[N, 1, 48, 48]`` (uint8) from items ``[N, 1, 28, 28]``: scene i's main item is item i,
    its distractor a seeded item of another class; returns ``(scenes, distractor classes [N])``."""
    rng = np.random.default_rng(seed)
    n = len(images)
    y = targets.numpy()
    partner = rng.integers(0, n, n)
    while (same := y[partner] == y).any():  # redraw partners of the same class
        partner[same] = rng.integers(0, n, int(same.sum()))
    main_side = rng.integers(MAIN_PX[0], MAIN_PX[1] + 1, n)
    dist_side = rng.integers(DISTRACTOR_PX[0], DISTRACTOR_PX[1] + 1, n)
    main_xy = (rng.random((n, 2)) * (SIZE - main_side[:, None] + 1)).astype(int)
    dist_xy = (rng.random((n, 2)) * (SIZE - dist_side[:, None] + 1)).astype(int)
    mains, dists = _resized(images, main_side), _resized(images[partner], dist_side)
    scenes = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
    for i in range(n):
        (my, mx), (dy, dx), a, b = main_xy[i], dist_xy[i], main_side[i], dist_side[i]
        scenes[i, my : my + a, mx : mx + a] = mains[i]
        np.maximum(scenes[i, dy : dy + b, dx : dx + b], dists[i], out=scenes[i, dy : dy + b, dx : dx + b])
    return torch.from_numpy(scenes).unsqueeze(1), torch.from_numpy(y[partner].astype(np.int64))


def load(data_dir: str | None = None, image_size: int | None = None, download: bool = True) -> ImageDataset:
    """Scenes from Fashion-MNIST's 60,000 training and 10,000 test items (found as for ``fashion-mnist``)."""
    from .fashion_mnist import load as load_items

    items = load_items(data_dir, None, download)
    size = image_size or SIZE
    splits = {}
    for k, (name, split) in enumerate((("train", items.train), ("test", items.test))):
        scenes, distractors = compose(split.images, split.targets, SEED + k)
        splits[name] = (scenes, split.targets, distractors)
    mean, std = channel_stats(splits["train"][0])
    out = {}
    for name, (scenes, targets, distractors) in splits.items():
        out[name] = TensorSplit(scenes, targets, mean, std, size, distractors=distractors)  # [N] distractor classes
    return ImageDataset("fashion-scenes", items.classes, 1, size, mean, std, out["train"], out["test"])
