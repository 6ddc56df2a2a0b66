"""Does relabelling pay (issue 27, goal 5)? Retrain on the audit's fixes and compare test top-1 with the noisy run.

    python bench/audit_relabel.py                      # Fashion-MNIST 6,000 images, 5 % symmetric and pairs flips, seeds 0-2
    python bench/audit_relabel.py --rates 0.05 0.2 --kinds symmetric

For each flip kind, rate and seed, the noisy run and its in-sample audit of ``bench/audit_signals.py``
(reused when that bench already made them: same flips, same folder layout), then four trainings with
the noisy run's recipe and seed, each only with other labels:

- ``noisy``: the flipped labels (the audit's own run);
- ``top-k``: the flips with ``label-refinery relabel audit.csv --top k`` applied, unreviewed (k = the
  number of flips; the first k rows flagged ``wrong``, each replaced by its suggestion);
- ``reviewed``: a reviewer looks at the audit's first k rows (audit.html's order) and, as audit.html's
  "download reviewed CSV" records it, accepts the true label where the given one is wrong and keeps the
  given label elsewhere; the CSV goes through ``relabel --reviewed``. A perfect reviewer of k rows: the
  bound of the reviewed path at that budget;
- ``clean``: no flips at all (the bound of any relabelling).

Reports test top-1 per arm and each arm minus ``noisy``, paired by seed (mean, 95 % interval, seeds
better), with how many labels each fix file corrected and broke. Writes ``OUT/relabel.json``; finished
trainings are reused (each is its own run folder).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audit_signals  # noqa: E402  (the noisy runs and their audits)

ARMS = ("noisy", "top-k", "reviewed", "clean")


def _overrides(path: Path) -> dict[int, str]:
    return {int(r["index"]): r["label"] for r in csv.DictReader(open(path))} if path.is_file() else {}


def _train(args, seed: int, out: Path, overrides: Path | None) -> float:
    if not (out / "meta.json").is_file():
        extra = ["--label-overrides", str(overrides)] if overrides else []
        cmd = [sys.executable, "-m", "label_refinery", "train", "--dataset", "fashion-mnist", "--train-subset", str(args.subset),
               "--epochs", str(args.epochs), "--seed", str(seed), "--out", str(out), "--no-progress", "--threads", str(args.threads), *extra]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return float(json.loads((out / "meta.json").read_text())["metrics"]["test_top1"])


def one(args, kind: str, rate: float, seed: int) -> dict:
    from label_refinery.data import load_dataset

    audit_signals.one(args, kind, rate, seed)  # the noisy run and its audit (reused if there)
    base = Path(args.out) / f"{kind}-{rate:g}-seed{seed}"
    if (base / "relabel.json").is_file():
        return json.loads((base / "relabel.json").read_text())
    ds = load_dataset("fashion-mnist", train_subset=args.subset)
    true = {int(i): ds.classes[int(t)] for i, t in zip(ds.train.ids, ds.train.targets)}
    flips = _overrides(base / "flips.csv")
    k = len(flips)
    rows = list(csv.DictReader(open(base / "run/audit/audit.csv")))
    lr = [sys.executable, "-m", "label_refinery"]

    # unreviewed: the audit's first k 'wrong' suggestions
    subprocess.run([*lr, "relabel", str(base / "run/audit/audit.csv"), "--top", str(k), "--out", str(base / "fixes-top.csv"), "--force"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    # reviewed: the first k rows of audit.html's order, decided by a reviewer who knows the truth
    decided = [(r["index"], r["given"], "accept" if true[int(r["index"])] != r["given"] else "keep", true[int(r["index"])]) for r in rows[:k]]
    audit_signals.write_csv(base / "reviewed.csv", ["index", "given", "decision", "label"], decided)
    subprocess.run([*lr, "relabel", str(base / "reviewed.csv"), "--reviewed", "--out", str(base / "fixes-reviewed.csv"), "--force"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip

    result = {"kind": kind, "rate": rate, "seed": seed, "flipped": k}
    for arm, fixes in (("top-k", base / "fixes-top.csv"), ("reviewed", base / "fixes-reviewed.csv")):
        labels = {**flips, **_overrides(fixes)}  # the fixes on top of the flipped labels
        labels = {i: c for i, c in labels.items() if c != true[i]}  # an override back to the dataset's label is no override
        audit_signals.write_csv(base / f"labels-{arm}.csv", ["index", "label"], sorted(labels.items()))
        changed = _overrides(fixes)
        result[f"{arm} fixed"] = sum(1 for i, c in changed.items() if i in flips and c == true[i])
        result[f"{arm} broke"] = sum(1 for i, c in changed.items() if i not in flips)
        result[f"{arm} wrong left"] = len(labels)
        result[arm] = _train(args, seed, base / f"retrain-{arm}", base / f"labels-{arm}.csv" if labels else None)
    result["noisy"] = float(json.loads((base / "run/meta.json").read_text())["metrics"]["test_top1"])
    result["clean"] = _train(args, seed, Path(args.out) / f"clean-seed{seed}", None)
    (base / "relabel.json").write_text(json.dumps(result))
    return result


def main() -> None:
    p = audit_signals.arguments(__doc__, rates=[0.05], threads=1, out="runs/bench-audit-signals")
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    from label_refinery.study.stats import t_interval

    results = audit_signals.grid(args, one, "relabel.json")
    print("| flips | rate | seeds | arm | test top-1 | minus noisy, paired | seeds better | flips fixed | correct labels broken |")
    print("|---|---:|---:|---|---:|---|---:|---:|---:|")
    for kind in args.kinds:
        for rate in args.rates:
            rs = [r for r in results if r["kind"] == kind and r["rate"] == rate]
            for arm in ARMS:
                m, h = t_interval([r[arm] for r in rs])
                d, dh = t_interval([r[arm] - r["noisy"] for r in rs])
                better = sum(r[arm] > r["noisy"] for r in rs)
                fixed = f"{np.mean([r[f'{arm} fixed'] for r in rs]):.0f} of {rs[0]['flipped']}" if f"{arm} fixed" in rs[0] else ""
                broke = f"{np.mean([r[f'{arm} broke'] for r in rs]):.0f}" if f"{arm} broke" in rs[0] else ""
                diff = "" if arm == "noisy" else f"{d:+.2f} [{d - dh:+.2f}, {d + dh:+.2f}]"
                print(f"| {kind} | {rate:g} | {len(rs)} | {arm} | {m:.2f} ± {h:.2f} | {diff} | {'' if arm == 'noisy' else better} | {fixed} | {broke} |")


if __name__ == "__main__":
    main()
