"""Issue 17: how well does the audit find wrong labels, against cleanlab on the same probabilities?

For each flip rate and seed: a 1-generation chain on labels with that share flipped (``data.label_noise``:
symmetric, seeded; ``label-noise.csv`` says which), then

- the audit **in-sample** (the chain's own generation scores the images it trained on) and **held-out**
  (``--folds K``: each image scored by a fold model that never saw it);
- rankings: precision@k (k = the number of flipped labels) of self-confidence and normalized margin,
  ours and cleanlab's ``get_label_quality_scores`` on the same held-out probabilities;
- flagged sets: precision and recall of our confident-learning flag and of cleanlab's
  ``find_label_issues`` (its default, ``prune_by_noise_rate``), held-out and in-sample;
- the loop closed: ``relabel --top`` (as many rows as confident learning flags) and a chain retrained on
  the overrides, its test top-1 against the chain on the noisy labels (same seed).

    python bench/audit_vs_cleanlab.py --dataset digits --epochs 40 --crop-scale 1 1 --no-flip   # ~2 min
    python bench/audit_vs_cleanlab.py --dataset fashion-mnist --train-subset 10000 --epochs 20  # ~1 h on 2 cores

Needs cleanlab (``pip install cleanlab``; a development dependency). Writes ``OUT/results.json`` and
prints a markdown table; finished runs are reused when re-run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from label_refinery import load_config, run_chain
from label_refinery.tools import quality
from label_refinery.tools.audit import AuditSpec, audit_run
from label_refinery.tools.relabel import relabel


def precision_recall(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = int((flagged & truth).sum())
    return tp / max(1, int(flagged.sum())), tp / max(1, int(truth.sum()))


def at_k(quality_scores: np.ndarray, truth: np.ndarray) -> float:
    k = int(truth.sum())
    return float(truth[np.argsort(quality_scores, kind="stable")[:k]].mean())


def one(args, rate: float, seed: int, log) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out = Path(args.out) / f"rate{rate:g}-seed{seed}"
    done = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else None
    if done and (args.fold_seeds == 1 or any("seeds" in k for k in done)):  # finished earlier: reused
        return done
    overrides = {"data.dataset": args.dataset, "data.label_noise": rate, "data.label_noise_seed": seed,
                 "data.crop_scale": args.crop_scale, "data.flip": not args.no_flip, "optim.epochs": args.epochs,
                 "chain.generations": 1, "seed": seed}  # fmt: skip
    if args.train_subset:
        overrides["data.train_subset"] = args.train_subset
    t0 = time.time()
    rows = run_chain(load_config(overrides=overrides), out / "noisy", log=log)
    audit_run(out / "noisy", AuditSpec(html_rows=1), out=out / "in-sample", log=log)
    audit_run(out / "noisy", AuditSpec(folds=args.folds, html_rows=1), out=out / "held-out", log=log)
    names = ["in-sample", "held-out"]
    if args.fold_seeds > 1:  # each fold an ensemble over seeds (the first seed's fold chains are reused)
        names.append(f"held-out x{args.fold_seeds} seeds")
        audit_run(out / "noisy", AuditSpec(folds=args.folds, fold_seeds=args.fold_seeds, html_rows=1), out=out / names[-1], log=log)
    flipped = {int(r["index"]) for r in csv.DictReader(open(out / "noisy/gen1/label-noise.csv"))}
    from label_refinery.training.setup import load_data

    ds = load_data(load_config(overrides=overrides))
    ids, y = ds.train.ids.numpy(), ds.train.targets.numpy()  # probs.npy rows follow the training split's order
    truth = np.array([i in flipped for i in ids])
    res = {"rate": rate, "seed": seed, "images": len(ids), "flipped": int(truth.sum())}
    for name in names:
        p = np.load(out / name / "probs.npy", mmap_mode="r")
        q = np.asarray(p, dtype=np.float64)
        q = q / q.sum(1, keepdims=True)
        res[f"{name} self-confidence p@k"] = at_k(quality.self_confidence(p, y), truth)
        res[f"{name} normalized margin p@k"] = at_k(quality.normalized_margin(p, y), truth)
        res[f"{name} cleanlab self-confidence p@k"] = at_k(get_label_quality_scores(y, q, method="self_confidence"), truth)
        res[f"{name} cleanlab normalized margin p@k"] = at_k(get_label_quality_scores(y, q, method="normalized_margin"), truth)
        res[f"{name} ours CL flag (P, R)"] = precision_recall(quality.label_issues(p, y), truth)
        res[f"{name} cleanlab find_label_issues (P, R)"] = precision_recall(find_label_issues(y, q), truth)
    top = int(json.loads((out / "held-out/audit-summary.json").read_text())["confident_learning_issues"])
    changed = relabel(out / "held-out/audit.csv", out / "fixes.csv", top=top)
    fixed = run_chain(load_config(overrides={**overrides, "data.label_overrides": str(out / "fixes.csv")}), out / "fixed", log=log)
    fixes = list(csv.DictReader(open(out / "fixes.csv")))
    orig = {int(r["index"]): int(r["original"]) for r in csv.DictReader(open(out / "noisy/gen1/label-noise.csv"))}
    res["relabelled"] = changed
    res["relabelled correctly"] = sum(int(r["index"]) in orig and r["label"] == ds.classes[orig[int(r["index"])]] for r in fixes)
    res["test top-1 noisy"], res["test top-1 relabelled"] = rows[-1]["test_top1"], fixed[-1]["test_top1"]
    res["seconds"] = round(time.time() - t0)
    (out / "result.json").write_text(json.dumps(res, indent=2))
    return res


def table(results: list[dict]) -> str:
    keys = [k for k in results[0] if k not in ("rate", "seed")]
    lines = ["| metric | " + " | ".join(f"{r['rate']:g} / seed {r['seed']}" for r in results) + " |",
             "|---|" + "---:|" * len(results)]  # fmt: skip

    def cell(v):
        if isinstance(v, (list, tuple)):
            return f"{v[0]:.3f} / {v[1]:.3f}"
        return f"{v:.3f}" if isinstance(v, float) and v <= 1 else f"{v:.2f}" if isinstance(v, float) else str(v)

    lines += [f"| {k} | " + " | ".join(cell(r[k]) for r in results) + " |" for k in keys]
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    """Per flip rate: the mean over seeds and a 95 % t interval (paired where a difference is meant)."""
    from label_refinery.study.stats import t_interval

    lines = ["| rate | seeds | metric | mean | 95 % interval |", "|---:|---:|---|---:|---|"]
    for rate in sorted({r["rate"] for r in results}):
        rs = [r for r in results if r["rate"] == rate]
        if len(rs) < 2:
            continue
        rows = {k: [r[k] for r in rs] for k in rs[0] if k.endswith("p@k")}
        for k in [k for k in rs[0] if k.endswith("(P, R)")]:
            rows[k.replace("(P, R)", "precision")] = [r[k][0] for r in rs]
            rows[k.replace("(P, R)", "recall")] = [r[k][1] for r in rs]
        for a in ("self-confidence p@k", "normalized margin p@k"):
            rows[f"held-out − in-sample {a}"] = [r[f"held-out {a}"] - r[f"in-sample {a}"] for r in rs]
        for k in [k for k in rs[0] if " seeds " in k and k.endswith("p@k")]:
            base = "held-out " + k.split(" seeds ", 1)[1]
            rows[f"{k.split(' ', 2)[1]} seeds − 1 seed {base[9:]}"] = [r[k] - r[base] for r in rs]
        rows["test top-1: relabelled − noisy"] = [r["test top-1 relabelled"] - r["test top-1 noisy"] for r in rs]
        for k, v in rows.items():
            m, h = t_interval(v)
            lines.append(f"| {rate:g} | {len(v)} | {k} | {m:.3f} | [{m - h:.3f}, {m + h:.3f}] |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--train-subset", type=int)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--crop-scale", type=float, nargs=2, default=[0.25, 1.0])
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seeds", type=int, default=1, help="also audit with each fold an ensemble of S seeds")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="runs/bench-audit")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out = f"{args.out}/{args.dataset}"
    quiet = lambda _: None  # noqa: E731
    for rate in args.rates:
        for seed in args.seeds:
            one(args, rate, seed, quiet)
    # the table holds every finished (rate, seed) under OUT, so seeds run in separate calls add up
    found = [json.loads(f.read_text()) for f in Path(args.out).glob("rate*-seed*/result.json")]
    results = sorted(found, key=lambda r: (r["rate"], r["seed"]))
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    print(f"python {' '.join(sys.argv)}\n")
    print(table(results))
    print()
    print(summary(results))


if __name__ == "__main__":
    main()
