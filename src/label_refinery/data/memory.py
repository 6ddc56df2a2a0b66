"""Datasets held in memory as one uint8 tensor (Fashion-MNIST, digits)."""

from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np
import torch

from .base import Batch, batch_slices, epoch_batches, images_per_batch, normalize, repeat_crops
from .crops import CropSampler, apply_crops, resize_images


class TensorSplit:
    """A split stored as ``images`` uint8 ``[N, C, H, W]`` and ``targets`` ``[N]``.

    ``ids`` are the images' dataset indices (``arange(N)`` unless this is a subset), the key of
    crops and refined labels. Crops are cut per sample on batched tensors (:func:`apply_crops`).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mean, std, size: int, ids=None, distractors=None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be uint8 [N, C, H, W]")
        self.images = images.contiguous()
        self.targets = targets.long()
        self.ids = torch.arange(len(images)) if ids is None else torch.as_tensor(ids).long()
        self.mean, self.std, self.size = tuple(mean), tuple(std), size
        self.distractors = None if distractors is None else torch.as_tensor(distractors).long()  # fashion-scenes

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, positions) -> "TensorSplit":
        pos = torch.as_tensor(positions).long()
        distractors = None if self.distractors is None else self.distractors[pos]
        return TensorSplit(
            self.images[pos], self.targets[pos], self.mean, self.std, self.size, self.ids[pos], distractors
        )

    def image_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        H, W = self.images.shape[-2:]
        return np.array(H), np.array(W)

    def path(self, position: int) -> str:
        return ""

    def num_batches(self, batch_size: int, drop_last: bool = False, shard=(0, 1), crops_per_image: int = 1) -> int:
        return len(batch_slices(len(self), images_per_batch(batch_size, crops_per_image), drop_last, shard))

    def iter_batches(
        self,
        batch_size: int,
        *,
        epoch: int = 0,
        crops: CropSampler | None = None,
        order_seed: int | None = None,
        device="cpu",
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        start_batch: int = 0,
        crops_per_image: int = 1,
        batch_stride: tuple[int, int] = (0, 1),
    ) -> Iterator[Batch]:
        H, W = self.images.shape[-2:]
        k = crops_per_image if crops is not None else 1
        positions = epoch_batches(len(self), images_per_batch(batch_size, k), epoch=epoch, order_seed=order_seed,
                                  drop_last=drop_last, shard=shard, start_batch=start_batch, stride=batch_stride)  # fmt: skip
        for pos in positions:
            numbers = None
            if k > 1:  # each image k times in a row, crops 0..k-1
                pos, numbers = repeat_crops(pos, k)
            pos = torch.from_numpy(pos)
            raw = self.images[pos].to(device, non_blocking=True).float().div_(255.0)  # [B, C, H, W]
            ids = self.ids[pos]
            if crops is None:
                boxes, views = None, resize_images(raw, self.size)
            else:
                boxes = torch.from_numpy(crops.sample_batch(ids.numpy(), epoch, H, W, 0 if numbers is None else numbers))
                views = apply_crops(raw, boxes, self.size)
            yield Batch(normalize(views, self.mean, self.std), self.targets[pos].to(device), ids, boxes, epoch,
                        crop_numbers=None if numbers is None else torch.from_numpy(numbers))  # fmt: skip

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.ids.numpy()).tobytes())
        h.update(np.ascontiguousarray(self.targets.numpy()).tobytes())
        h.update(np.ascontiguousarray(self.images.numpy()).tobytes())
        return h.hexdigest()


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 ``[N, C, H, W]`` images scaled to ``[0, 1]``."""
    x = images.float().div(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(round(v, 4) for v in x.mean(1).tolist()), tuple(round(v, 4) for v in x.std(1).tolist())
