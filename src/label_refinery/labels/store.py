"""The label store: refined labels baked to disk per (epoch, image), replayed without a refinery.

This module is the format and its reader (:class:`StoredLabels`); ``bake.py`` writes a store.

Layout of a store folder (a few memory-mapped arrays, never one file per image)::

    indices.npy     [E, N, K] top-k class indices: uint16 while classes fit (C <= 65,535), else int32
    probs.npy       [E, N, K] top-k probabilities: float16, or uint8 (round(p * 255))
    ids.npy         [N] int64 the images' dataset indices (row r holds image ids[r])
    bake.json       what is being baked (written first; a resumed bake must match it)
    progress.json   how far the bake got: (epoch, batches done), written after each flush
                    (progress.rank{r}of{w}.json per process when a torchrun group bakes)
    manifest.json   written last, the commit marker: spec, shapes, dtypes, format version, digests

E is the number of epochs (1 for static labels), N the training images, K the top-k. The crops are
not stored: the manifest holds the :class:`CropSampler` settings that replay them exactly, plus a
SHA-256 of every epoch's crops; training re-checks the first and the last epoch it uses, so labels
cannot silently belong to other crops (a changed sampler changes every epoch). At top-5 a crop costs 20 bytes (uint16 indices + float16 probabilities).

Integrity (issue 28): the manifest's ``array_digests`` hold a SHA-256 of ``ids.npy``'s array and of
every epoch's slice of ``indices.npy`` and ``probs.npy`` (their C-order bytes). :class:`StoredLabels`
checks, by default,

- on opening: every array's shape and dtype, and the digest of the ids (8 bytes per image);
- before the first lookup of each epoch: that epoch's two digests, every class index below C and
  every float16 probability finite and in [0, 1] (the range checks also hold for stores baked
  before the digests).

So no label is used before its epoch was checked: any edit of an epoch a run reads is refused
before its first batch. The cost is one sequential read and hash of each epoch used, once per
process: N x K x 4 bytes at top-5 fp16 (26 MB, tens of milliseconds, for ImageNet), the bytes
training reads from the store anyway. Epochs a run does not read are not checked; the full check,
:meth:`StoredLabels.verify` (``label-refinery verify STORE``), checks every epoch at once. Stores
baked before the digests open with their shape and range checks only.

Expansion rule (one rule, tested): the stored top-k probabilities are kept; the leftover mass
``1 - sum(top-k)`` is spread uniformly over the other ``C - K`` classes (a top-k entry that rounding
pushed below that share is raised to it, so the top-k never ranks below the rest); the row is then
renormalised to sum to 1 (which matters only where rounding moved the top-k sum, or K = C).

Quantisation bound: a stored probability is within ``delta`` of the refinery's (``delta = 2**-12``
for float16 on values <= 1, ``1/510`` for uint8), so after expansion each top-k entry is within
``(K + 1) * delta`` of the live label (tested).

Static labels (the paper's "dynamic vs static" ablation) are a store with E = 1 baked on the
evaluation view of each whole image; every crop of that image then gets the same label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.base import Batch, Split
from ..data.crops import CropSampler
from ..errors import UserError, brief
from ..files import read_json, sha256_bytes

FORMAT = "label-refinery-store/1"
ARRAYS = ("indices", "probs", "ids")
PROB_DTYPES = {"fp16": np.float16, "uint8": np.uint8}
DIGESTS = "array_digests"  # manifest key: {"ids": SHA-256, "indices": [one per epoch], "probs": [one per epoch]}
_REBAKE = "; bake the store again"


def index_dtype(num_classes: int) -> np.dtype:
    """Narrowest exact dtype for class indices."""
    return np.dtype(np.uint16) if num_classes <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def bytes_per_crop(num_classes: int, top_k: int, prob_dtype: str) -> int:
    return top_k * (index_dtype(num_classes).itemsize + np.dtype(PROB_DTYPES[prob_dtype]).itemsize)


def estimate_bytes(epochs: int, images: int, num_classes: int, top_k: int, prob_dtype: str) -> int:
    """Size of a store's arrays, in bytes."""
    return epochs * images * bytes_per_crop(num_classes, top_k, prob_dtype) + 8 * images


