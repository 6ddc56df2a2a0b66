"""Label statistics per generation: ``label-refinery analyze RUN`` writes ``genK/analysis.json``
(and ``analysis/`` example pictures for the report).

Every generation's model labels the same views (:mod:`label_refinery.tools.probe`); the metrics are pure
functions of :mod:`label_refinery.tools.analysis`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import read_meta
from ..data import ImageDataset
from ..files import atomic_write, write_json
from . import analysis
from .probe import ANALYSIS_SEED, analysis_sampler, load_run, to_pictures, views


def analyze_run(
    run: str | Path,
    *,
    images: int = 2000,
    crops_per_image: int = 4,
    examples: int = 4,
    device: str = "cpu",
    progress: bool = False,
    log=print,
    dataset: ImageDataset | None = None,
) -> list[dict]:
    """Write ``genK/analysis.json`` for every generation (and ``analysis/`` examples for reports);
    returns the per-generation results. ``images`` training images are drawn with a fixed seed.
    On scenes with known distractors (``fashion-scenes``) each row also has the label completeness
    numbers of :func:`analysis.distractor_mass`, for crops (``*_crops``) and whole images."""
    gens, models, ds, cfg = load_run(run, device, dataset)
    n = min(images, len(ds.train))
    pos = np.sort(np.random.default_rng(ANALYSIS_SEED).permutation(len(ds.train))[:n])
    split = ds.train.subset(pos)
    ids, y, p_img, p_crops = views(models, split, crops_per_image, analysis_sampler(cfg), device, progress)
    results = []
    for g, gen in enumerate(gens):
        meta = read_meta(gen)
        confusion = analysis.soft_confusion(p_img[g], y, ds.num_classes)
        row = {
            "generation": meta["generation"],
            "model": meta["model"],
            **analysis.label_summary(p_img[g], p_crops[g], y),
            **_completeness(split, p_img[g], p_crops[g], y),
            "kl_from_previous_images": float(analysis.kl(p_img[g - 1], p_img[g]).mean()) if g else None,
            "kl_from_previous_crops": float(analysis.kl(p_crops[g - 1].flatten(0, 1), p_crops[g].flatten(0, 1)).mean())
            if g
            else None,
            "ambiguous_pairs": [
                {"a": ds.classes[i], "b": ds.classes[j], "mass": m} for i, j, m in analysis.ambiguous_pairs(confusion)
            ],
            "soft_confusion": confusion.tolist(),
            "classes": ds.classes,
            **{
                k: meta["metrics"].get(k)
                for k in ("train_top1_crops", "train_top1_clean", "test_top1", "test_top5", "gap")
            },
        }
        write_json(gen / "analysis.json", row)
        results.append(row)
        log(
            f"{gen.name}: entropy {row['entropy_crops']:.3f} (crops) / {row['entropy_images']:.3f} (images), agreement "
            f"{100 * row['agreement_crops']:.1f} % (crops) / {100 * row['agreement_images']:.1f} % (images)"
        )
    if examples:
        _write_examples(Path(run) / "analysis", split, ids, y, p_img, p_crops, ds, analysis_sampler(cfg), examples)
    return results


def _completeness(split, p_img: torch.Tensor, p_crops: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Distractor mass of whole images and crops, on datasets that record each image's distractor."""
    if split.distractors is None:
        return {}
    d, k = split.distractors, p_crops.shape[1]
    crops = analysis.distractor_mass(p_crops.flatten(0, 1), y.repeat_interleave(k), d.repeat_interleave(k))
    images = analysis.distractor_mass(p_img, y, d)
    return {**{f"{key}_crops": v for key, v in crops.items()}, **{f"{key}_images": v for key, v in images.items()}}


def _write_examples(folder: Path, split, ids, y, p_img, p_crops, ds, sampler, count: int) -> None:
    """The paper-style figure's data: a few images (most crop disagreement first) and 3 of their
    crops, with every generation's top-3 on each view."""
    disagree = analysis.crop_disagreement(p_crops[-1].argmax(-1), y)
    chosen = disagree.argsort(descending=True, stable=True)[:count].tolist()
    sub = split.subset(chosen)
    k, n_crops = min(3, p_img.shape[-1]), min(3, p_crops.shape[2])
    whole = to_pictures(next(sub.iter_batches(len(chosen))).images, ds)
    crops = np.stack(
        [to_pictures(next(sub.iter_batches(len(chosen), epoch=c, crops=sampler)).images, ds) for c in range(n_crops)], 1
    )
    top = p_img[:, chosen].topk(k, -1)  # [G, E, k]
    ctop = p_crops[:, chosen, :n_crops].topk(k, -1)  # [G, E, crops, k]
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=whole,
        crops=crops,
        ids=ids[chosen].numpy(),
        targets=y[chosen].numpy(),
        top_idx=top.indices.numpy(),
        top_prob=top.values.numpy(),
        crop_top_idx=ctop.indices.numpy(),
        crop_top_prob=ctop.values.numpy(),
    )
    atomic_write(folder / "examples.npz", buf.getvalue())
    write_json(folder / "examples.json", {"classes": ds.classes, "generations": p_img.shape[0]})


__all__ = ["analyze_run"]
