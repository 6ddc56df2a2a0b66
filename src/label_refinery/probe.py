"""Run a finished chain's models over its training images: ``analyze``, ``audit`` and ``export``.

    label-refinery analyze runs/fmnist        # per generation: analysis.json (+ analysis/ examples for reports)
    label-refinery audit runs/fmnist          # audit/audit.csv + audit/audit.html: labels that look wrong
    label-refinery export runs/fmnist --format npz     # refined labels as a dataset artifact

Every generation's model labels the same views: whole images (evaluation views) and a fixed, seeded
set of random crops (the run's crop settings, crop seed ``ANALYSIS_SEED``). Data streams in batches.
``analyze`` keeps its sample's probabilities (images x crops x classes x generations: 2,000 x 4 x C x G
by default); ``audit`` keeps a few numbers per image and generation, never a class dimension.
Metrics come from :mod:`label_refinery.analysis` (pure functions).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from . import analysis
from .checkpoint import META, atomic_write, load_checkpoint, write_json
from .config import Config, _build
from .data import CropSampler, ImageDataset
from .errors import UserError

ANALYSIS_SEED = 20180507  # crops for analysis differ from every training crop stream (seeds 0, 1, 2, ...)


def generations(run: str | Path) -> list[Path]:
    """The finished generation folders of a chain (``gen1``, ``gen2``, ...), or ``[run]`` for one generation."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist")
    if (run / META).is_file():
        return [run]
    gens = sorted((p for p in run.glob("gen*") if p.name[3:].isdigit()), key=lambda p: int(p.name[3:]))
    finished = [g for g in gens if (g / META).is_file()]
    if not finished:
        raise UserError(f"{run} holds no finished generation (a folder with meta.json, or gen1/, gen2/, ... inside)")
    unfinished = [g.name for g in gens if g not in finished]
    if unfinished:
        print(f"note: {', '.join(unfinished)} in {run} not finished: left out (re-run the chain to finish them)")
    return finished


def _config(gen: Path) -> Config:
    return _build(Config, json.loads((gen / META).read_text())["config"])


def load_run(run: str | Path, device: str = "cpu", dataset: ImageDataset | None = None,
             ) -> tuple[list[Path], list[torch.nn.Module], ImageDataset, Config]:
    """Generation folders, their models (eval mode), the run's dataset and generation 1's config.
    ``dataset``: the run's data, already loaded (checked like a fresh load)."""
    from .generation import load_data

    gens = generations(run)
    cfg = _config(gens[0])
    ds = dataset or load_data(cfg)
    metas = [json.loads((g / META).read_text()) for g in gens]
    if any(m["classes"] != ds.classes for m in metas):
        raise UserError(f"the generations of {run} were trained on other classes than {ds.name} has now")
    if any(m.get("dataset_fingerprint") not in (None, ds.fingerprint()) for m in metas[:1]):
        raise UserError(
            f"{ds.name} is not the data {run} was trained on (dataset fingerprints differ: files added, removed or "
            "changed), so image indices would point at other images. Analyse it with the data it was trained on."
        )
    models = [load_checkpoint(g).build_model(device).eval() for g in gens]
    return gens, models, ds, cfg


