"""Experiments: a grid of chains ("arms") over seeds, resumable, summarised as mean ± std tables.

An experiment file (YAML) names a base config, the arms (each a change of the base: its own chain)
and the seeds::

    out: runs/claims/fashion-mnist
    seeds: [0, 1, 2]
    reference: self/gen1          # deltas are paired against this arm/generation, seed by seed (or a list)
    analyze: true                 # label entropy and (on fashion-scenes) distractor mass per generation
    base:                         # every arm starts from this config (keys as in `train --config`)
      model: cnn-small
      data: {dataset: fashion-mnist, train_subset: 10000, val_split: 5000}
      optim: {epochs: 10}
    arms:
      - {name: self, set: {chain: {generations: 4}}}
      - {name: big, set: {model: "cnn-small:width=2", chain: {generations: 1}}}
      - {name: big-refined, refinery: big/gen1, seed_offset: 1, set: {chain: {generations: 1}}}
      - {name: kd, refinery: big/gen1, seed_offset: 1, set: {labels: {temperature: 4, gt_weight: 0.1}, chain: {generations: 1}}}

``refinery: ARM/genK`` labels the arm's generation 1 with another arm's generation K of the same
seed (that arm must come earlier). A list (``refinery: [big/gen1, self/gen1]``) is a refinery
ensemble, averaged in probability; ``ARM/genK@others`` stands for that generation of every *other*
seed of the experiment (a leave-one-out ensemble of independently trained models: seed S's student
is refined by the models of the other seeds, never its own paired generation 1). Arms refined
across seeds run after every seed of the arms they need. Seed ``S`` runs every arm with ``config seed = base seed + 1000 * S
+ seed_offset`` (a chain adds ``g - 1`` for its generation ``g``): with ``seed_offset: 1`` an arm refined
by ``self/gen1`` starts from the same initialisation, crops and batch order as ``self/gen2``, so
the two differ only in their labels.

Layout: ``OUT/seed{S}/{ARM}/`` is a chain run folder (resumable like ``chain``); ``OUT/results.json``
holds every finished row and ``OUT/results.md`` the tables, rewritten after every finished arm. Re-run
the same command to resume; several processes may share an experiment if they take different seeds
(``--seeds``). Test numbers are in the tables for the end of a study: choose settings by ``val top-1``
(``data.val_split``), as docs/results.md does.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..checkpoint import META
from ..config import Config, config_from_dict, upgrade, validate
from ..errors import UserError
from ..files import atomic_write, write_json
from ..typed import merge, read_yaml_mapping
from .stats import mean_std, t_interval

SEED_STRIDE = 1000  # seeds of different repetitions never meet within a chain
METRICS = [  # (key, title, source): source "meta" is meta.json's metrics, "analysis" is analysis.json
    ("val_top1", "val top-1", "meta"),
    ("test_top1", "test top-1", "meta"),
    ("train_top1_clean", "train top-1 (clean)", "meta"),
    ("gap", "gap", "meta"),
    # the generation's own outputs on training crops: the labels it gives the next generation
    ("entropy_crops", "output entropy (crops)", "analysis"),
    ("distractor_mass_crops", "output distractor mass (crops)", "analysis"),
    ("other_mass_crops", "output mass per other class (crops)", "analysis"),
]


@dataclass(frozen=True)
class Arm:
    name: str
    changes: dict = field(default_factory=dict)  # nested config keys on top of the base
    refinery: tuple[str, ...] = ()  # "ARM/genK" (same seed) or "ARM/genK@others" each; several: an ensemble
    seed_offset: int = 0


@dataclass(frozen=True)
class Experiment:
    out: Path
    seeds: tuple[int, ...]
    base: dict
    arms: tuple[Arm, ...]
    references: tuple[str, ...] = ()  # "ARM/genK": one table of paired differences each
    analyze: bool = True
    ensembles: tuple[str, ...] = ()  # "ARM/genK": the top-1 of that generation's models over all seeds, averaged

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise UserError(f"no arm named {name!r}; arms: {', '.join(a.name for a in self.arms)}")

    def folder(self, seed: int, arm: str) -> Path:
        return self.out / f"seed{seed}" / arm

    def config(self, arm: Arm, seed: int) -> Config:
        values = merge(upgrade(self.base), upgrade(arm.changes))  # keys of any version (config.LEGACY_KEYS)
        values["seed"] = int(values.get("seed") or 0) + SEED_STRIDE * seed + arm.seed_offset
        if arm.refinery:
            paths = [str(p) for p in self.refinery_paths(arm, seed)]
            values.setdefault("refinery", {})["path"] = paths[0] if len(paths) == 1 else paths
        cfg = config_from_dict(values)
        validate(cfg)
        return cfg

    def _ref_path(self, ref: str, seed: int) -> Path:
        name, gen = _split_ref(ref)
        return self.folder(seed, name) / gen

    def refinery_paths(self, arm: Arm, seed: int) -> list[Path]:
        """The generation folders labelling ``arm``'s generation 1 for ``seed`` (several: an ensemble)."""
        out = []
        for ref in arm.refinery:
            base, others = _split_others(ref)
            out += (
                [self._ref_path(base, s) for s in self.seeds if s != seed] if others else [self._ref_path(base, seed)]
            )
        return out


