"""Train one generation into a folder, resumably.

Generation folder layout (files are the interface to analysis and reports)::

    config.yaml         the resolved config of this generation
    metrics.jsonl       one JSON line per epoch (train loss, train top-1 on crops, test top-1/5, ...)
    state.safetensors   model, optimizer, grad scaler, RNG, position (next epoch and step) and the
                        epoch's running metrics at the last checkpoint (deleted when done)
    model.safetensors   final weights (metadata in the header)
    meta.json           architecture, classes, dataset fingerprint, config, refinery provenance with
                        SHA-256, final metrics; written last: it marks the generation finished

Re-running with the same config skips a finished generation and resumes an unfinished one from its
last checkpoint: every epoch's end, and every ``save_every`` steps. Crops and batch order are pure
functions of (seed, epoch, index) and the LR is a function of the step, so a resumed run follows the
uninterrupted one's crops, schedule and (on CPU) weights bit for bit. Under torchrun every process
runs this; rank 0 alone writes (see :mod:`label_refinery.distributed`).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from . import __version__, distributed, state
from .checkpoint import (
    META,
    STATE,
    atomic_write,
    resolve,
    save_final,
    sha256_file,
)
from .config import Config, _merge, save_config, to_dict
from .data import CropSampler, ImageDataset, load_dataset
from .engine import Meters, evaluate, lr_schedule, make_optimizer, train_one_epoch
from .errors import UserError
from .jitter import Jitter
from .labels import GroundTruth, LiveRefinery
from .labels.build import build_label_source
from .models import check_input_size, check_model_name, count_parameters, create_model

# Keys that may change between a run and its resumption without changing its results.
_NOT_COMPARED = ("refinery", "device", "chain", "data.data_dir", "data.workers", "compile", "save_every", "eval_every")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available; under torchrun, each process's own GPU."""
    local = distributed.local_device(name)
    if local is not None:
        return local
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def crop_sampler(cfg: Config) -> CropSampler:
    """The training crops of a run: keyed by its seed, shaped by its data settings."""
    return CropSampler(cfg.seed, cfg.data.crop_scale, cfg.data.crop_ratio, 0.5 if cfg.data.flip else 0.0)


def resolve_seed(cfg: Config) -> Config:
    """``cfg`` with its seed decided: an explicit seed is kept; the default (``None``) is 0 on ground
    truth and the refinery's recorded seed + 1 with a refinery (or a named store's crop seed), as a
    chain offsets the seed per generation. Issue 13: a student sharing its refinery's seed would
    replay the refinery's initialisation, crops and batch order."""
    if cfg.seed is not None:
        return cfg
    seed = 0
    sidecar = resolve(cfg.refinery).parent / META if cfg.refinery else None
    if sidecar is not None and sidecar.is_file():  # a refinery from elsewhere, without meta.json: seed 1
        seed = int((json.loads(sidecar.read_text()).get("config") or {}).get("seed") or 0) + 1
    elif sidecar is not None:
        seed = 1
    elif cfg.labels.store and (Path(cfg.labels.store) / "manifest.json").is_file():  # the crops it was baked for
        seed = int(json.loads((Path(cfg.labels.store) / "manifest.json").read_text()).get("sampler", {}).get("seed") or 0)
    return replace(cfg, seed=seed)


def load_data(cfg: Config) -> ImageDataset:
    d = cfg.data
    return load_dataset(d.dataset, d.data_dir, d.image_size, d.train_subset, d.workers, d.val_split, d.label_noise, d.label_noise_seed)


def comparable(cfg_dict: dict) -> dict:
    out = json.loads(json.dumps(cfg_dict))
    for key in _NOT_COMPARED:
        node, *rest = key.split(".")
        if rest:
            out.get(node, {}).pop(rest[0], None)
        else:
            out.pop(node, None)
    return out


def has_progress(folder: Path) -> bool:
    """Whether ``folder`` holds a finished generation or an epoch checkpoint."""
    return (folder / META).is_file() or (folder / STATE).is_file()


