"""The batch and dataset containers every data source produces."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch

from .crops import CropSampler
from .noise import LabelChanges


@dataclass
class Batch:
    """One batch of views.

    Attributes:
        images: float ``[B, C, H, W]``, normalised, on the training device.
        targets: ground-truth class indices ``[B]`` (int64).
        indices: dataset indices of the images ``[B]`` (int64): the key of crops and refined labels.
        crops: ``[B, 5]`` rows ``(y, x, h, w, flip)`` in pixels of the source image; ``None`` for
            evaluation views.
        epoch: the epoch the crops were sampled for (with ``indices``, the key of a crop).
        label_images: set by a batch transform whose labels are those of other images than the
            student sees (``None``: label ``images``).
    """

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    crops: torch.Tensor | None = None
    epoch: int = 0
    label_images: torch.Tensor | None = None  # what the refinery labels when not ``images`` (jittering that keeps R(x))
    crop_numbers: torch.Tensor | None = None  # [B] which of its image's crops (data.crops_per_image > 1), else None
    mix_lam: float | None = None  # mixed with its reverse at this ratio (mixing.py); ground truth mixes alike


class Split(Protocol):
    """One split of a dataset (train or test) that can be iterated in batches.

    ``iter_batches`` yields training views (one :class:`CropSampler` crop per image, in the
    epoch's seeded order) when ``crops`` is given, else evaluation views in index order;
    ``start_batch`` skips the epoch's first batches without loading them (resumed bakes);
    ``batch_stride = (r, w)`` keeps only batches ``b`` with ``b % w == r`` (process ``r`` of a bake
    over ``w`` processes: the same batches as one process, dealt out in turn).
    ``crops_per_image = K`` cuts K crops (crop numbers 0..K-1 of the epoch) from each image read: a
    batch of ``batch_size`` views holds ``batch_size / K`` images, each K times, side by side.
    """

    targets: torch.Tensor  # [N] int64
    ids: torch.Tensor  # [N] int64: each image's index, the key of its crops and refined labels
    distractors: torch.Tensor | None  # [N] int64: a second object's class per image (fashion-scenes), else None

    def __len__(self) -> int: ...

    def iter_batches(
        self,
        batch_size: int,
        *,
        epoch: int = 0,
        crops: CropSampler | None = None,
        order_seed: int | None = None,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        start_batch: int = 0,
        crops_per_image: int = 1,
        batch_stride: tuple[int, int] = (0, 1),
    ) -> Iterator[Batch]: ...

    def num_batches(
        self, batch_size: int, drop_last: bool = False, shard: tuple[int, int] = (0, 1), crops_per_image: int = 1
    ) -> int: ...

    def fingerprint(self) -> str: ...

    def subset(self, positions) -> "Split":
        """The images at ``positions``, keeping their ids (so their crops and labels stay the same)."""
        ...

    def image_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Heights and widths of the images (scalars when all have one size): what crops are cut from."""
        ...

    def path(self, position: int) -> str:
        """The file of the image at ``position`` ('' for in-memory data)."""
        ...


@dataclass
class ImageDataset:
    """A dataset: its classes, image geometry, normalisation and train/test splits."""

    name: str
    classes: list[str]
    in_chans: int
    image_size: int  # side of training crops and evaluation views
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    test: Split
    val: Split | None = None  # held out from the training images (``data.val_split``); None: no validation split
    label_changes: LabelChanges | None = None  # training labels overridden in memory (``data.label_noise``)
    label_overrides: LabelChanges | None = None  # training labels replaced from a file (``data.label_overrides``)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """SHA-256 over the classes and both splits' contents: checkpoints and stores record it."""
        h = hashlib.sha256()
        h.update(repr((self.name.split(":")[0], self.classes, self.in_chans, self.image_size)).encode())
        h.update(self.train.fingerprint().encode())
        h.update(self.test.fingerprint().encode())
        if self.val is not None:
            h.update(self.val.fingerprint().encode())
        for changes in (self.label_changes, self.label_overrides):  # image folders hash their files, not labels
            if changes is not None:
                h.update(changes.digest().encode())
        return h.hexdigest()


def epoch_order(n: int, seed: int | None, epoch: int) -> np.ndarray:
    """Positions ``0..n-1`` in the epoch's order: a seeded permutation, or identity if ``seed`` is None."""
    if seed is None:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_slices(n: int, batch_size: int, drop_last: bool, shard: tuple[int, int]) -> list[slice]:
    """Slices of the epoch order, one per batch of this shard (rank, world size).

    Each global batch of ``batch_size * world`` positions is cut into ``world`` equal parts, so the
    crops a position gets never depend on the number of processes.
    """
    rank, world = shard
    step = batch_size * world
    stop = (n // step) * step if drop_last else n
    out = []
    for start in range(0, stop, step):
        end = min(start + step, stop)
        per = -(-(end - start) // world)
        lo, hi = start + rank * per, min(start + (rank + 1) * per, end)
        if lo < hi:
            out.append(slice(lo, hi))
    return out


def epoch_batches(n: int, batch_size: int, *, epoch: int, order_seed: int | None, drop_last: bool,
                  shard: tuple[int, int], start_batch: int = 0, stride: tuple[int, int] = (0, 1)) -> list[np.ndarray]:
    """The positions of each of this shard's batches in ``epoch``, from batch ``start_batch`` on (and
    of those, batch ``b`` only if ``b % stride[1] == stride[0]``): the one batching rule of every
    split (seeded order, equal shards of each global batch)."""
    order = epoch_order(n, order_seed, epoch)
    slices = batch_slices(n, batch_size, drop_last, shard)
    r, w = stride
    return [order[slices[b]] for b in range(start_batch, len(slices)) if b % w == r]


def images_per_batch(batch_size: int, crops_per_image: int) -> int:
    """How many images a batch of ``batch_size`` views reads when each gives ``crops_per_image`` crops."""
    if crops_per_image < 1 or batch_size % crops_per_image:
        from ..errors import UserError

        raise UserError(f"the batch size ({batch_size}) must be a multiple of data.crops_per_image ({crops_per_image})")
    return batch_size // crops_per_image


def repeat_crops(ids: np.ndarray, crops_per_image: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image ``crops_per_image`` times in a row, and its crop numbers ``0..K-1``: ``([B*K], [B*K])``."""
    return np.repeat(ids, crops_per_image), np.tile(np.arange(crops_per_image), len(ids))


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """``(x - mean) / std`` per channel on float ``[B, C, H, W]`` in ``[0, 1]``."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s
