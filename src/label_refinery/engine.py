"""One epoch of training, and evaluation; both return named metrics.

The training step reads top to bottom: batch, refined labels, forward, loss, backward, step, meters.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import OptimConfig
from .data.base import Batch
from .errors import UserError
from .labels import LabelSource
from .losses import refinery_loss


def lr_schedule(cfg: OptimConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """``lr(step)``: linear warm-up from 0, then cosine to 0, step decay, or constant.

    A pure function of the global step, so resuming needs no scheduler state.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        if cfg.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "step":
            epoch = step // steps_per_epoch
            return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        return cfg.lr

    return lr_at


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum and L2 weight decay on all parameters."""
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def _memory_format(batch: Batch, channels_last: bool) -> Batch:
    if not channels_last or batch.images.ndim != 4:
        return batch
    return dataclasses.replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))


def _check_finite(loss: torch.Tensor, step: int, lr: float) -> None:
    if not torch.isfinite(loss):
        raise UserError(
            f"the training loss became {loss.item()} at step {step} (lr {lr:g}); the last epoch checkpoint "
            "is kept. Lower optim.lr or add optim.warmup_epochs, then re-run the same command to resume."
        )


def train_one_epoch(
    student: nn.Module,
    labels: LabelSource,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    *,
    first_step: int = 0,
    temperature: float = 1.0,
    gt_weight: float = 0.0,
    channels_last: bool = False,
    total: int | None = None,
    progress: bool = False,
    desc: str = "train",
    jitter=None,
) -> dict[str, float]:
    """Train ``student`` for one pass over ``batches``.

    ``jitter`` (a :class:`label_refinery.jitter.Jitter`) perturbs part of each batch and labels it
    with its refinery; ``labels`` is then not called.

    Returns ``train_loss`` (mean loss), ``train_top1_crops`` (top-1 of the training crops against
    ground truth, as the paper measures), ``refined_agreement`` (student top-1 = refined top-1),
    ``lr`` (last), ``images``, ``seconds`` and ``images_per_s``.
    """
    student.train()
    n, loss_sum, correct, agree = 0, 0.0, 0, 0
    step, lr = first_step, 0.0
    start = time.perf_counter()
    bar = tqdm(batches, total=total, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for batch in bar:
        batch = _memory_format(batch, channels_last)
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if jitter is None:
            refined = labels(batch)  # [B, C] probabilities, no grad
        else:
            batch, refined = jitter(student, batch)  # part of the crops made adversarial, and their labels
        logits = student(batch.images)  # [B, C]
        loss = refinery_loss(logits, refined, batch.targets, temperature, gt_weight)
        _check_finite(loss, step, lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        b = len(batch.targets)
        with torch.no_grad():
            top1 = logits.argmax(1)
            correct += int((top1 == batch.targets).sum())
            agree += int((top1 == refined.argmax(1)).sum())
        loss_sum += float(loss.detach()) * b
        n += b
        step += 1
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / n:.3f}", top1=f"{100 * correct / n:.1f}", lr=f"{lr:.3g}")
    seconds = time.perf_counter() - start
    if n == 0:
        raise UserError("the training set yields no batch: lower optim.batch_size below the number of training images")
    return {
        "train_loss": loss_sum / n,
        "train_top1_crops": 100.0 * correct / n,
        "refined_agreement": 100.0 * agree / n,
        "lr": lr,
        "images": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    channels_last: bool = False,
    total: int | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Top-1, top-5 (%) and mean cross-entropy of ``model`` in eval mode over ``batches``."""
    was_training = model.training
    model.eval()
    n, loss_sum, top1, top5 = 0, 0.0, 0, 0
    for batch in tqdm(batches, total=total, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        batch = _memory_format(batch, channels_last)
        logits = model(batch.images).float()  # [B, C]
        y = batch.targets
        loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices  # [B, k]
        top1 += int((topk[:, 0] == y).sum())
        top5 += int((topk == y[:, None]).any(1).sum())
        n += len(y)
    model.train(was_training)
    return {"top1": 100.0 * top1 / max(n, 1), "top5": 100.0 * top5 / max(n, 1), "loss": loss_sum / max(n, 1), "images": n}
