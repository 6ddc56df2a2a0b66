"""``fashion-pairs``: a 100-class task from Fashion-MNIST, two items stacked in a 32x32 image.

Each image holds a **top** item (rows 0-15) and a **bottom** item (rows 16-31), both Fashion-MNIST
items resized to 16x16 (antialiased) at a seeded horizontal offset in 0-16 px. The label is the
ordered pair: ``class = 10 * top + bottom`` (100 classes, named ``"TOP above BOTTOM"``). Why this task
(issue 15): published self-distillation gains at small scale come with many classes, few images per
class and related classes; here pair ``(a, b)`` shares an item with 18 other classes, and a random
crop that shows only one item leaves its label incomplete, the Label Refinery paper's premise.

Stacking (not side by side) keeps horizontal flips label-preserving: a flip mirrors each item in
place and keeps which is on top.

Deterministic: training image ``i`` puts Fashion-MNIST training item ``i`` on top and item
``partner[i]`` at the bottom, ``partner`` a seeded permutation (so every item appears once on top and
once below); the test split pairs the 10,000 test items the same way with another seed. The item
classes are the label's digits: ``top = y // 10``, ``bottom = y % 10``.

Options (issue 24), as ``fashion-pairs:seed=S,val_items=N``:

- ``seed``: the pairing (which items meet, their offsets); the default 32 is the dataset as it
  always was. The test pairs keep their own seed: every pairing is evaluated on the same test set.
- ``val_items``: hold out ``N`` of the 60,000 training *items* (a seeded choice) before pairing; they
  are paired among themselves into ``ds.val``, so no validation image shares an item with a training
  image (a validation split cut from the pairs, ``data.val_split``, shares about one in ten).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import ImageDataset
from .memory import TensorSplit, channel_stats

SIZE, ITEM = 32, 16  # canvas side; item side (pixels)
SEED = 32


def compose(images: torch.Tensor, targets: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs ``[N, 1, 32, 32]`` (uint8) and their classes ``[N]`` from items ``[N, 1, 28, 28]``:
    image i has item i on top and item ``partner[i]`` below (a seeded permutation)."""
    rng = np.random.default_rng(seed)
    n = len(images)
    partner = rng.permutation(n)
    offsets = rng.integers(0, SIZE - ITEM + 1, (n, 2))  # [N, 2] x of the top and bottom item
    small = F.interpolate(images.float(), size=(ITEM, ITEM), mode="bilinear", antialias=True, align_corners=False)
    small = small.round().clamp(0, 255).byte()[:, 0].numpy()  # [N, 16, 16]
    out = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
    for i in range(n):
        (xt, xb), j = offsets[i], partner[i]
        out[i, :ITEM, xt : xt + ITEM] = small[i]
        out[i, ITEM:, xb : xb + ITEM] = small[j]
    y = targets.numpy().astype(np.int64)
    return torch.from_numpy(out).unsqueeze(1), torch.from_numpy(10 * y + y[partner])


def class_names(items: list[str]) -> list[str]:
    return [f"{a} above {b}" for a in items for b in items]


def load(
    data_dir: str | None = None, image_size: int | None = None, download: bool = True, seed: int = SEED, val_items: int = 0
) -> ImageDataset:
    """Pairs from Fashion-MNIST's 60,000 training and 10,000 test items (found as for ``fashion-mnist``);
    ``seed`` and ``val_items``: see the module docstring."""
    from ..errors import UserError
    from .fashion_mnist import load as load_items

    items = load_items(data_dir, None, download)
    size = image_size or SIZE
    train_images, train_targets = items.train.images, items.train.targets
    val = None
    if val_items:
        if not 2 <= val_items < len(train_images):
            raise UserError(f"fashion-pairs: val_items must be in 2..{len(train_images) - 1}, got {val_items}")
        held = np.zeros(len(train_images), dtype=bool)
        held[np.random.default_rng([seed, 1]).permutation(len(train_images))[:val_items]] = True
        val = compose(train_images[held], train_targets[held], seed + 2)
        train_images, train_targets = train_images[~held], train_targets[~held]
    splits = {"train": compose(train_images, train_targets, seed), "test": compose(items.test.images, items.test.targets, SEED + 1)}
    if val is not None:
        splits["val"] = val
    mean, std = channel_stats(splits["train"][0])
    out = {name: TensorSplit(images, targets, mean, std, size) for name, (images, targets) in splits.items()}
    options = [f"{k}={v}" for k, v in (("seed", seed), ("val_items", val_items)) if v != {"seed": SEED, "val_items": 0}[k]]
    name = "fashion-pairs" + (":" + ",".join(options) if options else "")
    ds = ImageDataset(name, class_names(list(items.classes)), 1, size, mean, std, out["train"], out["test"])
    ds.val = out.get("val")
    return ds
