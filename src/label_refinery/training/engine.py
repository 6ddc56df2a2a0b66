"""One epoch of training, and evaluation; both return named metrics.

The training step reads top to bottom: batch, transform (what the student sees), refined labels of
exactly those crops, forward, loss, backward, step, meters (:func:`train_one_epoch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..config import OptimConfig
from ..data.base import Batch
from ..errors import UserError
from ..labels import LabelSource
from ..losses import refinery_loss


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
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def _memory_format(batch: Batch, channels_last: bool) -> Batch:
    if not channels_last or batch.images.ndim != 4:
        return batch
    return dataclasses.replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))


def _nonfinite(what: str, step: int, lr: float) -> UserError:
    return UserError(
        f"the training loss became {what} at step {step} (lr {lr:g}); training stops without saving "
        "this state, and the last checkpoint (epoch end, or every --save-every steps) stays as it was. "
        "Lower optim.lr or add optim.warmup_epochs, then re-run the same command to resume from that checkpoint."
    )


SETTLE_STEPS = 20  # on a GPU the meters (and the loss's finiteness) reach the host every this many steps


def _settle_every(device: torch.device) -> int:
    """Steps between host syncs of the meters: 1 on a CPU (a check costs nothing there: a NaN stops
    training at its very step), :data:`SETTLE_STEPS` on an accelerator (no sync per step)."""
    return 1 if device.type == "cpu" else SETTLE_STEPS


def autocast(device: torch.device, amp: str):
    """The forward passes' precision context: ``off`` (float32), ``bf16``, ``fp16``, or ``auto``
    (bf16 on CUDA, float32 elsewhere: the ImageNet recipes, unchanged on a CPU)."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device (its grad scaler); on CPU use --amp bf16 or off")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class NonFinite(Exception):
    """A training loss was NaN or infinite (found when the meters settled)."""


@dataclass
class Meters:
    """Running sums of one epoch; saved in mid-epoch checkpoints so a resumed epoch reports the same numbers.

    :meth:`add` accumulates on the batch's device (float64: counts stay exact) without waiting for
    it; the numbers reach the host in :meth:`settle`, at the progress line, a checkpoint and the end
    of the epoch: on a GPU no host sync per step, on a CPU the same sums as adding Python numbers.
    """

    images: int = 0
    loss_sum: float = 0.0
    correct: int = 0  # student top-1 == ground truth
    agree: int = 0  # student top-1 == refined top-1
    seconds: float = 0.0
    _pending: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)  # [4] loss, correct, agree, non-finite

    def as_list(self) -> list[float]:
        self.settle()
        return [self.images, self.loss_sum, self.correct, self.agree, self.seconds]

    def over_processes(self) -> "Meters":
        """Counts summed over processes; seconds are wall time, the slowest process's, not a sum."""
        images, loss_sum, correct, agree = distributed.sum_over_processes(self.as_list()[:4])
        return Meters(
            int(images), float(loss_sum), int(correct), int(agree), distributed.max_over_processes(self.seconds)
        )

    @torch.no_grad()
    def add(
        self, logits: torch.Tensor, refined: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, seconds: float
    ) -> None:
        """Count one step: top-1 against ground truth and against the refined labels, the loss, the time."""
        top1 = logits.argmax(1)
        n = len(targets)
        step = torch.stack([loss.detach().double() * n, (top1 == targets).sum().double(),
                            (top1 == refined.argmax(1)).sum().double(), (~torch.isfinite(loss.detach())).double()])  # fmt: skip
        self._pending = step if self._pending is None else self._pending + step
        self.images += n
        self.seconds = seconds

    def settle(self) -> None:
        """Move the device sums into the fields (one host sync); raises :class:`NonFinite` if a loss
        since the last settle was not finite (so no checkpoint is made of that state)."""
        if self._pending is None:
            return
        loss_sum, correct, agree, bad = self._pending.tolist()
        self._pending = None
        if bad:
            raise NonFinite
        self.loss_sum += loss_sum
        self.correct += int(correct)
        self.agree += int(agree)

    @classmethod
    def from_list(cls, v: list[float]) -> "Meters":
        return cls(int(v[0]), float(v[1]), int(v[2]), int(v[3]), float(v[4]))


@dataclass(frozen=True)
class Step:
    """How each training step is computed, built once per generation from its config.

    ``loss(logits [B, C], refined [B, C], targets [B])`` is the generation's loss (e.g. a partial of
    :func:`label_refinery.losses.refinery_loss` with its temperature and ground-truth weight);
    ``transform(student, batch)`` changes the crops the student sees *before* they are labelled
    (adversarial jittering; mixing), so the label source labels exactly what the student sees.
    """

    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = refinery_loss
    transform: Callable[[nn.Module, Batch], Batch] | None = None
    channels_last: bool = False
    amp: str = "off"  # off | bf16 | fp16 (see autocast)
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    dynamics: object | None = None  # per-image margins of the given label (training/dynamics.py), or None


