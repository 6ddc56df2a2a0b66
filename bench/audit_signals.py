"""Which per-image signal finds wrong labels best (issue 27, goal 1): the audit's refined probabilities
against the training dynamics recorded while generation 1 trained, each alone and combined.

    python bench/audit_signals.py                      # Fashion-MNIST 6,000 images, 5/10/20 %, symmetric and pairs, seeds 0-2
    python bench/audit_signals.py --rates 0.05 --kinds pairs --seeds 0 1 2 3 4

For each flip kind, rate and seed: a seeded share of the training labels is flipped through a
label-override file (``symmetric``: to a uniformly drawn other class; ``pairs``: between confusable
classes, T-shirt <-> shirt, pullover <-> coat, sandal -> sneaker, sneaker <-> ankle boot, trouser <->
dress, as annotators err); one generation trains on them (``label-refinery train``, 10 epochs), and
the in-sample audit scores every image (``label-refinery audit``, no folds: one training in all). Then
precision at k (k = the number of flipped labels; 1.0 = the k lowest-ranked images are exactly the
flipped ones) of:

- ``log_margin`` (the audit's default), ``self_confidence`` and ``normalized_margin`` of the audit's
  view-averaged probabilities (ours);
- cleanlab's ``get_label_quality_scores`` on the same probabilities (if cleanlab is installed);
- ``aum``: generation 1's area under the margin, recorded while it trained (training/dynamics.py);
- ``forgotten``: how often the image turned from right to wrong (more first);
- ``combined``: the mean of an image's rank under self-confidence and under AUM.

Mean and 95 % interval over seeds. Writes ``OUT/results.json``; finished runs are reused.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

PAIRS = {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 9, 9: 7, 1: 3, 3: 1}  # Fashion-MNIST: the likeliest confusions
SIGNALS = ("log_margin", "self_confidence", "normalized_margin", "cleanlab", "aum", "forgotten", "combined")


def flips(ids: np.ndarray, targets: np.ndarray, kind: str, rate: float, seed: int, classes: int) -> dict[int, int]:
    """``{dataset id: wrong label}`` for ``round(rate * N)`` images (drawn among those with a partner for pairs)."""
    rng = np.random.default_rng([seed, int(rate * 1000), kind == "pairs"])
    pool = np.arange(len(ids)) if kind == "symmetric" else np.flatnonzero(np.isin(targets, list(PAIRS)))
    chosen = rng.choice(pool, size=round(rate * len(ids)), replace=False)
    if kind == "symmetric":
        new = (targets[chosen] + rng.integers(1, classes, len(chosen))) % classes
    else:
        new = np.array([PAIRS[int(t)] for t in targets[chosen]])
    return {int(ids[i]): int(c) for i, c in zip(chosen, new)}


def precision_at_k(order: np.ndarray, wrong: np.ndarray) -> float:
    k = int(wrong.sum())
    return float(wrong[order[:k]].mean())


def rank(values: np.ndarray) -> np.ndarray:
    r = np.empty(len(values))
    r[np.argsort(values, kind="stable")] = np.arange(len(values))
    return r


def one(args, kind: str, rate: float, seed: int) -> dict:
    from label_refinery.data import load_dataset

    out = Path(args.out) / f"{kind}-{rate:g}-seed{seed}"
    if (out / "result.json").is_file():
        cached = json.loads((out / "result.json").read_text())
        if all(s in cached for s in SIGNALS if s != "cleanlab"):
            return cached
    ds = load_dataset("fashion-mnist", train_subset=args.subset)
    ids, targets = ds.train.ids.numpy(), ds.train.targets.numpy()
    wrong_label = flips(ids, targets, kind, rate, seed, ds.num_classes)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "run/audit/audit.csv").is_file():
        _train_and_audit(args, out, ds, wrong_label, seed)
    return _score(out, ds, ids, wrong_label, kind, rate, seed)


def write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_flips(path: Path, ds, wrong_label: dict[int, int]) -> None:
    """The flips as a label-override file (``index,label``, class names)."""
    write_csv(path, ["index", "label"], ((i, ds.classes[c]) for i, c in sorted(wrong_label.items())))


def _train_and_audit(args, out: Path, ds, wrong_label: dict[int, int], seed: int) -> None:
    write_flips(out / "flips.csv", ds, wrong_label)
    lr = [sys.executable, "-m", "label_refinery"]
    common = ["--no-progress", "--threads", str(args.threads)]
    subprocess.run([*lr, "train", "--dataset", "fashion-mnist", "--train-subset", str(args.subset), "--epochs", str(args.epochs),
                    "--label-overrides", str(out / "flips.csv"), "--seed", str(seed), "--out", str(out / "run"), *common],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    subprocess.run([*lr, "audit", str(out / "run"), *common], check=True, stdout=subprocess.DEVNULL)


def _score(out: Path, ds, ids: np.ndarray, wrong_label: dict[int, int], kind: str, rate: float, seed: int) -> dict:
    from label_refinery.tools import quality

    rows = list(csv.DictReader(open(out / "run/audit/audit.csv")))
    probs = np.load(out / "run/audit/probs.npy")
    by_id = {int(r["index"]): r for r in rows}
    wrong = np.array([int(i) in wrong_label for i in ids])
    y = np.array([ds.classes.index(by_id[int(i)]["given"]) for i in ids])
    def column(key: str, missing: float) -> np.ndarray:  # an image never in a batch has no AUM (drop_last)
        return np.array([float(by_id[int(i)][key] or missing) for i in ids])

    col = {k: column(k, np.nan) for k in ("self_confidence", "normalized_margin", "aum")}
    forgotten = column("forgotten", 0.0)
    orders = {
        "log_margin": np.argsort(quality.log_margin(probs, y), kind="stable"),  # from the probabilities: older audits lack the column
        "self_confidence": np.argsort(col["self_confidence"], kind="stable"),
        "normalized_margin": np.argsort(col["normalized_margin"], kind="stable"),
        "aum": np.argsort(col["aum"], kind="stable"),
        "forgotten": np.argsort(-forgotten, kind="stable"),
        "combined": np.argsort(rank(col["self_confidence"]) + rank(col["aum"]), kind="stable"),
    }
    try:
        from cleanlab.rank import get_label_quality_scores

        orders["cleanlab"] = np.argsort(get_label_quality_scores(y, probs), kind="stable")
    except ImportError:
        pass
    result = {"kind": kind, "rate": rate, "seed": seed, "flipped": int(wrong.sum()),
              **{s: precision_at_k(o, wrong) for s, o in orders.items()}}  # fmt: skip
    (out / "result.json").write_text(json.dumps(result))
    return result


def arguments(doc: str, *, rates: list[float], threads: int, out: str) -> argparse.ArgumentParser:
    """The flip study's common flags (each bench adds its own)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", type=int, default=6000)
    p.add_argument("--rates", type=float, nargs="+", default=rates)
    p.add_argument("--kinds", nargs="+", default=["symmetric", "pairs"], choices=["symmetric", "pairs"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--out", default=out)
    return p


def grid(args, one, name: str) -> list[dict]:
    """``one(args, kind, rate, seed)`` for every flip kind, rate and seed, each printed; all into ``OUT/name``."""
    results = []
    for kind in args.kinds:
        for rate in args.rates:
            for seed in args.seeds:
                results.append(one(args, kind, rate, seed))
                print(json.dumps(results[-1]), flush=True)
    Path(args.out, name).write_text(json.dumps(results, indent=1))
    return results


def cells(rows: list[dict], keys) -> list[str]:
    """``mean ± 95 % half-width`` of each key over ``rows`` (the mean alone for one row)."""
    from label_refinery.study.stats import t_interval

    out = []
    for key in keys:
        m, h = t_interval([r[key] for r in rows])
        out.append(f"{m:.3f} ± {h:.3f}" if len(rows) > 1 else f"{m:.3f}")
    return out


def main() -> None:
    p = arguments(__doc__, rates=[0.05, 0.1, 0.2], threads=1, out="runs/bench-audit-signals")
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    results = grid(args, one, "results.json")
    signals = [s for s in SIGNALS if all(s in r for r in results)]
    print("| flips | rate | seeds | " + " | ".join(signals) + " |")
    print("|---|---:|---:|" + "---:|" * len(signals))
    for kind in args.kinds:
        for rate in args.rates:
            rs = [r for r in results if r["kind"] == kind and r["rate"] == rate]
            print(f"| {kind} | {rate:g} | {len(rs)} | " + " | ".join(cells(rs, signals)) + " |")


if __name__ == "__main__":
    main()
