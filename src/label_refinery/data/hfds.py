"""``hf:PATH_OR_NAME``: a Hugging Face dataset with an image column and a label column.

``PATH`` is a folder written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` of splits); any
other name goes to ``datasets.load_dataset`` (the library's cache; ``HF_DATASETS_OFFLINE=1`` or
``HF_HUB_OFFLINE=1`` keeps it from the network). The image column is the first ``Image`` feature and
the label column the first ``ClassLabel`` (class names from its ``names``), else a column named
``label``; name them with ``hf:PATH,image=COL,label=COL``. Splits map as :mod:`.sources` says
(``train``; ``validation`` and/or ``test``; a test split without labels, as ImageNet's, is left out).

Images are read as the bytes the dataset stores (Arrow, memory-mapped: random access without loading
the table) and decoded by :mod:`.decoded`'s loader, JPEG draft and all; an image stored as a path is
opened from its file. Sizes are read from the headers once and cached; the fingerprint is the
dataset's own (``datasets``' content fingerprint) with the labels, so nothing is read per image.
Needs ``pip install 'label-refinery[hf]'``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError, brief
from .base import ImageDataset
from .sources import TableSource, cached_sizes, class_ids, digest, header_size, table_dataset

HINT = "pip install 'label-refinery[hf]' (the datasets library)"


class HFSource(TableSource):
    """One split of a Hugging Face dataset (its Arrow table, memory-mapped)."""

    def __init__(self, where: str, split, image: str, classes: list[str], targets: np.ndarray):
        self.where, self.image, self.classes, self.targets = where, image, classes, targets
        self.table = (split.flatten_indices() if split._indices is not None else split).data
        self.base_digest = digest("hf", split._fingerprint, targets)
        self._column = None

    def _chunks(self) -> tuple[np.ndarray, list]:
        """Where each chunk of the image column starts, and per chunk its bytes' offsets, data buffer
        and paths array: an image's bytes are a slice of the memory-mapped file, no Python objects
        per row (a struct scalar per image cost more than its PNG decode)."""
        if self._column is None:
            column = self.table.column(self.image)
            starts, parts = [0], []
            for chunk in column.chunks:
                data, paths = chunk.flatten()  # struct<bytes, path>, the struct's own offset applied
                wide = pa_large(data.type)
                offsets = np.frombuffer(data.buffers()[1], dtype=np.int64 if wide else np.int32)
                valid = np.asarray(data.is_valid()) if data.null_count else None
                parts.append((offsets[data.offset : data.offset + len(data) + 1], data.buffers()[2], valid, paths))
                starts.append(starts[-1] + len(chunk))
            self._column = (np.array(starts), parts)
        return self._column

    def _cell(self, position: int) -> tuple[bytes | None, str | None]:
        starts, parts = self._chunks()
        c = int(np.searchsorted(starts, position, side="right")) - 1
        offsets, buffer, valid, paths = parts[c]
        i = int(position) - int(starts[c])
        if valid is None or valid[i]:
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            if hi > lo:
                return memoryview(buffer)[lo:hi].tobytes(), None
        path = paths[i].as_py()
        if not path:
            raise UserError(f"{self.name(position)}: the image column holds no image here")
        return None, path

    def name(self, position: int) -> str:
        return f"{self.where}[{int(position)}]"

    def open(self, position: int) -> Image.Image:
        data, path = self._cell(position)
        return Image.open(io.BytesIO(data) if data is not None else path)

    def image_sizes(self) -> np.ndarray:
        def read():
            out = []
            for p in range(len(self)):
                data, path = self._cell(p)
                out.append(header_size(data if data is not None else path, self.name(p)))
            return out

        if getattr(self, "sizes", None) is None:
            self.sizes = cached_sizes(self.base_digest, len(self), read)
        return self.sizes

    def __getstate__(self):  # the table travels by its file names; the column's buffers do not
        return {**self.__dict__, "_column": None}


def pa_large(kind) -> bool:
    import pyarrow as pa

    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise UserError(f"hf: an image column of bytes is expected, got {kind}")
    return pa.types.is_large_binary(kind)


def _options(arg: str) -> tuple[str, dict]:
    parts = arg.split(",")
    opts = {}
    while len(parts) > 1 and parts[-1].partition("=")[0] in ("image", "label"):
        key, _, value = parts.pop().partition("=")
        opts[key] = value
    return ",".join(parts), opts


def _open(name: str):
    try:
        import datasets
    except ImportError:
        raise UserError(f"hf: datasets need {HINT}") from None
    path = Path(name).expanduser()
    try:
        if path.is_dir():
            data = datasets.load_from_disk(str(path))
        else:
            data = datasets.load_dataset(name)
    except Exception as err:  # offline, unknown name, a damaged folder: the library's message, on one line
        text = " ".join(str(err).split())[:400]
        raise UserError(f"hf: cannot load {brief(name)}: {text}. A saved dataset is a folder from save_to_disk; "
                        "a name loads from the hub or its cache (HF_DATASETS_OFFLINE=1 uses the cache only)") from None  # fmt: skip
    if isinstance(data, datasets.Dataset):
        raise UserError(f"hf: {name} holds one split; save a DatasetDict with train and test (or validation) splits")
    return data


def _columns(split, opts: dict, where: str) -> tuple[str, str]:
    import datasets

    feats = split.features
    image = opts.get("image") or next((c for c, f in feats.items() if isinstance(f, datasets.Image)), None)
    label = opts.get("label") or next((c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or next((c for c in ("label", "labels") if c in feats), None)
    for what, col in (("image", image), ("label", label)):
        if col is None or col not in feats:
            raise UserError(f"{where}: no {what} column {brief(col) if col else 'found'} (its columns: "
                            f"{brief(list(feats))}); name it with hf:PATH,{what}=COLUMN")  # fmt: skip
    if not isinstance(feats[image], datasets.Image):
        raise UserError(f"{where}: column {brief(image)} is not an Image feature ({brief(feats[image])})")
    return image, label


def load(arg: str, image_size: int | None = None, workers: int = 0) -> ImageDataset:
    """An :class:`ImageDataset` from a Hugging Face dataset (3 channels, ImageNet mean/std)."""
    name, opts = _options(arg)
    data = _open(name)
    splits, labels, names = {}, {}, None
    for s, split in data.items():
        image, label = _columns(split, opts, f"hf {name} ({s})")
        y = split.data.column(label).to_pylist() if split._indices is None else split[label]
        if s == "test" and all(v is None or v == -1 for v in y):  # an unlabelled test split (ImageNet's)
            continue
        feat = split.features[label]
        names = list(feat.names) if hasattr(feat, "names") else names
        splits[s], labels[s] = (split, image), y
    classes, targets = class_ids([labels[s] for s in splits], names, f"hf {name}")
    sources = {s: HFSource(f"{name}:{s}", split, image, classes, t) for (s, (split, image)), t in zip(splits.items(), targets)}
    return table_dataset(f"hf:{name}", classes, sources, image_size, workers)


__all__ = ["HFSource", "load"]
