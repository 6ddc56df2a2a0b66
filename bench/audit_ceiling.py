"""How high can precision at k go on the bar's folder? Issue 27's ceiling, with probabilities better
than any audit of the folder can have.

    python bench/audit_ceiling.py                         # cnn-small, 10 epochs, on the other 54,000 images
    python bench/audit_ceiling.py --model resnet-20 --epochs 10

The bar's folder (``bench/audit_bar.py``) is 6,000 Fashion-MNIST training images with 5-20 % of their
labels flipped. Here one model trains on ground truth on the *other* 54,000 training images (clean
labels, nine times the data, never the folder's images), then scores the folder exactly as the audit
does (the whole image and 4 fixed crops averaged, ``tools/audit.py``), and the folder's flips of every
kind, rate and seed are ranked by the log margin (the audit's default) and by self-confidence. No audit
of the folder alone can have probabilities this good (its models see 6,000 images, some mislabelled),
so what this reaches bounds what a better audit could reach with the same ranking; what it misses are
flips that a very good model still finds plausible (look-alike classes).

Writes ``OUT/ceiling.json`` (the model's folder is reused when it has finished).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_signals import flips, precision_at_k  # noqa: E402  (the bar's flips)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn-small")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--subset", type=int, default=6000)
    p.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/bench-audit-ceiling")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from label_refinery.config import load_config
    from label_refinery.data import load_dataset, subset_positions
    from label_refinery.tools import quality
    from label_refinery.tools.audit import AuditSpec, _score  # the audit's own scoring of a split
    from label_refinery.tools.probe import analysis_sampler, load_run
    from label_refinery.training.chain import run_chain

    overrides = {"data.dataset": "fashion-mnist", "model": args.model, "optim.epochs": args.epochs,
                 "chain.generations": 1}  # fmt: skip
    cfg = load_config(overrides=overrides)
    full = load_dataset("fashion-mnist")
    inside = subset_positions(full.train.targets, args.subset)  # the bar's folder (train_subset's choice)
    rest = np.setdiff1d(np.arange(len(full.train)), inside)
    others = replace(full, train=full.train.subset(rest))  # the 54,000 images the folder does not hold
    folder = Path(args.out) / f"{args.model}-e{args.epochs}"
    if not (folder / "gen1" / "meta.json").is_file():
        run_chain(cfg, folder, dataset=others)
    _, models, _, cfg1 = load_run(folder, dataset=others)
    split = full.train.subset(inside)
    probs = np.zeros((len(split), full.num_classes), dtype=np.float32)
    crop_wrong = np.zeros(len(split), dtype=np.float32)
    _score(models, split, np.arange(len(split)), probs, crop_wrong, analysis_sampler(cfg1), AuditSpec(), "cpu", False, "")
    ids, targets = split.ids.numpy(), split.targets.numpy()
    meta = json.loads((folder / "gen1" / "meta.json").read_text())
    result = {"model": args.model, "epochs": args.epochs, "test_top1": meta["metrics"]["test_top1"],
              "folder_top1_clean": float((probs.argmax(1) == targets).mean()), "cells": []}  # fmt: skip
    for kind in ("symmetric", "pairs"):
        for rate in args.rates:
            for seed in args.seeds:
                wrong_label = flips(ids, targets, kind, rate, seed, full.num_classes)
                given = np.array([wrong_label.get(int(i), int(t)) for i, t in zip(ids, targets)])
                wrong = given != targets
                m = quality.margins(probs, given)
                row = {"kind": kind, "rate": rate, "seed": seed,
                       "log_margin": precision_at_k(np.argsort(m["log_margin"], kind="stable"), wrong),
                       "self_confidence": precision_at_k(np.argsort(m["self_confidence"], kind="stable"), wrong)}  # fmt: skip
                result["cells"].append(row)
                print(json.dumps(row), flush=True)
    (Path(args.out) / f"ceiling-{args.model}-e{args.epochs}.json").write_text(json.dumps(result, indent=1))
    print(f"model {args.model}: test top-1 {result['test_top1']:.2f}, the folder's images (clean labels) {100 * result['folder_top1_clean']:.2f}")
    for kind in ("symmetric", "pairs"):
        for rate in args.rates:
            rs = [r for r in result["cells"] if r["kind"] == kind and r["rate"] == rate]
            print(f"| {kind} | {rate:g} | " + " | ".join(f"{np.mean([r[s] for r in rs]):.3f}" for s in ("log_margin", "self_confidence")) + " |")


if __name__ == "__main__":
    main()
