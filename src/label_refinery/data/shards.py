"""``wds:INDEX.json``: WebDataset tar shards, read at random through webdataset's indexed reader.

``INDEX.json`` is a ``wids`` shard index of one split (``{"wids_version": 1, "shardlist": [{"url":
"train-000000.tar", "nsamples": 1000}, ...]}``, urls relative to the index's folder; local files:
random access needs the shards on disk). Its name says the split (``imagenet-train.json``); the test
split's index is the file named alike beside it (``imagenet-val.json``, ``-validation``, ``-test``).
A sample holds an image (``jpg``, ``jpeg``, ``png``, ``webp``, ...) and a label: ``cls`` (a class
id or name as text) or ``json`` with a ``label`` key. Class names: ``classes.txt`` beside the index,
else as :mod:`.sources` says.

A shard stream does not say an image's size, and crops (values keyed by image index and size) need
it before the decode: ``label-refinery index wds:INDEX.json`` reads every sample once and writes a
sidecar beside each split's index (``INDEX.sizes.npz``: keys, labels, sizes, each shard's byte
size; compressed). Opening the dataset reads only the sidecars and stats the shards: a missing shard, a shard
changed since it was indexed, a sample whose key is not the indexed one, an undecodable image (named
by shard and key) are each one clear error. Shards are opened with ``wids``' ``IndexedTarSamples``
(memory-mapped), a few per loader process. The fingerprint is a digest of the sidecar's keys,
labels, sizes and shard sizes. Needs ``pip install 'label-refinery[wds]'``.
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError, brief
from ..files import atomic_write, read_json
from .base import ImageDataset
from .sources import (
    TableSource,
    class_ids,
    digest,
    header_size,
    read_class_list,
    sibling_splits,
    table_dataset,
)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "pbm", "tif", "tiff", "gif")
HINT = "pip install 'label-refinery[wds]' (webdataset and wids)"
OPEN_SHARDS = 8  # per process
VERSION = 2  # 2: text as UTF-8 bytes, compressed


def sidecar_of(index: Path) -> Path:
    return index.with_name(index.stem + ".sizes.npz")


def read_index(index: Path) -> list[tuple[Path, int]]:
    """``[(shard file, samples)]`` of a wids index, urls resolved against its folder."""
    spec = read_json(index, "WebDataset index", fix=' (a wids index: {"wids_version": 1, "shardlist": [...]})')
    shards = spec.get("shardlist") if isinstance(spec, dict) else None
    if not isinstance(shards, list) or not shards:
        raise UserError(f"WebDataset index {index}: no shardlist (a list of {{url, nsamples}})")
    out = []
    for entry in shards:
        url, n = (entry.get("url"), entry.get("nsamples")) if isinstance(entry, dict) else (None, None)
        if not isinstance(url, str) or not isinstance(n, int) or n < 1:
            raise UserError(f"WebDataset index {index}: each shard needs a url and nsamples >= 1, got {brief(entry)}")
        if "://" in url and not url.startswith("file://"):
            raise UserError(f"WebDataset index {index}: {brief(url)} is remote; random access needs the shards on disk")
        path = Path(url.removeprefix("file://"))
        out.append((path if path.is_absolute() else index.parent / path, n))
    return out


def _reader(path: Path):
    try:
        from wids.wids import IndexedTarSamples
    except ImportError:
        raise UserError(f"wds: WebDataset shards need {HINT}") from None
    if not path.is_file():
        raise UserError(f"WebDataset shard {path} is missing")
    try:
        return IndexedTarSamples(path=str(path))
    except Exception as err:  # a damaged tar: wids raises several types
        raise UserError(f"WebDataset shard {path} cannot be read as a tar file: {err}") from None


def _fields(sample: dict) -> dict:
    """A sample's files by extension (wids names them ``.jpg``; webdataset ``jpg``), its ``__key__``."""
    return {k if k.startswith("__") else k.lstrip("."): v for k, v in sample.items()}


def _label(sample: dict, where: str) -> str:
    if "cls" in sample:
        return sample["cls"].getvalue().decode("utf-8", "replace").strip()
    if "json" in sample:
        try:
            meta = json.loads(sample["json"].getvalue())
        except ValueError:
            meta = None
        if isinstance(meta, dict) and "label" in meta:
            return str(meta["label"])
    raise UserError(f"{where}: no label (a .cls file, or .json with a label key)")


def _image_key(sample: dict, where: str) -> str:
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise UserError(f"{where}: no image (one of {', '.join('.' + k for k in IMAGE_KEYS)})")
    return key


def build_sidecar(index: Path, progress=None) -> Path:
    """Read every sample of the split ``index`` names once; write its sidecar (keys, labels, sizes)."""
    keys, labels, sizes, kinds, nbytes = [], [], [], [], []
    for path, n in read_index(index):
        tar = _reader(path)
        if len(tar) != n:
            raise UserError(f"WebDataset shard {path} holds {len(tar)} samples, its index {index} says {n}: re-make the index")
        for i in range(n):
            sample = _fields(tar[i])
            where = f"{path.name}:{sample['__key__']}"
            kind = _image_key(sample, where)
            keys.append(sample["__key__"])
            labels.append(_label(sample, where))
            sizes.append(header_size(sample[kind].getvalue(), where))
            kinds.append(kind)
            if progress is not None:
                progress(1)
        tar.close()
        nbytes.append(path.stat().st_size)
    return write_sidecar(index, keys, labels, sizes, kinds, nbytes)


