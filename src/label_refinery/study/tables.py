"""An experiment's results (``spec.py``): rows of the finished generations, mean ± std tables, paired
differences with 95 % t-intervals, the ensemble ceilings; ``OUT/results.json`` and ``OUT/results.md``."""

from __future__ import annotations

from ..checkpoint import META, read_meta
from ..config import upgrade
from ..files import atomic_write, read_json, write_json
from .spec import Arm, Experiment, split_others, split_ref
from .stats import mean_std, t_interval

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


def ensembles_table(exp: Experiment) -> str:
    """The ensemble ceilings measured so far, one row per ``ARM/genK``."""
    path = exp.out / "ensembles.json"
    cache = read_json(path, "ensemble measurements", "; delete it to measure again") if path.is_file() else {}
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
                meta = read_meta(gen)
                data = upgrade(meta["config"]).get("data", {})
                row = {
                    "seed": seed,
                    "arm": arm.name,
                    "generation": meta["generation"],
                    "model": meta["model"],
                    "dataset": data.get("dataset"),  # names the pairing of fashion-pairs:seed=S
                    "subset_seed": data.get("subset_seed", 0),  # which training subset (issue 24)
                    "labels": _labels(meta, arm, len(exp.seeds)),
                    **meta["metrics"],
                }
                if (gen / "analysis.json").is_file():
                    analysis = read_json(gen / "analysis.json", "analysis", f"; re-run label-refinery analyze {folder}")
                    row |= {k: analysis[k] for k, _, src in METRICS if src == "analysis" and k in analysis}
                rows.append(row)
    return rows


def _describe_ref(ref: str, seeds: int) -> str:
    base, others = split_others(ref)
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
    ref_arm, ref_gen = split_ref(reference)
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