def train_one_epoch(
    student: nn.Module,
    labels: LabelSource,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    step_cfg: Step = Step(),
    *,
    first_step: int = 0,
    meters: Meters | None = None,
    after_step: Callable[[int, Meters], None] | None = None,
    bar: dict | None = None,
) -> dict[str, float]:
    """Train ``student`` (a module, or its DDP / compiled wrapper) for one pass over ``batches``.

    The step, top to bottom: learning rate, batch -> transform (the crops the student sees) ->
    refined labels of exactly those crops -> forward -> loss -> backward -> optimizer step -> meters.
    ``meters`` continues a resumed epoch; ``after_step(step, meters)`` runs after every step (``step``
    is global and counts the step just taken), e.g. to checkpoint; ``bar``: tqdm's ``total``, ``desc``
    and ``disable``. With several processes the returned metrics cover all of them.

    Returns ``train_loss`` (mean loss), ``train_top1_crops`` (top-1 of the training crops against
    ground truth, as the paper measures), ``refined_agreement`` (student top-1 = refined top-1),
    ``lr`` (last), ``images``, ``seconds`` and ``images_per_s``.
    """
    student.train()
    plain = distributed.unwrap(student)  # a transform's attack must not trigger DDP's gradient hooks
    device = next(plain.parameters()).device
    m, step, transform = meters or Meters(), first_step, step_cfg.transform or (lambda _, b: b)
    lr, start = lr_at(first_step), time.perf_counter() - m.seconds
    shown = tqdm(batches, leave=False, dynamic_ncols=True, **({"disable": True} | (bar or {})))
    every = _settle_every(device)
    try:
        for batch in shown:
            lr = _set_lr(optimizer, lr_at(step))
            with autocast(device, step_cfg.amp):
                batch = transform(plain, _memory_format(batch, step_cfg.channels_last))  # what the student sees
                refined = labels(batch).float()  # [B, C] probabilities of exactly those crops, no grad
                logits = student(batch.images).float()  # [B, C]
            loss = step_cfg.loss(logits, refined, batch.targets)
            if step_cfg.dynamics is not None:
                step_cfg.dynamics.add(batch.indices, logits, batch.targets)
            if every == 1 and not torch.isfinite(loss):
                raise _nonfinite(str(loss.item()), step, lr)
            _backward_and_step(loss, optimizer, step_cfg.scaler)
            m.add(logits, refined, batch.targets, loss, time.perf_counter() - start)
            step += 1
            if step % every == 0:
                m.settle()
            if after_step is not None:
                after_step(step, m)  # a checkpoint settles the meters first: never a state after a NaN
            if step % 20 == 0 and not shown.disable:
                _show(shown, m, lr)
        m.settle()
    except NonFinite:  # found where the meters settled: somewhere since the last settle
        raise _nonfinite("nan or inf", f"{max(first_step, step - every)}..{step - 1}", lr) from None
    return _epoch_metrics(m, time.perf_counter() - start, lr)


def _epoch_metrics(m: Meters, seconds: float, lr: float) -> dict[str, float]:
    """The epoch's metrics over every process (see :func:`train_one_epoch`)."""
    n, loss_sum, correct, agree = distributed.sum_over_processes([m.images, m.loss_sum, m.correct, m.agree])
    if n == 0:
        raise UserError("the training set yields no batch: lower optim.batch_size below the number of training images")
    return {
        "train_loss": loss_sum / n,
        "train_top1_crops": 100.0 * correct / n,
        "refined_agreement": 100.0 * agree / n,
        "lr": lr,
        "images": int(n),
        "seconds": seconds,
        "images_per_s": n / seconds,
    }


def _show(bar, m: Meters, lr: float) -> None:
    m.settle()
    bar.set_postfix(loss=f"{m.loss_sum / m.images:.3f}", top1=f"{100 * m.correct / m.images:.1f}", lr=f"{lr:.3g}")


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _backward_and_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


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
    """Top-1, top-5 (%) and mean cross-entropy of ``model`` in eval mode over ``batches`` (with
    several processes, over every process's batches)."""
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
    n, loss_sum, top1, top5 = distributed.sum_over_processes([n, loss_sum, top1, top5])  # every process's part
    d = max(n, 1)
    return {"top1": 100.0 * top1 / d, "top5": 100.0 * top5 / d, "loss": loss_sum / d, "images": int(n)}
