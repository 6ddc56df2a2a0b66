"""``label-refinery index``: check a dataset's images before training, write the sizes sidecar of
WebDataset shards, or turn an image folder into a manifest or shards."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from .flags import positive_int

EXAMPLE = """examples:
  label-refinery index wds:/data/imagenet-wds/imagenet-train.json    # sizes sidecar of every split (once)
  label-refinery index imagefolder:/data/imagenet --manifest /data/imagenet.csv     # path,label,width,height,split
  label-refinery index imagefolder:/data/imagenet --shards /data/imagenet-wds --shard-size 1000
  label-refinery index manifest:/data/imagenet.csv                   # read every header: find bad images now

  A WebDataset split needs its sidecar (INDEX.sizes.npz, the images' sizes, which crops are cut from)
  before it trains. Manifests and shards keep each image's position, class and file bytes, so a run
  on them cuts the same crops from the same pixels as a run on the folder. For a Hugging Face
  dataset use the library: datasets.load_dataset("imagefolder", data_dir=ROOT).save_to_disk(OUT)."""


def add_index(sub, fmt) -> None:
    ix = sub.add_parser("index", help="check a dataset, index WebDataset shards, or write a folder as a manifest or shards",
                        epilog=EXAMPLE, formatter_class=fmt)  # fmt: skip
    ix.add_argument("dataset", help="wds:INDEX.json, imagefolder:ROOT, manifest:FILE or hf:PATH")
    ix.add_argument("--manifest", help="write the dataset (images as files) as this .csv or .parquet manifest")
    ix.add_argument("--shards", help="write the dataset (images as files) as WebDataset shards into this folder")
    ix.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard [default: 1000]")
    ix.add_argument("--force", action="store_true", help="replace an existing --manifest, or write into a non-empty --shards folder")
    ix.add_argument("--no-progress", action="store_true", help="no progress bars")


def _bar(args, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=args.no_progress or not sys.stderr.isatty())


def _index_shards(args, index: Path) -> None:
    from ..data.shards import build_sidecar, read_index
    from ..data.sources import sibling_splits

    for split, path in sibling_splits(index).items():
        total = sum(n for _, n in read_index(path))
        with _bar(args, total, f"index {split}") as bar:
            out = build_sidecar(path, progress=bar.update)
        print(f"{split}: {total} samples -> {out}")


def cmd_index(args) -> None:
    from ..data import open_dataset

    prefix, _, arg = args.dataset.partition(":")
    if prefix == "wds" and not (args.manifest or args.shards):
        _index_shards(args, Path(arg).expanduser())
        return
    if args.manifest and args.shards:
        raise UserError("give --manifest or --shards, not both")
    ds = open_dataset(args.dataset)
    splits = {"train": ds.train, "test": ds.test, **({"val": ds.val} if ds.val is not None else {})}
    for name, split in splits.items():  # every header read now (and cached): a bad image is found before training
        split.image_sizes()
    sizes = ", ".join(f"{n} {len(s)}" for n, s in splits.items())
    print(f"{ds.name}: {len(ds.classes)} classes; {sizes} images; every header read; fingerprint {ds.fingerprint()[:16]}")
    if args.manifest:
        from ..data.convert import write_manifest
        from ..locks import claim_file

        with claim_file(args.manifest, force=args.force) as out:
            n = write_manifest(ds, out)
        print(f"{n} rows -> {args.manifest}; train on it with --dataset manifest:{args.manifest}")
    elif args.shards:
        from ..data.convert import write_shards

        out = Path(args.shards)
        if out.is_dir() and any(out.iterdir()) and not args.force:
            raise UserError(f"{out} is not empty: pass --force to write the shards into it, or name a new folder")
        total = sum(len(s) for s in splits.values())
        with _bar(args, total, "shards") as bar:
            indexes = write_shards(ds, out, args.shard_size, progress=bar.update)
        print(f"{total} samples -> {out}; train on them with --dataset wds:{indexes[0]}")


__all__ = ["add_index", "cmd_index"]
