"""Train one generation into a folder, resumably: assembly of the run and the epoch loop. The
training step itself is :func:`label_refinery.training.engine.train_one_epoch`; the folder's files are kept
by :mod:`label_refinery.training.runfolder`.

    label-refinery train --dataset fashion-mnist --epochs 10 --out runs/g1                       # one process
    torchrun --nproc_per_node=2 -m label_refinery train --device cpu --refinery runs/g1 --out runs/g2  # several

Re-running with the same config skips a finished generation and resumes an unfinished one from its
last checkpoint: every epoch's end, and every ``save_every`` steps. Crops and batch order are pure
functions of (seed, epoch, index) and the LR is a function of the step, so a resumed run follows the
uninterrupted one's crops, schedule and (on CPU) weights bit for bit. Under torchrun every process
runs this; rank 0 alone writes (see :mod:`label_refinery.distributed`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoint import META, STATE, resolve, save_final
from ..config import Config, refinery_paths, save_config
from ..data import CropSampler, ImageDataset, load_dataset
from ..errors import UserError
from ..files import atomic_write
from ..models import check_input_size, check_model_name, create_model
from . import state
from .build import build_label_source, build_step
from .engine import Meters, Step, evaluate, lr_schedule, make_optimizer, train_one_epoch
from .runfolder import (
    append_metrics,
    check_same_config,
    check_same_refinery,
    final_meta,
    final_metrics,
    finished_meta,
    has_progress,
    metrics_upto,
)


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


def cuda_speedups(device: torch.device) -> None:
    """On CUDA: cuDNN picks the fastest convolution for the run's fixed shapes (``cudnn.benchmark``),
    and float32 matmuls and convolutions use TF32 tensor cores (10-bit mantissa products, float32
    sums; what PyTorch's own ImageNet examples train with). Nothing changes on a CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


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
    if cfg.refinery:  # the refinery's recorded seed + 1 (a refinery from elsewhere, without meta.json: 0 + 1)
        sidecar = resolve(refinery_paths(cfg)[0]).parent / META  # an ensemble: its first member's
        config = json.loads(sidecar.read_text()).get("config") or {} if sidecar.is_file() else {}
        seed = int(config.get("seed") or 0) + 1
    elif cfg.labels.store and (Path(cfg.labels.store) / "manifest.json").is_file():  # the crops it was baked for
        manifest = json.loads((Path(cfg.labels.store) / "manifest.json").read_text())
        seed = int(manifest.get("sampler", {}).get("seed") or 0)
    return replace(cfg, seed=seed)


def checkpoint_data(checkpoint, dataset: str | None = None, data_dir: str | None = None) -> ImageDataset:
    """The data a finished checkpoint is evaluated on: its own dataset (the same training subset and
    validation split) at its view size, or ``dataset`` (checked: same classes and channels)."""
    meta = checkpoint.meta
    data_cfg = meta["config"]["data"]
    same = dataset in (None, data_cfg["dataset"])
    ds = load_dataset(
        dataset or data_cfg["dataset"],
        data_dir or data_cfg["data_dir"],
        meta["image_size"],
        data_cfg["train_subset"] if same else None,
        val_split=data_cfg.get("val_split", 0) if same else 0,
        label_noise=data_cfg.get("label_noise", 0.0) if same else 0.0,
        noise_seed=data_cfg.get("label_noise_seed", 0),
        label_overrides=data_cfg.get("label_overrides") if same else None,
        holdout_fold=tuple(data_cfg["holdout_fold"]) if same and data_cfg.get("holdout_fold") else None,
    )
    if list(ds.classes) != list(meta["classes"]):
        raise UserError(f"{checkpoint.path} was trained on other classes than {ds.name}'s")
    if ds.in_chans != meta["in_chans"]:
        raise UserError(f"{checkpoint.path} takes {meta['in_chans']}-channel images but {ds.name} has {ds.in_chans}")
    return ds


def load_data(cfg: Config) -> ImageDataset:
    d = cfg.data
    return load_dataset(
        d.dataset,
        d.data_dir,
        d.image_size,
        d.train_subset,
        d.workers,
        d.val_split,
        d.label_noise,
        d.label_noise_seed,
        label_overrides=d.label_overrides,
        holdout_fold=d.holdout_fold,
    )


def _epoch_line(desc: str, epochs: int, row: dict) -> str:
    test = f"test top-1 {row['test_top1']:.2f}  top-5 {row['test_top5']:.2f}  " if "test_top1" in row else ""
    return (
        f"{desc} epoch {row['epoch'] + 1}/{epochs}: loss {row['train_loss']:.4f}  "
        f"train top-1 (crops) {row['train_top1_crops']:.2f}  {test}"
        + (f"val top-1 {row['val_top1']:.2f}  " if "val_top1" in row else "")
        + f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s"
    )


@dataclass
class _Run:
    """What one generation trains with, built once by :func:`_prepare`."""

    cfg: Config
    folder: Path
    ds: ImageDataset
    device: torch.device
    student: nn.Module  # the plain model: saved, evaluated, attacked by jittering
    model: nn.Module  # what trains: the student, wrapped in DDP and/or compiled
    labels: object  # the label source: refined labels [B, C] for a batch
    step: Step  # the loss and the batch transform, built once
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    fingerprint: str
    refinery_sha: str | None  # of the checkpoint behind the labels (None: ground truth)
    crops: CropSampler
    steps: int  # per epoch, the same in every process

    def evaluate_on(self, split, desc: str, progress: bool) -> dict:
        distributed.sync_buffers(self.student)  # every process evaluates rank 0's BatchNorm statistics
        shard = distributed.shard()
        return evaluate(
            self.student,
            split.iter_batches(512, device=self.device, shard=shard),
            channels_last=self.cfg.channels_last,
            total=split.num_batches(512, shard=shard),
            progress=progress,
            desc=desc,
        )

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
    cuda_speedups(device)
    fingerprint, crops = ds.fingerprint(), crop_sampler(cfg)
    # the label source first: building a refinery draws a random init before loading its weights, which
    # must not move the student's random stream (the oracle test: one-hot labels through a refinery
    # reproduce generation 1's weights exactly)
    labels = build_label_source(
        cfg, ds, folder=folder, sampler=crops, device=device, fingerprint=fingerprint, log=log, progress=progress
    )
    torch.manual_seed(cfg.seed)
    student = create_model(cfg.model, ds.in_chans, ds.num_classes, cfg.pretrained)
    distributed.seed_rank(cfg.seed)  # the same init everywhere, then each process its own dropout stream
    student = student.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    model = distributed.wrap(student, device)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    per_process = distributed.per_process_batch(cfg.optim.batch_size)
    return _Run(
        cfg=cfg,
        folder=folder,
        ds=ds,
        device=device,
        student=student,
        model=torch.compile(model) if cfg.compile else model,
        labels=labels,
        step=build_step(cfg, ds, labels, scaler),
        optimizer=make_optimizer(student, cfg.optim),
        scaler=scaler,
        fingerprint=fingerprint,
        refinery_sha=labels.describe().get("sha256"),
        crops=crops,
        steps=ds.train.num_batches(
            per_process, drop_last=True, shard=distributed.shard(), crops_per_image=cfg.data.crops_per_image
        ),
    )


def _train_epoch(run: _Run, epoch: int, pos: state.Position, desc: str, progress: bool) -> dict:
    """One epoch (the rest of it when resuming inside it), then the test split; returns the metrics row."""
    cfg, steps = run.cfg, run.steps
    first = pos.batch if epoch == pos.epoch else 0
    batches = run.ds.train.iter_batches(
        distributed.per_process_batch(cfg.optim.batch_size),
        epoch=epoch,
        crops=run.crops,
        order_seed=cfg.seed,
        device=run.device,
        drop_last=True,
        shard=distributed.shard(),
        start_batch=first,
        crops_per_image=cfg.data.crops_per_image,
    )

    def after_step(step: int, meters: Meters) -> None:
        if cfg.save_every and step % cfg.save_every == 0 and step % steps:
            run.save(step // steps, step % steps, meters)

    row = train_one_epoch(
        run.model,
        run.labels,
        batches,
        run.optimizer,
        lr_schedule(cfg.optim, steps),
        run.step,
        first_step=epoch * steps + first,
        meters=pos.meters if epoch == pos.epoch else None,
        after_step=after_step,
        bar={"total": steps - first, "desc": f"{desc} epoch {epoch + 1}/{cfg.optim.epochs}", "disable": not progress},
    )
    row = {"epoch": epoch, **row}
    if (
        epoch + 1
    ) % cfg.eval_every and epoch + 1 < cfg.optim.epochs:  # evaluated every eval_every epochs and at the end
        return row
    test = run.evaluate_on(run.ds.test, f"{desc} test", progress)
    row |= {"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"]}
    if run.ds.val is not None:
        val = run.evaluate_on(run.ds.val, f"{desc} val", progress)
        row |= {"val_top1": val["top1"], "val_loss": val["loss"]}
    return row


def _finish(
    run: _Run, history: list[dict], generation: int, labels_info: dict, desc: str, progress: bool, log
) -> dict | None:
    """After the last epoch: clean train top-1, the final checkpoint and meta.json (rank 0 writes)."""
    clean = run.evaluate_on(run.ds.train, f"{desc} train (clean)", progress)  # every process takes part
    if not distributed.is_main():
        return None
    metrics = final_metrics(history, clean, run.folder, run.cfg.optim.epochs)
    student = run.student.to(memory_format=torch.contiguous_format)
    meta = final_meta(run.cfg, run.ds, student, generation, labels_info, metrics, run.fingerprint)
    meta = save_final(run.folder, student, meta)
    (run.folder / STATE).unlink(missing_ok=True)
    log(f"{desc} done: train top-1 (clean) {metrics['train_top1_clean']:.2f}  "
        f"test top-1 {metrics['test_top1']:.2f}  gap {metrics['gap']:.2f}")  # fmt: skip
    return meta


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
        check_same_refinery(folder, json.loads((folder / META).read_text())["labels"].get("sha256"), cfg)
    if has_progress(folder):
        check_same_config(folder, cfg)
    if finished:
        log(f"generation {generation}: finished earlier, skipping ({folder})")
        return finished_meta(folder)
    check_model_name(cfg.model)  # before loading data: a typo should not wait for an ImageNet scan
    run = _prepare(cfg, dataset or load_data(cfg), folder, log, progress)
    labels_info = run.labels.describe()
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        save_config(cfg, folder / "config.yaml")
        if run.ds.label_changes is not None:  # the labels this run was given instead of the dataset's
            atomic_write(folder / "label-noise.csv", run.ds.label_changes.to_csv().encode())
        if run.ds.label_overrides is not None:  # labels replaced from a file (accepted audit fixes)
            atomic_write(folder / "label-overrides.csv", run.ds.label_overrides.to_csv().encode())
    pos = state.resume(folder, run.student, run.optimizer, run.scaler, run.refinery_sha, run.fingerprint)
    if pos.batch:
        log(f"generation {generation}: resuming in epoch {pos.epoch + 1} after step {pos.batch} of {run.steps} ({folder})")  # fmt: skip
    elif pos.epoch:
        log(f"generation {generation}: resuming after epoch {pos.epoch} ({folder})")
    history = metrics_upto(folder / "metrics.jsonl", pos.epoch - 1) if main else []
    epochs = cfg.optim.epochs
    for epoch in tqdm(
        range(pos.epoch, epochs), initial=pos.epoch, total=epochs, desc=desc, unit="epoch", disable=not progress
    ):
        row = _train_epoch(run, epoch, pos, desc, progress)
        if main:
            append_metrics(folder / "metrics.jsonl", row)  # before the state: a resume drops unsaved epochs
        history.append(row)
        run.save(epoch + 1, 0, None)
        log(_epoch_line(desc, epochs, row))

    meta = _finish(run, history, generation, labels_info, desc, progress, log)
    return distributed.broadcast(meta)  # after rank 0 wrote the checkpoint the next generation reads