@torch.no_grad()
def refined(models, split, *, batch_size: int = 256, crops: CropSampler | None = None, epoch: int = 0,
            device="cpu", progress: bool = False, desc: str = "") -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch, in index order: ``(ids [B], targets [B], probabilities [G, B, C])`` of every model on
    the same views (crop ``epoch`` of each image if ``crops`` is given, else evaluation views)."""
    total = split.num_batches(batch_size)
    for batch in tqdm(split.iter_batches(batch_size, epoch=epoch, crops=crops, device=device), total=total, desc=desc,
                      leave=False, disable=not progress):
        probs = torch.stack([m(batch.images).float().softmax(1) for m in models])  # [G, B, C]
        yield batch.indices.cpu(), batch.targets.cpu(), probs.cpu()


def _sampler(cfg: Config) -> CropSampler:
    return CropSampler(ANALYSIS_SEED, cfg.data.crop_scale, cfg.data.crop_ratio, 0.5 if cfg.data.flip else 0.0)


def _views(models, split, crops_per_image: int, sampler, device, progress: bool):
    """Whole-image ``[G, N, C]`` and crop ``[G, N, K, C]`` probabilities, ids and targets of ``split``."""
    parts = list(refined(models, split, device=device, progress=progress, desc="images"))
    ids, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    p_img = torch.cat([p[2] for p in parts], 1)
    p_crops = torch.stack([
        torch.cat([p[2] for p in refined(models, split, crops=sampler, epoch=k, device=device, progress=progress, desc=f"crops {k + 1}")], 1)
        for k in range(crops_per_image)
    ], 2)
    return ids, y, p_img, p_crops


def analyze_run(run: str | Path, *, images: int = 2000, crops_per_image: int = 4, examples: int = 4, device: str = "cpu",
                progress: bool = False, log=print, dataset: ImageDataset | None = None) -> list[dict]:
    """Write ``genK/analysis.json`` for every generation (and ``analysis/`` examples for reports);
    returns the per-generation results. ``images`` training images are drawn with a fixed seed.
    On scenes with known distractors (``fashion-scenes``) each row also has the label completeness
    numbers of :func:`analysis.distractor_mass`, for crops (``*_crops``) and whole images."""
    gens, models, ds, cfg = load_run(run, device, dataset)
    n = min(images, len(ds.train))
    pos = np.sort(np.random.default_rng(ANALYSIS_SEED).permutation(len(ds.train))[:n])
    if not hasattr(ds.train, "subset"):
        raise UserError(f"{ds.name} cannot be subset for analysis")
    split = ds.train.subset(pos)
    ids, y, p_img, p_crops = _views(models, split, crops_per_image, _sampler(cfg), device, progress)
    results = []
    for g, gen in enumerate(gens):
        meta = json.loads((gen / META).read_text())
        confusion = analysis.soft_confusion(p_img[g], y, ds.num_classes)
        row = {
            "generation": meta["generation"],
            "model": meta["model"],
            **analysis.label_summary(p_img[g], p_crops[g], y),
            **_completeness(split, p_img[g], p_crops[g], y),
            "kl_from_previous_images": float(analysis.kl(p_img[g - 1], p_img[g]).mean()) if g else None,
            "kl_from_previous_crops": float(analysis.kl(p_crops[g - 1].flatten(0, 1), p_crops[g].flatten(0, 1)).mean()) if g else None,
            "ambiguous_pairs": [{"a": ds.classes[i], "b": ds.classes[j], "mass": m} for i, j, m in analysis.ambiguous_pairs(confusion)],
            "soft_confusion": confusion.tolist(),
            "classes": ds.classes,
            **{k: meta["metrics"].get(k) for k in ("train_top1_crops", "train_top1_clean", "test_top1", "test_top5", "gap")},
        }
        write_json(gen / "analysis.json", row)
        results.append(row)
        log(f"{gen.name}: entropy {row['entropy_crops']:.3f} (crops) / {row['entropy_images']:.3f} (images), agreement "
            f"{100 * row['agreement_crops']:.1f} % (crops) / {100 * row['agreement_images']:.1f} % (images)")
    if examples:
        _write_examples(Path(run) / "analysis", split, ids, y, p_img, p_crops, ds, _sampler(cfg), examples)
    return results


def _completeness(split, p_img: torch.Tensor, p_crops: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Distractor mass of whole images and crops, on datasets that record each image's distractor."""
    if not hasattr(split, "distractors"):
        return {}
    d, k = split.distractors, p_crops.shape[1]
    crops = analysis.distractor_mass(p_crops.flatten(0, 1), y.repeat_interleave(k), d.repeat_interleave(k))
    images = analysis.distractor_mass(p_img, y, d)
    return {**{f"{key}_crops": v for key, v in crops.items()}, **{f"{key}_images": v for key, v in images.items()}}


def _unnormalize(images: torch.Tensor, ds: ImageDataset) -> np.ndarray:
    """Normalised ``[B, C, H, W]`` -> uint8 ``[B, H, W, C]`` for pictures."""
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    x = (images.cpu().float() * std + mean).clamp(0, 1).mul(255).round().byte()
    return x.permute(0, 2, 3, 1).numpy()


def _write_examples(folder: Path, split, ids, y, p_img, p_crops, ds, sampler, count: int) -> None:
    """The paper-style figure's data: a few images (most crop disagreement first) and 3 of their
    crops, with every generation's top-3 on each view."""
    disagree = analysis.crop_disagreement(p_crops[-1].argmax(-1), y)
    chosen = disagree.argsort(descending=True, stable=True)[:count].tolist()
    sub = split.subset(chosen)
    k, n_crops = min(3, p_img.shape[-1]), min(3, p_crops.shape[2])
    whole = _unnormalize(next(sub.iter_batches(len(chosen))).images, ds)
    crops = np.stack([_unnormalize(next(sub.iter_batches(len(chosen), epoch=c, crops=sampler)).images, ds) for c in range(n_crops)], 1)
    top = p_img[:, chosen].topk(k, -1)  # [G, E, k]
    ctop = p_crops[:, chosen, :n_crops].topk(k, -1)  # [G, E, crops, k]
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=whole, crops=crops, ids=ids[chosen].numpy(), targets=y[chosen].numpy(),
                        top_idx=top.indices.numpy(), top_prob=top.values.numpy(),
                        crop_top_idx=ctop.indices.numpy(), crop_top_prob=ctop.values.numpy())
    atomic_write(folder / "examples.npz", buf.getvalue())
    write_json(folder / "examples.json", {"classes": ds.classes, "generations": p_img.shape[0]})


__all__ = ["ANALYSIS_SEED", "analyze_run", "generations", "load_run", "refined"]
