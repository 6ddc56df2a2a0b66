"""Which training labels look wrong, ambiguous or incomplete: ``label-refinery audit RUN``.

Audit score of an image: ``1 - p(given)``, with ``p(given)`` the refined probability of its given
label averaged over generations and over its views (the whole image and ``crops_per_image`` fixed
crops, half the weight each). Reasons, from the last generation's labels:

- **wrong**: the whole image's refined top-1 is another class, with probability >= 0.5;
- **ambiguous**: the given label and another class are within 0.2 of each other at the top;
- **incomplete**: at least half the crops' top-1 is not the given label while the whole image agrees;
- **uncertain**: the whole image's refined labels have more than half the maximal entropy.

Everything streams in batches: memory holds a few numbers per image and generation.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from . import analysis
from .checkpoint import atomic_write
from .export import write_csv
from .labels import refine
from .probe import analysis_sampler, load_run, refined, to_pictures


def _reasons(
    given: float, top_idx: list[int], top_prob: list[float], ent: float, y: int, crop_wrong: float, classes: list[str]
) -> list[str]:
    """Human-readable reasons for one image from its last generation's whole-image labels: p(given),
    the top-2 classes and probabilities, and the entropy."""
    c1, c2 = (top_idx + [y])[:2]
    p1, p2 = (top_prob + [0.0])[:2]
    out = []
    if c1 != y and p1 >= 0.5:
        out.append(f"wrong: refined labels say '{classes[c1]}' ({p1:.2f}); given '{classes[y]}' gets {given:.2f}")
    elif y in (c1, c2) and p1 - p2 < 0.2:
        other, p_other = (c2, p2) if c1 == y else (c1, p1)
        out.append(f"ambiguous: '{classes[y]}' {given:.2f} vs '{classes[other]}' {p_other:.2f}")
    if crop_wrong >= 0.5 and c1 == y:
        out.append(f"incomplete: {crop_wrong:.0%} of crops show something else")
    if ent > 0.5 * math.log(len(classes)):
        out.append("uncertain: refined labels are spread out")
    return out


def audit_run(
    run: str | Path,
    *,
    out: str | Path | None = None,
    crops_per_image: int = 4,
    html_rows: int = 100,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = False,
    log=print,
) -> Path:
    """Score every training image; write ``audit.csv`` (all images, most suspicious first) and
    ``audit.html`` (the top ``html_rows``); returns the output folder.

    Memory: per image a handful of numbers and every generation's top-3 -- no class dimension, so
    ImageNet-size datasets fit (about 100 bytes per image and generation)."""
    gens, models, ds, cfg = load_run(run, device)
    out = Path(out) if out else Path(run) / "audit"
    n, g, targets, sampler = len(ds.train), len(models), ds.train.targets, analysis_sampler(cfg)
    given, crop_wrong, top3, top3p, last_given, last_entropy = _stream_scores(
        models, ds, sampler, crops_per_image, batch_size, device, progress
    )
    p_given_mean = (given / g).float()
    score = 1 - p_given_mean
    order = score.argsort(descending=True, stable=True)

    def row(rank: int, i: int) -> dict:
        y = int(targets[i])
        idx, prob = top3[-1, i].tolist(), top3p[-1, i].tolist()
        best_other = next((q for c_, q in zip(idx, prob) if c_ != y), 0.0)  # within the top-3: enough for a margin
        return {
            "rank": rank,
            "index": int(ds.train.ids[i]),
            "path": ds.train.path(i),
            "given": ds.classes[y],
            "score": round(float(score[i]), 4),
            "p_given": round(float(p_given_mean[i]), 4),
            "margin": round(float(last_given[i]) - best_other, 4),
            "entropy": round(float(last_entropy[i]), 4),
            "crop_disagreement": round(float(crop_wrong[i]), 4),
            "reasons": "; ".join(
                _reasons(float(last_given[i]), idx, prob, float(last_entropy[i]), y, float(crop_wrong[i]), ds.classes)
            ),
            **{
                f"gen{j + 1}_top3": " ".join(
                    f"{ds.classes[int(a)]}:{float(b):.2f}" for a, b in zip(top3[j, i], top3p[j, i])
                )
                for j in range(g)
            },
        }

    out.mkdir(parents=True, exist_ok=True)
    wrong = write_csv(out / "audit.csv", (row(r, i) for r, i in enumerate(order.tolist(), 1)))
    from .reports import audit_html  # HTML and pictures live with the reports

    top_rows = [row(r, i) for r, i in enumerate(order[:html_rows].tolist(), 1)]
    pictures = _pictures(ds, order[:html_rows].tolist(), models, sampler, device)
    atomic_write(out / "audit.html", audit_html(top_rows, pictures, run=str(run), generations=g).encode())
    log(f"audit: {n} images scored, {wrong} look wrong -> {out}/audit.csv, {out}/audit.html")
    return out


def _stream_scores(models, ds, sampler, crops_per_image: int, batch_size: int, device, progress: bool):
    """One pass over the whole images and ``crops_per_image`` over crops: per image the sum over
    generations and views of p(given), the last generation's crop disagreement, every generation's
    top-3, and the last generation's p(given) and entropy on the whole image."""
    n, g, k = len(ds.train), len(models), min(3, ds.num_classes)
    given = torch.zeros(n, dtype=torch.float64)  # sum over generations and views of p(given)
    crop_wrong = torch.zeros(n)  # share of crops (last generation) whose top-1 is not the given label
    top3, top3p = torch.zeros(g, n, k, dtype=torch.long), torch.zeros(g, n, k)
    last_given, last_entropy = torch.zeros(n), torch.zeros(n)  # last generation, whole image

    def p_given(p, y):  # [G, B]: each generation's probability of the given labels
        return p.gather(2, y.view(1, -1, 1).expand(p.shape[0], -1, 1))[..., 0]

    start = 0  # `refined` yields the split in index order: positions start..start+B
    for _, y, p in refined(
        models, ds.train, batch_size=batch_size, device=device, progress=progress, desc="audit: images"
    ):
        pos = slice(start, start + len(y))
        start += len(y)
        pg = p_given(p, y)
        given[pos] += 0.5 * pg.double().sum(0)
        t = p.topk(k, -1)
        top3[:, pos], top3p[:, pos] = t.indices, t.values
        last_given[pos], last_entropy[pos] = pg[-1], analysis.entropy(p[-1])
    for c in range(crops_per_image):
        start = 0
        for _, y, p in refined(
            models,
            ds.train,
            batch_size=batch_size,
            crops=sampler,
            epoch=c,
            device=device,
            progress=progress,
            desc=f"audit: crops {c + 1}/{crops_per_image}",
        ):
            pos = slice(start, start + len(y))
            start += len(y)
            given[pos] += 0.5 / crops_per_image * p_given(p, y).double().sum(0)
            crop_wrong[pos] += (p[-1].argmax(1) != y).float() / crops_per_image
    return given, crop_wrong, top3, top3p, last_given, last_entropy


@torch.no_grad()
def _pictures(ds, positions: list[int], models, sampler, device, crops: int = 3) -> list[dict]:
    """For the HTML rows: each image's evaluation view and ``crops`` crops (uint8 ``[H, W, C]``), with
    the last generation's top-3 on each crop."""
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
            top = refine(models[-1], batch.images).topk(min(3, ds.num_classes), 1)
            for j, img in enumerate(to_pictures(batch.images, ds)):
                labels = [(ds.classes[int(a)], float(b)) for a, b in zip(top.indices[j], top.values[j])]
                out[start + j]["crops"].append((img, labels))
            start += len(batch.indices)
    return out


__all__ = ["audit_run"]
