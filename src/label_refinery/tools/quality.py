"""Label-quality scores and confident learning as pure functions over probability chunks.

Inputs are ``p`` ``[N, C]`` probabilities (rows sum to 1) and ``y`` ``[N]`` given labels, as numpy
arrays; a memory-mapped ``p`` works unchanged, because everything here walks it in row chunks
(``CHUNK`` rows at a time), so a million images x 1,000 classes need a few GB of disk and little
memory. The audit (``audit.py``) calls these on *held-out* probabilities when it has them.

- :func:`self_confidence`: ``p[y]``, the probability of the given label (low: suspicious).
- :func:`normalized_margin`: ``(p[y] - max_{j != y} p[j] + 1) / 2`` in ``[0, 1]`` (low: another class
  beats the given one); cleanlab's "normalized_margin".
- :func:`log_margin`: ``log p[y] - log max_{j != y} p[j]`` (low: improbable, or beaten by one class).
- :func:`confident_joint`: Northcutt, Jiang & Chuang 2021 ("Confident learning: estimating uncertainty
  in dataset labels", JAIR), section 3.1: per-class thresholds ``t_j = mean p[j]`` over the images
  labelled ``j``; an image labelled ``i`` counts in ``C[i, j*]``, ``j*`` its most probable class among
  those with ``p[j] >= t_j``. :func:`calibrated_joint` rescales rows to the given-label counts
  (eq. 2), giving the estimated number of images whose given label is ``i`` and true label ``j``.
- :func:`label_issues`: the images off the diagonal of the confident joint (cleanlab's
  ``filter_by="confident_learning"``): labelled ``i``, confidently another class ``j*``. This flag
  needs no per-pair sorting, so it streams; cleanlab's default ``prune_by_noise_rate`` ranks within
  each class pair, which needs those pairs in memory.

We write these (about 60 lines) instead of calling cleanlab because cleanlab takes ``pred_probs`` as
one in-memory array and the audit must stream; ``bench/audit_vs_cleanlab.py`` checks both on the
same held-out probabilities (cleanlab is a development dependency for that comparison only).

Example:
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.95, 0.05]]); y = np.array([0, 1, 1])
    >>> self_confidence(p, y).round(2).tolist(), label_issues(p, y).tolist()
    ([0.9, 0.8, 0.05], [False, False, True])
"""

from __future__ import annotations

import numpy as np

CHUNK = 65536  # rows per pass step: 65,536 x 1,000 float32 is 256 MB


def row_chunks(n: int):
    for start in range(0, n, CHUNK):
        yield slice(start, min(n, start + CHUNK))


def self_confidence(p, y) -> np.ndarray:
    """``p[i, y_i]`` for every row ``[N]``."""
    y = np.asarray(y)
    out = np.empty(len(y), dtype=np.float64)
    for s in row_chunks(len(y)):
        out[s] = np.take_along_axis(np.asarray(p[s]), y[s, None], 1)[:, 0]
    return out


def given_and_rival(p, y) -> tuple[np.ndarray, np.ndarray]:
    """``(p[y], max_{j != y} p[j])`` for every row, each ``[N]``: the given label and its strongest rival."""
    y = np.asarray(y)
    given, rival = np.empty(len(y), dtype=np.float64), np.empty(len(y), dtype=np.float64)
    for s in row_chunks(len(y)):
        block = np.array(p[s], dtype=np.float32)  # a copy: the given column is masked below
        rows = np.arange(len(block))
        given[s] = block[rows, y[s]]
        block[rows, y[s]] = -np.inf
        rival[s] = block.max(1)
    return given, rival


def margins(p, y) -> dict[str, np.ndarray]:
    """``self_confidence``, ``normalized_margin`` and ``log_margin`` ``[N]`` from one pass over ``p``."""
    given, rival = given_and_rival(p, y)
    return {
        "self_confidence": given,
        "normalized_margin": (given - rival + 1) / 2,
        "log_margin": np.log(np.maximum(given, 1e-12)) - np.log(np.maximum(rival, 1e-12)),
    }


