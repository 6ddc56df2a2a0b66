"""Crops as values: where a training view was cut from its image, and whether it was flipped.

A :class:`CropSampler` is a pure function of ``(seed, epoch, index, image size)``: the same
arguments give the same :class:`Crop` in any process, worker or run, with no generator state to
carry. That is what lets a refinery label *exactly* the student's crop, a label store replay it, and
a report show it (docs/design.md, "a crop is a value").

The sampling rule is torchvision's ``RandomResizedCrop`` (10 tries of area fraction ``U(scale)`` and
log-uniform aspect ratio, then a centre fallback) followed by a horizontal flip with probability
``flip_p``. Random numbers come from a counter-based hash (SplitMix64) of the key, vectorised over a
batch of indices.

:func:`apply_crops` cuts and resizes a whole batch of tensors at once, a different crop per sample,
with bilinear sampling (``grid_sample``), antialiased by supersampling where a crop shrinks; the
evaluation views of in-memory datasets use the same function. torchvision's v2 ``RandomResizedCrop``
would apply one crop to a whole batch, which is why this is our own code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TRIES = 10  # as torchvision's RandomResizedCrop


class Crop(NamedTuple):
    """A crop of an image: rows ``y:y+h``, columns ``x:x+w`` (pixels), then flipped if ``flip``."""

    y: int
    x: int
    h: int
    w: int
    flip: bool


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def _uniforms(seed: int, epoch: int, indices: np.ndarray, n_draws: int, crop=0) -> np.ndarray:
    """``[B, n_draws]`` floats in ``[0, 1)``, a pure function of ``(seed, epoch, index, crop, draw)``.

    ``crop`` (scalar or ``[B]``, below 2**31) enters as the high half of the epoch word, so crop 0 is
    the one-crop-per-image key of earlier releases, unchanged."""
    key = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    word = np.uint64(epoch & 0xFFFFFFFF) | (np.asarray(crop, dtype=np.uint64) << np.uint64(32))
    key = _mix(key ^ word)
    key = _mix(key ^ indices.astype(np.uint64))[:, None]  # [B, 1]
    draws = np.arange(1, n_draws + 1, dtype=np.uint64)[None, :]  # [1, D]
    with np.errstate(over="ignore"):
        bits = _mix(key + draws * _GOLDEN)  # [B, D]
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class CropSampler:
    """Deterministic random-resized crops plus flips, keyed by ``(seed, epoch, index)``.

    Args:
        seed: the run's crop seed.
        scale: range of the crop's area as a fraction of the image's area.
        ratio: range of the crop's aspect ratio (width / height).
        flip_p: probability of a horizontal flip.

    Example:
        >>> s = CropSampler(seed=0, scale=(0.25, 1.0))
        >>> s.sample(index=7, epoch=3, height=28, width=28) == s.sample(7, 3, 28, 28)
        True
    """

    seed: int = 0
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def sample(self, index: int, epoch: int, height: int, width: int) -> Crop:
        """The crop of image ``index`` (of size ``height x width``) in ``epoch``."""
        row = self.sample_batch(np.array([index]), epoch, np.array([height]), np.array([width]))[0]
        return Crop(int(row[0]), int(row[1]), int(row[2]), int(row[3]), bool(row[4]))

    def sample_batch(self, indices, epoch: int, heights, widths, crop=0) -> np.ndarray:
        """Crops of many images at once: ``[B, 5]`` int64 rows ``(y, x, h, w, flip)``.

        ``crop`` (scalar or ``[B]``): which of an image's crops in the epoch (``data.crops_per_image``
        cuts several per decoded image); crop 0 is the epoch's one crop when there is one."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        H = np.broadcast_to(np.asarray(heights, dtype=np.int64), idx.shape).astype(np.float64)
        W = np.broadcast_to(np.asarray(widths, dtype=np.int64), idx.shape).astype(np.float64)
        u = _uniforms(self.seed, epoch, idx, 4 * _TRIES + 1, crop)  # [B, 41]
        area = H * W
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        lo, hi = self.scale
        # Fallback: the centre crop of torchvision, used where all tries fail.
        in_ratio = W / H
        fw = np.where(in_ratio < self.ratio[0], W, np.where(in_ratio > self.ratio[1], np.round(H * self.ratio[1]), W))
        fh = np.where(in_ratio < self.ratio[0], np.round(W / self.ratio[0]), H)
        fh = np.where(in_ratio > self.ratio[1], H, fh)
        out_h, out_w = fh.copy(), fw.copy()
        out_y, out_x = np.floor((H - fh) / 2), np.floor((W - fw) / 2)
        done = np.zeros(idx.shape, dtype=bool)
        for t in range(_TRIES):
            a = area * (lo + (hi - lo) * u[:, 4 * t])
            r = np.exp(log_r[0] + (log_r[1] - log_r[0]) * u[:, 4 * t + 1])
            w = np.round(np.sqrt(a * r))
            h = np.round(np.sqrt(a / r))
            ok = ~done & (w > 0) & (h > 0) & (w <= W) & (h <= H)
            y = np.floor(u[:, 4 * t + 2] * (H - h + 1))
            x = np.floor(u[:, 4 * t + 3] * (W - w + 1))
            out_h, out_w = np.where(ok, h, out_h), np.where(ok, w, out_w)
            out_y, out_x = np.where(ok, y, out_y), np.where(ok, x, out_x)
            done |= ok
        flip = u[:, -1] < self.flip_p
        return np.stack([out_y, out_x, out_h, out_w, flip], axis=1).astype(np.int64)


