"""Does a change keep training bit for bit? Train small chains with the code of two git revisions
and compare every weight tensor and label-store array (issue 23: "a chain before and after gives
the same weights, bit for bit on CPU").

    python bench/same_weights.py OLD_REV [NEW_REV]      # NEW_REV: the working tree

Each revision runs in its own temporary `git worktree`, one thread, on the same machine (floats
summed in the same order). The chains cover the label paths: live, a baked store, static labels,
mixup + jittering, label noise with a validation split, and KD settings (temperature, ground truth).
Run folders of earlier layouts name their settings with earlier keys; the commands use CLI flags,
which both revisions read alike.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUNS = [  # (folder, command after `label-refinery`)
    ("live", "chain --dataset digits --epochs 3 --generations 2"),
    ("store", "chain --dataset digits --epochs 2 --generations 2 --label-source store"),
    ("static", "chain --dataset digits --epochs 2 --generations 2 --label-source static"),
    ("mixjit", "chain --dataset digits --epochs 2 --generations 2 --mix mixup --jitter"),
    ("noise", "chain --dataset digits --epochs 2 --generations 1 --val-split 200 --train-subset 800 --label-noise 0.2"),
    ("kd", "train --dataset digits --epochs 2 --refinery {out}/live/gen1 --temperature 2 --gt-weight 0.3"),
]


def train(src: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    for name, command in RUNS:
        argv = [sys.executable, "-m", "label_refinery", *command.format(out=out).split(), "--no-progress",
                "--out", str(out / name)]  # fmt: skip
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)


def compare(a: Path, b: Path) -> int:
    from safetensors.torch import load_file

    different = 0
    for f in sorted(a.rglob("model.safetensors")):
        x, y = load_file(f), load_file(b / f.relative_to(a))
        same = x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x)
        print(f"{'identical' if same else 'DIFFERENT'}  {f.relative_to(a)}")
        different += not same
    for f in sorted(a.rglob("*.npy")):
        same = np.array_equal(np.load(f), np.load(b / f.relative_to(a)))
        print(f"{'identical' if same else 'DIFFERENT'}  {f.relative_to(a)}")
        different += not same
    return different


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new", nargs="?", help="default: the working tree")
    a = p.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {}
        for label, rev in (("old", a.old), ("new", a.new)):
            if rev is None:
                trees[label] = repo / "src"
                continue
            subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", "--detach", str(tmp / label), rev], check=True)
            trees[label] = tmp / label / "src"
        try:
            for label, src in trees.items():
                print(f"training with {label} ({src})", flush=True)
                train(src, tmp / f"runs-{label}")
            different = compare(tmp / "runs-old", tmp / "runs-new")
        finally:
            for label in ("old", "new"):
                if (tmp / label).exists():
                    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tmp / label)], check=False)
    print("bit for bit: the same weights and arrays" if not different else f"{different} file(s) differ")
    sys.exit(1 if different else 0)


if __name__ == "__main__":
    main()
