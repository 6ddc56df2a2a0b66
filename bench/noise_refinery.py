"""How a refinery trained on noisy labels labels its own training images (docs/results.md, noisy labels).

Reads generation 1 of configs/pays/fmnist-noise.yaml (seed 0 by default; run that experiment first)
and reports, on its 10,000 training images (whole views): the mean refined probability of the true
class and of the given (possibly flipped) label, the mean top probability, and how often the refined
top-1 is the true class.

    python bench/noise_refinery.py [--run runs/pays/fmnist-noise/seed0/self/gen1]
"""

import argparse

import torch

from label_refinery.checkpoint import load_checkpoint
from label_refinery.data import load_dataset
from label_refinery.labels import refine

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--run", default="runs/pays/fmnist-noise/seed0/self/gen1")
args = parser.parse_args()
ckpt = load_checkpoint(args.run)
data = ckpt.meta["config"]["data"]
noisy = load_dataset("fashion-mnist", train_subset=data["train_subset"], val_split=data["val_split"],
                     label_noise=data["label_noise"], noise_seed=data["label_noise_seed"])
clean = load_dataset("fashion-mnist", train_subset=data["train_subset"], val_split=data["val_split"])
model = ckpt.build_model().eval()
with torch.no_grad():
    p = torch.cat([refine(model, b.images) for b in noisy.train.iter_batches(1000)])  # [N, C]
rows = torch.arange(len(p))
true, given = clean.train.targets, noisy.train.targets
flipped = given != true
print(f"{args.run}: {len(p)} training images, {int(flipped.sum())} labels flipped")
print(f"mean p(true class)            {float(p[rows, true].mean()):.3f}")
print(f"mean top probability          {float(p.max(1).values.mean()):.3f}")
print(f"refined top-1 = true class    {100 * float((p.argmax(1) == true).float().mean()):.1f} %")
print(f"flipped images: p(given)      {float(p[rows, given][flipped].mean()):.3f}  p(true) {float(p[rows, true][flipped].mean()):.3f}")
