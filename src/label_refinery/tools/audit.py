"""Which training labels look wrong, ambiguous or incomplete: ``label-refinery audit RUN``.

    label-refinery audit runs/fmnist --folds 5     # held-out scores: 5 fold models (folds.py), then rank
    label-refinery audit runs/fmnist               # in-sample: the chain's own generations (quicker, weaker)
    label-refinery relabel runs/fmnist/audit/audit.csv --top 200 --out fixes.csv   # then train --label-overrides

**Probabilities.** Each training image gets one probability vector ``p`` ``[C]``: the mean, over
its scoring models, of their refined labels on its views (the whole image with weight 1/2 and
``crops_per_image`` fixed crops sharing the other 1/2). With ``--folds K`` the scoring models of an
image are its fold chain's generations (over ``--fold-seeds S`` seeds), which never trained on it (*held-out*, as confident
learning asks); without, every generation of the chain (*in-sample*: they saw the image, so a
memorised wrong label looks right). ``p`` for all images is written to ``audit/probs.npy``
(float32 ``[N, C]``, memory-mapped: a million images x 1,000 classes is 4 GB on disk, little memory),
which cleanlab's ``pred_probs`` also takes.

**Rankings** (``quality.py``): ``log_margin = log p[given] - log max_other p`` (the default: as good
as self-confidence on uniform flips and as the margin on flips between confusable classes,
docs/analysis.md), ``self_confidence = p[given]`` and ``normalized_margin``; and ``aum``,
the area under the margin of generation 1 (the mean over its epochs of the given label's logit
minus the largest other, on the training crops: recorded while it trained, training/dynamics.py),
with ``forgotten`` beside it (epochs the image turned from right to wrong). Rows are ordered by
``--rank`` (default ``log_margin``, lowest first). ``issue`` is confident learning's flag
(labelled ``i``, confidently another class), and ``audit/audit-summary.json`` holds the calibrated confident
joint's estimate of how many labels are wrong per (given, true) class pair.

**Suggestion and reason** per image: the suggested label is ``argmax p`` with its probability; the
``flag`` is the first that applies of

- ``wrong``: confident learning flags it, or another class has ``p >= 0.5``;
- ``ambiguous``: the given label and another class are the top two, within 0.2 of each other;
- ``incomplete``: at least half the crops' top-1 is another class while the whole image agrees;
- ``uncertain``: ``p`` has more than half the maximal entropy;
- ``ok``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..files import atomic_write, together, write_json
from ..labels import refine
from ..locks import claim
from . import quality
from .export import write_csv
from .hygiene import hygiene, hygiene_sections
from .probe import analysis_sampler, generations, load_run, refined, to_pictures

RANKINGS = ("log_margin", "self_confidence", "normalized_margin", "aum")
MAX_PAIRS = 5e10  # image hygiene compares every training image with every other and every test image


@dataclass(frozen=True)
class AuditSpec:
    """How :func:`audit_run` scores and orders the training images (the ``audit`` command's flags).

    Example:
        >>> AuditSpec(folds=5, fold_seeds=2).rank
        'log_margin'
    """

    folds: int = 0  # held-out scores from that many fold chains (folds.py); 0: the chain's own generations
    fold_generations: int = 1  # generations per fold chain
    fold_seeds: int = 1  # seeds per fold chain, their probabilities averaged (an ensemble over seeds)
    fold_epochs: int | None = None  # epochs per fold training; None: generation 1's
    rank: str = "log_margin"  # the order of audit.csv (RANKINGS), lowest first
    crops_per_image: int = 4  # fixed random crops per image, beside the whole image
    html_rows: int = 100  # the images shown in audit.html
    hygiene_rows: int = 12  # the most similar train/test pairs, training pairs and outliers shown there
    batch_size: int = 256


def audit_run(
    run: str | Path,
    spec: AuditSpec = AuditSpec(),
    *,
    out: str | Path | None = None,
    device: str = "cpu",
    progress: bool = False,
    log=print,
    force: bool = False,
) -> Path:
    """Score every training image; write ``audit.csv`` (all images, most suspicious first),
    ``audit.html`` (the top ``spec.html_rows``, with accept/reject per row), ``probs.npy`` and
    ``audit-summary.json``; returns the output folder. ``spec.folds``: held-out scores from that many fold
    chains (:mod:`label_refinery.tools.folds`), each trained ``spec.fold_seeds`` times (an ensemble over
    seeds); 0: the chain's own generations (in-sample). ``out`` (default ``RUN/audit``) must be new,
    empty, an audit's or a run's folder (``force``: any folder); the four files appear together
    (:func:`label_refinery.files.together`), and only they are written there.

    Example:
        >>> audit_run("runs/fmnist", AuditSpec(folds=5))                        # doctest: +SKIP
        PosixPath('runs/fmnist/audit')
    """
    from ..errors import UserError, brief

    folds, fold_seeds, rank = spec.folds, spec.fold_seeds, spec.rank
    if rank not in RANKINGS:
        raise UserError(f"--rank must be one of {', '.join(RANKINGS)}, got {brief(rank)}")
    gens, models, ds, cfg = load_run(run, device)
    n = len(ds.train)
    if folds and not 2 <= folds <= n:
        raise UserError(f"--folds must be in 2..{n}, got {folds}")
    if fold_seeds < 1:
        raise UserError(f"--fold-seeds must be at least 1, got {fold_seeds}")
    if spec.fold_epochs is not None and spec.fold_epochs < 1:
        raise UserError(f"--fold-epochs must be at least 1, got {spec.fold_epochs}")
    out = Path(out) if out else Path(run) / "audit"
    with claim(out, "audit", accept=("audit", "chain", "generation"), force=force):
        scorers = _scorers(run, gens, models, ds, spec, device, progress, log)
        with together(out) as stage:  # audit.csv, audit.html, probs.npy and audit-summary.json appear together
            summary = _write_audit(stage, run, scorers, (ds, cfg, len(gens)), spec, device, progress)
    log(
        f"audit ({summary['scores']}): {n} images scored, {summary['flagged']['wrong']} look wrong, confident "
        f"learning estimates {summary['estimated_issues']:.0f} wrong labels -> {out}/audit.csv, {out}/audit.html"
    )
    return out


def _write_audit(stage: Path, run, scorers, data: tuple, spec: AuditSpec, device, progress: bool) -> dict:
    """Probabilities, table, CSV, summary and HTML of the audit into ``stage``; returns the summary.
    ``data``: the run's dataset, its generation-1 config and its number of generations."""
    ds, cfg, generations = data
    n = len(ds.train)
    sampler = analysis_sampler(cfg)
    probs, crop_wrong = _probabilities(stage, scorers, ds, sampler, spec, device, progress)
    y = ds.train.targets.numpy()
    table = _table(probs, y, crop_wrong, ds.num_classes) | _dynamics(run, ds)
    table |= _hygiene(scorers[0][1][-1], ds, spec, device)  # a model the run trained: embeddings need not be held out
    if spec.rank == "aum" and np.isnan(table["aum"]).all():
        from ..errors import UserError

        raise UserError(f"--rank aum needs the training dynamics of {run}'s generation 1 (gen1/dynamics.npz): "
                        "it was trained before they were recorded, or with mixup/cutmix; retrain it, or rank otherwise")  # fmt: skip
    order = np.argsort(table[spec.rank], kind="stable")  # lowest quality first (an unknown AUM, NaN, last)
    rows = (_row(r, i, table, ds) for r, i in enumerate(order.tolist(), 1))
    write_csv(stage / "audit.csv", rows)
    summary = _summary(table, y, ds.classes, spec, generations)
    write_json(stage / "audit-summary.json", summary)
    from .reports import audit_html  # HTML and pictures live with the reports

    top = order[: spec.html_rows].tolist()
    top_rows = [_row(r, i, table, ds) for r, i in enumerate(top, 1)]
    scorer_of = np.zeros(n, dtype=np.int64)
    for k, (positions, _) in enumerate(scorers):
        scorer_of[positions] = k
    pictures = _pictures(ds, top, [scorers[scorer_of[i]][1][-1] for i in top], sampler, device)
    sections = hygiene_sections(ds, table, spec.hygiene_rows)
    atomic_write(stage / "audit.html", audit_html(top_rows, pictures, run=str(run), summary=summary, hygiene=sections).encode())
    return summary


def _scorers(run, gens, models, ds, spec: AuditSpec, device, progress: bool, log) -> list:
    """``(positions [n_k], models)`` pairs: who scores which training images (module docstring)."""
    if not spec.folds:
        return [(np.arange(len(ds.train)), models)]
    from .folds import train_folds

    parts = train_folds(Path(run), gens[0], ds, spec.folds, spec.fold_generations, spec.fold_seeds,
                        epochs=spec.fold_epochs, progress=progress, log=log)  # fmt: skip
    return [(pos, [load_checkpoint(g).build_model(device).eval() for g in folders]) for pos, folders in parts]


def _probabilities(out: Path, scorers, ds, sampler, spec: AuditSpec, device, progress):
    """Every image's view-averaged probabilities into ``out/probs.npy`` (written whole, then renamed;
    ``out`` is the audit's staging folder), returned memory-mapped, with the crops' disagreement ``[N]``."""
    n = len(ds.train)
    probs = np.lib.format.open_memmap(out / "probs.npy.tmp", mode="w+", dtype=np.float32, shape=(n, ds.num_classes))
    crop_wrong = np.zeros(n, dtype=np.float32)
    for k, (positions, ms) in enumerate(scorers):
        desc = f"audit: fold {k + 1}/{len(scorers)}" if spec.folds else "audit"
        _score(ms, ds.train.subset(positions), positions, probs, crop_wrong, sampler, spec, device, progress, desc)
    probs.flush()
    del probs
    (out / "probs.npy.tmp").replace(out / "probs.npy")
    return np.load(out / "probs.npy", mmap_mode="r"), crop_wrong


def _score(models, split, positions, probs, crop_wrong, sampler, spec: AuditSpec, device, progress, desc):
    """Write the view-averaged mean probability of ``models`` for ``split`` (the images at ``positions``
    of the training split, in order) into ``probs``; the crops' disagreement with the given label
    (share of crops whose top-1 is another class, by the models' mean) into ``crop_wrong``."""
    crops_per_image, batch_size = spec.crops_per_image, spec.batch_size
    start = 0
    for _, _, p in refined(models, split, batch_size=batch_size, device=device, progress=progress, desc=desc):
        pos = positions[start : start + p.shape[1]]
        probs[pos] = 0.5 * p.mean(0).numpy()
        start += p.shape[1]
    for view in range(crops_per_image):
        start = 0
        for _, y, p in refined(models, split, batch_size=batch_size, crops=sampler, epoch=view, device=device,
                               progress=progress, desc=f"{desc} crops {view + 1}/{crops_per_image}"):  # fmt: skip
            pos = positions[start : start + p.shape[1]]
            mean = p.mean(0)
            probs[pos] += 0.5 / crops_per_image * mean.numpy()
            crop_wrong[pos] += (mean.argmax(1) != y).float().numpy() / crops_per_image
            start += p.shape[1]
    if crops_per_image == 0:  # the whole image alone carries all the weight
        probs[positions] *= 2


def _hygiene(model, ds, spec: AuditSpec, device) -> dict[str, np.ndarray]:
    """hygiene.py's columns, or empty ones (NaN, -1) where comparing every pair would cost too much."""
    n, m = len(ds.train), len(ds.test)
    if n * (n + m) <= MAX_PAIRS:
        return hygiene(model, ds.train, ds.test, batch_size=spec.batch_size, device=device)
    print(f"audit: image hygiene skipped ({n:,} x {n + m:,} image pairs is more than {MAX_PAIRS:.0e}): its columns stay empty")
    empty, none = np.full(n, np.nan, dtype=np.float32), np.full(n, -1, dtype=np.int64)
    return {"duplicate_of": none, "duplicate_sim": empty, "test_duplicate_of": none, "test_duplicate_sim": empty,
            "outlier_score": empty}  # fmt: skip


def _dynamics(run, ds) -> dict[str, np.ndarray]:
    """Generation 1's training dynamics per image (``aum``: the mean margin of the given label while it
    trained on it; ``forgotten``: epochs it turned from right to wrong); NaN / -1 where not recorded."""
    from ..training.dynamics import load

    n = len(ds.train)
    aum, forgotten = np.full(n, np.nan, dtype=np.float32), np.full(n, -1, dtype=np.int64)
    d = load(generations(run)[0])
    if d is not None:
        order = np.argsort(d["ids"], kind="stable")
        ids = ds.train.ids.numpy()
        at = np.clip(np.searchsorted(d["ids"], ids, sorter=order), 0, len(order) - 1)
        src = order[at]
        ok = (d["ids"][src] == ids) & (d["epochs"][src] > 0)
        aum[ok], forgotten[ok] = d["aum"][src[ok]], d["forgotten"][src[ok]]
    return {"aum": aum, "forgotten": forgotten}


def _table(probs, y: np.ndarray, crop_wrong: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per image ``[N]`` columns: the rankings, the confident-learning flag, top-3, entropy."""
    n = len(y)
    top_idx, top_p = np.zeros((n, 3), dtype=np.int64), np.zeros((n, 3), dtype=np.float32)
    entropy = np.zeros(n, dtype=np.float32)
    k = min(3, num_classes)
    for s in quality.row_chunks(n):
        block = torch.from_numpy(np.array(probs[s]))
        t = block.topk(k, 1)
        top_idx[s, :k], top_p[s, :k] = t.indices.numpy(), t.values.numpy()
        entropy[s] = -(block * block.clamp_min(1e-12).log()).sum(1).numpy()
    confident = quality.confident_of(probs, y, num_classes)
    issue = (confident >= 0) & (confident != y)
    return {
        **quality.margins(probs, y),  # self-confidence, normalized and log margins: one pass over probs
        "issue": issue,
        "joint": quality.joint_from(y, confident, num_classes),
        "top_idx": top_idx,
        "top_p": top_p,
        "entropy": entropy,
        "crop_wrong": crop_wrong,
        "flag": flags(y, top_idx, top_p, entropy, crop_wrong, issue, math.log(num_classes)),
    }


FLAGS = ("wrong", "ambiguous", "incomplete", "uncertain", "ok")


def flags(y, top_idx, top_p, entropy, crop_wrong, issue, max_entropy: float) -> np.ndarray:
    """Per image ``[N]``, the index in :data:`FLAGS` of the first reason that applies (module docstring)."""
    (c1, c2), (p1, p2) = top_idx[:, :2].T, top_p[:, :2].T
    rules = [
        issue | ((c1 != y) & (p1 >= 0.5)),  # wrong
        ((c1 == y) | (c2 == y)) & (p1 - p2 < 0.2) & (c1 != c2),  # ambiguous
        (crop_wrong >= 0.5) & (c1 == y),  # incomplete
        entropy > 0.5 * max_entropy,  # uncertain
        np.ones(len(y), dtype=bool),  # ok
    ]
    return np.argmax(np.stack(rules), axis=0)  # the first true rule


def _reason(flag: str, given: int, p_given: float, top_idx, top_p, crop_wrong: float, classes: list[str]) -> str:
    (c1, c2), (p1, p2) = top_idx[:2], top_p[:2]
    if flag == "wrong":
        return f"wrong: '{classes[c1]}' ({p1:.2f}) rather than the given '{classes[given]}' ({p_given:.2f})"
    if flag == "ambiguous":
        other, p_other = (c2, p2) if c1 == given else (c1, p1)
        return f"ambiguous: '{classes[given]}' {p_given:.2f} vs '{classes[other]}' {p_other:.2f}"
    if flag == "incomplete":
        return f"incomplete: {crop_wrong:.0%} of crops show something else"
    return "uncertain: the probabilities are spread out" if flag == "uncertain" else ""


def _row(rank: int, i: int, t: dict, ds) -> dict:
    y = int(ds.train.targets[i])
    idx, prob = t["top_idx"][i].tolist(), t["top_p"][i].tolist()
    p_given = float(t["self_confidence"][i])
    flag = FLAGS[t["flag"][i]]
    return {
        "rank": rank,
        "index": int(ds.train.ids[i]),
        "path": ds.train.path(i),
        "given": ds.classes[y],
        "suggested": ds.classes[idx[0]],
        "suggested_p": round(prob[0], 4),
        "flag": flag,
        "self_confidence": round(p_given, 4),
        "normalized_margin": round(float(t["normalized_margin"][i]), 4),
        "log_margin": round(float(t["log_margin"][i]), 4),
        "issue": bool(t["issue"][i]),
        "entropy": round(float(t["entropy"][i]), 4),
        "crop_disagreement": round(float(t["crop_wrong"][i]), 4),
        **{k: (int(t[k][i]) if t[k][i] >= 0 else "") for k in ("duplicate_of", "test_duplicate_of")},
        **{k: ("" if math.isnan(t[k][i]) else round(float(t[k][i]), 4)) for k in ("duplicate_sim", "test_duplicate_sim", "outlier_score")},
        "aum": "" if math.isnan(t["aum"][i]) else round(float(t["aum"][i]), 4),
        "forgotten": "" if t["forgotten"][i] < 0 else int(t["forgotten"][i]),
        "top3": " ".join(f"{ds.classes[a]}:{b:.2f}" for a, b in zip(idx, prob) if b > 0 or a == idx[0]),
        "reasons": _reason(flag, y, p_given, idx, prob, float(t["crop_wrong"][i]), ds.classes),
    }


def _summary(t: dict, y, classes: list[str], spec: AuditSpec, gens: int) -> dict:
    """Counts per flag, the confident joint's estimate of wrong labels per class pair, and what the scores cost."""
    folds, seeds = spec.folds, spec.fold_seeds
    cal = quality.calibrated_joint(t["joint"], y, len(classes))
    off = [
        (float(cal[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and cal[i, j] > 0
    ]
    counts = np.bincount(t["flag"], minlength=len(FLAGS))
    return {
        "scores": (f"held-out, {folds} folds" + (f" x {seeds} seeds" if seeds > 1 else "")
                   + (f", {spec.fold_epochs} epochs each" if spec.fold_epochs else ""))
        if folds
        else f"in-sample, {gens} generation(s)",
        "training_runs": folds * spec.fold_generations * seeds if folds else 0,
        "images": int(len(y)),
        "rank": spec.rank,
        "flagged": {f: int(k) for f, k in zip(FLAGS, counts)},
        "confident_learning_issues": int(t["issue"].sum()),
        "estimated_issues": float(sum(v for v, _, _ in off)),
        "estimated_pairs": [
            {"given": classes[i], "true": classes[j], "images": round(v, 1)}
            for v, i, j in sorted(off, reverse=True)[:20]
        ],
    }


@torch.no_grad()
def _pictures(ds, positions: list[int], models, sampler, device, crops: int = 3) -> list[dict]:
    """For the HTML rows: each image's evaluation view and ``crops`` crops (uint8 ``[H, W, C]``), with
    the top-3 of the model that scored it (``models[j]`` for ``positions[j]``) on each crop."""
    if not positions:
        return []
    sub = ds.train.subset(positions)
    out = [{"image": None, "crops": []} for _ in positions]
    start = 0
    for batch in sub.iter_batches(64, device=device):
        for j, img in enumerate(to_pictures(batch.images, ds)):
            out[start + j]["image"] = img
        start += len(batch.indices)
    for k in range(crops):
        start = 0
        for batch in sub.iter_batches(64, epoch=k, crops=sampler, device=device):
            for j, img in enumerate(to_pictures(batch.images, ds)):
                top = refine(models[start + j], batch.images[j : j + 1])[0].topk(min(3, ds.num_classes))
                labels = [(ds.classes[int(a)], float(b)) for a, b in zip(top.indices, top.values)]
                out[start + j]["crops"].append((img, labels))
            start += len(batch.indices)
    return out


__all__ = ["FLAGS", "RANKINGS", "AuditSpec", "audit_run", "flags"]
