"""Splits decoded on the fly from any random-access image source (folders, manifests, Hugging Face
datasets, WebDataset shards): one loader, one set of crops.

A *source* (:class:`Source`) is what a data format has to give: its classes, one class per image,
each image's size, a cheap fingerprint, and the image at a position, opened (header read, pixels not
yet decoded: a path or the bytes of the file). :class:`DecodedSplit` does the rest the same way for
every format, as the image-folder loader did alone before (issue 16): a loader process decodes a
whole *batch* per task: it opens the batch's images, reads their sizes from the headers, draws every
crop of the batch with one vectorised :meth:`CropSampler.sample_batch` call (the same :class:`Crop`
values an in-memory dataset would cut: the sampler is a pure function of seed, epoch, index, crop
number and image size), then resizes each crop with PIL's antialiased bilinear filter into one
uint8 array. The loader and its processes are made once per split and kept (``persistent_workers``)
across epochs and evaluations. JPEGs are decoded at a reduced scale where every crop of the image
still has at least ``size`` pixels a side (PIL's ``draft``: libjpeg's DCT scaling by 1/2, 1/4, 1/8);
crops stay the same values, in the full image's coordinates. ``crops_per_image = K`` cuts K crops
from each decoded image. Evaluation resizes the short side to ``size / 0.875`` and takes the centre
``size x size`` (the ImageNet convention: 256 -> 224).

An image's index (the key of its crops and labels) is its position in the source, so the same
(seed, epoch, index) gives the same crop from a folder, its manifest or its shards.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .base import Batch, batch_slices, epoch_batches, images_per_batch, repeat_crops
from .crops import CropSampler

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVAL_RATIO = 0.875  # 224 / 256
_DIRECT = ("L", "RGB")  # modes resized as they are (L becomes RGB after the resize: the same pixels, 3x cheaper)


class Source(Protocol):
    """What a data format gives :class:`DecodedSplit` (positions ``0..N-1``)."""

    classes: list[str]
    targets: np.ndarray  # [N] int64
    files: bool  # True: images are files (opened again for their decode, so a batch holds no open files)

    def __len__(self) -> int: ...

    def open(self, position: int) -> Image.Image:
        """The image, opened (header read, pixels not decoded); raises on a missing or bad image."""
        ...

    def name(self, position: int) -> str:
        """Where the image is, for messages and reports: a path, or ``shard.tar:key``."""
        ...

    def image_sizes(self) -> np.ndarray:
        """``[N, 2]`` heights and widths, without decoding (cached by the source)."""
        ...

    def fingerprint(self, positions: np.ndarray | None = None) -> str:
        """SHA-256 over what identifies the images at ``positions`` (all: None), without reading them."""
        ...


def open_image(source: Source, position: int) -> Image.Image:
    try:
        return source.open(position)
    except UserError:
        raise
    except Exception as err:  # PIL and the formats' libraries raise many types for bad images
        raise UserError(f"cannot decode image {source.name(position)}: {err}. Remove or replace it.") from err


def decode(img: Image.Image, name: str, need_w: float, need_h: float) -> tuple[Image.Image, float, float]:
    """Decode ``img``, a JPEG at the smallest DCT scale still at least ``need_w x need_h``; returns
    the image in a mode PIL resizes (L, RGB, or RGB converted) and its scale against the file's size."""
    W, H = img.size
    try:
        if img.format == "JPEG" and (need_w <= W / 2 and need_h <= H / 2) and img.mode in _DIRECT:
            img.draft(img.mode, (int(np.ceil(need_w)), int(np.ceil(need_h))))
        img.load()
        if img.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: scale to 8 bits, not clip
            grey = np.asarray(img, dtype=np.float64) / 257.0
            img = Image.fromarray(grey.clip(0, 255).round().astype(np.uint8))
        elif img.mode not in _DIRECT:
            img = img.convert("RGB")
    except Exception as err:
        raise UserError(f"cannot decode image {name}: {err}. Remove or replace it.") from err
    return img, img.size[0] / W, img.size[1] / H


def _rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


