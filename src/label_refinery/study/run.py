"""Running an experiment (``spec.py``): its arms over the seeds in stages, then the ensemble ceilings."""

from __future__ import annotations

import json
import time
from typing import Callable

from ..checkpoint import META, read_meta
from ..errors import UserError, brief
from ..files import read_json, write_json
from .spec import Arm, Experiment, split_others, split_ref
from .tables import write_results


def stages(exp: "Experiment", arms: list[Arm]) -> list[list[Arm]]:
    """``arms`` grouped so that an arm refined across seeds (``@others``) runs after every seed of the
    arms it needs; within a stage, arms keep their order and run seed by seed."""
    level: dict[str, int] = {}
    for arm in exp.arms:  # references point to earlier arms, so one pass suffices
        need = [(split_ref(split_others(r)[0])[0], split_others(r)[1]) for r in arm.refinery]
        level[arm.name] = max([level[n] + int(others) for n, others in need], default=0)
    return [[a for a in arms if level[a.name] == k] for k in sorted({level[a.name] for a in arms})]


def run_experiment(
    exp: Experiment,
    *,
    seeds: list[int] | None = None,
    arms: list[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> str:
    """Run (or resume) the arms over the seeds, seed by seed; returns the results' markdown."""
    from ..training.chain import run_chain
    from ..training.setup import load_data

    chosen = [exp.arm(a) for a in arms] if arms else list(exp.arms)
    datasets: dict = {}
    order = [
        (s, a) for stage in stages(exp, chosen) for s in (seeds if seeds is not None else exp.seeds) for a in stage
    ]
    for seed, arm in order:
        cfg = exp.config(arm, seed)
        missing = [str(p) for p in exp.refinery_paths(arm, seed) if not (p / META).is_file()]
        if missing:
            raise UserError(
                f"arm {brief(arm.name)} (seed {seed}) is refined by {', '.join(arm.refinery)}, and {missing[0]} is not "
                "finished: run that arm first (with @others: for every seed)"
            )
        key = json.dumps(
            {k: v for k, v in vars(cfg.data).items() if k not in ("crop_scale", "crop_ratio", "flip")}, default=str
        )
        if key not in datasets:
            datasets[key] = load_data(cfg)
        folder, start = exp.folder(seed, arm.name), time.time()
        log(f"== seed {seed}, arm {arm.name} -> {folder}")
        run_chain(cfg, folder, progress=progress, log=log, dataset=datasets[key])
        if exp.analyze and not all(
            (g / "analysis.json").is_file() for g in folder.glob("gen*") if (g / META).is_file()
        ):
            from ..tools.analyze import analyze_run

            analyze_run(folder, images=1000, crops_per_image=2, examples=0, log=log, dataset=datasets[key])
        log(f"== seed {seed}, arm {arm.name}: {time.time() - start:.0f} s")
        write_results(exp)
    for ref in exp.ensembles:
        measure_ensemble(exp, ref, log=log)
    return write_results(exp)


def measure_ensemble(exp: Experiment, ref: str, device: str = "cpu", log: Callable[[str], None] = print) -> dict | None:
    """Val and test top-1 of ``ref`` (``ARM/genK``)'s models of every finished seed, their probabilities
    averaged, beside the mean of the single models; cached in ``OUT/ensembles.json`` per set of seeds."""
    from ..checkpoint import load_checkpoint
    from ..models.ensemble import ProbabilityEnsemble
    from ..training.engine import evaluate
    from ..training.setup import load_data

    name, gen = split_ref(ref)
    folders = {s: exp.folder(s, name) / gen for s in exp.seeds if (exp.folder(s, name) / gen / META).is_file()}
    cache_path = exp.out / "ensembles.json"
    cache = read_json(cache_path, "ensemble measurements", "; delete it to measure again") if cache_path.is_file() else {}
    if len(folders) < 2 or cache.get(ref, {}).get("seeds") == sorted(folders):
        return cache.get(ref)
    ds = load_data(exp.config(exp.arm(name), min(folders)))
    models = [load_checkpoint(f).build_model(device).eval() for f in folders.values()]
    row: dict = {"seeds": sorted(folders), "models": len(models)}
    singles = [read_meta(f)["metrics"] for f in folders.values()]
    for split_name, split in (("val", ds.val), ("test", ds.test)):
        if split is not None:
            row[f"{split_name}_top1"] = evaluate(ProbabilityEnsemble(models), split.iter_batches(512, device=device))[
                "top1"
            ]
            row[f"single_{split_name}_top1"] = sum(m[f"{split_name}_top1"] for m in singles) / len(singles)
    cache[ref] = row
    write_json(cache_path, cache)
    log(
        f"ensemble of {len(models)} x {ref}: test top-1 {row['test_top1']:.2f} (single models {row['single_test_top1']:.2f})"
    )
    return row

