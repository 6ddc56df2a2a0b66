"""Training and inference throughput of the built-in models on CPU (or the default device).

    python bench/throughput.py                       # cnn-small and resnet-cifar at 28x28, 1 channel
    python bench/throughput.py --models cnn-small --size 28 --batch 128 --repeats 5 --threads 2
    python bench/throughput.py --formats channels_last --steps 5 --repeats 3 \
        --models alexnet:small=true mobilenet:small=true resnet18:small=true     # the paper's models, small inputs

Prints the median img/s over ``--repeats`` timed runs of ``--steps`` steps each (after warm-up), for
NCHW and channels_last. Training = forward + soft cross-entropy + backward + SGD step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from label_refinery.losses import soft_cross_entropy
from label_refinery.models import count_parameters, create_model


def _rate(fn, images: int, steps: int, repeats: int) -> float:
    for _ in range(2):
        fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        rates.append(images * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def measure(name: str, size: int, chans: int, batch: int, steps: int, repeats: int, channels_last: bool) -> dict:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name, chans, 10).to(memory_format=fmt)
    x = torch.randn(batch, chans, size, size).contiguous(memory_format=fmt)
    q = torch.softmax(torch.randn(batch, 10), 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step():
        loss = soft_cross_entropy(model(x), q)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.inference_mode():
            model(x)

    model.train()
    train = _rate(train_step, batch, steps, repeats)
    model.eval()
    infer = _rate(infer_step, batch, steps, repeats)
    return {"model": name, "params": count_parameters(model), "channels_last": channels_last, "train": train, "infer": infer}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cnn-small", "resnet-cifar"])
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--chans", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--formats", nargs="+", choices=["nchw", "channels_last"], default=["nchw", "channels_last"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, batch {a.batch}, {a.chans}x{a.size}x{a.size}")
    print("| model | params | memory format | train img/s | inference img/s |")
    print("|---|---:|---|---:|---:|")
    for name in a.models:
        for cl in [f == "channels_last" for f in a.formats]:
            r = measure(name, a.size, a.chans, a.batch, a.steps, a.repeats, cl)
            fmt = "channels_last" if cl else "NCHW"
            print(f"| {name} | {r['params']:,} | {fmt} | {r['train']:,.0f} | {r['infer']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