class _Decoder(torch.utils.data.Dataset):
    """Decodes one batch per key ``(positions, ids, epoch, sampler or None, crops per image)``:
    ``(uint8 [B, S, S, 3], crops [B, 5] or None, crop numbers [B] or None)``; positions are the split's."""

    def __init__(self, source: Source, positions: np.ndarray, size: int):
        self.source, self.positions, self.size = source, positions, size

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key):
        positions, ids, epoch, sampler, k = key
        where = self.positions[positions].tolist()
        if sampler is None:
            return torch.from_numpy(np.stack([self._centre(p) for p in where])), None, None
        heads = [self._head(p) for p in where]  # sizes first: the batch's crops are drawn in one call
        W, H = np.array([w for _, _, w, _ in heads]), np.array([h for _, _, _, h in heads])
        ids, numbers = repeat_crops(np.asarray(ids), k)
        boxes = sampler.sample_batch(ids, epoch, np.repeat(H, k), np.repeat(W, k), numbers)  # [B*k, 5]
        S, out = self.size, np.empty((len(boxes), self.size, self.size, 3), dtype=np.uint8)
        for i, ((img, pending, w, h), p) in enumerate(zip(heads, where)):
            mine = boxes[i * k : (i + 1) * k]
            sx = sy = 1.0
            if pending:  # a JPEG: decoded now, at the smallest scale that serves its smallest crop
                side = max(1.0, np.minimum(mine[:, 2], mine[:, 3]).min() / S)
                img = img if img is not None else open_image(self.source, p)
                img, sx, sy = decode(img, self.source.name(p), w / side, h / side)
            for j, (y, x, ch, cw, flip) in enumerate(mine.tolist()):
                view = img.resize((S, S), Image.BILINEAR, box=(x * sx, y * sy, (x + cw) * sx, (y + ch) * sy))
                out[i * k + j] = _rgb(view.transpose(Image.FLIP_LEFT_RIGHT) if flip else view)
        return torch.from_numpy(out), torch.from_numpy(boxes), torch.from_numpy(numbers) if k > 1 else None

    def _head(self, p: int) -> tuple[Image.Image | None, bool, int, int]:
        """``(image, decode pending, width, height)``: a JPEG's decode waits for its crops (a file's
        image is closed meanwhile: ``None``, opened again), any other image is decoded now."""
        im = open_image(self.source, p)
        w, h = im.size
        if im.format == "JPEG" and im.mode in _DIRECT:
            if self.source.files:
                im.close()
                return None, True, w, h
            return im, True, w, h
        return decode(im, self.source.name(p), w, h)[0], False, w, h

    def _centre(self, p: int) -> np.ndarray:
        im = open_image(self.source, p)
        S, (W, H) = self.size, im.size
        scale = round(S / EVAL_RATIO) / min(W, H)
        tw, th = max(S, round(W * scale)), max(S, round(H * scale))
        img = decode(im, self.source.name(p), tw, th)[0].resize((tw, th), Image.BILINEAR)
        left, top = (tw - S) // 2, (th - S) // 2
        return _rgb(img.crop((left, top, left + S, top + S)))


