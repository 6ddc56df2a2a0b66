"""Chains of generations: generation k's final checkpoint refines generation k+1.

Run folder::

    OUT/config.yaml          the chain's resolved config
    OUT/gen1/ ... OUT/genN/  one generation folder each (see generation.py)
    OUT/summary.json, OUT/summary.md   the per-generation table

One command writes a chain at a time: the folder and each generation's are claimed
(:mod:`label_refinery.locks`), and a non-empty folder that is not a chain is refused.

Generation 1 trains on ground truth, unless ``cfg.refinery.path`` names a checkpoint (for example a
bigger model trained earlier), which then labels generation 1. ``cfg.chain.models`` may name one
architecture per generation (e.g. ``[resnet-cifar, cnn-small, cnn-small]``: a ResNet trained on ground
truth refines a small CNN, which then refines itself). Generation g uses seed ``seed + g - 1``.
Re-running the same command resumes: finished generations are skipped, an unfinished one resumes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from .. import distributed
from ..config import Config, save_config
from ..data import ImageDataset
from ..files import atomic_write, together, write_json
from ..locks import claim
from .generation import train_planned
from .setup import load_data, plan_generation, resolve

COLUMNS = [
    ("generation", "gen"),
    ("model", "model"),
    ("refinery", "refinery"),
    ("train_top1_crops", "train top-1 (crops)"),
    ("train_top1_clean", "train top-1 (clean)"),
    ("test_top1", "test top-1"),
    ("test_top5", "test top-5"),
    ("gap", "gap"),
]


def generation_config(cfg: Config, out: Path, g: int) -> Config:
    """The config of generation ``g`` (1-based) of the chain ``cfg`` written to ``out``."""
    model = cfg.chain.models[g - 1] if cfg.chain.models else cfg.model
    refinery = cfg.refinery.path if g == 1 else str(out / f"gen{g - 1}")
    labels = cfg.labels
    jitter = cfg.jitter
    if refinery is None and not labels.store:  # generation 1 on ground truth: nothing to store or jitter
        labels = replace(labels, source="live")
        jitter = replace(jitter, enabled=False)
    if g > 1:  # a named store labels generation 1 only
        labels = replace(labels, store=None)
    optim = cfg.optim
    if refinery is not None and cfg.chain.refined_epochs:  # soft targets converge more slowly: a longer schedule
        optim = replace(optim, epochs=cfg.chain.refined_epochs)
    # a cross-fitted refinery (fold models) labels generation 1 only; later ones refine themselves
    refinery_cfg = replace(cfg.refinery, path=refinery, cross_fit=cfg.refinery.cross_fit and g == 1)
    return replace(
        cfg, model=model, refinery=refinery_cfg, seed=cfg.seed + g - 1, labels=labels, jitter=jitter, optim=optim
    )


def summary_row(meta: dict, out: Path) -> dict:
    """One row of the chain's table; the refinery is named by its generation in this chain, else its path."""
    labels = meta["labels"]
    if labels["kind"] == "ground-truth":
        refinery = "ground truth"
    else:
        names = []
        for given in labels["path"] if isinstance(labels["path"], list) else [labels["path"]]:  # a list: an ensemble
            path = Path(given).resolve()
            inside = path.parent.parent == out.resolve() and path.parent.name.startswith("gen")
            names.append(path.parent.name if inside else given)
        refinery = f"{' + '.join(names)} ({labels['model']})"
    return {"generation": meta["generation"], "model": meta["model"], "refinery": refinery, **meta["metrics"]}


def format_table(rows: list[dict]) -> str:
    """A markdown table of the chain's generations."""
    columns = list(COLUMNS)
    if any("val_top1" in r for r in rows):  # a validation split was held out
        columns.insert(5, ("val_top1", "val top-1"))
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" if k in ("model", "refinery") else "---:" for k, _ in columns) + "|"
    body = []
    for r in rows:
        cells = [f"{r[k]:.2f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k, _ in columns]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def run_chain(
    cfg: Config,
    out: str | Path,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
    dataset: ImageDataset | None = None,
    force: bool = False,
) -> list[dict]:
    """Run (or resume) generations ``1..cfg.chain.generations`` into ``out``; returns the table rows.
    ``dataset``: the data ``cfg`` names, already loaded (experiments share it between chains).
    ``out`` must be empty, new or a chain folder (``force``: any folder), and no other process may be
    writing it (:func:`label_refinery.locks.claim`); each generation's folder is claimed too.

    Example:
        >>> cfg = load_config(overrides={"data.dataset": "digits", "optim.epochs": 3})  # doctest: +SKIP
        >>> rows = run_chain(cfg, "runs/digits")                                        # doctest: +SKIP
        >>> [round(r["test_top1"], 1) for r in rows]                                     # doctest: +SKIP
    """
    out, cfg = Path(out), resolve(cfg)  # generation 1's seed; generation g adds g - 1
    # generation 1 is held throughout: checked before the data load, and the refinery of generation 2
    with claim(out, "chain", force=force), claim(out / "gen1", "generation"):
        return _run_chain(cfg, out, progress, log, dataset)


def _run_chain(cfg: Config, out: Path, progress: bool, log: Callable[[str], None], dataset) -> list[dict]:
    """:func:`run_chain` while holding ``out``."""
    plan = plan_generation(generation_config(cfg, out, 1), out / "gen1", 1)  # checked before the data load
    ds = dataset or load_data(cfg)
    main = distributed.is_main()  # under torchrun, rank 0 alone writes and logs
    log = log if main else (lambda _: None)
    if main:
        save_config(cfg, out / "config.yaml")
    log(f"chain: {cfg.chain.generations} generations of {cfg.optim.epochs} epochs on {ds.name} -> {out}")
    rows = []
    for g in range(1, cfg.chain.generations + 1):
        with claim(out / f"gen{g}", "generation"):  # generation 1: held already
            if g > 1:  # planned once the generation before it (its refinery) has finished
                plan = plan_generation(generation_config(cfg, out, g), out / f"gen{g}", g)
            meta = train_planned(plan, ds, progress=progress, log=log)
        rows.append(summary_row(meta, out))
        if main:
            with together(out) as stage:  # the two tables appear together
                write_json(stage / "summary.json", rows)
                atomic_write(stage / "summary.md", (format_table(rows) + "\n").encode())
    extra = sorted(
        p.name for p in out.glob("gen*") if p.is_dir() and p.name[3:].isdigit() and int(p.name[3:]) > len(rows)
    )
    if extra:
        log(f"note: {', '.join(extra)} in {out} are beyond --generations {len(rows)} and not in the table")
    log(format_table(rows))
    return rows
