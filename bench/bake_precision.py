"""How much bfloat16 changes baked labels, and what it buys: the tolerance behind `bake --bf16`.

    python bench/bake_precision.py --refinery runs/demo/gen1          # after `make demo`
    python bench/bake_precision.py --refinery runs/fmnist-chain/gen1 --epochs 2

Bakes the same crops (top-5) with the refinery in float32 and in bfloat16 autocast and reports:
the share of crops whose top-1 class changes, the share whose top-5 set changes, the largest and
mean absolute change of a stored top-5 probability, and both bake speeds.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from label_refinery.checkpoint import load_checkpoint
from label_refinery.data import CropSampler, load_dataset
from label_refinery.labels.bake import BakeSpec, bake
from label_refinery.labels.store import StoredLabels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--refinery", default="runs/demo/gen1")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ckpt = load_checkpoint(a.refinery)
    data = ckpt.meta["config"]["data"]
    ds = load_dataset(data["dataset"], data["data_dir"], ckpt.meta["image_size"])
    sampler = CropSampler(seed=1, scale=tuple(data["crop_scale"]), ratio=tuple(data["crop_ratio"]))
    stores, speed = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, bf16 in (("fp32", False), ("bf16", True)):
            start = time.perf_counter()
            spec = BakeSpec(num_classes=len(ckpt.meta["classes"]), epochs=a.epochs, top_k=5, bf16=bf16,
                            provenance={"dataset_fingerprint": ds.fingerprint(), "image_size": ds.image_size})
            bake(ckpt.build_model(), ds.train, f"{tmp}/{name}", spec, sampler=sampler, log=lambda _: None)
            speed[name] = a.epochs * len(ds.train) / (time.perf_counter() - start)
            s = StoredLabels(f"{tmp}/{name}")
            stores[name] = (np.asarray(s.indices).astype(np.int64), np.asarray(s.probs).astype(np.float32))
    (i32, p32), (i16, p16) = stores["fp32"], stores["bf16"]
    top1 = (i32[..., 0] != i16[..., 0]).mean()
    sets = (np.sort(i32, -1) != np.sort(i16, -1)).any(-1).mean()
    # the probability bf16 stored for each of fp32's top-5 classes (0 where it fell out of bf16's top-5)
    full16 = np.zeros(i16.shape[:-1] + (len(ckpt.meta["classes"]),), dtype=np.float32)
    np.put_along_axis(full16, i16, p16, -1)
    diff = np.abs(np.take_along_axis(full16, i32, -1) - p32)
    print(f"refinery {a.refinery} ({ckpt.meta['model']}), {a.epochs} epoch(s) x {len(ds.train)} crops, top-5, torch {torch.__version__}")
    print("| | value |")
    print("|---|---:|")
    print(f"| crops whose top-1 changes under bf16 | {100 * top1:.3f} % |")
    print(f"| crops whose top-5 set changes | {100 * sets:.3f} % |")
    print(f"| max abs change of a top-5 probability | {diff.max():.4f} |")
    print(f"| mean abs change of a top-5 probability | {diff.mean():.5f} |")
    print(f"| bake img/s fp32 / bf16 | {speed['fp32']:,.0f} / {speed['bf16']:,.0f} |")


if __name__ == "__main__":
    main()