class _Keys:
    """The loader's sampler: the keys of the iteration in progress (set before each epoch or pass)."""

    def __init__(self):
        self.keys: list = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class DecodedSplit:
    """A split of a :class:`Source`, decoded on the fly by ``workers`` loader processes (kept between passes)."""

    def __init__(self, source: Source, size: int, workers: int = 0, positions=None, ids=None):
        self.source, self.size, self.workers = source, size, workers
        self.positions = np.arange(len(source)) if positions is None else np.asarray(positions, dtype=np.int64)
        self.targets = torch.from_numpy(np.asarray(source.targets)[self.positions].copy())
        # an image's index (the key of its crops and labels) is its position in the source
        self.ids = torch.from_numpy(self.positions.copy()) if ids is None else torch.as_tensor(ids).long()
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.distractors = None  # these sources record one class per image
        self._decoder = _Decoder(source, self.positions, size)
        self._loader, self._keys, self._busy = None, _Keys(), False

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(where, class)`` of every image, in order (built on demand: the split keeps compact arrays)."""
        return [(self.path(i), int(t)) for i, t in enumerate(self.targets.tolist())]

    def image_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Heights and widths (no decode; cached by the source)."""
        hw = self.source.image_sizes()[self.positions]
        return hw[:, 0], hw[:, 1]

    def path(self, position: int) -> str:
        return self.source.name(int(self.positions[position]))

    def subset(self, positions) -> "DecodedSplit":
        """The images at ``positions``, keeping their ids (so their crops and labels stay the same)."""
        pos = np.asarray([int(p) for p in positions], dtype=np.int64)
        sub = type(self)(self.source, self.size, self.workers, self.positions[pos], self.ids[pos])
        sub.targets = self.targets[pos].clone()  # labels changed in memory (noise, overrides) stay changed
        return sub

    def __len__(self) -> int:
        return len(self.positions)

    def num_batches(self, batch_size: int, drop_last: bool = False, shard=(0, 1), crops_per_image: int = 1) -> int:
        return len(batch_slices(len(self), images_per_batch(batch_size, crops_per_image), drop_last, shard))

    def _batches(self, keys: list, device) -> Iterator:
        """Decoded batches for ``keys``: in this process (0 workers), else through the kept loader
        (a second pass started while one runs, e.g. nested, gets a loader of its own)."""
        if not self.workers:
            yield from (self._decoder[key] for key in keys)
            return
        if self._busy:
            yield from self._make_loader(keys, device, persistent=False)
            return
        if self._loader is None:
            self._loader = self._make_loader(self._keys, device, persistent=True)
        self._keys.keys, self._busy = keys, True
        try:
            yield from self._loader
        finally:
            self._busy = False

    def _make_loader(self, sampler, device, persistent: bool):
        return torch.utils.data.DataLoader(
            self._decoder,
            batch_size=None,  # a key is a whole batch
            sampler=sampler,
            num_workers=self.workers,
            persistent_workers=persistent,
            prefetch_factor=2,  # batches per worker in flight (shared memory: keep it small)
            pin_memory=torch.device(device).type == "cuda",
        )

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
        k = crops_per_image if crops is not None else 1
        positions = epoch_batches(len(self), images_per_batch(batch_size, k), epoch=epoch, order_seed=order_seed,
                                  drop_last=drop_last, shard=shard, start_batch=start_batch, stride=batch_stride)  # fmt: skip
        keys = [(pos, self.ids.numpy()[pos], epoch, crops, k) for pos in positions]
        try:
            for (pos, _, _, _, _), (images, boxes, numbers) in zip(keys, self._batches(keys, device)):
                pos = torch.from_numpy(np.repeat(pos, k))
                views = self._normalized(images.to(device, non_blocking=True))
                yield Batch(views, self.targets[pos].to(device), self.ids[pos], boxes, epoch, crop_numbers=numbers)
        except UserError as err:  # from a worker, the message carries the worker's traceback: keep its last line
            message = str(err).strip().splitlines()[-1]
            raise UserError(message.split("UserError: ", 1)[-1]) from None

    def _normalized(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, S, S, 3]`` -> normalised float ``[B, 3, S, S]`` (channels-last strides), in one
        conversion and two in-place passes: ``(x / 255 - mean) / std`` as ``(x - 255 mean) * (1 / (255 std))``."""
        x = images.permute(0, 3, 1, 2).float()
        shift = torch.tensor([255.0 * m for m in self.mean], device=x.device).view(1, -1, 1, 1)
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=x.device).view(1, -1, 1, 1)
        return x.sub_(shift).mul_(scale)

    def fingerprint(self) -> str:
        return self.source.fingerprint(None if len(self.positions) == len(self.source) else self.positions)

    def __getstate__(self):  # loaders and their processes do not travel
        return {**self.__dict__, "_loader": None, "_keys": _Keys(), "_busy": False}


def check_classes(name: str, train: Source, test: Source) -> None:
    """Both splits of a dataset name the same classes, or a message saying which differ."""
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise UserError(
            f"{name}: train and test have different classes (only in train: {only_train or 'none'}; "
            f"only in test: {only_test or 'none'}); make them match"
        )


__all__ = ["DecodedSplit", "EVAL_RATIO", "IMAGENET_MEAN", "IMAGENET_STD", "Source", "check_classes", "decode", "open_image"]