def check_same_config(folder: Path, cfg: Config) -> None:
    """Refuse to resume (or skip) a run that was made with another config."""
    saved_path = folder / "config.yaml"
    if not saved_path.is_file():
        return
    # keys added to the config after the run was made count as their defaults (old runs still resume)
    saved = comparable(_merge(to_dict(Config()), yaml.safe_load(saved_path.read_text()) or {}))
    now = comparable(to_dict(cfg))
    if saved != now:
        diffs = _diff(saved, now)
        raise UserError(
            f"{folder} holds a run with another config ({'; '.join(diffs[:4])}). Use a new --out folder, "
            "or delete the old one to start over."
        )


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} there, {vb!r} now")
    return out


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def _metrics_upto(path: Path, last_epoch: int) -> list[dict]:
    """Keep metrics of epochs <= last_epoch (a crash may have logged an epoch it did not checkpoint,
    or cut the last line short)."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("epoch", last_epoch + 1) <= last_epoch:
            rows.append(row)
    atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    return rows


def _current_refinery_sha(cfg: Config) -> str | None:
    """SHA-256 of the refinery this config names: its checkpoint, or the one a named store was baked by."""
    if cfg.refinery:
        return sha256_file(resolve(cfg.refinery))
    if cfg.labels.store:
        manifest = Path(cfg.labels.store) / "manifest.json"
        return json.loads(manifest.read_text()).get("refinery_sha256") if manifest.is_file() else None
    return None


def _check_same_refinery(folder: Path, recorded: str | None, cfg: Config) -> None:
    """A generation's refinery must be the same file it was trained (or started) with."""
    current = _current_refinery_sha(cfg)
    if current != recorded:
        raise UserError(
            f"{folder} was trained with another refinery (SHA-256 {str(recorded)[:12]} there, {str(current)[:12]} now): "
            f"the refinery was retrained or replaced. Delete {folder} (and the generations after it) to retrain."
        )


