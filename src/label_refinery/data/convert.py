"""A dataset of image files (an image folder or a manifest) written as a manifest or as WebDataset
shards: ``label-refinery index imagefolder:ROOT --manifest FILE.csv`` or ``--shards DIR``.

Both keep every image's position (the key of its crops and refined labels), its class and the
file's bytes (no re-encoding), so a run on the copy cuts the same crops from the same pixels as a
run on the folder. Shards are the split's files in order, ``--shard-size`` samples each, written
with webdataset's ``TarWriter``, with the wids index, the sizes sidecar and ``classes.txt`` beside
them. For a Hugging Face dataset, the library's own loader does it:
``datasets.load_dataset("imagefolder", data_dir=ROOT).save_to_disk(OUT)`` (its own image order).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_write, write_json
from .base import ImageDataset
from .shards import HINT, write_sidecar


def _file_splits(ds: ImageDataset) -> dict:
    """``{split name: DecodedSplit}`` of a dataset whose images are files."""
    splits = {"train": ds.train, "val": ds.test} if ds.val is None else {"train": ds.train, "val": ds.val, "test": ds.test}
    for split in splits.values():
        if not getattr(getattr(split, "source", None), "files", False):
            raise UserError(f"{ds.name}: only an image folder or a manifest (images as files) converts; this one is not")
    return splits


def write_manifest(ds: ImageDataset, out: Path) -> int:
    """One row per image (path, label, width, height, split); paths relative to ``out``'s folder
    when under it. Returns the number of rows."""
    rows, home = [], out.parent.resolve()
    for name, split in _file_splits(ds).items():
        h, w = split.image_sizes()
        for i, t in enumerate(split.targets.tolist()):
            path = os.path.abspath(split.path(i))
            rel = os.path.relpath(path, home)
            rows.append({"path": path if rel.startswith("..") else rel, "label": ds.classes[t],
                         "width": int(w[i]), "height": int(h[i]), "split": name})  # fmt: skip
    if out.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), sink)
        atomic_write(out, sink.getvalue().to_pybytes())
    elif out.suffix.lower() == ".csv":
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(out, buf.getvalue().encode())
    else:
        raise UserError(f"--manifest {out}: name a .csv or .parquet file")
    return len(rows)


def write_shards(ds: ImageDataset, out: Path, shard_size: int = 1000, progress=None) -> list[Path]:
    """The dataset as WebDataset shards in ``out`` (``SPLIT-000000.tar``...), with ``SPLIT.json``
    (wids index), ``SPLIT.sizes.npz`` and ``classes.txt``. Returns the index files."""
    try:
        import webdataset as wds
    except ImportError:
        raise UserError(f"--shards needs {HINT}") from None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "classes.txt", "".join(f"{c}\n" for c in ds.classes).encode())
    indexes = []
    for name, split in _file_splits(ds).items():
        h, w = split.image_sizes()
        keys, shardlist, nbytes, n = [], [], [], len(split)
        for start in range(0, n, shard_size):
            tar = out / f"{name}-{start // shard_size:06d}.tar"
            part = tar.with_name(f".{tar.name}.tmp")
            with wds.TarWriter(str(part)) as sink:
                for i in range(start, min(n, start + shard_size)):
                    path = split.path(i)
                    key = f"{int(split.ids[i]):09d}"
                    kind = Path(path).suffix.lower().lstrip(".").replace("jpeg", "jpg") or "img"
                    sink.write({"__key__": key, kind: Path(path).read_bytes(), "cls": str(int(split.targets[i]))})
                    keys.append((key, kind))
                    if progress is not None:
                        progress(1)
            part.replace(tar)
            shardlist.append({"url": tar.name, "nsamples": min(n, start + shard_size) - start, "filesize": tar.stat().st_size})
            nbytes.append(tar.stat().st_size)
        index = out / f"{name}.json"
        write_json(index, {"wids_version": 1, "name": f"{ds.name}:{name}", "shardlist": shardlist})
        write_sidecar(index, [k for k, _ in keys], [str(int(t)) for t in split.targets.tolist()],
                      np.stack([h, w], axis=1), [k for _, k in keys], nbytes)  # fmt: skip
        indexes.append(index)
    return indexes


__all__ = ["write_manifest", "write_shards"]
