"""Issue 16: a label-store bake by several processes (torchrun) against one, side by side.

    python bench/bake_processes.py                       # Fashion-MNIST 10,000 x 2 epochs, resnet-cifar refinery
    python bench/bake_processes.py --procs 1 2 --threads 2 1 --images 5000

Each arm runs this file under torchrun with ``N`` processes of ``T`` threads (``--procs`` and
``--threads`` pair up) and bakes the same store (random fixed weights: the speed of a forward pass
does not depend on them); the arms alternate for ``--repeats`` rounds, and the stores are compared
byte for byte. Prints wall seconds (process start excluded: timed inside the bake) and images/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(out: str, images: int, epochs: int, model: str) -> None:
    import torch

    from label_refinery import distributed
    from label_refinery.data import CropSampler, load_dataset
    from label_refinery.labels.bake import BakeSpec, bake
    from label_refinery.models import create_model

    distributed.setup("cpu")
    torch.manual_seed(0)
    net = create_model(model, 1, 10)
    ds = load_dataset("fashion-mnist", train_subset=images)
    distributed.barrier()
    t0 = time.perf_counter()
    bake(net, ds.train, out, BakeSpec(num_classes=10, epochs=epochs, batch_size=256), sampler=CropSampler(1, (0.25, 1.0)),
         shard=distributed.shard(), log=lambda _: None)  # fmt: skip
    distributed.barrier()
    if distributed.is_main():
        Path(out, "seconds.txt").write_text(str(time.perf_counter() - t0))
    distributed.teardown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="resnet-cifar")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="runs/bench-bake")
    ap.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker[0], a.images, a.epochs, a.model)
    seconds: dict[tuple[int, int], list[float]] = {}
    for r in range(a.repeats):
        for n, t in zip(a.procs, a.threads):
            out = Path(a.out) / f"p{n}t{t}-r{r}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            env = {**os.environ, "OMP_NUM_THREADS": str(t)}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", __file__,
                   "--worker", str(out), "--images", str(a.images), "--epochs", str(a.epochs), "--model", a.model]  # fmt: skip
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            seconds.setdefault((n, t), []).append(float((out / "seconds.txt").read_text()))
            print(f"round {r + 1}: {n} process(es) x {t} thread(s): {seconds[(n, t)][-1]:.1f} s", file=sys.stderr)
    outs = sorted(Path(a.out).glob("p*-r0"))
    same = all((o / "probs.npy").read_bytes() == (outs[0] / "probs.npy").read_bytes() for o in outs)
    print(f"python {' '.join(sys.argv)}\n\n{a.images} images x {a.epochs} epochs, {a.model}, batch 256, "
          f"median of {a.repeats} rounds; stores byte-identical: {same}\n")  # fmt: skip
    print("| processes x threads | seconds | img/s | speed-up |\n|---|---:|---:|---:|")
    base = statistics.median(next(iter(seconds.values())))
    for (n, t), v in seconds.items():
        m = statistics.median(v)
        print(f"| {n} x {t} | {m:.1f} | {a.images * a.epochs / m:,.0f} | {base / m:.2f} |")


if __name__ == "__main__":
    main()
