"""Several trained models as one: their softmax averaged in probability.

``ProbabilityEnsemble(models)(x)`` returns ``log(mean_m softmax(f_m(x)))``: logits whose softmax is
the ensemble's probability, so every caller that takes a model (evaluation, a live refinery at
temperature 1, a label store's bake) takes an ensemble unchanged. Its uses: the *ensemble ceiling* of
a setting (what averaging a few ground-truth models gains over one model bounds what self-refinement
can add: Allen-Zhu & Li 2020), and refinery ensembles.

Example:
    >>> import torch
    >>> from torch import nn
    >>> e = ProbabilityEnsemble([nn.Linear(4, 3), nn.Linear(4, 3)])
    >>> torch.allclose(e(torch.zeros(2, 4)).exp().sum(1), torch.ones(2))
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ProbabilityEnsemble(nn.Module):
    """The average of ``models``' probabilities, returned as log-probabilities ``[B, C]``."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([F.log_softmax(m(x).float(), dim=1) for m in self.members])  # [M, B, C]
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))  # log of the mean probability


__all__ = ["ProbabilityEnsemble"]