def _split_others(ref: str) -> tuple[str, bool]:
    """``ARM/genK@others`` -> (``ARM/genK``, True); ``ARM/genK`` -> (itself, False)."""
    base, at, what = ref.partition("@")
    if at and what != "others":
        raise UserError(f"a refinery reference is ARM/genK or ARM/genK@others, got {ref!r}")
    return base, bool(at)


def stages(exp: "Experiment", arms: list[Arm]) -> list[list[Arm]]:
    """``arms`` grouped so that an arm refined across seeds (``@others``) runs after every seed of the
    arms it needs; within a stage, arms keep their order and run seed by seed."""
    level: dict[str, int] = {}
    for arm in exp.arms:  # references point to earlier arms, so one pass suffices
        need = [(_split_ref(_split_others(r)[0])[0], _split_others(r)[1]) for r in arm.refinery]
        level[arm.name] = max([level[n] + int(others) for n, others in need], default=0)
    return [[a for a in arms if level[a.name] == k] for k in sorted({level[a.name] for a in arms})]


def _as_list(value) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)


def _split_ref(ref: str) -> tuple[str, str]:
    name, _, gen = ref.partition("/")
    if not name or not gen.startswith("gen") or not gen[3:].isdigit():
        raise UserError(f"a reference is ARM/genK (e.g. self/gen1), got {ref!r}")
    return name, gen


