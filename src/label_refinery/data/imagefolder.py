"""Image folders in ImageNet layout: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*``.

Images are decoded with PIL and given three channels (grayscale files become three equal channels),
so folders may mix modes and any common extension. The file list, classes, fingerprint and image
sizes come from :mod:`.folder_index` (computed once, cached); decoding, crops and the loader
processes are :mod:`.decoded`'s, shared with manifests, Hugging Face datasets and WebDataset shards.
The ``val`` folder is the dataset's test split (ImageNet's validation set is its test set).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import ImageDataset
from .decoded import EVAL_RATIO, IMAGENET_MEAN, IMAGENET_STD, DecodedSplit, check_classes
from .folder_index import index_of


class FolderSplit(DecodedSplit):
    """A split of an image folder (:class:`.folder_index.FolderIndex` as its source)."""

    @property
    def root(self) -> Path:
        return self.source.root

    @property
    def index(self):
        return self.source


def _default_size(base: Path, index) -> int:
    """224 px, the ImageNet convention; with a note when the images are far smaller (a folder of 28 px
    images read at 224 trains ~60x slower than it needs to)."""
    if len(index.rel):
        side = int(np.median(index.image_sizes()[: 2000].min(1)))
        if side * 2 < 224:
            warnings.warn(f"imagefolder {base}: its images are about {side} px, read at 224 px; pass --image-size "
                          f"{side} (data.image_size) to train at their own size", stacklevel=3)  # fmt: skip
    return 224


def load(root: str, image_size: int | None = None, workers: int = 0) -> ImageDataset:
    """An :class:`ImageDataset` from ``root/train`` and ``root/val`` (3 channels, ImageNet mean/std)."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"imagefolder: {base} does not exist")
    train_index, val_index = index_of(base / "train"), index_of(base / "val")
    try:
        check_classes(f"imagefolder {base}", train_index, val_index)
    except UserError as err:
        raise UserError(str(err).replace("only in test", "only in val") + " (the class folders)") from None
    size = image_size or _default_size(base, train_index)
    train = FolderSplit(train_index, size, workers)
    test = FolderSplit(val_index, size, workers)
    return ImageDataset(f"imagefolder:{base}", train_index.classes, 3, size, IMAGENET_MEAN, IMAGENET_STD, train, test)


__all__ = ["EVAL_RATIO", "FolderSplit", "IMAGENET_MEAN", "IMAGENET_STD", "load"]
