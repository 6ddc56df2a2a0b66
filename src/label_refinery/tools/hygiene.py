"""Image hygiene beside labels (issue 27, goal 3): near-duplicate training images, training images that
duplicate test images (they inflate test accuracy), and outliers (images far from every other).

Each image is embedded by a model the run trained: the input of its classifier (the last ``nn.Linear``),
L2-normalised, on the evaluation view. Its 5 nearest neighbours by cosine similarity (in chunks: no
``N x N`` matrix held) are the candidates; of those, the one most alike in pixels (the views at most
32 x 32, their correlation, the candidate shifted by up to a pixel) is its match, since a network's
embedding puts look-alikes as close as copies:

- ``duplicate_of`` / ``duplicate_sim``: the matching *other* training image and the pixel similarity;
- ``test_duplicate_of`` / ``test_duplicate_sim``: the matching test image and the pixel similarity;
- ``outlier_score``: 1 minus its cosine similarity to the nearest *class centroid* (the mean embedding
  of the training images given that class): high where an image is far from every class. (The mean
  similarity to its nearest images was the first score: outliers of one kind, all noise or all of one
  other domain, are each other's neighbours and hid from it; ``bench/audit_hygiene.py`` measured both.)

The audit writes them as columns of ``audit.csv`` and shows the most similar train/test pairs, training
pairs and outliers in ``audit.html``. Their thresholds are the reader's: the columns are rankings, and
``bench/audit_hygiene.py`` measures their precision on planted copies and outliers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .probe import to_pictures

CANDIDATES = 5  # embedding neighbours compared in pixels
PIXELS = 32  # the largest side of the views compared in pixels
CHUNK = 2048


def classifier_input(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear``: its input is the embedding."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no nn.Linear classifier to take embeddings from")
    return linears[-1]


@torch.no_grad()
def embed(model: nn.Module, split, *, batch_size: int = 256, device="cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids [N], embeddings [N, D], pixels [N, C, S, S])`` of ``split``'s evaluation views, in its order:
    the embeddings L2-normalised, the pixels the view at most 32 x 32 (float16; what tells a copy from a
    look-alike)."""
    grabbed: list[torch.Tensor] = []
    hook = classifier_input(model).register_forward_hook(lambda _m, inputs, _out: grabbed.append(inputs[0].flatten(1)))
    ids, out, pix = [], [], []
    try:
        model.eval()
        for batch in split.iter_batches(batch_size, device=device):
            model(batch.images)
            out.append(F.normalize(grabbed.pop().float(), dim=1).cpu())
            side = min(PIXELS, batch.images.shape[-1])
            pix.append(F.adaptive_avg_pool2d(batch.images.float(), side).half().cpu())  # [B, C, S, S]
            ids.append(batch.indices.cpu())
    finally:
        hook.remove()
    return torch.cat(ids).numpy(), torch.cat(out).numpy(), torch.cat(pix).numpy()


