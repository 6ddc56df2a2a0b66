"""Writing a label store (the layout and the format are in ``store.py``): :func:`bake`.

A bake writes ``bake.json`` (what is being baked) and the arrays first, then labels every (epoch,
batch) of crops in order, flushing the arrays and recording its progress (``progress.json``: epoch,
batches done, batch size) at least every :data:`FLUSH_SECONDS`; ``manifest.json``, written last,
marks the store finished.

Resume: re-running an interrupted bake with the same settings (``bake.json`` must match, the
refinery's path spelling aside) reopens the arrays and continues at the last flushed batch; with
another batch size it redoes that epoch, and with another number of processes it restarts at the
first epoch some process had not finished. A finished store with the same settings is reused as it
is; one with other settings is refused.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..data.base import Batch, Split
from ..data.crops import CropSampler
from ..errors import UserError, brief
from ..files import read_json, write_json
from ..locks import claim
from . import refine
from .store import (
    ARRAYS,
    DIGESTS,
    FORMAT,
    PROB_DTYPES,
    array_digests,
    crop_digest,
    estimate_bytes,
    index_dtype,
    open_array,
    quantize,
    read_manifest,
    row_lookup,
    sampler_spec,
)

FLUSH_SECONDS = 30.0  # an interrupted bake loses at most this much work


def _comparable(spec: dict) -> dict:
    """The settings that define a store's content (a refinery's path may be spelled many ways; its SHA-256 counts)."""
    keys = set(spec) - {"refinery_path", "shape", "crop_digests", "array_digests", "created", "bake_images_per_s", "processes"}
    return {k: spec.get(k) for k in keys}


class _Bake:
    """State of one bake: the arrays opened for writing and this process's progress marker.

    With ``world`` processes (torchrun), rank 0 creates or checks the arrays, then every rank opens
    them and labels the epoch's batches ``b`` with ``b % world == rank`` (the batches of a
    one-process bake, dealt out in turn), writing its rows into the same memory-mapped files (one
    machine, or a file system whose shared writes are coherent). Each rank's progress is its own
    file (``progress.json`` alone, ``progress.rank{r}of{w}.json`` with several); a bake resumed
    with another number of processes restarts at the first epoch some rank had not finished.
    """

    def __init__(self, out: Path, spec: dict, ids: np.ndarray, shard: tuple[int, int] = (0, 1)):
        self.out, self.spec, (self.rank, self.world) = out, spec, shard
        shape = (spec["epochs"], len(ids), spec["top_k"])
        resuming = (out / "bake.json").is_file() and all((out / f"{a}.npy").is_file() for a in ARRAYS)
        if self.rank == 0:
            self._create_or_check(out, spec, ids, shape, resuming)
        if self.world > 1:
            distributed.barrier()  # the arrays exist (a rank-0 error stops the whole group)
        if self.rank or resuming:
            self.indices, self.probs = open_array(out / "indices.npy", "r+"), open_array(out / "probs.npy", "r+")
            if self.indices.shape != shape or self.probs.shape != shape:
                raise UserError(f"{out} has arrays of the wrong shape for this bake; delete it and bake again")
        self.epoch, self.batch, self.batch_size = _resume_point(out, self.rank, self.world) if resuming else (0, 0, None)

    def _create_or_check(self, out: Path, spec: dict, ids: np.ndarray, shape, resuming: bool) -> None:
        if resuming:
            if _comparable(read_json(out / "bake.json", "bake progress", "; delete the folder to bake again")) != _comparable(spec):
                raise UserError(
                    f"{out} holds an unfinished bake with other settings; delete it or bake into another folder"
                )
            if not np.array_equal(np.load(out / "ids.npy"), ids):
                raise UserError(
                    f"{out} holds an unfinished bake of other images; delete it or bake into another folder"
                )
            return
        for old in _progress_files(out):  # progress of arrays we are about to replace (our names only)
            old.unlink()
        write_json(out / "bake.json", spec)
        np.save(out / "ids.npy", ids)
        fmt = np.lib.format
        self.indices = fmt.open_memmap(out / "indices.npy", "w+", np.dtype(spec["index_dtype"]), shape)
        self.probs = fmt.open_memmap(out / "probs.npy", "w+", np.dtype(spec["prob_dtype_numpy"]), shape)
        self.indices.flush()
        self.probs.flush()

    def fill(
        self,
        model,
        split: Split,
        sampler: CropSampler | None,
        batch_size: int,
        device,
        channels_last: bool,
        progress: bool,
    ) -> int:
        """Label the remaining (epoch, batch) crops of this rank into the arrays; returns how many images."""
        spec, rows_of = self.spec, row_lookup(split.ids.numpy())
        if self.batch_size not in (None, batch_size):  # batches were counted in another size: redo the epoch
            self.batch = 0
        self.batch_size = batch_size
        initial = self.epoch * len(split) + min(self.batch * batch_size, len(split))
        bar = tqdm(
            total=spec["epochs"] * len(split),
            initial=initial,
            desc="bake",
            unit="img",
            disable=not progress,
            dynamic_ncols=True,
        )
        done, last_flush = 0, time.perf_counter()
        for epoch in range(self.epoch, spec["epochs"]):
            first = self.batch if epoch == self.epoch else 0
            first += (self.rank - first) % self.world  # this rank's first batch from there
            batches = split.iter_batches(batch_size, epoch=epoch, crops=sampler, device=device, start_batch=first,
                                         batch_stride=(self.rank, self.world))  # fmt: skip
            for b, batch in zip(range(first, 1 << 62, self.world), batches):
                probs = _refine(model, batch, channels_last, spec["bf16"], spec["temperature"])  # [B, C]
                top = probs.topk(spec["top_k"], dim=1)
                rows = rows_of[batch.indices.numpy()]  # [B]
                self.indices[epoch, rows] = top.indices.cpu().numpy().astype(self.indices.dtype)
                self.probs[epoch, rows] = quantize(top.values, spec["prob_dtype"])
                done += len(rows)
                bar.update(len(rows) * self.world)  # the others label alongside
                if time.perf_counter() - last_flush >= FLUSH_SECONDS:
                    self.flush(epoch, b + 1)
                    last_flush = time.perf_counter()
            self.flush(epoch + 1, 0)
        bar.close()
        return done

    def flush(self, epoch: int, batch: int) -> None:
        self.indices.flush()
        self.probs.flush()
        state = {"epoch": epoch, "batch": batch, "batch_size": self.batch_size}
        write_json(_progress_file(self.out, self.rank, self.world), state)  # the file's name says the world

    def wait_for_ranks(self, poll_s: float = 1.0) -> None:
        """Rank 0: until every rank has flushed its last epoch (a file, not a collective: no timeout)."""
        for r in range(1, self.world):
            path = _progress_file(self.out, r, self.world)
            while not (path.is_file() and _read_json(path).get("epoch") == self.spec["epochs"]):
                time.sleep(poll_s)


def _progress_file(out: Path, rank: int, world: int) -> Path:
    return out / ("progress.json" if world == 1 else f"progress.rank{rank}of{world}.json")


_PROGRESS = re.compile(r"progress(\.rank\d+of\d+)?\.json")  # the names _progress_file gives, no others


def _progress_files(out: Path) -> list[Path]:
    """The progress files a bake wrote into ``out`` (a user's own ``progress-notes.json`` is not one)."""
    return sorted(p for p in out.glob("progress*.json") if _PROGRESS.fullmatch(p.name))


def _read_json(path: Path) -> dict:
    """Another rank's progress file, tolerantly: missing or being replaced reads as ``{}`` (again later)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # being replaced: read again later
        return {}


def _resume_point(out: Path, rank: int, world: int) -> tuple[int, int, int | None]:
    """``(epoch, next batch, batch size)`` of this rank's earlier progress; with another number of
    processes than before, the first epoch that some earlier process had not finished, from batch 0."""
    mine = _progress_file(out, rank, world)
    if mine.is_file():
        p = _read_json(mine)
        return p.get("epoch", 0), p.get("batch", 0), p.get("batch_size")
    others = [_read_json(f) for f in _progress_files(out)]
    return (min((p.get("epoch", 0) for p in others), default=0), 0, None)


@dataclass(frozen=True)
class BakeSpec:
    """The settings of one :func:`bake`: what the store holds and how its labels are computed.

    Everything but ``batch_size`` and ``channels_last`` is recorded in ``bake.json`` and the
    manifest (a bake resumes, and a finished store is reused, only with the same record).

    Example:
        >>> spec = BakeSpec(num_classes=10, epochs=10, prob_dtype="uint8")
        >>> spec.top_k, spec.batch_size
        (5, 512)
    """

    num_classes: int
    epochs: int  # of crops (the sampler's epochs 0..epochs-1); 1 for static labels
    top_k: int = 5  # classes kept per crop, 1..num_classes
    prob_dtype: str = "fp16"  # stored probabilities: "fp16" or "uint8" (PROB_DTYPES)
    temperature: float = 1.0  # of the refinery's softmax
    bf16: bool = False  # the refinery in bfloat16 autocast
    batch_size: int = 512  # images per refinery forward (a resumed bake may use another)
    channels_last: bool = True  # the refinery and its inputs in channels_last memory format
    provenance: dict | None = None  # manifest entries the reader checks: refinery, dataset fingerprint, image size


def bake(
    model: torch.nn.Module,
    split: Split,
    out: str | Path,
    spec: BakeSpec,
    *,
    sampler: CropSampler | None,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    progress: bool = False,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> dict:
    """Label every (epoch, image) crop of ``split`` with ``model`` and write a store; returns the manifest.

    ``sampler=None`` bakes static labels (one evaluation view per image, ``spec.epochs`` must be 1).
    Re-running an interrupted bake with the same arguments resumes at the last flushed batch; a
    finished store (manifest present) with the same settings is returned as is. ``shard = (rank,
    world)``: every process of a torchrun group calls this and labels its share (:class:`_Bake`);
    rank 0 writes the manifest once all are done, and every rank returns it. ``out`` must be new,
    empty or a label store (``force``: any folder), and no other process may be writing it
    (:func:`label_refinery.locks.claim`); a bake removes only the files it wrote.

    Example:
        >>> ref = load_checkpoint("runs/demo/gen1")                                       # doctest: +SKIP
        >>> bake(ref.build_model(), ds.train, "runs/store", BakeSpec(num_classes=10, epochs=10),  # doctest: +SKIP
        ...      sampler=CropSampler(1, (0.25, 1)))
    """
    out = Path(out)
    store_spec = _store_spec(split, sampler, spec)
    with claim(out, "store", force=force):  # under torchrun: rank 0 holds it, every rank hears a refusal
        if (out / "manifest.json").is_file():
            return _finished_store(out, store_spec, log)
        return _bake_held(model, split, out, spec, store_spec, sampler, device, shard, progress, log)


def _bake_held(model, split: Split, out: Path, spec: BakeSpec, store_spec: dict, sampler, device, shard, progress, log) -> dict:
    """:func:`bake` while holding ``out``: label every crop not labelled yet, then the manifest (rank 0)."""
    state = _Bake(out, store_spec, split.ids.numpy(), shard)
    if state.epoch or state.batch:
        log(f"label store {out}: resuming at epoch {state.epoch + 1}, batch {state.batch}")
    model = model.requires_grad_(False).eval().to(device)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    done = state.fill(model, split, sampler, spec.batch_size, device, spec.channels_last, progress)
    if state.rank:
        distributed.wait_for(out / "manifest.json")  # rank 0 writes it when every rank is done
        return read_manifest(out)
    state.wait_for_ranks()
    manifest = _write_manifest(state, split, sampler, done, time.perf_counter() - start)
    log(
        f"label store {out}: {spec.epochs} x {len(split)} crops, top-{spec.top_k}, "
        f"{estimate_bytes(spec.epochs, len(split), spec.num_classes, spec.top_k, spec.prob_dtype) / 2**20:.1f} MiB"
        + (f", baked by {state.world} processes" if state.world > 1 else "")
    )
    return manifest


def _write_manifest(state: _Bake, split: Split, sampler: CropSampler | None, done: int, seconds: float) -> dict:
    """Rank 0, every rank done: the store's spec with its shape, crop digests, array digests (of the
    files, as every rank flushed them: one read of the store) and speed, written last."""
    sizes = split.image_sizes() if sampler is not None else None
    epochs = state.spec["epochs"]
    digests = [crop_digest(sampler, split, e, sizes) for e in range(epochs)] if sampler is not None else None
    manifest = {**state.spec, "shape": list(state.indices.shape), "crop_digests": digests, "processes": state.world,
                DIGESTS: array_digests(state.out, epochs),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "bake_images_per_s": done * state.world / seconds if done else None}  # fmt: skip
    write_json(state.out / "manifest.json", manifest)
    return manifest


def _finished_store(out: Path, spec: dict, log: Callable[[str], None]) -> dict:
    """A store baked earlier with the same settings, reused as it is; another one is refused."""
    manifest = read_manifest(out)  # a damaged one is one clear line
    if _comparable(manifest) != _comparable(spec):
        raise UserError(f"{out} holds a finished label store with other settings; delete it or bake into another folder")
    log(f"label store {out}: finished earlier, reusing it")
    return manifest


def _store_spec(split: Split, sampler: CropSampler | None, spec: BakeSpec) -> dict:
    """What a store holds (the manifest without its results), checked before baking."""
    epochs, top_k, num_classes, prob_dtype = spec.epochs, spec.top_k, spec.num_classes, spec.prob_dtype
    if sampler is None and epochs != 1:
        raise ValueError("static labels have one epoch")
    if not 1 <= top_k <= num_classes:
        raise UserError(f"top_k must be in 1..{num_classes}, got {top_k}")
    if prob_dtype not in PROB_DTYPES:
        raise UserError(f"prob_dtype must be one of {', '.join(PROB_DTYPES)}, got {brief(prob_dtype)}")
    return {
        "format": FORMAT,
        "views": "crops" if sampler is not None else "static",
        "sampler": sampler_spec(sampler),
        "epochs": epochs,
        "top_k": top_k,
        "num_classes": num_classes,
        "images": len(split),
        "index_dtype": index_dtype(num_classes).name,
        "prob_dtype": prob_dtype,
        "prob_dtype_numpy": np.dtype(PROB_DTYPES[prob_dtype]).name,
        "bf16": spec.bf16,
        "temperature": spec.temperature,
        **(spec.provenance or {}),
    }


def _refine(model: torch.nn.Module, batch: Batch, channels_last: bool, bf16: bool, temperature: float) -> torch.Tensor:
    images = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images
    with torch.inference_mode(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        return refine(model, images, temperature)

