"""Epoch time by label source, bake throughput, and bytes per crop (issue: label store).

    python bench/label_store.py                          # Fashion-MNIST, 12,000-image subset, 5 repeats
    python bench/label_store.py --subset 60000 --repeats 3

For a self-refinery (cnn-small -> cnn-small) and a bigger refinery (resnet-cifar -> cnn-small) it
times one training epoch of the student with:
- ground truth (no refinery);
- our live refinery (frozen, eval mode, inference_mode, channels_last);
- the 2018 release's way (the refinery inside the student's module, so `.train()` puts its BatchNorm
  in train mode, and no inference_mode);
- labels read from a label store (top-5, fp16);
- the live refinery with adversarial jittering (half of each batch, eps 2/255, one step), the cost
  of jittering.
It also times the bake against the refinery's pure inference on the same batches (forward only, on
ready tensors) and reports the store's bytes per crop. Timings are medians over --repeats epochs,
reported as ratios to the ground-truth epoch (the machine is noisy). Weights are random: speed does
not depend on them.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from label_refinery.config import JitterConfig, OptimConfig
from label_refinery.data import CropSampler, load_dataset
from label_refinery.labels import GroundTruth, LiveRefinery
from label_refinery.labels.bake import BakeSpec, bake
from label_refinery.labels.store import StoredLabels
from label_refinery.models import create_model
from label_refinery.training.engine import Step, lr_schedule, make_optimizer, train_one_epoch
from label_refinery.training.jitter import Jitter


class ReleaseStyle(nn.Module):
    """The 2018 release's wiring: the refinery is a child of the trained module."""

    def __init__(self, student: nn.Module, refinery: nn.Module):
        super().__init__()
        self.student, self.refinery = student, refinery.requires_grad_(False)

    def forward(self, x):
        return self.student(x)


class ReleaseLabels:
    """Refined labels as the release computed them: refinery in the wrapper's mode, no inference_mode."""

    def __init__(self, wrapper: ReleaseStyle):
        self.wrapper, self.num_classes = wrapper, 10

    def __call__(self, batch):
        return F.softmax(self.wrapper.refinery(batch.images), dim=1).detach()


def epoch_seconds(student, labels, ds, sampler, epoch, optimizer, lr_at, jitter=None) -> float:
    batches = ds.train.iter_batches(128, epoch=epoch, crops=sampler, order_seed=0, drop_last=True)
    start = time.perf_counter()
    train_one_epoch(student, labels, batches, optimizer, lr_at, Step(transform=jitter, channels_last=True))
    return time.perf_counter() - start


def pure_inference_rate(model, ds, sampler, batch_size: int) -> float:
    batches = [b.images.contiguous(memory_format=torch.channels_last) for b in ds.train.iter_batches(batch_size, epoch=0, crops=sampler)]
    with torch.inference_mode():
        model(batches[0])
        start = time.perf_counter()
        for x in batches:
            model(x)
    return len(ds.train) / (time.perf_counter() - start)


def run(refinery_name: str, ds, args) -> list[str]:
    sampler = CropSampler(seed=0, scale=(0.25, 1.0))
    torch.manual_seed(0)
    refinery = create_model(refinery_name, 1, 10).eval().to(memory_format=torch.channels_last)
    cfg = OptimConfig(lr=0.01, epochs=args.repeats + 1)
    steps = ds.train.num_batches(128, drop_last=True)
    rows, results = [], {}
    provenance = {"dataset_fingerprint": ds.fingerprint(), "image_size": 28}
    with tempfile.TemporaryDirectory() as tmp:
        spec = BakeSpec(num_classes=10, epochs=args.repeats + 1, top_k=5, batch_size=args.bake_batch, provenance=provenance)
        bake(refinery, ds.train, f"{tmp}/store", spec, sampler=sampler, log=lambda _: None)
        stored = StoredLabels(f"{tmp}/store")
        nbytes = stored.indices.nbytes + stored.probs.nbytes
        per_crop = nbytes / (stored.indices.shape[0] * stored.indices.shape[1])
        # bake one epoch vs pure inference on the same crops, alternately, several times
        bake_rates, infer_rates = [], []
        for r in range(3):
            t0 = time.perf_counter()
            bake(refinery, ds.train, f"{tmp}/timed{r}", replace(spec, epochs=1), sampler=sampler, log=lambda _: None)
            bake_rates.append(len(ds.train) / (time.perf_counter() - t0))
            infer_rates.append(pure_inference_rate(refinery, ds, sampler, args.bake_batch))
        bake_rate, infer_rate = statistics.median(bake_rates), statistics.median(infer_rates)
        # interleave the modes over epochs so drift in machine load hits them alike
        modes = ["ground truth", "live refinery", "2018 release way", "label store", "live refinery + jitter"]
        times = {m: [] for m in modes}
        students = {}
        for m in modes:
            torch.manual_seed(1)
            student = create_model("cnn-small", 1, 10).to(memory_format=torch.channels_last)
            if m == "2018 release way":
                wrapper = ReleaseStyle(student, copy.deepcopy(refinery))
                wrapper.train()
                labels = ReleaseLabels(wrapper)
            else:
                labels = {"ground truth": GroundTruth(10), "label store": stored}.get(m) or LiveRefinery(refinery)
            jitter = Jitter(JitterConfig(enabled=True), labels, ds.mean, ds.std) if m.endswith("jitter") else None
            students[m] = (student, labels, make_optimizer(student, cfg), jitter)
        lr_at = lr_schedule(cfg, steps)
        for epoch in range(args.repeats + 1):
            for m in modes:
                student, labels, opt, jitter = students[m]
                seconds = epoch_seconds(student, labels, ds, sampler, epoch, opt, lr_at, jitter)
                if epoch > 0:  # the first epoch warms up
                    times[m].append(seconds)
        gt = statistics.median(times["ground truth"])
        for m in modes:
            med = statistics.median(times[m])
            results[m] = med
            rows.append(f"| {refinery_name} -> cnn-small | {m} | {med:.2f} | {med / gt:.3f} |")
        rows.append(f"| {refinery_name} -> cnn-small | bake ({bake_rate:,.0f} img/s) vs pure inference ({infer_rate:,.0f} img/s) | | {bake_rate / infer_rate:.3f} |")
        rows.append(f"| {refinery_name} -> cnn-small | bytes per crop (top-5, fp16) | | {per_crop:.1f} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", type=int, default=12000, help="training images (Fashion-MNIST)")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per mode (after one warm-up epoch)")
    p.add_argument("--bake-batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--refineries", nargs="+", default=["cnn-small", "resnet-cifar"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist", train_subset=args.subset)
    print(f"torch {torch.__version__}, {args.threads} threads, Fashion-MNIST {len(ds.train)} training images, batch 128, "
          f"median of {args.repeats} epochs")
    print("| refinery -> student | label source | epoch s | ratio to ground truth |")
    print("|---|---|---:|---:|")
    for name in args.refineries:
        for row in run(name, ds, args):
            print(row, flush=True)


if __name__ == "__main__":
    main()