def load_experiment(path: str | Path, out: str | Path | None = None) -> Experiment:
    """Read and check an experiment file: arm names unique, references to earlier arms, every
    arm's config valid (before anything trains)."""
    p = Path(path)
    raw = read_yaml_mapping(
        p, "experiment file", "a mapping with out, seeds, base, arms (see label_refinery/study/experiment.py)"
    )
    keys = ("out", "seeds", "base", "arms", "reference", "analyze", "ensembles")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise UserError(f"experiment file {p}: unknown key {unknown[0]!r}; keys: {', '.join(keys)}")
    if not raw.get("arms"):
        raise UserError(f"experiment file {p} names no arms (a list of {{name, set, refinery, seed_offset}})")
    arms, seen = [], set()
    for i, a in enumerate(raw["arms"]):
        if not isinstance(a, dict) or "name" not in a:
            raise UserError(f"experiment file {p}: arm {i + 1} needs a name")
        extra = sorted(set(a) - {"name", "set", "refinery", "seed_offset"})
        if extra:
            raise UserError(f"arm {a['name']!r}: unknown key {extra[0]!r}; keys: name, set, refinery, seed_offset")
        name = str(a["name"])
        if name in seen or "/" in name:
            raise UserError(f"arm names must be unique and contain no '/': {name!r}")
        refs = _as_list(a.get("refinery"))
        for ref in refs:
            if _split_ref(_split_others(ref)[0])[0] not in seen:
                raise UserError(f"arm {name!r}: its refinery {ref!r} must be an earlier arm's generation")
        seen.add(name)
        arms.append(Arm(name, a.get("set") or {}, refs, int(a.get("seed_offset", 0))))
    seeds = tuple(int(s) for s in raw.get("seeds", [0, 1, 2]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"experiment file {p}: seeds must be a non-empty list of distinct integers, got {list(seeds)}")
    exp = Experiment(
        Path(out or raw.get("out") or f"runs/{p.stem}"),
        seeds,
        raw.get("base") or {},
        tuple(arms),
        _as_list(raw.get("reference")),
        bool(raw.get("analyze", True)),
        _as_list(raw.get("ensembles")),
    )
    for arm in exp.arms:
        exp.config(arm, exp.seeds[0])  # every arm's config must be valid before anything trains
    if any(_split_others(r)[1] for a in exp.arms for r in a.refinery) and len(exp.seeds) < 2:
        raise UserError(f"experiment file {p}: a refinery ARM/genK@others needs at least 2 seeds")
    refs = list(exp.references) + list(exp.ensembles) + [_split_others(r)[0] for a in exp.arms for r in a.refinery]
    for ref in refs:
        name, gen = _split_ref(ref)
        have = exp.config(exp.arm(name), exp.seeds[0]).chain.generations
        if int(gen[3:]) > have:
            raise UserError(f"{ref}: arm {name!r} has {have} generation(s)")
    return exp


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
                f"arm {arm.name!r} (seed {seed}) is refined by {', '.join(arm.refinery)}, and {missing[0]} is not "
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

    name, gen = _split_ref(ref)
    folders = {s: exp.folder(s, name) / gen for s in exp.seeds if (exp.folder(s, name) / gen / META).is_file()}
    cache_path = exp.out / "ensembles.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if len(folders) < 2 or cache.get(ref, {}).get("seeds") == sorted(folders):
        return cache.get(ref)
    ds = load_data(exp.config(exp.arm(name), min(folders)))
    models = [load_checkpoint(f).build_model(device).eval() for f in folders.values()]
    row: dict = {"seeds": sorted(folders), "models": len(models)}
    singles = [json.loads((f / META).read_text())["metrics"] for f in folders.values()]
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


def ensembles_table(exp: Experiment) -> str:
    """The ensemble ceilings measured so far, one row per ``ARM/genK``."""
    path = exp.out / "ensembles.json"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    rows = [(ref, cache[ref]) for ref in exp.ensembles if ref in cache]
    if not rows:
        return ""
    head = "| models | seeds | ensemble val top-1 | single val top-1 (mean) | ensemble test top-1 | single test top-1 (mean) |"
    body = [
        f"| {ref} | {r['models']} | {r.get('val_top1', float('nan')):.2f} | {r.get('single_val_top1', float('nan')):.2f} | "
        f"{r['test_top1']:.2f} | {r['single_test_top1']:.2f} |"
        for ref, r in rows
    ]
    return "\n".join([head, "|---|---:|---:|---:|---:|---:|", *body])


def collect(exp: Experiment) -> list[dict]:
    """One row per finished (seed, arm, generation) on disk."""
    rows = []
    for seed in exp.seeds:
        for arm in exp.arms:
            folder = exp.folder(seed, arm.name)
            for gen in sorted(folder.glob("gen*"), key=lambda g: int(g.name[3:]) if g.name[3:].isdigit() else 0):
                if not (gen / META).is_file():
                    continue
                meta = json.loads((gen / META).read_text())
                row = {
                    "seed": seed,
                    "arm": arm.name,
                    "generation": meta["generation"],
                    "model": meta["model"],
                    "labels": _labels(meta, arm, len(exp.seeds)),
                    **meta["metrics"],
                }
                if (gen / "analysis.json").is_file():
                    analysis = json.loads((gen / "analysis.json").read_text())
                    row |= {k: analysis[k] for k, _, src in METRICS if src == "analysis" and k in analysis}
                rows.append(row)
    return rows


def _describe_ref(ref: str, seeds: int) -> str:
    base, others = _split_others(ref)
    return f"the ensemble of {base} of the other {seeds - 1} seeds" if others else base


def _labels(meta: dict, arm: Arm, seeds: int) -> str:
    """How a generation was labelled, in words for the table."""
    lab, cfg = meta["labels"], upgrade(meta["config"])  # meta.json of any version
    mix = cfg.get("mix", {}).get("kind", "off")
    mixed = f", {mix} (alpha {cfg['mix']['alpha']:g})" if mix != "off" else ""
    if lab["kind"] == "ground-truth":
        smooth = cfg.get("loss", {}).get("label_smoothing", 0)
        return (f"ground truth, smoothing {smooth:g}" if smooth else "ground truth") + mixed
    g = meta["generation"]
    if g == 1 and arm.refinery:
        source = " + ".join(_describe_ref(r, seeds) for r in arm.refinery)
    else:
        source = f"{arm.name}/gen{g - 1}"
    kind = {"static": "static", "store": "per-crop store"}.get(cfg["labels"]["source"], "per-crop")
    words = f"{kind} from {source}"
    loss = {"temperature": 1.0, "gt_weight": 0.0, **cfg.get("loss", {})}
    if loss["temperature"] != 1 or loss["gt_weight"]:
        gt = loss["gt_weight"]
        words += f", KD T={loss['temperature']:g}, soft {1 - gt:g} / gt {gt:g}"
    if cfg.get("jitter", {}).get("enabled"):
        words += ", jitter"
    if cfg.get("refinery", {}).get("temperature") is not None:
        words += f", refinery T={cfg['refinery']['temperature']:g}"
    words += mixed
    return words


def _cell(values: list[float], seeds: int | None = None, interval: bool = False) -> str:
    """``mean ± std``, or with ``interval`` a paired difference as ``mean [low, high]`` (its 95 %
    t-interval); ``(n=K)`` when only K of the row's ``seeds`` have the value."""
    if not values:
        return ""
    if interval:
        mean, half = t_interval(values)
        text = f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]" if len(values) > 1 else f"{mean:+.2f}"
    else:
        mean, std = mean_std(values)
        text = f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"
    return text + (f" (n={len(values)})" if seeds is not None and len(values) < seeds else "")


