"""What the table-like sources (manifests, Hugging Face datasets, WebDataset shards) share: class
lists from labels, the splits' names, image sizes read once from headers and cached, fingerprints
over compact arrays.

**Splits.** A source names its splits ``train`` and ``val``/``validation``/``valid`` and/or ``test``.
The dataset's test split is ``test`` when there is one, else the validation split (as an image
folder's ``val`` is ImageNet's test set); when both are there, the validation split becomes
``ds.val`` (then ``--val-split`` is refused: the data brings its own). A file naming one split
(``train.csv``, ``imagenet-train.json``) finds the others beside it, by the same name with ``train``
replaced (:func:`sibling_splits`).

**Labels.** Class names, or class ids ``0..C-1``. With a ``classes.txt`` beside the data (one name
per line, in class-id order) labels may be either, and one outside it is refused by row; without
one, names are sorted (as folders are) and ids are named by their number.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError, brief

VAL_NAMES = ("val", "validation", "valid")
SIZES_VERSION = 1


def pick_splits(found: dict, where: str) -> tuple[object, object, object | None]:
    """``(train, test, val or None)`` from a mapping of split name to split (see the module doc)."""
    unknown = sorted(set(found) - {"train", "test", *VAL_NAMES})
    if unknown:
        raise UserError(f"{where}: unknown split name(s) {brief(unknown)}; use train, val (or validation) and test")
    vals = [found[n] for n in VAL_NAMES if n in found]
    if "train" not in found or not (vals or "test" in found):
        raise UserError(f"{where}: needs a train split and a val or test split; it has {brief(sorted(found)) or 'none'}")
    if "test" in found:
        return found["train"], found["test"], (vals[0] if vals else None)
    return found["train"], vals[0], None


def sibling_splits(path: Path) -> dict[str, Path]:
    """``{split: file}`` for a file whose name holds ``train``: itself and the files named alike for
    the other splits that exist beside it."""
    name = path.name
    at = name.rfind("train")
    if at < 0:
        raise UserError(f"{path}: a file without a split column must name the training split (e.g. train.csv), "
                        "with its test split beside it (test.csv or val.csv)")  # fmt: skip
    out = {"train": path}
    for split in ("test", *VAL_NAMES):
        other = path.with_name(name[:at] + split + name[at + 5 :])
        if other.is_file():
            out[split] = other
    return out


def read_class_list(folder: Path) -> list[str] | None:
    """The names in ``folder/classes.txt`` (one per line, blank lines ignored), or None without the file."""
    path = folder / "classes.txt"
    if not path.is_file():
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the class list {path}: {err}") from None
    if not names or len(set(names)) != len(names):
        raise UserError(f"class list {path}: needs one distinct class name per line")
    return names


def class_ids(labels: list, classes: list[str] | None, where: str) -> tuple[list[str], list[np.ndarray]]:
    """``(classes, [targets per split])`` from each split's labels (names or ids, see the module doc).
    ``labels`` is one list per split; a label outside the class list is refused with its row."""
    flat = [str(v).strip() for split in labels for v in split]
    numeric = all(v.lstrip("-").isdigit() for v in flat) and flat
    if classes is None:
        if numeric:
            top = max(int(v) for v in flat)
            classes = [str(i) for i in range(top + 1)]
        else:
            classes = sorted(set(flat))
    lookup = {name: i for i, name in enumerate(classes)}
    out = []
    for split in labels:
        ids = np.empty(len(split), dtype=np.int64)
        for row, value in enumerate(split):
            v = str(value).strip()
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(classes):
                ids[row] = int(value)  # an id (a ClassLabel's), never taken for a name
            elif v in lookup:
                ids[row] = lookup[v]
            elif v.isdigit() and int(v) < len(classes):
                ids[row] = int(v)
            else:
                raise UserError(f"{where}, row {row + 1}: label {brief(v)} is not one of the {len(classes)} classes "
                                f"({brief(classes[:8])}{', ...' if len(classes) > 8 else ''})")  # fmt: skip
        out.append(ids)
    return classes, out


def header_size(data: bytes | str, name: str) -> tuple[int, int]:
    """``(height, width)`` of an image file's bytes (or path) from its header, without decoding."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            return img.size[1], img.size[0]
    except Exception as err:  # PIL raises many types for bad files
        raise UserError(f"cannot read the size of image {name}: {err}. Remove or replace it.") from None


def cached_sizes(key: str, n: int, read) -> np.ndarray:
    """``[n, 2]`` heights and widths: from the cache file of ``key`` (a digest of the source), else
    ``read()`` once and cached (``$LABEL_REFINERY_CACHE``, default ``~/.cache/label-refinery``)."""
    base = Path(os.environ.get("LABEL_REFINERY_CACHE") or Path.home() / ".cache" / "label-refinery")
    path = base / "sizes" / f"{key[:32]}.v{SIZES_VERSION}.npy"
    try:
        sizes = np.load(path, allow_pickle=False)
        if sizes.shape == (n, 2):
            return sizes
    except (OSError, ValueError):
        pass
    sizes = np.asarray(read(), dtype=np.int64).reshape(n, 2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, sizes)
        tmp.replace(path)
    except OSError:  # a read-only home: kept in memory only
        pass
    return sizes


def digest(*parts) -> str:
    """SHA-256 over arrays (their bytes, dtype and shape) and text, in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            a = np.ascontiguousarray(part)
            h.update(repr((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


def table_dataset(name: str, classes: list[str], splits: dict, image_size: int | None, workers: int):
    """The :class:`ImageDataset` of a table-like source: its splits as :func:`pick_splits` maps them,
    each decoded by the shared loader (3 channels, ImageNet mean/std, 224 px unless given)."""
    from .base import ImageDataset
    from .decoded import IMAGENET_MEAN, IMAGENET_STD, DecodedSplit

    train, test, val = pick_splits(splits, name)
    size = image_size or 224
    ds = ImageDataset(name, classes, 3, size, IMAGENET_MEAN, IMAGENET_STD,
                      DecodedSplit(train, size, workers), DecodedSplit(test, size, workers))  # fmt: skip
    ds.val = DecodedSplit(val, size, workers) if val is not None else None
    return ds


class TableSource:
    """Shared parts of a source whose rows are held in arrays: targets, fingerprints of subsets."""

    classes: list[str]
    targets: np.ndarray
    base_digest: str  # what identifies the whole split
    files = False

    def __len__(self) -> int:
        return len(self.targets)

    def fingerprint(self, positions: np.ndarray | None = None) -> str:
        if positions is None:
            return self.base_digest
        return digest(self.base_digest, np.asarray(positions, dtype=np.int64))


__all__ = ["TableSource", "cached_sizes", "class_ids", "digest", "header_size", "pick_splits", "read_class_list", "sibling_splits", "table_dataset"]