def nearest(queries: np.ndarray, keys: np.ndarray, k: int = 1, same: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``[N, k]`` and cosine similarities ``[N, k]`` of each query's ``k`` most similar keys
    (``same``: queries are the keys, and an image is not its own neighbour)."""
    k = min(k, len(keys) - (1 if same else 0))
    keys_t = torch.from_numpy(np.ascontiguousarray(keys))
    pos, sim = np.zeros((len(queries), k), dtype=np.int64), np.zeros((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), CHUNK):
        q = torch.from_numpy(np.ascontiguousarray(queries[start : start + CHUNK]))
        s = q @ keys_t.T  # [chunk, M]
        if same:
            rows = torch.arange(len(q))
            s[rows, rows + start] = -2.0  # not itself
        top = s.topk(k, dim=1)
        pos[start : start + len(q)], sim[start : start + len(q)] = top.indices.numpy(), top.values.numpy()
    return pos, sim


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(-3).float()
    return F.normalize(x - x.mean(-1, keepdim=True), dim=-1)


def _closest_in_pixels(pix: np.ndarray, other: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Among each image's embedding candidates ``[N, k]``, the one most alike in pixels: ``(its position [N],
    the similarity [N])``, the correlation of the two views with the candidate shifted by up to one pixel
    either way (the best of 9 shifts: a copy moved by a pixel is still a copy)."""
    best_pos, best_sim = np.zeros(len(pix), dtype=np.int64), np.full(len(pix), -1.0, dtype=np.float32)
    for start in range(0, len(pix), CHUNK):
        q = torch.from_numpy(pix[start : start + CHUNK])[..., 1:-1, 1:-1]  # [n, C, S-2, S-2]
        cand = torch.from_numpy(candidates[start : start + CHUNK])
        keys = torch.from_numpy(other)[cand]  # [n, k, C, S, S]
        size = q.shape[-1]
        qu = _unit(q)[:, None]  # [n, 1, P]
        sims = torch.stack([(qu * _unit(keys[..., dy : dy + size, dx : dx + size])).sum(-1)
                            for dy in range(3) for dx in range(3)]).amax(0)  # [n, k]  # fmt: skip
        top = sims.max(1)
        rows = torch.arange(len(q))
        best_pos[start : start + len(q)] = cand[rows, top.indices].numpy()
        best_sim[start : start + len(q)] = top.values.numpy()
    return best_pos, best_sim


def hygiene(model: nn.Module, train, test, *, batch_size: int = 256, device="cpu") -> dict[str, np.ndarray]:
    """Per training image ``[N]`` (in ``train``'s order): the columns of the module docstring."""
    train_ids, e_train, p_train = embed(model, train, batch_size=batch_size, device=device)
    test_ids, e_test, p_test = embed(model, test, batch_size=batch_size, device=device)
    pos, _ = nearest(e_train, e_train, CANDIDATES, same=True)
    tpos, _ = nearest(e_train, e_test, CANDIDATES)
    dup, dup_sim = _closest_in_pixels(p_train, p_train, pos)
    leak, leak_sim = _closest_in_pixels(p_train, p_test, tpos)
    return {
        "duplicate_of": train_ids[dup],
        "duplicate_sim": dup_sim,
        "test_duplicate_of": test_ids[leak],
        "test_duplicate_sim": leak_sim,
        "outlier_score": 1.0 - class_similarity(e_train, train.targets.numpy()),  # embed keeps the split's order
    }


def class_similarity(emb: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each image's cosine similarity ``[N]`` to the nearest class centroid: the L2-normalised mean of the
    (unit) embeddings of the images given that class. A class no image is given has no centroid.

    Example:
        >>> e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> class_similarity(e, np.array([0, 0, 1, 1])).round(2).tolist()
        [1.0, 1.0, 0.95, 0.95]
    """
    classes = np.unique(targets)
    centroids = np.stack([emb[targets == c].mean(0) for c in classes])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return (emb @ centroids.T).max(1)


def _views(split, positions: list[int], ds) -> list[np.ndarray]:
    """uint8 evaluation views of ``split``'s images at ``positions``, in that order."""
    out = []
    for batch in split.subset(positions).iter_batches(64):
        out.extend(to_pictures(batch.images, ds))
    return out


def hygiene_sections(ds, t: dict, rows: int) -> list[dict]:
    """audit.html's hygiene tables: the ``rows`` most similar train/test and training pairs, and outliers."""
    if rows <= 0 or np.isnan(t["duplicate_sim"]).all():  # none, or skipped as too large (audit.py)
        return []
    train_pos = {int(i): p for p, i in enumerate(ds.train.ids.tolist())}
    test_pos = {int(i): p for p, i in enumerate(ds.test.ids.tolist())}
    cls = ds.classes
    y, y_test = ds.train.targets.numpy(), ds.test.targets.numpy()
    sections = []
    for key, title, other, other_split, other_y in (
        ("test_duplicate_sim", "training images most like a test image", "test_duplicate_of", ds.test, y_test),
        ("duplicate_sim", "training images most like another training image", "duplicate_of", ds.train, y),
        ("outlier_score", "outliers: training images far from every class", None, None, None),
    ):
        order = np.argsort(-t[key], kind="stable")[:rows].tolist()
        if key == "duplicate_sim":  # each pair once
            seen, kept = set(), []
            for p in np.argsort(-t[key], kind="stable").tolist():
                pair = frozenset((int(ds.train.ids[p]), int(t[other][p])))
                if pair not in seen:
                    seen.add(pair)
                    kept.append(p)
                if len(kept) == rows:
                    break
            order = kept
        a = _views(ds.train, order, ds)
        items = [{"image": img, "caption": f"train #{int(ds.train.ids[p])} ({cls[y[p]]}), {key} {t[key][p]:.3f}"} for img, p in zip(a, order)]
        if other:
            where = train_pos if other_split is ds.train else test_pos
            pos = [where[int(t[other][p])] for p in order]
            for item, img, q in zip(items, _views(other_split, pos, ds), pos):
                item["match"] = img
                item["match_caption"] = f"{'test' if other_split is ds.test else 'train'} #{int(other_split.ids[q])} ({cls[other_y[q]]})"
        sections.append({"key": key, "title": title, "items": items})
    return sections


__all__ = ["embed", "hygiene", "hygiene_sections", "nearest"]
