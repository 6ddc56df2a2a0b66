"""How well the audit's hygiene columns find planted problems (issue 27, goal 3).

    python bench/audit_hygiene.py                    # Fashion-MNIST, 6,000 training images, seeds 0-2 (~4 min each, one core)
    python bench/audit_hygiene.py --dataset digits --train 800 --plant 20 --epochs 10 --seeds 0

An image folder is written from the dataset: ``--train`` training images and ``--test`` test images
(``val/``), plus, planted among the training images under random labels,

- ``--plant`` exact copies of test images and as many perturbed copies (shifted by one pixel, Gaussian
  noise of 8/255): train/test leaks;
- ``--plant`` pairs of training images copied under a second name: training duplicates;
- ``--plant`` outliers: half uniform noise, half images of another dataset (scikit-learn's digits for
  Fashion-MNIST, Fashion-MNIST for digits), resized to the image size.

Then one generation (``label-refinery chain --generations 1``) and the in-sample audit. Reported per
seed and as mean ± 95 % half-width: precision at k of ``test_duplicate_sim`` (k = the planted copies,
exact and perturbed; also the recall of each kind in that top k), of ``duplicate_sim`` (k = the rows of
the planted pairs, two per pair), and of ``outlier_score`` (k = the outliers). Writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def pictures(name: str, split: str, n: int, seed: int, size: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` seeded images (uint8 ``[n, H, W]``), labels and class names of a built-in dataset's split."""
    from label_refinery.data import load_dataset
    from label_refinery.tools.probe import to_pictures

    ds = load_dataset(name)
    part = ds.train if split == "train" else ds.test
    pos = np.sort(np.random.default_rng(seed).choice(len(part), size=min(n, len(part)), replace=False))
    sub = part.subset(pos.tolist())
    imgs = np.concatenate([to_pictures(b.images, ds)[..., 0] for b in sub.iter_batches(512)])
    if size is not None and imgs.shape[1] != size:
        from PIL import Image

        imgs = np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BILINEAR)) for i in imgs])
    return imgs, sub.targets.numpy(), ds.classes


def build(root: Path, args, seed: int) -> dict:
    """The image folder with its planted problems; returns which files are planted as what, and the image size
    (an image folder is read at 224 px unless told: these images are small)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    train, y, classes = pictures(args.dataset, "train", args.train, seed)
    test, y_test, _ = pictures(args.dataset, "test", args.test, seed + 1)
    size = train.shape[1]
    other = "digits" if args.dataset == "fashion-mnist" else "fashion-mnist"
    strangers = pictures(other, "train", args.plant - args.plant // 2, seed, size)[0]
    noise = rng.integers(0, 256, (args.plant // 2, size, size), dtype=np.uint8)
    files: list[tuple[str, np.ndarray, int]] = []  # (name, image, label)
    planted: dict[str, str] = {}

    def add(kind: str, img: np.ndarray, label: int, tag: str = "") -> None:
        name = f"{len(files):06d}{tag}.png"
        files.append((name, img, label))
        if kind:
            planted[name] = kind

    for img, label in zip(train, y):
        add("", img, int(label))
    leaks = rng.choice(len(test), size=2 * args.plant, replace=False)
    for j, t in enumerate(leaks):
        img = test[t]
        if j >= args.plant:  # perturbed: one pixel of shift and a little noise
            img = np.clip(np.roll(img, 1, axis=1).astype(np.float32) + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        add("test-copy" if j < args.plant else "test-perturbed", img, int(y_test[t]))
    for p in rng.choice(len(train), size=args.plant, replace=False):
        planted[files[p][0]] = "train-duplicate"
        add("train-duplicate", train[p], int(y[p]), "d")
    for img in [*noise, *strangers]:
        add("outlier", img, int(rng.integers(0, len(classes))))
    for split, items in (("train", files), ("val", [(f"t{i:06d}.png", img, int(c)) for i, (img, c) in enumerate(zip(test, y_test))])):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for name, img, label in items:
            Image.fromarray(img).save(root / split / classes[label] / name)
    return {"planted": planted, "size": size}


def at_k(scores: np.ndarray, truth: np.ndarray) -> float:
    k = int(truth.sum())
    return float(truth[np.argsort(-scores, kind="stable")[:k]].mean())


def one(args, seed: int) -> dict:
    out = Path(args.out) / f"seed{seed}"
    if (out / "result.json").is_file():
        return json.loads((out / "result.json").read_text())
    built = build(out / "data", args, seed)
    planted = built["planted"]
    lr = [sys.executable, "-m", "label_refinery"]
    common = ["--no-progress", "--threads", str(args.threads)]
    subprocess.run([*lr, "chain", "--dataset", f"imagefolder:{out / 'data'}", "--generations", "1", "--epochs", str(args.epochs),
                    "--image-size", str(built["size"]), "--seed", str(seed), "--out", str(out / "run"), *common], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    subprocess.run([*lr, "audit", str(out / "run"), *common], check=True, stdout=subprocess.DEVNULL)
    rows = list(csv.DictReader(open(out / "run/audit/audit.csv")))
    kind = np.array([planted.get(Path(r["path"]).name, "") for r in rows])
    col = {k: np.array([float(r[k]) for r in rows]) for k in ("test_duplicate_sim", "duplicate_sim", "outlier_score")}
    leak = np.isin(kind, ["test-copy", "test-perturbed"])
    top = np.argsort(-col["test_duplicate_sim"], kind="stable")[: int(leak.sum())]
    result = {
        "seed": seed,
        "test_leaks_precision": at_k(col["test_duplicate_sim"], leak),
        "exact_copies_found": float(np.isin(top, np.flatnonzero(kind == "test-copy")).sum() / (kind == "test-copy").sum()),
        "perturbed_copies_found": float(np.isin(top, np.flatnonzero(kind == "test-perturbed")).sum() / (kind == "test-perturbed").sum()),
        "train_duplicates_precision": at_k(col["duplicate_sim"], kind == "train-duplicate"),
        "outliers_precision": at_k(col["outlier_score"], kind == "outlier"),
    }
    (out / "result.json").write_text(json.dumps(result))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--plant", type=int, default=50, help="of each kind")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-audit-hygiene")
    args = p.parse_args()
    from label_refinery.study.stats import t_interval

    results = [one(args, s) for s in args.seeds]
    for r in results:
        print(json.dumps(r), flush=True)
    Path(args.out, "results.json").write_text(json.dumps(results, indent=1))
    for key in [k for k in results[0] if k != "seed"]:
        m, h = t_interval([r[key] for r in results])
        print(f"{key}: {m:.3f}" + (f" ± {h:.3f}" if len(results) > 1 else ""))


if __name__ == "__main__":
    main()