def write_sidecar(index: Path, keys: list[str], labels: list[str], sizes, kinds: list[str], nbytes: list[int]) -> Path:
    """``INDEX.sizes.npz``: per sample its key, label, (height, width) and image extension, and each
    shard's byte size; text as UTF-8 bytes, compressed (1.28 M ImageNet-like samples: about 16 MB)."""
    def text(values):
        return np.array([v.encode() for v in values], dtype=bytes)

    buf = io.BytesIO()
    np.savez_compressed(buf, version=np.array(VERSION), keys=text(keys), labels=text(labels), kinds=text(kinds),
                        sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2), nbytes=np.array(nbytes, dtype=np.int64))  # fmt: skip
    out = sidecar_of(index)
    atomic_write(out, buf.getvalue())
    return out


def read_sidecar(index: Path) -> dict:
    """The sidecar of ``index``, checked against its shards (present, unchanged since indexed)."""
    path, shards = sidecar_of(index), read_index(index)
    fix = f"run: label-refinery index wds:{index}"
    try:
        with np.load(path, allow_pickle=False) as z:
            side = {k: z[k] for k in ("version", "keys", "labels", "sizes", "kinds", "nbytes")}
    except FileNotFoundError:
        raise UserError(f"WebDataset index {index} has no sizes sidecar ({path.name}) yet; {fix}") from None
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"WebDataset sidecar {path} is damaged ({err}); {fix}") from None
    if int(side["version"]) != VERSION or len(side["nbytes"]) != len(shards) or len(side["keys"]) != sum(n for _, n in shards):
        raise UserError(f"WebDataset sidecar {path} does not match its index {index}; {fix}")
    for (shard, _), size in zip(shards, side["nbytes"].tolist()):
        if not shard.is_file():
            raise UserError(f"WebDataset shard {shard} is missing (named by {index})")
        if shard.stat().st_size != size:
            raise UserError(f"WebDataset shard {shard} changed since it was indexed; {fix}")
    side["shards"] = [str(s) for s, _ in shards]
    side["starts"] = np.cumsum([0] + [n for _, n in shards])
    return side


class ShardSource(TableSource):
    """One split of a WebDataset: positions are the samples in shard order."""

    def __init__(self, where: str, side: dict, classes: list[str], targets: np.ndarray):
        self.where, self.classes, self.targets = where, classes, targets
        self.shards, self.starts = side["shards"], side["starts"]
        self.shard_names = [Path(p).name for p in self.shards]
        self.keys, self.kinds, self.sizes = side["keys"], side["kinds"], side["sizes"]
        self.base_digest = digest("wds", self.keys, targets, self.sizes, side["nbytes"])
        self._open: OrderedDict = OrderedDict()

    def _locate(self, position: int) -> tuple[int, int]:
        s = int(np.searchsorted(self.starts, position, side="right")) - 1
        return s, int(position) - int(self.starts[s])

    def name(self, position: int) -> str:
        s, _ = self._locate(position)
        return f"{self.shard_names[s]}:{self.keys[position].decode()}"

    def open(self, position: int) -> Image.Image:
        s, inner = self._locate(position)
        if s not in self._open:
            if len(self._open) >= OPEN_SHARDS:
                self._open.popitem(last=False)[1].close()
            self._open[s] = _reader(Path(self.shards[s]))
        self._open.move_to_end(s)
        want, kind = self.keys[position].decode(), self.kinds[position].decode()
        try:  # the one member, by name: no other file of the sample read, no header parsed twice
            _, data = self._open[s].reader.get_by_name(f"{want}.{kind}")
        except KeyError:
            raise UserError(f"WebDataset shard {self.shards[s]} holds no {want}.{kind}, which its index names "
                            f"(sample {inner}); re-run label-refinery index")  # fmt: skip
        return Image.open(io.BytesIO(data))

    def image_sizes(self) -> np.ndarray:
        return self.sizes

    def __getstate__(self):  # open shards stay in their process
        return {**self.__dict__, "_open": OrderedDict()}


def load(arg: str, image_size: int | None = None, workers: int = 0) -> ImageDataset:
    """An :class:`ImageDataset` from WebDataset shards (3 channels, ImageNet mean/std)."""
    index = Path(arg).expanduser()
    if not index.is_file():
        raise UserError(f"wds: {index} does not exist (a wids index JSON of the training split)")
    found = {s: read_sidecar(p) for s, p in sibling_splits(index).items()}
    names = list(found)
    labels = [[v.decode() for v in found[s]["labels"].tolist()] for s in names]
    classes, targets = class_ids(labels, read_class_list(index.parent), f"wds {index}")
    sources = {s: ShardSource(f"{index}:{s}", found[s], classes, t) for s, t in zip(names, targets)}
    return table_dataset(f"wds:{index}", classes, sources, image_size, workers)


__all__ = ["ShardSource", "build_sidecar", "load", "read_index", "read_sidecar", "sidecar_of", "write_sidecar"]
