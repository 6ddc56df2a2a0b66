"""Refined labels as a dataset artifact: ``label-refinery export RUN --format csv|npz|parquet|hf``,
and a label store as a table: ``label-refinery export STORE --format parquet|hf``.

One row per training image (its evaluation view): the dataset index, the given label, and one
generation's top-k refined classes with their probabilities; ``npz`` also holds the full ``[N, C]``
matrix, the shape cleanlab's ``pred_probs`` takes; ``hf`` is a Hugging Face dataset folder
(``datasets.load_from_disk``), class columns as ``ClassLabel``. A label store becomes one row per
(epoch, image): ``epoch``, ``index`` and the top-k ``classes`` and ``probs`` as lists; its crops are
not rows but the sampler settings in the table's metadata (``label_refinery`` key), which replay
them (``CropSampler(**sampler).sample(index, epoch, height, width)``).
"""

from __future__ import annotations

import csv
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, brief
from ..files import atomic_write, csv_cell
from ..locks import claim_file
from .probe import load_run, refined


def write_csv(path: Path, rows) -> int:
    """Stream ``rows`` (dicts) into ``path`` through a temporary file; returns how many say "wrong"."""
    tmp = path.with_name(f".{path.name}.tmp")
    wrong = 0
    with open(tmp, "w", newline="") as f:
        writer = None
        for r in rows:
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(r))
                writer.writeheader()
            writer.writerow({k: csv_cell(v) for k, v in r.items()})  # no cell a spreadsheet would run
            wrong += str(r.get("reasons", "")).startswith("wrong")
    tmp.replace(path)
    return wrong


@torch.no_grad()
def export_run(
    run: str | Path,
    out: str | Path,
    *,
    fmt: str = "csv",
    generation: int | None = None,
    top_k: int = 5,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = False,
    force: bool = False,
) -> Path:
    """Per training image (evaluation view): the top-k refined classes and probabilities of one
    generation (default: the last); ``npz`` also holds the full ``[N, C]`` matrix, the shape
    cleanlab's ``pred_probs`` takes. These are in-sample probabilities (the models saw these images),
    which makes label-issue finders more lenient than out-of-sample ones. Formats: csv, npz,
    parquet (needs pyarrow). An existing ``out`` is replaced only with ``force``."""
    if fmt not in FORMATS:
        raise UserError(f"export format must be {', '.join(FORMATS)}, got {brief(fmt)}")
    _needs(fmt)
    if (Path(run) / "manifest.json").is_file() and (Path(run) / "probs.npy").is_file():
        return export_store(run, out, fmt=fmt, force=force)
    gens, models, ds, _ = load_run(run, device)
    g = len(gens) - 1 if generation is None else generation - 1
    if not 0 <= g < len(gens):
        raise UserError(f"{run} has generations 1..{len(gens)}, not {generation}")
    k = min(top_k, ds.num_classes)
    with _claim(out, fmt, force) as out:  # one writer; an existing file only with force
        batches = refined([models[g]], ds.train, batch_size=batch_size, device=device, progress=progress, desc="export")
        if fmt == "npz":
            _write_npz(out, batches, len(ds.train), k, ds.classes)
            return out
        ids, ys, tops = [], [], []
        for i, y, p in batches:
            ids.append(i)
            ys.append(y)
            tops.append(p[0].topk(k, 1))
        _write_table(out, fmt, torch.cat(ids), torch.cat(ys), tops, k, ds.classes)
    return out


def _write_npz(out: Path, batches, n: int, k: int, classes: list[str]) -> None:
    """The full ``[N, C]`` matrix (cleanlab's ``pred_probs``) with ids, targets and the top-k. The
    matrix streams through a memory-mapped temporary ``.npy`` beside ``out`` (a million images x
    1,000 classes: 4 GB on disk, not in memory), then into the zip, which numpy writes in chunks."""
    tmp = out.with_name(f".{out.name}.probs.npy")
    probs = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, len(classes)))
    ids, ys = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    top_idx, top_prob = np.zeros((n, k), dtype=np.int64), np.zeros((n, k), dtype=np.float32)
    start = 0
    for i, y, p in batches:  # in index order
        s = slice(start, start + len(i))
        probs[s], ids[s], ys[s] = p[0].numpy(), i.numpy(), y.numpy()
        t = p[0].topk(k, 1)
        top_idx[s], top_prob[s] = t.indices.numpy(), t.values.numpy()
        start += len(i)
    probs.flush()
    part = out.with_name(f".{out.name}.tmp")
    try:
        with open(part, "wb") as f:
            np.savez_compressed(f, ids=ids, targets=ys, probs=probs, top_idx=top_idx, top_prob=top_prob,
                                classes=np.array(classes))  # fmt: skip
        part.replace(out)
    finally:
        del probs
        tmp.unlink(missing_ok=True)
        part.unlink(missing_ok=True)


