"""Image folders in ImageNet layout: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*``.

Images are decoded with PIL and given three channels (grayscale files become three equal channels),
so folders may mix modes and any common extension. The file list, classes, fingerprint and image
sizes come from :mod:`.folder_index` (computed once, cached); decoding, crops and the loader
processes are :mod:`.decoded`'s, shared with manifests, Hugging Face datasets and WebDataset shards.
The ``val`` folder is the dataset's test split (ImageNet's validation set is its test set).
"""

from __future__ import annotations

from pathlib import Path

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
    size = image_size or 224
    train = FolderSplit(train_index, size, workers)
    test = FolderSplit(val_index, size, workers)
    return ImageDataset(f"imagefolder:{base}", train_index.classes, 3, size, IMAGENET_MEAN, IMAGENET_STD, train, test)


__all__ = ["EVAL_RATIO", "FolderSplit", "IMAGENET_MEAN", "IMAGENET_STD", "load"]
