"""From a config to what a generation trains with, decided once (issue 23): the seed, the checks of
the run folder, the device, the data, the crops, the label source, the student and its step.

:func:`plan_generation` resolves a config and checks its folder before any data is loaded;
:func:`build_run` builds everything the epoch loop needs from a :class:`Plan` and the data. Both
:func:`~label_refinery.training.generation.train_generation` and
:func:`~label_refinery.training.chain.run_chain` go through them, so a chain's generation and a
generation trained alone are decided the same way.

Example:
    >>> plan = plan_generation(load_config(overrides={"data.dataset": "digits"}), "runs/g1")  # doctest: +SKIP
    >>> run = build_run(plan, load_data(plan.cfg), log=print, progress=False)               # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import distributed
from ..checkpoint import META, read_meta
from ..checkpoint import resolve as resolve_checkpoint
from ..config import EXTERNAL, Config, DataConfig, config_from_dict, refinery_paths, validate
from ..data import CropSampler, ImageDataset, choose, open_dataset
from ..errors import UserError, brief
from ..labels.store import read_manifest
from ..models import check_input_size, check_model_name, create_model
from ..typed import to_dict
from . import state
from .build import build_label_source, build_step
from .engine import Meters, Step, evaluate, make_optimizer
from .runfolder import check_finished, check_same_config, check_same_refinery, finished_meta, has_progress


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available; under torchrun, each process's own GPU."""
    local = distributed.local_device(name)
    if local is not None:
        return local
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {brief(name)} requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {brief(name)}; use auto, cpu, cuda or cuda:N") from None


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
    if cfg.refinery.path:  # the refinery's recorded seed + 1 (a refinery from elsewhere, without meta.json: 0 + 1)
        first = refinery_paths(cfg)[0]  # an ensemble: its first member's
        sidecar = resolve_checkpoint(first).parent / META
        config = read_meta(sidecar).get("config") or {} if sidecar.is_file() and not first.startswith(EXTERNAL) else {}
        seed = int(config.get("seed") or 0) + 1
    elif cfg.labels.store and (Path(cfg.labels.store) / "manifest.json").is_file():  # the crops it was baked for
        manifest = read_manifest(cfg.labels.store)
        seed = int((manifest.get("sampler") or {}).get("seed") or 0)  # a static store has no sampler
    return replace(cfg, seed=seed)


def resolve(cfg: Config) -> Config:
    """``cfg`` decided and checked: its seed resolved (:func:`resolve_seed`), every value validated
    (:func:`~label_refinery.config.validate`) and every architecture it names known. Every config a
    generation trains with passes here once, derived ones (a chain's generations, the audit's folds)
    included; a resolved config comes back equal."""
    cfg = resolve_seed(cfg)
    validate(cfg)
    for name in dict.fromkeys((cfg.model, *cfg.chain.models)):  # a typo should not wait for an ImageNet scan
        check_model_name(name)
    return cfg


def load_data(cfg: Config) -> ImageDataset:
    """The dataset ``cfg.data`` describes: its images, splits and (overridden or noisy) labels."""
    d = cfg.data
    return choose(
        open_dataset(d.dataset, d.data_dir, d.image_size, d.workers),
        train_subset=d.train_subset, subset_seed=d.subset_seed, stratify=d.stratify, val_split=d.val_split,
        label_noise=d.label_noise, noise_seed=d.label_noise_seed, label_overrides=d.label_overrides,
        holdout_fold=d.holdout_fold,
    )  # fmt: skip


def checkpoint_data(checkpoint, dataset: str | None = None, data_dir: str | None = None) -> ImageDataset:
    """The data a finished checkpoint is evaluated on: its own dataset (the same training subset and
    validation split) at its view size, or ``dataset`` (checked: same classes and channels)."""
    meta = checkpoint.meta
    data = config_from_dict(meta["config"]).data  # meta.json of any version
    if dataset not in (None, data.dataset):  # another dataset: none of the run's choices of images or labels
        data = DataConfig(dataset=dataset, label_noise_seed=data.label_noise_seed)
    data = replace(data, data_dir=data_dir or data.data_dir, image_size=meta["image_size"], workers=0)
    ds = load_data(Config(data=data))
    if list(ds.classes) != list(meta["classes"]):
        raise UserError(f"{checkpoint.path} was trained on other classes than {ds.name}'s")
    if ds.in_chans != meta["in_chans"]:
        raise UserError(f"{checkpoint.path} takes {meta['in_chans']}-channel images but {ds.name} has {ds.in_chans}")
    return ds


@dataclass(frozen=True)
class Plan:
    """One generation, decided before anything is loaded: its config (resolved), its folder (checked
    against what an earlier run left there), and the config as plain values, computed once."""

    cfg: Config
    folder: Path
    generation: int
    values: dict  # to_dict(cfg): written as config.yaml, compared on resume, recorded in meta.json
    finished: dict | None  # meta.json of a generation finished earlier (refinery and config checked)


def plan_generation(cfg: Config, folder: str | Path, generation: int = 1) -> Plan:
    """Resolve ``cfg`` and check ``folder``: a finished generation must be intact (its weights' SHA-256
    as recorded) and have been trained with the same refinery and config, an unfinished one with
    the same config, or this refuses (before any data is loaded). Call it while holding the folder
    (:func:`label_refinery.locks.claim`), so that what it checked stays so."""
    cfg, folder = resolve(cfg), Path(folder)
    values = to_dict(cfg)
    finished = finished_meta(folder, generation)  # checked against its weights' header
    if finished is not None:  # a replaced refinery first: the seed derived from it would differ too
        check_same_refinery(folder, finished["labels"].get("sha256"), cfg)
        check_finished(folder, finished, values, generation)  # its weights and recorded config
    if has_progress(folder):
        check_same_config(folder, values)
    return Plan(cfg, folder, generation, values, finished)


@dataclass
class Run:
    """What one generation trains with, built once by :func:`build_run` from its :class:`Plan`."""

    plan: Plan
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

    @property
    def cfg(self) -> Config:
        return self.plan.cfg

    @property
    def folder(self) -> Path:
        return self.plan.folder

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
        state.save(self.folder, self.student, self.optimizer, self.scaler, pos, self.refinery_sha, self.fingerprint,
                   self.step.dynamics)  # fmt: skip


def build_run(plan: Plan, ds: ImageDataset, log: Callable[[str], None], progress: bool) -> Run:
    """Device, crops, label source, student, optimizer and step of ``plan``'s generation, once."""
    cfg, folder = plan.cfg, plan.folder
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
    return Run(
        plan=plan,
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
