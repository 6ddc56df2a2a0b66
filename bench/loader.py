"""Issue 16: is the image-folder loader the bottleneck? Training img/s from a folder against the same
images in memory, and our decode-bound loader against torchvision's reference.

    python bench/loader.py small        # 6,000 Fashion-MNIST PNGs at 28 px: folder vs memory, cnn-small
    python bench/loader.py jpeg         # 2,000 256-px JPEGs cut to 112-px crops: ours (K = 1, 4) vs torchvision
    python bench/loader.py jpeg --size 32   # the same JPEGs, 32-px crops: a model fast enough to wait for the loader
    python bench/loader.py small --sources  # issue 26: the folder against its manifest, shards and HF dataset
    python bench/loader.py jpeg --sources

``small``: the same PNGs decoded once into a uint8 tensor give the in-memory arm (same model, crops,
batch size, seed); the folder arm reads them with ``--workers`` loader processes. ``jpeg``: images
of Fashion-MNIST items upscaled to 256 px with a textured background (JPEG quality 90), read by
(a) torchvision ``ImageFolder`` + ``RandomResizedCrop(112)`` + ``DataLoader``, (b) our loader with one
crop per decoded image, (c) four crops per decoded image (``data.crops_per_image``); loader alone
(images/s delivered) and a ground-truth training epoch of ``cnn-small``. Arms alternate in
``--repeats`` rounds (side by side, in one run); the table gives medians and ratios. Folders are
built once under ``--root``.

``--sources`` (issue 26): the same folder as a CSV manifest, WebDataset shards (1,000 samples each,
``label-refinery index``) and a saved Hugging Face dataset (the files' bytes in Arrow), each read by
the same loader with the same crops; arms are the folder and each source, loader only and training.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from label_refinery.data import CropSampler, load_dataset
from label_refinery.data.memory import TensorSplit
from label_refinery.losses import soft_cross_entropy
from label_refinery.models import create_model


def make_folder(root: Path, kind: str, n: int) -> Path:
    """``root/{kind}`` in ImageNet layout from the first ``n`` Fashion-MNIST training images (and 500 val)."""
    out = root / kind
    if (out / ".done").is_file():
        return out
    fm = load_dataset("fashion-mnist")
    rng = np.random.default_rng(0)
    for split, images, targets in (("train", fm.train.images[:n], fm.train.targets[:n]),
                                   ("val", fm.test.images[:500], fm.test.targets[:500])):  # fmt: skip
        for i, (img, y) in enumerate(zip(images[:, 0].numpy(), targets.tolist())):
            d = out / split / fm.classes[y].replace("/", "-")
            d.mkdir(parents=True, exist_ok=True)
            if kind == "small":
                Image.fromarray(img).save(d / f"{i:06d}.png")
                continue
            big = np.asarray(Image.fromarray(img).resize((200, 200), Image.BICUBIC), dtype=np.float32)
            canvas = rng.normal(128, 30, (256, 256, 3)).clip(0, 255)
            canvas[28:228, 28:228] = np.maximum(canvas[28:228, 28:228] * 0.3, big[..., None])
            Image.fromarray(canvas.astype(np.uint8)).save(d / f"{i:06d}.jpg", quality=90)
    (out / ".done").touch()
    return out


def make_sources(root: Path, folder: Path) -> dict[str, str]:
    """The folder as a manifest, shards and a Hugging Face dataset beside it (built once)."""
    import datasets

    from label_refinery.cli import main as cli

    out = root / f"{folder.name}-sources"
    names = {"manifest": f"manifest:{out / 'images.csv'}", "wds": f"wds:{out / 'shards' / 'train.json'}",
             "hf": f"hf:{out / 'hf'}"}  # fmt: skip
    if (out / ".done").is_file():
        return names
    out.mkdir(parents=True, exist_ok=True)
    assert cli(["index", f"imagefolder:{folder}", "--manifest", str(out / "images.csv"), "--force"]) == 0
    assert cli(["index", f"imagefolder:{folder}", "--shards", str(out / "shards"), "--force", "--no-progress"]) == 0
    ds = load_dataset(f"imagefolder:{folder}")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=ds.classes)})
    tables = {name: datasets.Dataset.from_dict(
        {"image": [{"bytes": Path(split.path(i)).read_bytes(), "path": None} for i in range(len(split))],
         "label": split.targets.tolist()}, features=feats) for name, split in (("train", ds.train), ("test", ds.test))}  # fmt: skip
    datasets.DatasetDict(tables).save_to_disk(str(out / "hf"))
    (out / ".done").touch()
    return names


def in_memory(split) -> TensorSplit:
    """The folder split decoded once into uint8 [N, 3, H, W]: what 'the same images in memory' means here."""
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                          for p, _ in split.samples])  # fmt: skip
    return TensorSplit(images, split.targets, split.mean, split.std, split.size)


def epoch_rate(split, model, opt, batch: int, sampler, epoch: int, steps: int, train: bool, **kw) -> float:
    """Images per second over ``steps`` batches (after the loader's first batch), training or only loading."""
    it = iter(split.iter_batches(batch, epoch=epoch, crops=sampler, order_seed=0, drop_last=True, **kw))
    next(it)  # workers started, first batch decoded: not the steady state
    n, t0 = 0, time.perf_counter()
    for _, b in zip(range(steps), it):
        if train:
            loss = soft_cross_entropy(model(b.images), torch.nn.functional.one_hot(b.targets, 10).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        n += len(b.targets)
    del it
    return n / (time.perf_counter() - t0)


def torchvision_rate(root: Path, size: int, batch: int, workers: int, steps: int, model, opt, train: bool) -> float:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.RandomResizedCrop(size, scale=(0.25, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])  # fmt: skip
    loader = torch.utils.data.DataLoader(ImageFolder(root / "train", tf), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True)  # fmt: skip
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for _, (x, y) in zip(range(steps), it):
        if train:
            loss = soft_cross_entropy(model(x), torch.nn.functional.one_hot(y, 10).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        n += len(y)
    del it
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", choices=["small", "jpeg"])
    ap.add_argument("--root", default="runs/bench-loader")
    ap.add_argument("--images", type=int, help="training images [small: 6000, jpeg: 2000]")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, help="crop side [small: 28, jpeg: 112]")
    ap.add_argument("--steps", type=int, default=30, help="batches timed per arm and round")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sources", action="store_true", help="the folder against its manifest, shards and HF dataset")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n = a.images or (6000 if a.case == "small" else 2000)
    root = make_folder(Path(a.root), a.case, n)
    size = a.size or (28 if a.case == "small" else 112)
    ds = load_dataset(f"imagefolder:{root}", image_size=size, workers=a.workers)
    torch.manual_seed(0)
    model = create_model("cnn-small", 3, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sampler = CropSampler(0, (0.25, 1.0))
    arms: dict[str, callable] = {}
    if a.sources:
        splits = {"folder": ds.train}
        for name, spec in make_sources(Path(a.root), root).items():
            splits[name] = load_dataset(spec, image_size=size, workers=a.workers).train
        for train in (False, True):
            what = "train" if train else "loader only"
            for name, split in splits.items():
                arms[f"{name}, {what}"] = lambda e, s=split, t=train: epoch_rate(s, model, opt, a.batch, sampler, e, a.steps, t)
    elif a.case == "small":
        mem = in_memory(ds.train)
        arms["memory, train"] = lambda e: epoch_rate(mem, model, opt, a.batch, sampler, e, a.steps, True)
        arms["folder, train"] = lambda e: epoch_rate(ds.train, model, opt, a.batch, sampler, e, a.steps, True)
        arms["folder, loader only"] = lambda e: epoch_rate(ds.train, model, opt, a.batch, sampler, e, a.steps, False)
    else:
        for train in (False, True):
            what = "train" if train else "loader only"
            arms[f"torchvision, {what}"] = lambda e, t=train: torchvision_rate(root, size, a.batch, a.workers, a.steps, model, opt, t)
            arms[f"ours K=1, {what}"] = lambda e, t=train: epoch_rate(ds.train, model, opt, a.batch, sampler, e, a.steps, t)
            arms[f"ours K=4, {what}"] = lambda e, t=train: epoch_rate(ds.train, model, opt, a.batch, sampler, e, a.steps, t, crops_per_image=4)
    rates = {k: [] for k in arms}
    for r in range(a.repeats):
        for k, fn in arms.items():
            rates[k].append(fn(r))
            print(f"round {r + 1}: {k}: {rates[k][-1]:.0f} img/s", file=sys.stderr, flush=True)
    print(f"python {' '.join(sys.argv)}\n")
    print(f"{a.case}: {n} images, {size}-px crops, batch {a.batch}, {a.workers} workers, {a.threads} threads, "
          f"median of {a.repeats} rounds x {a.steps} batches\n")  # fmt: skip
    print("| arm | img/s | vs the first arm of its kind |\n|---|---:|---:|")
    for k, v in rates.items():
        first = next(f for f in rates if f.split(", ")[-1] == k.split(", ")[-1])  # loader only / train
        print(f"| {k} | {statistics.median(v):,.0f} | {statistics.median(v) / statistics.median(rates[first]):.2f} |")


if __name__ == "__main__":
    main()
