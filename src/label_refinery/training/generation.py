"""Train one generation into a folder, resumably: assembly of the run and the epoch loop. The
training step itself is :func:`label_refinery.training.engine.train_one_epoch`; the folder's files are kept
by :mod:`label_refinery.training.runfolder`.

    label-refinery train --dataset fashion-mnist --epochs 10 --out runs/g1                       # one process
    torchrun --nproc_per_node=2 -m label_refinery train --device cpu --refinery runs/g1 --out runs/g2  # several

Re-running with the same config skips a finished generation and resumes an unfinished one from its
last checkpoint: every epoch's end, and every ``save_every`` steps. Crops and batch order are pure
functions of (seed, epoch, index) and the LR is a function of the step, so a resumed run follows the
uninterrupted one's crops, schedule and (on CPU) weights bit for bit. Under torchrun every process
runs this; rank 0 alone writes (see :mod:`label_refinery.distributed`). One command writes a folder
at a time (:mod:`label_refinery.locks`): a second one refuses, naming the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoint import STATE, save_final
from ..config import Config, save_values
from ..data import ImageDataset
from ..files import atomic_write
from ..locks import claim
from . import state
from .engine import Meters, lr_schedule, train_one_epoch
from .runfolder import append_metrics, final_meta, final_metrics, metrics_upto
from .setup import Plan, Run, build_run, load_data, plan_generation
from .tracking import Trackers


def _epoch_line(desc: str, epochs: int, row: dict) -> str:
    test = f"test top-1 {row['test_top1']:.2f}  top-5 {row['test_top5']:.2f}  " if "test_top1" in row else ""
    return (
        f"{desc} epoch {row['epoch'] + 1}/{epochs}: loss {row['train_loss']:.4f}  "
        f"train top-1 (crops) {row['train_top1_crops']:.2f}  {test}"
        + (f"val top-1 {row['val_top1']:.2f}  " if "val_top1" in row else "")
        + f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s"
    )


def _train_epoch(run: Run, epoch: int, pos: state.Position, desc: str, progress: bool) -> dict:
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
    if run.step.dynamics is not None:
        run.step.dynamics.close_epoch(epoch)
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


def _finish(run: Run, history: list[dict], labels_info: dict, desc: str, progress: bool, log) -> dict | None:
    """After the last epoch: clean train top-1, the final checkpoint and meta.json (rank 0 writes)."""
    clean = run.evaluate_on(run.ds.train, f"{desc} train (clean)", progress)  # every process takes part
    if not distributed.is_main():
        return None
    metrics = final_metrics(history, clean, run.folder, run.cfg.optim.epochs)
    if run.step.dynamics is not None:  # before the checkpoint: a finished generation always has its dynamics
        run.step.dynamics.save(run.folder)
    student = run.student.to(memory_format=torch.contiguous_format)
    meta = final_meta(run.plan, run.ds, student, labels_info, metrics, run.fingerprint)
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
    force: bool = False,
) -> dict:
    """Train (or resume, or skip if finished) one generation; returns its ``meta.json`` content.

    ``cfg.refinery.path`` names the checkpoint that labels the crops; ``None`` trains on ground truth.
    Under torchrun every process calls this; only rank 0 writes, logs and shows progress. ``folder``
    must be new, empty or a generation's (``force``: any folder), and no other process may be writing
    it (:func:`label_refinery.locks.claim`).

    Example:
        >>> cfg = load_config(overrides={"data.dataset": "digits", "optim.epochs": 2})  # doctest: +SKIP
        >>> meta = train_generation(cfg, "runs/digits-gen1")                             # doctest: +SKIP
        >>> meta["metrics"]["test_top1"]                                                   # doctest: +SKIP
    """
    with claim(folder, "generation", force=force):  # planned while held: what it checked stays so
        return train_planned(plan_generation(cfg, folder, generation), dataset, progress=progress, log=log)


def _start(run: Run, log: Callable[[str], None]) -> state.Position:
    """Rank 0 writes the generation's config and given labels; every process restores the saved state."""
    folder, plan = run.folder, run.plan
    if distributed.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        save_values(plan.values, folder / "config.yaml")
        if run.ds.label_changes is not None:  # the labels this run was given instead of the dataset's
            atomic_write(folder / "label-noise.csv", run.ds.label_changes.to_csv().encode())
        if run.ds.label_overrides is not None:  # labels replaced from a file (accepted audit fixes)
            atomic_write(folder / "label-overrides.csv", run.ds.label_overrides.to_csv().encode())
    pos = state.resume(folder, run.student, run.optimizer, run.scaler, run.refinery_sha, run.fingerprint, run.step.dynamics)
    if pos.batch:
        log(f"generation {plan.generation}: resuming in epoch {pos.epoch + 1} after step {pos.batch} of {run.steps} ({folder})")  # fmt: skip
    elif pos.epoch:
        log(f"generation {plan.generation}: resuming after epoch {pos.epoch} ({folder})")
    return pos


def train_planned(
    plan: Plan, dataset: ImageDataset | None = None, *, progress: bool = False, log: Callable[[str], None] = print
) -> dict:
    """Train (or resume, or skip) the generation ``plan`` decided (:func:`~.setup.plan_generation`);
    returns its ``meta.json`` content. ``dataset``: the data ``plan.cfg`` names, already loaded."""
    with claim(plan.folder, "generation"):  # held already by train_generation and run_chain
        return _train_held(plan, dataset, progress, log)


def _train_held(plan: Plan, dataset: ImageDataset | None, progress: bool, log: Callable[[str], None]) -> dict:
    """:func:`train_planned` while holding the generation's folder."""
    main, desc, folder = distributed.is_main(), f"gen {plan.generation}", plan.folder
    log, progress = (log, progress) if main else ((lambda _: None), False)
    if plan.finished is not None:
        log(f"generation {plan.generation}: finished earlier, skipping ({folder})")
        (folder / STATE).unlink(missing_ok=True)  # left behind if a crash followed the final save
        return plan.finished
    run = build_run(plan, dataset or load_data(plan.cfg), log, progress)
    labels_info = run.labels.describe()
    pos = _start(run, log)
    history = metrics_upto(folder / "metrics.jsonl", pos.epoch - 1) if main else []
    epochs = plan.cfg.optim.epochs
    track = Trackers(plan.cfg.log, folder, plan.values, pos.epoch, f"{folder.parent.name}/{folder.name}") if main and plan.cfg.log else None
    meta = None
    try:
        for epoch in tqdm(
            range(pos.epoch, epochs), initial=pos.epoch, total=epochs, desc=desc, unit="epoch", disable=not progress
        ):
            row = _train_epoch(run, epoch, pos, desc, progress)
            if main:
                append_metrics(folder / "metrics.jsonl", row)  # before the state: a resume drops unsaved epochs
            if track:  # before the state too: a resume purges the steps after its epoch (tensorboard)
                track.epoch(epoch, row)
            history.append(row)
            run.save(epoch + 1, 0, None)
            log(_epoch_line(desc, epochs, row))
        meta = _finish(run, history, labels_info, desc, progress, log)
        if track and meta:
            track.finish(meta["metrics"], epochs)
    finally:
        if track:
            track.close(finished=meta is not None)
    return distributed.broadcast(meta)  # after rank 0 wrote the checkpoint the next generation reads
