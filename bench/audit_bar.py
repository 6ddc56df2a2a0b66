"""Issue 27's bar: the README's recommended audit against both cleanlab pipelines, on flipped Fashion-MNIST.

    python bench/audit_bar.py                                  # 6,000 images, 5 % symmetric and pair flips, seeds 0-2
    python bench/audit_bar.py --rates 0.05 0.1 0.2 --seeds 0 1 2
    python bench/audit_bar.py --rates 0.05 0.1 0.2 --fold-epochs 30 --out runs/bench-audit-bar-e30   # the README's audit now

For each flip kind, rate and seed (the flips of ``bench/audit_signals.py``: ``symmetric`` to a uniformly
drawn other class, ``pairs`` between look-alike classes), what a user runs, as the README says:

    label-refinery chain --dataset fashion-mnist --train-subset 6000 --label-overrides flips.csv --out run
    label-refinery audit run --folds 5

(the default chain: two generations of 10 epochs; the audit's fold models never saw the images they
score). Then precision at k (k = the flipped labels) of

- ``audit``: audit.csv's own order (its default ranking, the log margin);
- ``audit, self-confidence``: the same audit ranked by self-confidence (the default before the log margin);
- ``cleanlab, same probabilities``: cleanlab's ``get_label_quality_scores`` on the audit's ``probs.npy``;
- ``cleanlab, logistic regression``: the same on 5-fold ``cross_val_predict`` probabilities of a
  scikit-learn logistic regression on the pixels (what a team without us would run).

Also the wall time of the chain and of the audit (its 5 fold trainings and scoring), and their ratio.
Needs cleanlab and scikit-learn (development dependencies). Writes ``OUT/bar.json``; finished runs are
reused.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_signals import arguments, cells, flips, grid, precision_at_k, write_flips  # noqa: E402  (the same flips as the signal study)

SCORES = ("audit", "audit, self-confidence", "cleanlab, same probabilities", "cleanlab, logistic regression")


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def logistic_probs(images: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """5-fold out-of-fold probabilities of a logistic regression on the pixels (scaled to [0, 1])."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    model = LogisticRegression(max_iter=300, C=0.1)
    return cross_val_predict(model, x, labels, cv=StratifiedKFold(5, shuffle=True, random_state=seed), method="predict_proba")


def one(args, kind: str, rate: float, seed: int) -> dict:
    from cleanlab.rank import get_label_quality_scores

    from label_refinery.data import load_dataset

    out = Path(args.out) / f"{kind}-{rate:g}-seed{seed}"
    if (out / "bar.json").is_file():
        return json.loads((out / "bar.json").read_text())
    ds = load_dataset("fashion-mnist", train_subset=args.subset)
    ids, targets = ds.train.ids.numpy(), ds.train.targets.numpy()
    wrong_label = flips(ids, targets, kind, rate, seed, ds.num_classes)
    out.mkdir(parents=True, exist_ok=True)
    write_flips(out / "flips.csv", ds, wrong_label)
    lr = [sys.executable, "-m", "label_refinery"]
    common = ["--no-progress", "--threads", str(args.threads)]
    timing = out / "chain.json"  # the chain's wall time, kept: a rerun with other audit flags reuses the chain
    if timing.is_file():
        chain_s = json.loads(timing.read_text())["chain_seconds"]
    else:
        chain_s = _timed([*lr, "chain", "--dataset", "fashion-mnist", "--train-subset", str(args.subset), "--label-overrides",
                          str(out / "flips.csv"), "--seed", str(seed), "--out", str(out / "run"), *common])  # fmt: skip
        timing.write_text(json.dumps({"chain_seconds": chain_s}))
    epochs = ["--fold-epochs", str(args.fold_epochs)] if args.fold_epochs else []
    audit_s = _timed([*lr, "audit", str(out / "run"), "--folds", str(args.folds), *epochs, *common])
    rows = list(csv.DictReader(open(out / "run/audit/audit.csv")))
    pos = {int(i): k for k, i in enumerate(ids)}
    wrong = np.array([int(i) in wrong_label for i in ids])
    y = np.array([ds.classes.index(r["given"]) for r in sorted(rows, key=lambda r: pos[int(r["index"])])])
    probs = np.load(out / "run/audit/probs.npy")
    audit_order = np.array([pos[int(r["index"])] for r in rows])
    self_conf = np.array([float(r["self_confidence"]) for r in sorted(rows, key=lambda r: pos[int(r["index"])])])
    lr_probs = logistic_probs(ds.train.images.numpy(), y, seed)  # uint8 pixels, in the split's order
    result = {
        "kind": kind, "rate": rate, "seed": seed, "flipped": int(wrong.sum()),
        "audit": precision_at_k(audit_order, wrong),
        "audit, self-confidence": precision_at_k(np.argsort(self_conf, kind="stable"), wrong),
        "cleanlab, same probabilities": precision_at_k(np.argsort(get_label_quality_scores(y, probs), kind="stable"), wrong),
        "cleanlab, logistic regression": precision_at_k(np.argsort(get_label_quality_scores(y, lr_probs), kind="stable"), wrong),
        "logistic regression top-1 on the given labels (out of fold)": float((lr_probs.argmax(1) == y).mean()),
        "chain_seconds": chain_s, "audit_seconds": audit_s,
    }  # fmt: skip
    (out / "bar.json").write_text(json.dumps(result))
    return result


def main() -> None:
    p = arguments(__doc__, rates=[0.05], threads=2, out="runs/bench-audit-bar")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold-epochs", type=int, help="audit --fold-epochs (default: the run's, 10)")
    p.add_argument("--against", help="another OUT of this bench (the same flips): the paired difference of this audit "
                                     "minus that one's self-confidence ranking (the audit when issue 27 was filed)")  # fmt: skip
    args = p.parse_args()
    from label_refinery.study.stats import t_interval

    results = grid(args, one, "bar.json")
    print("| flips | rate | seeds | " + " | ".join(SCORES) + " | audit minus self-confidence, paired | audit / chain wall time |")
    print("|---|---:|---:|" + "---:|" * len(SCORES) + "---|---:|")
    for kind in args.kinds:
        for rate in args.rates:
            rs = [r for r in results if r["kind"] == kind and r["rate"] == rate]
            d, dh = t_interval([r["audit"] - r["audit, self-confidence"] for r in rs])
            cost = np.mean([r["audit_seconds"] / r["chain_seconds"] for r in rs])
            print(f"| {kind} | {rate:g} | {len(rs)} | " + " | ".join(cells(rs, SCORES)) + f" | {d:+.3f} [{d - dh:+.3f}, {d + dh:+.3f}] | {cost:.1f} |")
    if args.against:
        print("\n| flips | rate | seeds | this audit minus the --against audit's self-confidence, paired | per seed |\n|---|---:|---:|---|---|")
        for kind in args.kinds:
            for rate in args.rates:
                rs = [r for r in results if r["kind"] == kind and r["rate"] == rate]
                old = [json.loads((Path(args.against) / f"{kind}-{rate:g}-seed{r['seed']}" / "bar.json").read_text()) for r in rs]
                diffs = [r["audit"] - o["audit, self-confidence"] for r, o in zip(rs, old)]
                d, dh = t_interval(diffs)
                print(f"| {kind} | {rate:g} | {len(rs)} | {d:+.3f} [{d - dh:+.3f}, {d + dh:+.3f}] | " + " ".join(f"{x:+.3f}" for x in diffs) + " |")


if __name__ == "__main__":
    main()
