"""Run a finished chain's models over its training images: the views shared by ``analyze``
(:mod:`label_refinery.tools.analyze`), ``audit`` and ``export``.

    label-refinery analyze runs/fmnist        # per generation: analysis.json (+ analysis/ examples for reports)
    label-refinery audit runs/fmnist          # audit/audit.csv + audit/audit.html: labels that look wrong
    label-refinery export runs/fmnist --format npz     # refined labels as a dataset artifact

Every generation's model labels the same views: whole images (evaluation views) and a fixed, seeded
set of random crops (the run's crop settings, crop seed ``ANALYSIS_SEED``). Data streams in batches.
``analyze`` keeps its sample's probabilities (images x crops x classes x generations: 2,000 x 4 x C x G
by default); ``audit`` keeps a few numbers per image and generation, never a class dimension.
Metrics come from :mod:`label_refinery.tools.analysis` (pure functions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import META, load_checkpoint, read_meta
from ..config import Config, config_from_dict
from ..data import CropSampler, ImageDataset
from ..errors import UserError
from ..labels import refine

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
    return config_from_dict(read_meta(gen)["config"])


def load_run(
    run: str | Path,
    device: str = "cpu",
    dataset: ImageDataset | None = None,
) -> tuple[list[Path], list[torch.nn.Module], ImageDataset, Config]:
    """Generation folders, their models (eval mode), the run's dataset and generation 1's config.
    ``dataset``: the run's data, already loaded (checked like a fresh load)."""
    from ..training.setup import load_data

    gens = generations(run)
    cfg = _config(gens[0])
    ds = dataset or load_data(cfg)
    metas = [read_meta(g) for g in gens]
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
def refined(
    models,
    split,
    *,
    batch_size: int = 256,
    crops: CropSampler | None = None,
    epoch: int = 0,
    device="cpu",
    progress: bool = False,
    desc: str = "",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch, in index order: ``(ids [B], targets [B], probabilities [G, B, C])`` of every model on
    the same views (crop ``epoch`` of each image if ``crops`` is given, else evaluation views)."""
    total = split.num_batches(batch_size)
    for batch in tqdm(
        split.iter_batches(batch_size, epoch=epoch, crops=crops, device=device),
        total=total,
        desc=desc,
        leave=False,
        disable=not progress,
    ):
        probs = torch.stack([refine(m, batch.images) for m in models])  # [G, B, C]
        yield batch.indices.cpu(), batch.targets.cpu(), probs.cpu()


def analysis_sampler(cfg: Config) -> CropSampler:
    return CropSampler(ANALYSIS_SEED, cfg.data.crop_scale, cfg.data.crop_ratio, 0.5 if cfg.data.flip else 0.0)


def views(models, split, crops_per_image: int, sampler, device, progress: bool):
    """Whole-image ``[G, N, C]`` and crop ``[G, N, K, C]`` probabilities, ids and targets of ``split``."""
    parts = list(refined(models, split, device=device, progress=progress, desc="images"))
    ids, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    p_img = torch.cat([p[2] for p in parts], 1)
    p_crops = torch.stack(
        [
            torch.cat(
                [
                    p[2]
                    for p in refined(
                        models, split, crops=sampler, epoch=k, device=device, progress=progress, desc=f"crops {k + 1}"
                    )
                ],
                1,
            )
            for k in range(crops_per_image)
        ],
        2,
    )
    return ids, y, p_img, p_crops


def to_pictures(images: torch.Tensor, ds: ImageDataset) -> np.ndarray:
    """Normalised ``[B, C, H, W]`` -> uint8 ``[B, H, W, C]`` for pictures."""
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    x = (images.cpu().float() * std + mean).clamp(0, 1).mul(255).round().byte()
    return x.permute(0, 2, 3, 1).numpy()


__all__ = ["ANALYSIS_SEED", "analysis_sampler", "generations", "load_run", "refined", "to_pictures", "views"]