def results_table(rows: list[dict]) -> str:
    """Mean ± std over seeds per (arm, generation); mass and entropy columns only when measured."""
    metrics = [(k, t) for k, t, _ in METRICS if any(k in r for r in rows)]
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["generation"]), []).append(r)
    head = "| arm | gen | model | labels | " + " | ".join(t for _, t in metrics) + " | seeds |"
    rule = "|---|---:|---|---|" + "---:|" * len(metrics) + "---:|"
    body = []
    for (arm, gen), rs in groups.items():
        cells = [
            _cell([100 * r[k] if k.endswith("mass_crops") else r[k] for r in rs if k in r], len(rs)) for k, _ in metrics
        ]
        body.append(
            f"| {arm} | {gen} | {rs[0]['model']} | {rs[0]['labels']} | " + " | ".join(cells) + f" | {len(rs)} |"
        )
    return "\n".join([head, rule, *body])


def deltas_table(rows: list[dict], reference: str) -> str:
    """Per (arm, generation): the paired difference to ``reference`` of the same seed, in val and
    test top-1 (mean and 95 % t-interval over seeds) and how many seeds improved on test."""
    ref_arm, ref_gen = _split_ref(reference)
    ref = {r["seed"]: r for r in rows if r["arm"] == ref_arm and f"gen{r['generation']}" == ref_gen}
    groups: dict[tuple[str, int], list[tuple[dict, dict]]] = {}
    for r in rows:
        if r["seed"] in ref and not (r["arm"] == ref_arm and f"gen{r['generation']}" == ref_gen):
            groups.setdefault((r["arm"], r["generation"]), []).append((r, ref[r["seed"]]))
    head = "| arm | gen | labels | Δ val top-1 | Δ test top-1 | Δ gap | seeds better on test |\n|---|---:|---|---:|---:|---:|---:|"
    body = []
    for (arm, gen), pairs in groups.items():
        dv = [r["val_top1"] - b["val_top1"] for r, b in pairs if "val_top1" in r and "val_top1" in b]
        dt = [r["test_top1"] - b["test_top1"] for r, b in pairs]
        dg = [r["gap"] - b["gap"] for r, b in pairs]
        body.append(
            f"| {arm} | {gen} | {pairs[0][0]['labels']} | {_cell(dv, len(dt), interval=True)} | {_cell(dt, interval=True)} | {_cell(dg, interval=True)} | "
            f"{sum(d > 0 for d in dt)}/{len(dt)} |"
        )
    return "\n".join([head, *body])


def write_results(exp: Experiment) -> str:
    rows = collect(exp)
    text = [
        f"# Results: {exp.out}",
        "",
        "Mean ± sample std over seeds (initialisation, crops and batch order; the training subset and the validation "
        "split are the same images for every seed). Top-1 and gap in %. Output columns: the generation's own "
        "predictions on training crops, i.e. the labels it gives the next generation (mass in % of label mass).",
        "",
        results_table(rows) if rows else "(no finished generation yet)",
    ]
    for ref in exp.references if rows else ():
        text += ["", f"Paired differences to {ref} (same seed), mean [95 % t-interval]:", "", deltas_table(rows, ref)]
    if ensembles_table(exp):
        text += [
            "",
            "Ensemble ceilings (the seeds' models of one arm and generation, probabilities averaged):",
            "",
            ensembles_table(exp),
        ]
    md = "\n".join(text) + "\n"
    exp.out.mkdir(parents=True, exist_ok=True)
    write_json(exp.out / "results.json", rows)
    atomic_write(exp.out / "results.md", md.encode())
    return md
