"""Adversarial jittering: train also on crops perturbed to make student and refinery disagree.

The paper (Bagherinezhad et al. 2018) trains students on adversarially jittered crops labelled by
the refinery; its code has none of it and the recipe is not public. This is our reading:

For the first ``fraction`` of each (shuffled) batch, the crop ``x`` is replaced by

    x' = clip(x + eps * sign(grad_x H(R(x), S(x))))            (steps = 1)

with ``H(q, p) = -sum q log p`` the soft cross-entropy between the refinery ``R`` and the student
``S``: a step that increases their disagreement. With ``steps > 1`` it takes projected steps of
``step_size`` inside the L-inf ball of radius ``eps`` (PGD without a random start). ``grad=student``
differentiates through the student with the refinery's labels held fixed at each step;
``grad=refinery`` through the refinery with the student's log-probabilities held fixed. ``eps`` is
in pixel units of the original image (``[0, 1]``), converted per channel to the normalised input.
``clip`` keeps pixels in ``[0, 1]``. The jittered crop is then labelled ``R(x')`` (``relabel``) or
keeps ``R(x)``, and the student trains on the whole batch, clean and jittered crops together.

Guarantees (tested): the refinery gets no gradient and stays in eval mode (its parameters have
``requires_grad=False`` and only input gradients are taken); the student's BatchNorm statistics are
not touched by the attack (the student runs in eval mode while the perturbation is computed, then
trains in train mode on the mixed batch, as in standard adversarial training); with ``eps = 0``
training is identical to training without jittering.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import JitterConfig
from ..data.base import Batch
from ..labels import LiveRefinery, refine


class Jitter:
    """A batch transform before labelling: perturbs part of a batch (the crops the student then sees).

    With ``relabel`` the label source labels the jittered crops ``R(x')``; without, the batch carries
    the clean crops as ``label_images`` and the label source labels those, ``R(x)``.

    Example:
        >>> jitter = Jitter(JitterConfig(enabled=True, eps=4 / 255), refinery, mean, std)  # doctest: +SKIP
        >>> batch = jitter(student, batch); refined = refinery(batch)                        # doctest: +SKIP
    """

    def __init__(self, cfg: JitterConfig, refinery: LiveRefinery, mean, std):
        self.cfg, self.refinery = cfg, refinery
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        step = (
            cfg.step_size if cfg.step_size is not None else (cfg.eps if cfg.steps == 1 else 2.5 * cfg.eps / cfg.steps)
        )
        self.eps, self.step = cfg.eps / std_t, step / std_t  # [1, C, 1, 1] in normalised units
        self.lo, self.hi = (0.0 - mean_t) / std_t, (1.0 - mean_t) / std_t  # the valid pixel range

    def __call__(self, student: nn.Module, batch: Batch) -> Batch:
        k = round(self.cfg.fraction * len(batch.targets))
        if not k:
            return batch
        jittered = self.perturb(student, batch.images[:k])  # [k, C, H, W]
        clean = None if self.cfg.relabel else batch.images  # R(x) instead of R(x')
        return dataclasses.replace(batch, images=torch.cat([jittered, batch.images[k:]]), label_images=clean)

    def perturb(self, student: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``x'`` inside the eps-ball around ``x`` and the valid pixel range (normalised units)."""
        eps, step, lo, hi = (t.to(x.device, x.dtype) for t in (self.eps, self.step, self.lo, self.hi))
        refinery = self.refinery.model
        was_training = student.training
        student.eval()  # the attack must not move the student's BatchNorm statistics
        try:
            adv = x.detach().clone()
            for _ in range(self.cfg.steps):
                adv.requires_grad_(True)
                with torch.enable_grad():
                    T = self.refinery.temperature  # the disagreement of the training loss, at its temperature
                    if self.cfg.grad == "student":
                        with torch.no_grad():
                            q = refine(refinery, adv, T)  # [k, C]
                        log_p = F.log_softmax(student(adv).float() / T, 1)
                    else:
                        with torch.no_grad():
                            log_p = F.log_softmax(student(adv).float() / T, 1)
                        q = refine(refinery, adv, T)
                    disagreement = -(q * log_p).sum(1).mean()
                    (grad,) = torch.autograd.grad(disagreement, adv)  # input gradient only: no parameter gets .grad
                adv = adv.detach() + step * grad.sign()
                adv = torch.maximum(torch.minimum(adv, x + eps), x - eps)  # project into the eps-ball
                adv = torch.maximum(torch.minimum(adv, hi), lo)  # valid pixels
        finally:
            student.train(was_training)
        return adv.detach()
