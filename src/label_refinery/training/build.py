"""Choose and build a generation's label source from its config.

- no refinery, no store: :class:`GroundTruth` (generation 1);
- ``labels.store``: an existing store (:class:`StoredLabels`), checked against the run;
- a refinery with ``labels.source``:
  - ``live``: :class:`LiveRefinery`, a forward pass per step on the student's crop;
  - ``store``: bake the refinery's labels for this run's crops into ``FOLDER/labels`` (or into
    ``labels.store`` when one is named: a finished store there with the same settings is reused, so
    students that see the same crops share one bake), then train from it (same labels as live, up to
    the store's top-k and fp16 rounding);
  - ``static``: bake one label per image (its evaluation view) into ``FOLDER/static-labels``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from .. import distributed
from ..config import Config, refinery_paths, refinery_temperature
from ..data import CropSampler, ImageDataset
from ..data.mixing import Mix
from ..errors import UserError
from ..labels import GroundTruth, LiveRefinery, check_compatible, refinery_sha256
from ..labels.bake import BakeSpec, bake
from ..labels.crossfit import CrossFitRefinery
from ..labels.external import Options
from ..labels.store import StoredLabels
from ..losses import make_loss
from .dynamics import Dynamics
from .engine import Step
from .jitter import Jitter

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
    if cfg.refinery.cross_fit:  # fold models, each image labelled by the one that held it out
        refinery = CrossFitRefinery.from_checkpoints(
            refinery_paths(cfg), device, cfg.channels_last, train=ds.train, data=cfg.data,
            temperature=refinery_temperature(cfg),
        )  # fmt: skip
    else:
        refinery = LiveRefinery.from_checkpoints(
            refinery_paths(cfg), device, cfg.channels_last, temperature=refinery_temperature(cfg),
            bn_train=cfg.refinery.bn_train, ds=ds, options=Options.of(cfg.refinery), log=log,
        )  # fmt: skip
    check_compatible(refinery, ds)
    theirs = refinery.provenance.get("dataset_fingerprint")
    if theirs and theirs != fingerprint:
        log(
            f"note: the refinery {cfg.refinery.path} was trained on other data than this run's (dataset fingerprints differ)"
        )
    return refinery


def bake_spec(
    cfg: Config, ds: ImageDataset, sampler: CropSampler | None, *, batch_size: int = 512, bf16: bool = False
) -> BakeSpec:
    """The label store a run bakes with ``sampler`` (None: static labels, one per image): the one
    place that reads the store's settings from the config. :func:`bake_labels` adds the provenance."""
    return BakeSpec(
        num_classes=ds.num_classes,
        epochs=1 if sampler is None else cfg.optim.epochs,
        top_k=min(cfg.store.top_k, ds.num_classes),
        prob_dtype=cfg.store.dtype,
        temperature=refinery_temperature(cfg),
        bf16=bf16,
        batch_size=batch_size,
        channels_last=cfg.channels_last,
    )


def bake_labels(
    ds: ImageDataset,
    refinery: LiveRefinery,
    out,
    spec: BakeSpec,
    *,
    sampler: CropSampler | None,
    device,
    fingerprint: str,
    progress: bool = False,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> dict:
    """Bake ``refinery``'s labels of the run's crops (``sampler=None``: one per image) into ``out`` as
    ``spec`` (:func:`bake_spec`) says: the one bake path of ``label-refinery bake`` and of
    ``train``/``chain`` with ``--label-source store|static``. Under torchrun every process calls it
    and labels its share of the batches. ``force``: bake into a folder that holds something else."""
    spec = replace(spec, provenance=store_provenance(refinery, fingerprint, ds.image_size))
    return bake(
        refinery.model,
        ds.train,
        out,
        spec,
        sampler=sampler,
        device=device,
        shard=distributed.shard(),
        progress=progress,
        log=log,
        force=force,
    )


def is_ground_truth(cfg: Config) -> bool:
    """Whether a generation learns the dataset's labels (no refinery, no store): generation 1."""
    return cfg.refinery.path is None and not cfg.labels.store


def build_step(cfg: Config, ds: ImageDataset, labels, scaler=None) -> Step:
    """The generation's training step: its loss (a temperature never applies to ground truth) and the
    batch transforms before labelling: mixing (mixing.py), then adversarial jittering (which attacks
    the live refinery)."""
    lab, transforms = cfg.labels, []
    if cfg.mix.kind != "off":  # config.validate refuses it with a label store
        transforms.append(Mix(cfg.mix.kind, cfg.mix.alpha, cfg.seed))
    if cfg.jitter.enabled:
        if is_ground_truth(cfg) or lab.store or lab.source != "live":
            raise UserError(
                "jitter needs a live refinery (--refinery CKPT, labels.source=live): it labels the jittered crops"
            )
        transforms.append(Jitter(cfg.jitter, labels, ds.mean, ds.std))
    temperature = 1.0 if is_ground_truth(cfg) else cfg.loss.temperature
    dynamics = Dynamics(ds.train.ids) if cfg.mix.kind == "off" else None  # a mixed image has no one margin
    loss = make_loss(temperature, cfg.loss.gt_weight)
    return Step(loss, _compose(transforms), cfg.channels_last, cfg.amp, scaler, dynamics)


def _compose(transforms: list):
    """The batch transforms in order; None for none."""
    if len(transforms) <= 1:
        return transforms[0] if transforms else None

    def composed(student, batch):
        for transform in transforms:
            batch = transform(student, batch)
        return batch

    return composed


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
            path,
            split=ds.train,
            num_classes=ds.num_classes,
            dataset_fingerprint=fingerprint,
            image_size=ds.image_size,
            sampler=sampler,
            epochs=cfg.optim.epochs,
            temperature=refinery_temperature(cfg),
            device=device,
            refinery_sha256=sha,
        )

    if lab.store and not (cfg.refinery.path and lab.source == "store"):
        return open_store(lab.store, refinery_sha256(cfg.refinery))
    if is_ground_truth(cfg):
        if lab.source != "live":
            raise UserError(f"labels.source={lab.source} needs a refinery: pass --refinery CKPT (or --labels STORE)")
        return GroundTruth(ds.num_classes, cfg.loss.label_smoothing)
    refinery = load_refinery(cfg, ds, device, fingerprint, log)
    if lab.source == "live":
        return refinery
    crops = None if lab.source == "static" else sampler  # static: one label per image
    store_dir = Path(lab.store) if lab.store else Path(folder) / STORE_DIRS[lab.source]
    # every process bakes its share of the batches (bake.py); rank 0 writes the manifest when all are done
    bake_labels(
        ds, refinery, store_dir, bake_spec(cfg, ds, crops), sampler=crops, device=device, fingerprint=fingerprint,
        progress=progress, log=log,
    )  # fmt: skip
    return open_store(store_dir, refinery.provenance["sha256"])
