"""``manifest:FILE.csv`` or ``manifest:FILE.parquet``: a table of image paths and labels.

Columns: ``path`` (absolute, or relative to the manifest's folder), ``label`` (class name or id),
optional ``width`` and ``height`` (both or neither; read from the headers once and cached when
absent) and optional ``split`` (``train``, ``val``/``validation``, ``test``; without it the file is
the training split and its test split is the file named alike beside it: ``train.csv`` ->
``test.csv`` or ``val.csv``). Class names: ``classes.txt`` beside the manifest, else sorted labels
(:mod:`.sources`). Every file is checked to exist when the dataset opens, so a missing image is
refused before training starts.

The fingerprint is a digest of the rows (path as written, class, sizes when given): cheap, and it
does not read the images. An image replaced under the same path with the same size is not noticed
(as with image folders). Turn a folder into a manifest with ``label-refinery index imagefolder:ROOT
--manifest FILE.csv``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError, brief
from ..files import read_csv
from .base import ImageDataset
from .sources import (
    TableSource,
    cached_sizes,
    class_ids,
    digest,
    header_size,
    read_class_list,
    sibling_splits,
    table_dataset,
)

COLUMNS = ("path", "label")


class ManifestSource(TableSource):
    """One split of a manifest: ``paths[i]`` (as resolved), ``targets[i]``, sizes when given."""

    files = True

    def __init__(self, where: str, rows: dict, classes: list[str], targets: np.ndarray):
        self.where, self.classes, self.targets = where, classes, targets
        self.paths = np.array([p.encode() for p in rows["path"]], dtype=bytes)
        self.sizes = rows.get("sizes")
        self.base_digest = digest("manifest", rows["written"], targets, self.sizes if self.sizes is not None else "")

    def name(self, position: int) -> str:
        return self.paths[position].decode()

    def open(self, position: int) -> Image.Image:
        return Image.open(self.name(position))

    def image_sizes(self) -> np.ndarray:
        if self.sizes is None:
            self.sizes = cached_sizes(self.base_digest, len(self), lambda: [header_size(p.decode(), p.decode()) for p in self.paths])
        return self.sizes


def _read_table(path: Path) -> dict[str, list[str]]:
    """The manifest's columns as lists of text."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("a Parquet manifest needs pyarrow: pip install pyarrow (or write the manifest as CSV)") from None
        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for damaged files
            raise UserError(f"manifest {path}: not a readable Parquet file ({err})") from None
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise UserError(f"manifest {path} lacks the column(s) {', '.join(missing)} (its columns: {brief(table.column_names)})")
        return {c: ["" if v is None else str(v) for v in table.column(c).to_pylist()] for c in table.column_names}
    if path.suffix.lower() != ".csv":
        raise UserError(f"manifest {path}: expected a .csv or .parquet file")
    rows = read_csv(path, "manifest", COLUMNS, fix=" (columns: path, label, optional width, height, split)")
    header = list(rows[0][1]) if rows else list(COLUMNS)
    return {c: [r[c] for _, r in rows] for c in header}


def _split_rows(path: Path) -> dict[str, dict]:
    """``{split: {"path", "label", "written", "sizes"}}`` of a manifest (and its sibling files)."""
    table = _read_table(path)
    if "split" in table:
        names = table["split"]
        groups = {s: [i for i, v in enumerate(names) if v == s] for s in dict.fromkeys(names)}
        return {s: _rows(path, table, rows) for s, rows in groups.items()}
    out = {}
    for split, file in sibling_splits(path).items():
        t = table if file == path else _read_table(file)
        out[split] = _rows(file, t, range(len(t["path"])))
    return out


def _rows(file: Path, table: dict, rows) -> dict:
    rows = list(rows)
    if not rows:
        raise UserError(f"manifest {file}: a split without rows")
    written = [table["path"][i] for i in rows]
    base = file.parent.resolve()
    resolved = [p if os.path.isabs(p) else str(base / p) for p in written]
    out = {"path": resolved, "label": [table["label"][i] for i in rows], "written": np.array(written, dtype=str)}
    if ("width" in table) != ("height" in table):
        raise UserError(f"manifest {file}: give both width and height columns, or neither")
    if "width" in table:
        try:
            out["sizes"] = np.array([[int(table["height"][i]), int(table["width"][i])] for i in rows], dtype=np.int64)
        except ValueError:
            raise UserError(f"manifest {file}: width and height must be whole numbers of pixels") from None
        if (out["sizes"] < 1).any():
            raise UserError(f"manifest {file}: width and height must be at least 1")
    for i, p in enumerate(resolved):
        if not os.path.isfile(p):
            raise UserError(f"manifest {file}, row {rows[i] + 1}: image {brief(p)} does not exist")
    return out


def load(arg: str, image_size: int | None = None, workers: int = 0) -> ImageDataset:
    """An :class:`ImageDataset` from a manifest (3 channels, ImageNet mean/std)."""
    path = Path(arg).expanduser()
    if not path.is_file():
        raise UserError(f"manifest: {path} does not exist")
    splits = _split_rows(path)
    names = list(splits)
    classes, targets = class_ids([splits[s]["label"] for s in names], read_class_list(path.parent), f"manifest {path}")
    sources = {s: ManifestSource(f"{path}:{s}", splits[s], classes, t) for s, t in zip(names, targets)}
    return table_dataset(f"manifest:{path}", classes, sources, image_size, workers)


__all__ = ["ManifestSource", "load"]
