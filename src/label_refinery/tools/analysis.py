"""Label-quality metrics: pure functions of probability tensors (no models, no files).

``p`` is always ``[N, C]`` rows of class probabilities (refined labels: a generation's softmax),
``y`` ``[N]`` the given (ground-truth) labels. The paper's thesis is that labels are incomplete (a
crop may not show the labelled object), ambiguous (similar classes) and redundant; these numbers
show where refined labels say so.

Example:
    >>> p = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    >>> agreement(p, torch.tensor([0, 0]))
    0.5
"""

from __future__ import annotations

import torch

EPS = 1e-12


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats per row: ``-sum_c p_c log p_c`` ``[N]`` (0 for one-hot, log C for uniform)."""
    return -(p * (p + EPS).log()).sum(1)


def max_prob(p: torch.Tensor) -> torch.Tensor:
    """The largest probability per row ``[N]``."""
    return p.max(1).values


def agreement(p: torch.Tensor, y: torch.Tensor) -> float:
    """Share of rows whose top-1 is the given label."""
    return float((p.argmax(1) == y).float().mean())


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_c p_c (log p_c - log q_c)`` per row ``[N]``, in nats."""
    return (p * ((p + EPS).log() - (q + EPS).log())).sum(1)


def soft_confusion(p: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``M[i, j]``: mean refined probability of class j over the rows labelled i ``[C, C]``; rows
    sum to 1 (classes without rows stay 0). The diagonal is how much mass the given label keeps."""
    m = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    m.index_add_(0, y, p.double())
    counts = torch.bincount(y, minlength=num_classes).double().clamp(min=1)
    return m / counts[:, None]


def ambiguous_pairs(confusion: torch.Tensor, k: int = 5) -> list[tuple[int, int, float]]:
    """The ``k`` class pairs ``(i, j)``, i < j, that exchange the most mass: ``M[i, j] + M[j, i]``."""
    sym = confusion + confusion.T
    i, j = torch.triu_indices(len(sym), len(sym), offset=1)
    scores = sym[i, j]
    order = scores.argsort(descending=True)[:k]
    return [(int(i[o]), int(j[o]), float(scores[o])) for o in order]


def given_prob(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The probability each row gives its given label ``[N]``."""
    return p.gather(1, y[:, None])[:, 0]


def margin(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p(given) - max_{c != given} p(c)`` per row ``[N]``: negative when another class wins."""
    others = p.scatter(1, y[:, None], -1.0)
    return given_prob(p, y) - others.max(1).values


def crop_disagreement(crop_top1: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Share of each image's crops whose refined top-1 is not its given label: ``crop_top1`` is
    ``[N, K]`` (K crops per image) -> ``[N]``. High values: crops often show something else."""
    return (crop_top1 != y[:, None]).float().mean(1)


def distractor_mass(p: torch.Tensor, y: torch.Tensor, d: torch.Tensor) -> dict[str, float]:
    """Label completeness on scenes with a known second object (``fashion-scenes``): ``p`` ``[N, C]``
    refined labels, ``y`` the given (main) class, ``d`` the distractor class of each row ``[N]``.

    ``distractor_mass`` is the mean probability on the distractor, ``given_mass`` on the given class,
    ``other_mass`` the mean probability per remaining class (the level of mere confusion: distractor
    mass above it is mass that follows what the crop shows), ``distractor_top1`` the share of rows
    whose top-1 is the distractor. A one-hot ground-truth label has distractor mass 0: the mass a
    refinery moves there is the incompleteness it repairs.
    """
    given, distractor = given_prob(p, y), given_prob(p, d)
    rest = max(p.shape[1] - 2, 1)
    return {
        "distractor_mass": float(distractor.mean()),
        "given_mass": float(given.mean()),
        "other_mass": float(((1.0 - given - distractor).clamp_min(0) / rest).mean()),
        "distractor_top1": agreement(p, d),
    }


def label_summary(p_images: torch.Tensor, p_crops: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The per-generation numbers of ``analysis.json`` from whole-image ``[N, C]`` and crop
    ``[N, K, C]`` refined labels of the same N images."""
    n, k, c = p_crops.shape
    flat = p_crops.reshape(n * k, c)
    y_crops = y.repeat_interleave(k)
    return {
        "images": n,
        "crops_per_image": k,
        "entropy_images": float(entropy(p_images).mean()),
        "entropy_crops": float(entropy(flat).mean()),
        "max_prob_images": float(max_prob(p_images).mean()),
        "max_prob_crops": float(max_prob(flat).mean()),
        "agreement_images": agreement(p_images, y),
        "agreement_crops": agreement(flat, y_crops),
        "crops_other_top1": 1.0 - agreement(flat, y_crops),  # crop top-1 is not the given label
        # crop top-1 is not what the same model says of the whole image: the crop shows something else
        "crops_other_than_image": 1.0 - agreement(flat, p_images.argmax(1).repeat_interleave(k)),
    }


__all__ = [
    "agreement",
    "ambiguous_pairs",
    "crop_disagreement",
    "distractor_mass",
    "entropy",
    "given_prob",
    "kl",
    "label_summary",
    "margin",
    "max_prob",
    "soft_confusion",
]