def normalized_margin(p, y) -> np.ndarray:
    """``(p[y] - max_{j != y} p[j] + 1) / 2`` for every row ``[N]``, in ``[0, 1]``."""
    return margins(p, y)["normalized_margin"]


def log_margin(p, y) -> np.ndarray:
    """``log p[y] - log max_{j != y} p[j]`` for every row ``[N]``: the log-odds of the given label against
    its strongest rival (probabilities floored at 1e-12). Low where the given label is improbable
    (as self-confidence) *and* where one other class beats it (as the margin): the audit's default
    ranking, since it finds uniform flips as well as self-confidence does and flips between
    confusable classes as well as the margin does (docs/analysis.md).

    Example:
        >>> log_margin(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]), np.array([0, 0])).round(3).tolist()
        [0.693, -2.079]
    """
    return margins(p, y)["log_margin"]


def thresholds(p, y, num_classes: int) -> np.ndarray:
    """``t_j``: the mean probability of class ``j`` over the images labelled ``j`` ``[C]`` (a class
    nobody is labelled with gets threshold 1: nothing is confidently it)."""
    y = np.asarray(y)
    sums, counts = np.zeros(num_classes), np.zeros(num_classes)
    for s in row_chunks(len(y)):
        block = np.asarray(p[s])
        np.add.at(sums, y[s], block[np.arange(len(block)), y[s]])
        counts += np.bincount(y[s], minlength=num_classes)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)


def confident_classes(p, y, t: np.ndarray) -> np.ndarray:
    """Per row, ``j*``: the most probable class among those at or above their threshold; -1 if none ``[N]``."""
    out = np.empty(len(y), dtype=np.int64)
    for s in row_chunks(len(y)):
        block = np.asarray(p[s])
        above = block >= t[None, :]
        masked = np.where(above, block, -1.0)
        out[s] = np.where(above.any(1), masked.argmax(1), -1)
    return out


def confident_of(p, y, num_classes: int) -> np.ndarray:
    """``j*`` of every row ``[N]`` (-1: no class at its threshold): the one pass that both the
    confident joint and the label-issue flags are counted from."""
    return confident_classes(p, y, thresholds(p, y, num_classes))


def joint_from(y, confident: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[i, j]``: images labelled ``i`` whose confident class is ``j`` ``[C, C]`` (integer counts)."""
    y, keep = np.asarray(y), confident >= 0
    joint = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(joint, (y[keep], confident[keep]), 1)
    return joint


def confident_joint(p, y, num_classes: int) -> np.ndarray:
    """The confident joint ``[C, C]`` of ``p`` and ``y`` (see :func:`joint_from`)."""
    return joint_from(y, confident_of(p, y, num_classes), num_classes)


def calibrated_joint(joint: np.ndarray, y, num_classes: int) -> np.ndarray:
    """The confident joint with each row rescaled to the number of images given that label ``[C, C]``:
    entry ``(i, j)`` estimates how many images labelled ``i`` are truly ``j``."""
    given = np.bincount(np.asarray(y), minlength=num_classes).astype(float)
    rows = joint.sum(1, keepdims=True).astype(float)
    return np.where(rows > 0, joint / np.maximum(rows, 1) * given[:, None], 0.0)


def label_issues(p, y, num_classes: int | None = None) -> np.ndarray:
    """``[N]`` bool: labelled ``i``, confidently another class (off the confident joint's diagonal)."""
    y = np.asarray(y)
    j = confident_of(p, y, num_classes or np.asarray(p[:1]).shape[1])
    return (j >= 0) & (j != y)


__all__ = [
    "calibrated_joint",
    "confident_classes",
    "confident_joint",
    "confident_of",
    "joint_from",
    "given_and_rival",
    "label_issues",
    "log_margin",
    "margins",
    "normalized_margin",
    "self_confidence",
    "thresholds",
]
