"""Training dynamics per training image, recorded at no extra forward pass (issue 27): what the audit
ranks wrong labels by beside the refined probabilities.

Every step already computes the student's logits ``z`` on its crops; :meth:`Dynamics.add` keeps, per
image, the **margin** of its given label ``z[y] - max_{c != y} z[c]`` (Pleiss et al. 2020's area under
the margin, AUM, is its mean over epochs) and whether the crop was classified as ``y``. At each
epoch's end the epoch's sums (over processes, over an image's crops) move into the running totals:
the AUM, the epochs the image was **forgotten** (classified right in one epoch, wrong in the next;
Toneva et al. 2019) and the epoch it was last **learned**. A wrong label keeps a low or negative
margin, and its image is learned late and forgotten often.

Written to ``genK/dynamics.npz`` (``ids``, ``aum``, ``forgotten``, ``learned_epoch``, ``correct_last``,
``epochs``) when the generation finishes; the running state is part of the training state, so a
resumed generation records exactly what an uninterrupted one does. Not recorded with mixup/cutmix
(a mixed image has two labels, so its margin has no meaning).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..files import atomic_write

FILE = "dynamics.npz"
RUNNING = ("aum_sum", "epochs_seen", "forgotten", "correct_prev", "learned_epoch")
EPOCH = ("ep_margin", "ep_correct", "ep_seen")


class Dynamics:
    """Per-image margins and correctness over training (module docstring), for the split with ``ids``."""

    def __init__(self, ids: torch.Tensor):
        n = len(ids)
        self.ids = ids.cpu().long()
        self._order = torch.argsort(self.ids)
        self._sorted = self.ids[self._order]
        self.aum_sum = torch.zeros(n, dtype=torch.float64)
        self.epochs_seen = torch.zeros(n, dtype=torch.int32)
        self.forgotten = torch.zeros(n, dtype=torch.int32)
        self.correct_prev = torch.full((n,), -1, dtype=torch.int8)  # -1: not seen yet
        self.learned_epoch = torch.full((n,), -1, dtype=torch.int32)  # the epoch it turned right for good
        self.epoch_sums = torch.zeros(3, n, dtype=torch.float64)  # margin, correct, crops seen (this epoch)

    def positions(self, batch_ids: torch.Tensor) -> torch.Tensor:
        """Positions in the split of the dataset ids ``batch_ids``."""
        ids = batch_ids.long().to(self._sorted.device)
        return self._order[torch.searchsorted(self._sorted, ids)]

    @torch.no_grad()
    def add(self, batch_ids: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Count one step's crops: margin of the given label and whether it is the top-1. The sums stay on
        the logits' device (no host sync per step on a GPU) until the epoch closes."""
        z = logits.detach().float()
        if self.epoch_sums.device != z.device:  # the first step (or the first after a resume)
            self.epoch_sums, self._order, self._sorted = (t.to(z.device) for t in (self.epoch_sums, self._order, self._sorted))
        y = targets.long().to(z.device)
        given = z.gather(1, y[:, None])[:, 0]
        others = z.scatter(1, y[:, None], float("-inf")).amax(1)
        values = torch.stack([given - others, (z.argmax(1) == y).float(), torch.ones_like(given)]).double()
        self.epoch_sums.index_add_(1, self.positions(batch_ids), values)

    def close_epoch(self, epoch: int) -> None:
        """Move the epoch's sums (over every process) into the running totals."""
        margin, correct, seen = self.combined_epoch()  # on the CPU
        hit = seen > 0
        right = torch.where(hit, (correct / seen.clamp_min(1) >= 0.5).to(torch.int8), self.correct_prev)
        self.aum_sum[hit] += (margin / seen.clamp_min(1))[hit]
        self.epochs_seen[hit] += 1
        self.forgotten += ((self.correct_prev == 1) & (right == 0) & hit).int()
        turned = hit & (right == 1) & (self.correct_prev != 1)
        self.learned_epoch[turned] = epoch
        self.learned_epoch[hit & (right == 0)] = -1
        self.correct_prev = right
        self.epoch_sums.zero_()

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors for the training state; the epoch's partial sums must be combined over processes first
        (:meth:`combined_epoch`), which rank 0 alone keeps on resume."""
        return {f"dynamics.{k}": getattr(self, k).clone() for k in RUNNING} | {"dynamics.epoch_sums": self.combined_epoch()}

    def combined_epoch(self) -> torch.Tensor:
        """The epoch's sums so far over every process, on the CPU (float64, like the meters)."""
        sums = self.epoch_sums.clone()
        if distributed.world() > 1:
            torch.distributed.all_reduce(sums)  # on the training device (NCCL: CUDA tensors)
        return sums.cpu()

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        """From a training state (a state saved without dynamics starts them afresh)."""
        if "dynamics.aum_sum" not in tensors or len(tensors["dynamics.aum_sum"]) != len(self.ids):
            return
        for k in RUNNING:
            setattr(self, k, tensors[f"dynamics.{k}"].clone())
        # the epoch's sums so far, combined over processes when saved: rank 0 carries them, others start at 0
        sums = tensors["dynamics.epoch_sums"].clone() if distributed.is_main() else torch.zeros_like(self.epoch_sums.cpu())
        self.epoch_sums = sums.to(self.epoch_sums.device)

    def arrays(self) -> dict[str, np.ndarray]:
        seen = self.epochs_seen.clamp_min(1).double()
        return {
            "ids": self.ids.numpy(),
            "aum": (self.aum_sum / seen).float().numpy(),
            "forgotten": self.forgotten.numpy(),
            "learned_epoch": self.learned_epoch.numpy(),
            "correct_last": self.correct_prev.numpy(),
            "epochs": self.epochs_seen.numpy(),
        }

    def save(self, folder: Path) -> None:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **self.arrays())
        atomic_write(Path(folder) / FILE, buf.getvalue())


def load(folder: str | Path) -> dict[str, np.ndarray] | None:
    """``genK/dynamics.npz`` as arrays, or None for a generation trained before dynamics were recorded."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


__all__ = ["FILE", "Dynamics", "load"]
