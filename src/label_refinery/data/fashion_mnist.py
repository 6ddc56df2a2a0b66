"""Fashion-MNIST (Xiao et al. 2017) from the standard IDX ``.gz`` files.

Where the files are looked for, in order:
1. ``data_dir`` (the ``--data-dir`` flag);
2. ``$LABEL_REFINERY_DATA``;
3. ``/usr/share/datasets/fashion-mnist`` (Debian: ``apt-get install dataset-fashion-mnist``);
4. a download through torchvision into ``~/.cache/label-refinery/fashion-mnist`` (needs internet).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import ImageDataset
from .memory import TensorSplit

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = (0.286,), (0.353,)  # of the training images in [0, 1]
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
HOW_TO_GET = (
    "Fashion-MNIST was not found. Get it one of these ways:\n"
    "  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist   (files land in /usr/share/datasets/fashion-mnist)\n"
    "  - put the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,\n"
    "    t10k-labels-idx1-ubyte.gz (from https://github.com/zalandoresearch/fashion-mnist) in a folder and pass\n"
    "    --data-dir FOLDER or set LABEL_REFINERY_DATA=FOLDER\n"
    "  - be online: the torchvision download is tried last"
)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path} cannot be read ({err}); the file is truncated or corrupt: fetch it again") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {body.size}")
    return body.reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


CACHE_DIR = Path.home() / ".cache" / "label-refinery" / "fashion-mnist"


def _candidates(data_dir: str | None) -> list[Path]:
    """Folders to search: only ``data_dir`` when given (an explicit choice), else the usual places."""
    roots = [data_dir] if data_dir else [os.environ.get("LABEL_REFINERY_DATA"), DEBIAN_DIR, str(CACHE_DIR)]
    out = []
    for d in filter(None, roots):
        p = Path(d).expanduser()
        out += [p, p / "fashion-mnist", p / "FashionMNIST" / "raw"]
    return out


def _torchvision_download() -> Path | None:
    root = CACHE_DIR
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception:  # offline, or torchvision missing: fall through to the how-to message
        return None
    return root / "FashionMNIST" / "raw"


def locate(data_dir: str | None = None, download: bool = True) -> dict[str, Path]:
    """Paths of the four IDX files, or a :class:`UserError` that says how to get them."""
    folders = _candidates(data_dir)
    for folder in folders:
        found = {k: _find(folder, stem) for k, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    if data_dir:
        state = (
            "does not exist"
            if not Path(data_dir).expanduser().exists()
            else "does not hold the four Fashion-MNIST files"
        )
        raise UserError(f"--data-dir {data_dir} {state}.\n" + HOW_TO_GET)
    if download:
        folder = _torchvision_download()
        if folder is not None:
            found = {k: _find(folder, stem) for k, stem in FILES.items()}
            if all(found.values()):
                return found  # type: ignore[return-value]
    raise UserError(HOW_TO_GET + "\nLooked in: " + ", ".join(str(f) for f in folders))


def load(data_dir: str | None = None, image_size: int | None = None, download: bool = True) -> ImageDataset:
    """Fashion-MNIST as an in-memory :class:`ImageDataset` (60,000 train, 10,000 test, 28x28 grey)."""
    paths = locate(data_dir, download)
    arrays = {k: read_idx(p) for k, p in paths.items()}
    size = image_size or 28
    splits = {}
    for part in ("train", "test"):
        images = torch.from_numpy(arrays[f"{part}_images"].copy()).unsqueeze(1)  # [N, 1, 28, 28]
        labels = torch.from_numpy(arrays[f"{part}_labels"].astype(np.int64))
        if len(images) != len(labels):
            raise UserError(f"Fashion-MNIST {part}: {len(images)} images but {len(labels)} labels")
        splits[part] = TensorSplit(images, labels, MEAN, STD, size)
    return ImageDataset("fashion-mnist", list(CLASSES), 1, size, MEAN, STD, splits["train"], splits["test"])