def apply_crops(images: torch.Tensor, crops: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Cut ``crops[b]`` out of ``images[b]`` and resize it to ``size``, for each ``b``.

    Bilinear sampling (``grid_sample``); a crop that shrinks by a factor ``s > 1`` is supersampled
    ``k = ceil(s)`` times per axis and box-averaged (``avg_pool2d``), an antialiased resize like the
    evaluation view's (:func:`resize_images` uses this same function), so training crops and
    evaluation views are resampled alike. ``k`` depends on the crop alone, so a crop stays a value.

    Args:
        images: float ``[B, C, H, W]``.
        crops: ``[B, 5]`` rows ``(y, x, h, w, flip)`` in pixels of ``images``.
        size: output side, or ``(height, width)``.

    Returns:
        ``[B, C, size, size]``. A flipped crop is exactly the mirror image of the unflipped one, and
        the full-image crop at the input size returns the input (up to float rounding, ~1e-6).
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    c = crops.to(device=images.device, dtype=torch.float32)
    # [B] supersampling factor per axis, from the crops as given (on the CPU: no device sync per batch)
    shrink = torch.maximum(crops[:, 2].double() / out_h, crops[:, 3].double() / out_w).cpu()
    k = torch.ceil(shrink - 1e-6).clamp_(min=1).long()
    if bool((k == 1).all()):
        out = _sample(images, c, out_h, out_w)
    else:
        out = images.new_empty(images.shape[0], images.shape[1], out_h, out_w)
        for kv in k.unique().tolist():
            rows = (k == kv).nonzero().squeeze(1).to(images.device)
            fine = _sample(images[rows], c[rows], out_h * kv, out_w * kv)  # [b, C, kh, kw]
            out[rows] = F.avg_pool2d(fine, kv) if kv > 1 else fine
    flip = c[:, 4].bool()[:, None, None, None]
    return torch.where(flip, out.flip(-1), out)  # the mirror of the same samples: exact


def _sample(images: torch.Tensor, c: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Bilinear samples of the (unflipped) crops ``c`` ``[B, 5]`` on an ``out_h x out_w`` grid of pixel centres."""
    B, _, H, W = images.shape
    y, x, h, w, _ = c.unbind(1)  # each [B]
    # Map output coordinates in [-1, 1] to input coordinates (align_corners=False: -1 and 1 are the
    # outer edges of the border pixels, so a crop's edges are pixel edges x and x + w).
    sx, sy = w / W, h / H
    tx = (2.0 * x + w) / W - 1.0
    ty = (2.0 * y + h) / H - 1.0
    # The map is separable (no rotation): build the sampling grid from two 1-D ramps, which is what
    # affine_grid would compute, without its [B, H*W, 3] x [3, 2] matmul.
    ramp_x = (torch.arange(out_w, device=images.device, dtype=torch.float32) * 2 + 1) / out_w - 1  # pixel centres
    ramp_y = (torch.arange(out_h, device=images.device, dtype=torch.float32) * 2 + 1) / out_h - 1
    gx = (sx[:, None] * ramp_x + tx[:, None])[:, None, :].expand(B, out_h, out_w)  # [B, h, w]
    gy = (sy[:, None] * ramp_y + ty[:, None])[:, :, None].expand(B, out_h, out_w)
    grid = torch.stack([gx, gy], dim=-1).to(images.dtype)  # [B, h, w, 2]
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """The evaluation view of in-memory images: the whole image, resized to ``size`` if needed, with
    the same resampling as the training crops (:func:`apply_crops` of the full-image crop)."""
    B, _, H, W = images.shape
    if (H, W) == (size, size):
        return images
    full = torch.tensor([[0, 0, H, W, 0]], dtype=torch.int64).expand(B, 5)
    return apply_crops(images, full, size)