FORMATS = ("csv", "npz", "parquet", "hf")


def _needs(fmt: str) -> None:
    module, extra = {"parquet": ("pyarrow", "parquet"), "hf": ("datasets", "hf")}.get(fmt, (None, None))
    if module is None:
        return
    try:
        __import__(module)
    except ImportError:
        raise UserError(f"{fmt} export needs {module}: pip install 'label-refinery[{extra}]' (or use --format csv/npz)") from None


@contextmanager
def _claim(out, fmt: str, force: bool):
    """The output: a file (claimed), or for ``hf`` a folder that ``datasets`` writes, replaced only with ``force``."""
    if fmt != "hf":
        with claim_file(out, force=force) as path:
            yield path
        return
    out = Path(out)
    if out.exists() and not (force and (out / "dataset_info.json").is_file()):
        raise UserError(f"{out} exists: pass --force to replace it (a saved dataset only), or another --out")
    with claim_file(out.with_name(out.name + ".parts"), force=True) as part:
        shutil.rmtree(part, ignore_errors=True)  # what a crashed export left
        yield part
        if out.exists():
            shutil.rmtree(out)
        part.replace(out)


def _save_hf(out: Path, columns: dict, classes: list[str]) -> None:
    """``columns`` as a saved Hugging Face dataset: class-name columns as ``ClassLabel`` (their ids)."""
    import datasets

    code = {c: i for i, c in enumerate(classes)}
    feats = {}
    for name in columns:
        if name == "given" or name.startswith("class_"):
            columns[name] = [code[v] for v in columns[name]]
            feats[name] = datasets.ClassLabel(names=classes)
        else:
            feats[name] = datasets.Value("float32" if name.startswith("prob_") else "int64")
    datasets.Dataset.from_dict(columns, features=datasets.Features(feats)).save_to_disk(str(out))


def export_store(store: str | Path, out: str | Path, *, fmt: str = "parquet", force: bool = False) -> Path:
    """A label store as one row per (epoch, image): epoch, index, top-k classes and probs (lists);
    the manifest (sampler settings, refinery, dataset fingerprint) in the table's metadata."""
    from ..labels.store import StoredLabels, dequantize

    if fmt not in ("parquet", "hf"):
        raise UserError(f"a label store exports as parquet or hf, not {fmt}")
    _needs(fmt)
    labels = StoredLabels(store)
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {k: v for k, v in labels.manifest.items() if k not in ("digests",)}
    schema = pa.schema([("epoch", pa.int32()), ("index", pa.int64()), ("classes", pa.list_(pa.int32())),
                        ("probs", pa.list_(pa.float32()))], metadata={"label_refinery": json.dumps(meta)})  # fmt: skip
    with _claim(out, fmt, force) as path:
        target = path if fmt == "parquet" else path.with_name(path.name + ".parquet")
        tmp = target.with_name(f".{target.name}.tmp")
        with pq.ParquetWriter(tmp, schema) as writer:
            for epoch in range(len(labels.indices)):
                labels.check_epoch(epoch)  # a changed store does not leave this machine unnoticed
                idx, p = np.asarray(labels.indices[epoch]), dequantize(np.array(labels.probs[epoch])).numpy()
                writer.write_table(pa.table({"epoch": np.full(len(idx), epoch, dtype=np.int32), "index": labels.ids,
                                             "classes": list(idx.astype(np.int32)), "probs": list(p.astype(np.float32))},
                                            schema=schema))  # fmt: skip
        tmp.replace(target)
        if fmt == "hf":
            import datasets

            try:
                ds = datasets.Dataset.from_parquet(str(target))
                ds.info.description = json.dumps({"label_refinery": meta})
                ds.save_to_disk(str(path))
            finally:
                target.unlink(missing_ok=True)
    return Path(out)


def _write_table(
    out: Path, fmt: str, ids: torch.Tensor, y: torch.Tensor, tops: list, k: int, classes: list[str]
) -> None:
    """One row per image: index, given label, then class and probability of each of the top k (csv, parquet)."""
    idx = torch.cat([t.indices for t in tops])
    val = torch.cat([t.values for t in tops])
    columns = {"index": ids.tolist(), "given": [classes[int(t)] for t in y]}
    for j in range(k):
        columns[f"class_{j + 1}"] = [classes[int(t)] for t in idx[:, j]]
        columns[f"prob_{j + 1}"] = [round(float(v), 6) for v in val[:, j]]
    if fmt == "csv":
        write_csv(out, (dict(zip(columns, vals)) for vals in zip(*columns.values())))
        return
    if fmt == "hf":
        _save_hf(out, columns, classes)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    atomic_write(out, sink.getvalue().to_pybytes())


__all__ = ["FORMATS", "export_run", "export_store", "write_csv"]
