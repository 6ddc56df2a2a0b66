"""Choose and build a generation's label source from its config.

- no refinery, no store: :class:`GroundTruth` (generation 1);
- ``labels.store``: an existing store (:class:`StoredLabels`), checked against the run;
- a refinery with ``labels.source``:
  - ``live``: :class:`LiveRefinery`, a forward pass per step on the student's crop;
  - ``store``: bake the refinery's labels for this run's crops into ``FOLDER/labels``, then train
    from it (same labels as live, up to the store's top-k and fp16 rounding);
  - ``static``: bake one label per image (its evaluation view) into ``FOLDER/static-labels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .. import distributed
from ..checkpoint import resolve, sha256_file
from ..config import Config
from ..data import CropSampler, ImageDataset
from ..errors import UserError
from . import GroundTruth, LiveRefinery, check_compatible
from .store import StoredLabels, bake

STORE_DIRS = {"store": "labels", "static": "static-labels"}


def store_provenance(refinery: LiveRefinery, fingerprint: str, image_size: int) -> dict:
    p = refinery.provenance
    return {
        "refinery_path": p.get("path"),
        "refinery_sha256": p.get("sha256"),
        "refinery_model": p.get("model"),
        "refinery_generation": p.get("generation"),
        "dataset_fingerprint": fingerprint,
        "image_size": image_size,
    }


def load_refinery(cfg: Config, ds: ImageDataset, device, fingerprint: str, log: Callable[[str], None]) -> LiveRefinery:
    refinery = LiveRefinery.from_checkpoint(
        cfg.refinery, device, cfg.channels_last, temperature=cfg.labels.temperature, bn_train=cfg.labels.refinery_bn_train
    )
    check_compatible(refinery, ds)
    theirs = refinery.provenance.get("dataset_fingerprint")
    if theirs and theirs != fingerprint:
        log(f"note: the refinery {cfg.refinery} was trained on other data than this run's (dataset fingerprints differ)")
    return refinery


def build_label_source(
    cfg: Config,
    ds: ImageDataset,
    *,
    folder: Path,
    sampler: CropSampler,
    device: torch.device,
    fingerprint: str,
    log: Callable[[str], None] = print,
    progress: bool = False,
):
    """The label source of one generation (see the module docstring)."""
    lab = cfg.labels

    def open_store(path, sha: str | None) -> StoredLabels:
        return StoredLabels.open(
            path, split=ds.train, num_classes=ds.num_classes, dataset_fingerprint=fingerprint, image_size=ds.image_size,
            sampler=sampler, epochs=cfg.optim.epochs, temperature=lab.temperature, device=device, refinery_sha256=sha,
        )

    if lab.store:
        return open_store(lab.store, sha256_file(resolve(cfg.refinery)) if cfg.refinery else None)
    if cfg.refinery is None:
        if lab.source != "live":
            raise UserError(f"labels.source={lab.source} needs a refinery: pass --refinery CKPT (or --labels STORE)")
        return GroundTruth(ds.num_classes, lab.label_smoothing)
    refinery = load_refinery(cfg, ds, device, fingerprint, log)
    if lab.source == "live":
        return refinery
    static = lab.source == "static"
    store_dir = Path(folder) / STORE_DIRS[lab.source]
    if distributed.is_main():  # one process bakes; under torchrun the others wait for its manifest
        bake(
            refinery.model, ds.train, store_dir, num_classes=ds.num_classes, sampler=None if static else sampler,
            epochs=1 if static else cfg.optim.epochs, top_k=min(lab.top_k, ds.num_classes), prob_dtype=lab.store_dtype,
            device=device, channels_last=cfg.channels_last, temperature=lab.temperature,
            provenance=store_provenance(refinery, fingerprint, ds.image_size), progress=progress, log=log,
        )
    distributed.wait_for(store_dir / "manifest.json")
    return open_store(store_dir, refinery.provenance["sha256"])
