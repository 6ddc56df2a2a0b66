"""Refined labels as a dataset artifact: ``label-refinery export RUN --format csv|npz|parquet``.

One row per training image (its evaluation view): the dataset index, the given label, and one
generation's top-k refined classes with their probabilities; ``npz`` also holds the full ``[N, C]``
matrix, the shape cleanlab's ``pred_probs`` takes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
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
    if fmt not in ("csv", "npz", "parquet"):
        raise UserError(f"export format must be csv, npz or parquet, got {fmt!r}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise UserError("parquet export needs pyarrow: pip install pyarrow (or use --format csv/npz)") from err
    gens, models, ds, _ = load_run(run, device)
    g = len(gens) - 1 if generation is None else generation - 1
    if not 0 <= g < len(gens):
        raise UserError(f"{run} has generations 1..{len(gens)}, not {generation}")
    k = min(top_k, ds.num_classes)
    with claim_file(out, force=force) as out:  # one writer; an existing file only with force
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    atomic_write(out, sink.getvalue().to_pybytes())


__all__ = ["export_run", "write_csv"]
