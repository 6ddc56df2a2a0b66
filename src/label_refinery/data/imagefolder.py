"""Image folders in ImageNet layout: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*``.

Images are decoded with PIL and converted to RGB (grayscale files become three equal channels), so
folders may mix modes and any common extension. Loader workers cut the same :class:`Crop` values an
in-memory dataset would (the sampler is a pure function of seed, epoch, index and image size), with
PIL's antialiased bilinear resize. Evaluation resizes the short side to ``size / 0.875`` and takes the
centre ``size x size`` (the ImageNet convention: 256 -> 224).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .base import Batch, ImageDataset, batch_slices, epoch_batches, normalize
from .crops import CropSampler

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVAL_RATIO = 0.875  # 224 / 256


def scan(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted sub-folder names) and ``(path, class index)`` samples, sorted."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: expected ImageNet layout ROOT/train/<class>/*, ROOT/val/<class>/*")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{folder} has no class sub-folders: expected {folder}/<class>/<image files>")
    samples = []
    for i, name in enumerate(classes):
        files = sorted(
            p
            for p in (folder / name).rglob("*")
            if p.suffix.lower() in EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
        if not files:
            raise UserError(
                f"class folder {folder / name} has no images (extensions: {', '.join(sorted(EXTENSIONS))}); "
                "remove the folder or add images"
            )
        samples += [(str(f), i) for f in files]
    return classes, samples


def _open_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            if img.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: scale to 8 bits, not clip
                grey = np.asarray(img, dtype=np.float64) / 257.0
                return Image.fromarray(grey.clip(0, 255).round().astype(np.uint8)).convert("RGB")
            return img.convert("RGB")
    except Exception as err:  # PIL raises many types for bad files
        raise UserError(f"cannot decode image {path}: {err}. Remove or replace the file.") from err


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # [3, H, W]


class _Views(torch.utils.data.Dataset):
    """Decodes one image per key ``(position, epoch)``; crops it (keyed by the image's id) if a sampler is given."""

    def __init__(self, samples, ids, size: int, crops: CropSampler | None):
        self.samples, self.ids, self.size, self.crops = samples, ids, size, crops

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        pos, epoch = key
        img = _open_rgb(self.samples[pos][0])
        W, H = img.size
        S = self.size
        if self.crops is None:
            short = round(S / EVAL_RATIO)
            scale = short / min(W, H)
            img = img.resize((max(S, round(W * scale)), max(S, round(H * scale))), Image.BILINEAR)
            left, top = (img.size[0] - S) // 2, (img.size[1] - S) // 2
            return _to_tensor(img.crop((left, top, left + S, top + S))), pos, torch.zeros(5, dtype=torch.long)
        y, x, h, w, flip = self.crops.sample(int(self.ids[pos]), epoch, H, W)
        img = img.resize((S, S), Image.BILINEAR, box=(x, y, x + w, y + h))
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return _to_tensor(img), pos, torch.tensor([y, x, h, w, int(flip)])


class FolderSplit:
    """A split of an image folder, decoded on the fly by ``workers`` loader processes."""

    def __init__(self, root: Path, samples, size: int, workers: int = 0, ids=None):
        self.root, self.samples, self.size, self.workers = root, samples, size, workers
        self.targets = torch.tensor([t for _, t in samples], dtype=torch.long)
        # an image's index (the key of its crops and labels) is its position in the sorted file list
        self.ids = torch.arange(len(samples)) if ids is None else torch.as_tensor(ids).long()
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.distractors = None  # a folder records one class per image

    def image_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Heights and widths from the files' headers (no decode)."""
        sizes = []
        for path, _ in self.samples:
            with Image.open(path) as img:
                sizes.append(img.size)
        wh = np.array(sizes, dtype=np.int64).reshape(-1, 2)
        return wh[:, 1], wh[:, 0]

    def path(self, position: int) -> str:
        return str(self.samples[position][0])

    def subset(self, positions) -> "FolderSplit":
        """The images at ``positions``, keeping their ids (so their crops and labels stay the same)."""
        pos = [int(p) for p in positions]
        return FolderSplit(self.root, [self.samples[p] for p in pos], self.size, self.workers, self.ids[pos])

    def __len__(self) -> int:
        return len(self.samples)

    def num_batches(self, batch_size: int, drop_last: bool = False, shard: tuple[int, int] = (0, 1)) -> int:
        return len(batch_slices(len(self), batch_size, drop_last, shard))

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
    ) -> Iterator[Batch]:
        positions = epoch_batches(len(self), batch_size, epoch=epoch, order_seed=order_seed, drop_last=drop_last,
                                  shard=shard, start_batch=start_batch)
        keys = [[(int(p), epoch) for p in pos] for pos in positions]
        loader = torch.utils.data.DataLoader(
            _Views(self.samples, self.ids, self.size, crops),
            batch_sampler=keys,
            num_workers=self.workers,
            persistent_workers=False,
            pin_memory=torch.device(device).type == "cuda",
        )
        try:
            for images, pos, boxes in loader:
                views = images.to(device, non_blocking=True).float().div_(255.0)
                yield Batch(
                    normalize(views, self.mean, self.std),
                    self.targets[pos].to(device),
                    self.ids[pos],
                    boxes if crops else None,
                    epoch,
                )
        except UserError as err:  # from a worker, the message carries the worker's traceback: keep its last line
            message = str(err).strip().splitlines()[-1]
            raise UserError(message.split("UserError: ", 1)[-1]) from None

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for path, target in self.samples:
            p = Path(path)
            h.update(f"{p.relative_to(self.root)}|{target}|{p.stat().st_size}\n".encode())
        return h.hexdigest()


def load(root: str, image_size: int | None = None, workers: int = 0) -> ImageDataset:
    """An :class:`ImageDataset` from ``root/train`` and ``root/val`` (3 channels, ImageNet mean/std)."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"imagefolder: {base} does not exist")
    train_classes, train_samples = scan(base / "train")
    val_classes, val_samples = scan(base / "val")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise UserError(
            f"imagefolder {base}: train and val have different classes "
            f"(only in train: {only_train or 'none'}; only in val: {only_val or 'none'}); make the class folders match"
        )
    size = image_size or 224
    train = FolderSplit(base / "train", train_samples, size, workers)
    test = FolderSplit(base / "val", val_samples, size, workers)
    return ImageDataset(f"imagefolder:{base}", train_classes, 3, size, IMAGENET_MEAN, IMAGENET_STD, train, test)