def sampler_spec(sampler: CropSampler | None) -> dict | None:
    if sampler is None:
        return None
    return {"seed": sampler.seed, "scale": list(sampler.scale), "ratio": list(sampler.ratio), "flip_p": sampler.flip_p}


def crop_digest(sampler: CropSampler, split: Split, epoch: int, sizes=None) -> str:
    """SHA-256 of the crops of every image of ``split`` in ``epoch`` (replay check).

    ``sizes``: ``split.image_sizes()``, to read image folders' headers once for many epochs.
    """
    import hashlib

    heights, widths = sizes if sizes is not None else split.image_sizes()
    crops = sampler.sample_batch(split.ids.numpy(), epoch, heights, widths)
    return hashlib.sha256(np.ascontiguousarray(crops).tobytes()).hexdigest()


def quantize(p: torch.Tensor, prob_dtype: str) -> np.ndarray:
    if prob_dtype == "uint8":
        return (p * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return p.to(torch.float16).cpu().numpy()


def dequantize(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.float() / 255.0 if a.dtype == np.uint8 else t.float()


def expand_topk(indices: torch.Tensor, probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Top-k ``[B, K]`` back to a distribution ``[B, C]`` by the module's expansion rule."""
    B, K = probs.shape
    rest = (1.0 - probs.sum(1, keepdim=True)).clamp_min(0.0)  # [B, 1]
    fill = rest / (num_classes - K) if num_classes > K else torch.zeros_like(rest)
    out = fill.expand(B, num_classes).clone()
    # a top-k entry rounded below the leftover share (uint8) must not rank under the other classes
    out.scatter_(1, indices.long(), torch.maximum(probs, fill))
    total = out.sum(1, keepdim=True)
    return torch.where(total > 0, out / total.clamp_min(1e-30), torch.full_like(out, 1.0 / num_classes))



def row_lookup(ids: np.ndarray) -> np.ndarray:
    """Dense map image id -> row of the store (-1 for ids not in it)."""
    lookup = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int64)
    lookup[ids] = np.arange(len(ids))
    return lookup


def open_array(path: Path, mode: str):
    """One of a store's arrays, memory-mapped; a truncated or corrupt file is a :class:`UserError`."""
    try:
        return np.load(path, mmap_mode=mode)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"label store array {path} is truncated or corrupt ({err}); bake the store again") from err



def _sha(a: np.ndarray) -> str:
    return sha256_bytes(np.ascontiguousarray(a).data)


def array_digests(folder: str | Path, epochs: int) -> dict:
    """The manifest's ``array_digests`` of the store's arrays on disk: SHA-256 of ``ids`` and of each
    epoch's ``indices`` and ``probs`` (one read of the store)."""
    folder = Path(folder)
    indices, probs = open_array(folder / "indices.npy", "r"), open_array(folder / "probs.npy", "r")
    return {"ids": _sha(open_array(folder / "ids.npy", "r")), "indices": [_sha(indices[e]) for e in range(epochs)],
            "probs": [_sha(probs[e]) for e in range(epochs)]}  # fmt: skip


def read_manifest(path: str | Path) -> dict:
    """The manifest of the finished label store in folder ``path``; a missing, truncated or foreign
    one is a :class:`UserError` saying so."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        hint = (
            "the bake did not finish: re-run the same bake command to complete it"
            if (path / "bake.json").is_file()
            else "is this a label store folder?"
        )
        raise UserError(f"{path} has no manifest.json ({hint})")
    manifest = read_json(path / "manifest.json", "label store manifest", _REBAKE)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a label store of format {brief(FORMAT)}")
    return manifest


class StoredLabels:
    """Label source reading a baked store: the refined labels of ``(batch.epoch, batch.indices)``.

    Open it with :meth:`open`, which refuses a store that does not match the run. Each epoch is
    checked before its first lookup (the module docstring says what); :meth:`verify` checks all.
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        self.path = Path(path)
        self.manifest = m = read_manifest(self.path)
        self.indices, self.probs = open_array(self.path / "indices.npy", "r"), open_array(self.path / "probs.npy", "r")
        ids = open_array(self.path / "ids.npy", "r")
        try:
            shape, self.num_classes, self.static = tuple(m["shape"]), int(m["num_classes"]), m["views"] == "static"
            self.digests = m.get(DIGESTS)  # None: baked before the digests
            dtypes = (np.dtype(m["index_dtype"]), np.dtype(m["prob_dtype_numpy"]))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"label store manifest {self.path / 'manifest.json'} is incomplete ({brief(err)}){_REBAKE}") from None
        if self.indices.shape != shape or self.probs.shape != shape or ids.shape != (shape[1],):
            raise UserError(f"{self.path}: arrays do not have the manifest's shape {brief(shape)}{_REBAKE}")
        if (self.indices.dtype, self.probs.dtype) != dtypes or ids.dtype != np.int64:
            raise UserError(f"{self.path}: arrays do not have the manifest's dtypes {dtypes[0]}, {dtypes[1]}{_REBAKE}")
        self.ids = np.asarray(ids)
        if self.digests is not None and _sha(self.ids) != self.digests.get("ids"):
            raise UserError(f"label store array {self.path / 'ids.npy'} does not match its digest in manifest.json{_REBAKE}")
        if len(self.ids) and not (0 <= self.ids.min() and self.ids.max() < 1 << 40):
            raise UserError(f"label store array {self.path / 'ids.npy'} holds impossible image ids{_REBAKE}")
        self.lookup = row_lookup(self.ids)
        self.device = torch.device(device)
        self._checked: set[int] = set()

    def check_epoch(self, epoch: int) -> None:
        """Refuse epoch ``epoch`` unless its arrays match their digests, every class index is below C
        and every float16 probability is finite and in [0, 1] (once per epoch)."""
        if epoch in self._checked:
            return
        epochs = len(self.indices)
        if not 0 <= epoch < epochs:
            raise UserError(f"label store {self.path} holds epochs 0..{epochs - 1}, asked for epoch {epoch}")
        for name, array in (("indices", self.indices), ("probs", self.probs)):
            if self.digests is not None and _sha(array[epoch]) != self.digests[name][epoch]:
                raise UserError(
                    f"label store array {self.path / name}.npy, epoch {epoch}, does not match its digest in manifest.json "
                    f"(changed after the bake){_REBAKE}"
                )
        ind, p = self.indices[epoch], self.probs[epoch]  # [N, K] each
        for name, bad in (("indices", (ind >= self.num_classes) | (ind < 0)),
                          ("probs", None if p.dtype == np.uint8 else ~np.isfinite(p) | (p < 0) | (p > 1))):  # fmt: skip
            if bad is not None and bad.any():
                r, k = np.argwhere(bad)[0]
                what = f"class index {int(ind[r, k])}" if name == "indices" else f"probability {float(p[r, k])}"
                raise UserError(
                    f"label store array {self.path / name}.npy, epoch {epoch}, row {r} (image {self.ids[r]}): {what} is "
                    f"out of range (the store has {self.num_classes} classes; probabilities lie in [0, 1]){_REBAKE}"
                )
        self._checked.add(epoch)

    def verify(self) -> "StoredLabels":
        """The full check: :meth:`check_epoch` of every epoch the store holds; returns the store."""
        for epoch in range(len(self.indices)):
            self.check_epoch(epoch)
        return self

    @classmethod
    def open(
        cls,
        path,
        *,
        split: Split,
        num_classes: int,
        dataset_fingerprint: str,
        image_size: int,
        sampler: CropSampler,
        epochs: int,
        temperature: float = 1.0,
        device="cpu",
        refinery_sha256: str | None = None,
    ) -> "StoredLabels":
        """A store checked against the run: same data, classes, crops, enough epochs, same refinery."""
        store = cls(path, device)
        m, where = store.manifest, store.path
        sizes = split.image_sizes() if not store.static else None
        problems = []
        if m.get("dataset_fingerprint") != dataset_fingerprint:
            problems.append("it was baked for other data (dataset fingerprints differ)")
        if m.get("image_size") != image_size:
            problems.append(f"it was baked at image size {m.get('image_size')}, the run uses {image_size}")
        if m.get("temperature", 1.0) != temperature:
            problems.append(f"it was baked at temperature {m.get('temperature', 1.0)}, the run uses {temperature}")
        if m["num_classes"] != num_classes:
            problems.append(f"it has {m['num_classes']} classes, the dataset {num_classes}")
        if not np.array_equal(store.ids, split.ids.numpy()):
            problems.append("its images are not this run's training images")
        if refinery_sha256 and m.get("refinery_sha256") != refinery_sha256:
            problems.append("it was baked by another refinery than --refinery")
        if not store.static:
            if m["sampler"] != sampler_spec(sampler):
                problems.append(
                    f"its crops come from another sampler ({m['sampler']} there, {sampler_spec(sampler)} here: seed and crop settings must match)"
                )
            elif m["epochs"] < epochs:
                problems.append(f"it holds {m['epochs']} epochs, the run needs {epochs}")
            elif any(m["crop_digests"][e] != crop_digest(sampler, split, e, sizes) for e in {0, epochs - 1}):
                problems.append("replaying its crops gives other crops (a different label-refinery version?)")
        if problems:
            raise UserError(f"label store {where} does not match this run: " + "; ".join(problems))
        return store

    def __call__(self, batch: Batch) -> torch.Tensor:
        if batch.crop_numbers is not None and not self.static:
            raise UserError("a label store holds one crop per image and epoch: use data.crops_per_image 1 with it")
        return self._rows(batch.epoch, self.lookup[batch.indices.numpy()])  # open() checked the run's images

    def labels(self, epoch: int, indices) -> torch.Tensor:
        """The refined labels ``[B, C]`` of images ``indices`` (dataset ids) as cropped in ``epoch``
        (a static store: their one label, any epoch): what your own loop looks up (docs/own-loop.md)."""
        ids = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).reshape(-1)
        known = (ids >= 0) & (ids < len(self.lookup))
        known[known] = self.lookup[ids[known]] >= 0
        if not known.all():
            raise UserError(f"label store {self.path} holds no labels for image {int(ids[~known][0])} (it was baked for other images)")
        return self._rows(epoch, self.lookup[ids])

    def _rows(self, epoch: int, rows: np.ndarray) -> torch.Tensor:
        epoch = 0 if self.static else int(epoch)
        self.check_epoch(epoch)  # once per epoch: nothing is looked up before its digest was checked
        idx = torch.from_numpy(self.indices[epoch, rows].astype(np.int64)).to(self.device, non_blocking=True)  # [B, K]
        p = dequantize(self.probs[epoch, rows]).to(self.device, non_blocking=True)  # [B, K]
        return expand_topk(idx, p, self.num_classes)  # [B, C], expanded on the device: K values a row travel, not C

    def describe(self) -> dict:
        m = self.manifest
        return {
            "kind": "static" if self.static else "stored",
            "store": str(self.path),
            "path": m.get("refinery_path"),
            "sha256": m.get("refinery_sha256"),
            "model": m.get("refinery_model"),
            "generation": m.get("refinery_generation"),
            "temperature": m.get("temperature", 1.0),
            "top_k": m["top_k"],
            "prob_dtype": m["prob_dtype"],
        }
