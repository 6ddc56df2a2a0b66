"""Losses of the Label Refinery, as pure functions of tensors.

Notation: ``z`` student logits ``[B, C]``; ``q`` refined labels ``[B, C]`` (probabilities, rows sum
to 1); ``y`` ground-truth class indices ``[B]``; ``T`` temperature; ``alpha`` ground-truth weight.

The paper (Bagherinezhad et al. 2018, Sec. 3) trains generation k+1 with the soft cross-entropy
``H(q, softmax(z)) = -sum_c q_c log softmax(z)_c`` at ``T = 1`` and ``alpha = 0``. Since ``H(q, p) =
KL(q || p) + H(q)`` and ``H(q)`` does not depend on the student, its gradient equals the KL's.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_c q_c * log_softmax(z)_c``.

    Equals ``F.cross_entropy(logits, target_probs)`` (probability targets) and, for one-hot
    ``q``, the ordinary hard cross-entropy.

    Example:
        >>> z = torch.tensor([[2.0, 0.0]]); q = torch.tensor([[1.0, 0.0]])
        >>> round(soft_cross_entropy(z, q).item(), 4)
        0.1269
    """
    log_p = F.log_softmax(logits.float(), dim=1)  # [B, C]
    return -(target_probs.float() * log_p).sum(dim=1).mean()


def kl_divergence(logits: torch.Tensor, target_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``KL(q || softmax(z / T))`` (``0 * log 0`` counts as 0).

    Equals ``F.kl_div(log_softmax(z / T), q, reduction="batchmean")``.
    """
    log_p = F.log_softmax(logits.float() / temperature, dim=1)  # [B, C]
    q = target_probs.float()
    q_log_q = torch.where(q > 0, q * torch.log(q.clamp_min(1e-30)), torch.zeros_like(q))
    return (q_log_q - q * log_p).sum(dim=1).mean()


def one_hot_labels(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Ground truth as probabilities ``[B, C]``: ``(1 - s) * onehot(y) + s / C``."""
    q = F.one_hot(targets.long(), num_classes).float()
    if smoothing:
        q = q * (1.0 - smoothing) + smoothing / num_classes
    return q


def refinery_loss(
    logits: torch.Tensor,
    refined: torch.Tensor,
    targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    gt_weight: float = 0.0,
) -> torch.Tensor:
    """The training loss of every generation.

    ``loss = (1 - alpha) * T^2 * H(q_T, softmax(z / T)) + alpha * H(onehot(y), softmax(z))``

    where ``q_T`` is the refinery's softmax at temperature ``T`` (the label source applies ``T`` to
    the refinery's logits; this function applies it to the student's). The ``T^2`` factor keeps the
    gradient scale independent of ``T`` (Hinton et al. 2015). With the paper's settings ``T = 1``,
    ``alpha = 0`` this is exactly :func:`soft_cross_entropy`; generation 1 passes one-hot
    (optionally smoothed) ``refined`` labels and ``T = 1`` (the training code never applies a
    temperature to ground truth), which makes it the ordinary cross-entropy.
    """
    loss = soft_cross_entropy(logits / temperature, refined)
    if temperature != 1.0:
        loss = loss * temperature**2
    if gt_weight:
        if targets is None:
            raise ValueError("gt_weight > 0 mixes in ground truth: pass the targets")
        hard = F.cross_entropy(logits.float(), targets.long())
        loss = (1.0 - gt_weight) * loss + gt_weight * hard
    return loss


def make_loss(temperature: float = 1.0, gt_weight: float = 0.0):
    """The loss of one generation as one callable ``loss(logits, refined, targets)``, built once.

    Generation 1 (ground truth) takes ``temperature=1``: a temperature never applies to ground truth.

    Example:
        >>> loss = make_loss(temperature=4.0, gt_weight=0.1)
        >>> z, y = torch.zeros(2, 3), torch.tensor([0, 1])
        >>> round(loss(z, torch.full((2, 3), 1 / 3), y).item(), 4)
        15.9299
    """
    return functools.partial(refinery_loss, temperature=temperature, gt_weight=gt_weight)
