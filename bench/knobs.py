"""Effect of the speed knobs on training throughput: channels_last, --amp bf16, --compile.

    python bench/knobs.py                                   # cnn-small on a 20,000-image Fashion-MNIST subset
    python bench/knobs.py --model resnet-cifar --subset 5000 --epochs 2

Each setting trains a fresh generation (same seed, same crops) through the library's own training
loop; the table gives the last epoch's training img/s (so --compile's first-epoch compilation is
excluded when --epochs > 1) and the test top-1, which shows whether a knob changes results.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

from label_refinery import load_config, train_generation
from label_refinery.training.setup import load_data

SETTINGS = {
    "NCHW, fp32": {"channels_last": False},
    "channels_last, fp32": {},
    "channels_last, bf16 autocast": {"amp": "bf16"},
    "channels_last, torch.compile": {"compile": True},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn-small")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    base = {"model": a.model, "data.dataset": a.dataset, "data.train_subset": a.subset, "optim.epochs": a.epochs, "device": "cpu"}
    ds = load_data(load_config(overrides=base))
    print(f"torch {torch.__version__}, {a.threads} threads, {a.model}, {a.subset} images, {a.epochs} epochs")
    print("| setting | train img/s (last epoch) | test top-1 |")
    print("|---|---:|---:|")
    for name in a.settings:
        cfg = load_config(overrides={**base, **SETTINGS[name]})
        with tempfile.TemporaryDirectory() as tmp:
            meta = train_generation(cfg, tmp, dataset=ds, log=lambda _: None)
            last = [json.loads(x) for x in open(f"{tmp}/metrics.jsonl")][-1]
        print(f"| {name} | {last['images_per_s']:,.0f} | {meta['metrics']['test_top1']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