def _final_meta(cfg: Config, ds: ImageDataset, student, generation: int, labels_info: dict, metrics: dict, fingerprint: str) -> dict:
    return {
        "generation": generation,
        "model": cfg.model,
        "parameters": count_parameters(student),
        "in_chans": ds.in_chans,
        "classes": ds.classes,
        "image_size": ds.image_size,
        "mean": list(ds.mean),
        "std": list(ds.std),
        "dataset": ds.name,
        "dataset_fingerprint": fingerprint,
        "config": to_dict(cfg),
        "labels": labels_info,
        "metrics": metrics,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"label_refinery": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def _jitter(cfg: Config, ds: ImageDataset, labels) -> Jitter | None:
    if not cfg.jitter.enabled:
        return None
    if not isinstance(labels, LiveRefinery):
        raise UserError("jitter needs a live refinery (--refinery CKPT, labels.source=live): it labels the jittered crops")
    return Jitter(cfg.jitter, labels, ds.mean, ds.std)


def _finished(folder: Path) -> dict:
    """The metadata of a finished generation (its refinery checked by the caller)."""
    meta = json.loads((folder / META).read_text())
    (folder / STATE).unlink(missing_ok=True)  # left behind if a crash followed the final save
    return meta


def _final_metrics(history: list[dict], clean: dict, folder: Path, epochs: int) -> dict:
    """The generation's summary: the last epoch's metrics, clean train top-1 and the gap."""
    if len(history) < epochs or "test_top1" not in history[-1]:
        raise UserError(
            f"{folder / 'metrics.jsonl'} is missing or lacks epochs ({len(history)} of {epochs} logged), so this "
            f"generation's metrics cannot be written. Restore the file, or delete {folder} to retrain the generation"
        )
    last = history[-1]
    return {
        "train_top1_crops": last["train_top1_crops"],
        "train_top1_clean": clean["top1"],
        "test_top1": last["test_top1"],
        "test_top5": last["test_top5"],
        "gap": clean["top1"] - last["test_top1"],
        "train_seconds": sum(r["seconds"] for r in history),
        **({"val_top1": last["val_top1"]} if "val_top1" in last else {}),
    }


def _epoch_line(desc: str, epochs: int, row: dict) -> str:
    test = f"test top-1 {row['test_top1']:.2f}  top-5 {row['test_top5']:.2f}  " if "test_top1" in row else ""
    return (
        f"{desc} epoch {row['epoch'] + 1}/{epochs}: loss {row['train_loss']:.4f}  "
        f"train top-1 (crops) {row['train_top1_crops']:.2f}  {test}"
        + (f"val top-1 {row['val_top1']:.2f}  " if "val_top1" in row else "") + f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s"
    )


@dataclass
class _Run:
    """What one generation trains with, built once by :func:`_prepare`."""

    cfg: Config
    folder: Path
    ds: ImageDataset
    device: torch.device
    student: nn.Module  # the plain model: saved, evaluated, attacked by jitter
    model: nn.Module  # what trains: the student, wrapped in DDP and/or compiled
    labels: object
    jitter: Jitter | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    fingerprint: str
    refinery_sha: str | None  # of the checkpoint behind the labels (None: ground truth)
    crops: CropSampler
    steps: int  # per epoch, the same in every process

    def evaluate_on(self, split, desc: str, progress: bool) -> dict:
        distributed.sync_buffers(self.student)  # every process evaluates rank 0's BatchNorm statistics
        shard = distributed.shard()
        return evaluate(self.student, split.iter_batches(512, device=self.device, shard=shard), channels_last=self.cfg.channels_last,
                        total=split.num_batches(512, shard=shard), progress=progress, desc=desc)

    def save(self, epoch: int, batch: int, meters: Meters | None) -> None:
        """Checkpoint the position ``(epoch, batch)``; ``meters``: the epoch so far, this process's part."""
        if meters is not None:
            meters = meters.over_processes()
        distributed.sync_buffers(self.student)
        pos = state.Position(epoch, batch, meters)
        state.save(self.folder, self.student, self.optimizer, self.scaler, pos, self.refinery_sha, self.fingerprint)


def _prepare(cfg: Config, ds: ImageDataset, folder: Path, log, progress: bool) -> _Run:
    check_input_size(cfg.model, ds.in_chans, ds.num_classes, ds.image_size)
    device = resolve_device(cfg.device)
    fingerprint, crops = ds.fingerprint(), crop_sampler(cfg)
    # the label source first: building a refinery draws a random init before loading its weights, which
    # must not move the student's random stream (the oracle test: one-hot labels through a refinery
    # reproduce generation 1's weights exactly)
    labels = build_label_source(cfg, ds, folder=folder, sampler=crops, device=device, fingerprint=fingerprint, log=log, progress=progress)
    torch.manual_seed(cfg.seed)
    student = create_model(cfg.model, ds.in_chans, ds.num_classes, cfg.pretrained)
    distributed.seed_rank(cfg.seed)  # the same init everywhere, then each process its own dropout stream
    student = student.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    model = distributed.wrap(student, device)
    return _Run(
        cfg=cfg, folder=folder, ds=ds, device=device, student=student, model=torch.compile(model) if cfg.compile else model,
        labels=labels, jitter=_jitter(cfg, ds, labels), optimizer=make_optimizer(student, cfg.optim),
        scaler=torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None, fingerprint=fingerprint,
        refinery_sha=labels.describe().get("sha256"), crops=crops,
        steps=ds.train.num_batches(distributed.per_process_batch(cfg.optim.batch_size), drop_last=True, shard=distributed.shard()),
    )


def _train_epoch(run: _Run, epoch: int, pos: state.Position, desc: str, progress: bool) -> dict:
    """One epoch (the rest of it when resuming inside it), then the test split; returns the metrics row."""
    cfg, steps = run.cfg, run.steps
    first = pos.batch if epoch == pos.epoch else 0
    batches = run.ds.train.iter_batches(distributed.per_process_batch(cfg.optim.batch_size), epoch=epoch, crops=run.crops,
                                        order_seed=cfg.seed, device=run.device, drop_last=True, shard=distributed.shard(), start_batch=first)

    def after_step(step: int, meters: Meters) -> None:
        if cfg.save_every and step % cfg.save_every == 0 and step % steps:
            run.save(step // steps, step % steps, meters)

    row = train_one_epoch(
        run.model, run.labels, batches, run.optimizer, lr_schedule(cfg.optim, steps), first_step=epoch * steps + first,
        temperature=1.0 if isinstance(run.labels, GroundTruth) else cfg.labels.temperature,  # ground truth: plain CE
        gt_weight=cfg.labels.gt_weight, channels_last=cfg.channels_last, total=steps - first, progress=progress,
        desc=f"{desc} epoch {epoch + 1}/{cfg.optim.epochs}", jitter=run.jitter, amp=cfg.amp, scaler=run.scaler,
        meters=pos.meters if epoch == pos.epoch else None, after_step=after_step,
    )
    row = {"epoch": epoch, **row}
    if (epoch + 1) % cfg.eval_every and epoch + 1 < cfg.optim.epochs:  # evaluated every eval_every epochs and at the end
        return row
    test = run.evaluate_on(run.ds.test, f"{desc} test", progress)
    row |= {"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"]}
    if run.ds.val is not None:
        val = run.evaluate_on(run.ds.val, f"{desc} val", progress)
        row |= {"val_top1": val["top1"], "val_loss": val["loss"]}
    return row


def train_generation(
    cfg: Config,
    folder: str | Path,
    *,
    generation: int = 1,
    dataset: ImageDataset | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (or resume, or skip if finished) one generation; returns its ``meta.json`` content.

    ``cfg.refinery`` names the checkpoint that labels the crops; ``None`` trains on ground truth.
    Under torchrun every process calls this; only rank 0 writes, logs and shows progress.

    Example:
        >>> cfg = load_config(overrides={"data.dataset": "digits", "optim.epochs": 2})  # doctest: +SKIP
        >>> meta = train_generation(cfg, "runs/digits-gen1")                             # doctest: +SKIP
        >>> meta["metrics"]["test_top1"]                                                   # doctest: +SKIP
    """
    cfg, folder, main, desc = resolve_seed(cfg), Path(folder), distributed.is_main(), f"gen {generation}"
    log, progress = (log, progress) if main else ((lambda _: None), False)
    finished = (folder / META).is_file()
    if finished:  # a replaced refinery first: the seed derived from it would differ too, a less telling message
        _check_same_refinery(folder, json.loads((folder / META).read_text())["labels"].get("sha256"), cfg)
    if has_progress(folder):
        check_same_config(folder, cfg)
    if finished:
        log(f"generation {generation}: finished earlier, skipping ({folder})")
        return _finished(folder)
    check_model_name(cfg.model)  # before loading data: a typo should not wait for an ImageNet scan
    run = _prepare(cfg, dataset or load_data(cfg), folder, log, progress)
    labels_info = run.labels.describe()
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        save_config(cfg, folder / "config.yaml")
        if run.ds.label_changes is not None:  # the labels this run was given instead of the dataset's
            atomic_write(folder / "label-noise.csv", run.ds.label_changes.to_csv().encode())
    pos = state.resume(folder, run.student, run.optimizer, run.scaler, run.refinery_sha, run.fingerprint)
    if pos.batch:
        log(f"generation {generation}: resuming in epoch {pos.epoch + 1} after step {pos.batch} of {run.steps} ({folder})")
    elif pos.epoch:
        log(f"generation {generation}: resuming after epoch {pos.epoch} ({folder})")
    history = _metrics_upto(folder / "metrics.jsonl", pos.epoch - 1) if main else []
    epochs = cfg.optim.epochs
    for epoch in tqdm(range(pos.epoch, epochs), initial=pos.epoch, total=epochs, desc=desc, unit="epoch", disable=not progress):
        row = _train_epoch(run, epoch, pos, desc, progress)
        if main:
            _append_jsonl(folder / "metrics.jsonl", row)  # before the state: a resume drops unsaved epochs
        history.append(row)
        run.save(epoch + 1, 0, None)
        log(_epoch_line(desc, epochs, row))

    clean, meta = run.evaluate_on(run.ds.train, f"{desc} train (clean)", progress), None
    if main:
        metrics = _final_metrics(history, clean, folder, epochs)
        student = run.student.to(memory_format=torch.contiguous_format)
        meta = save_final(folder, student, _final_meta(cfg, run.ds, student, generation, labels_info, metrics, run.fingerprint))
        (folder / STATE).unlink(missing_ok=True)
        log(f"{desc} done: train top-1 (clean) {metrics['train_top1_clean']:.2f}  test top-1 {metrics['test_top1']:.2f}  gap {metrics['gap']:.2f}")
    return distributed.broadcast(meta)  # after rank 0 wrote the checkpoint the next generation reads
