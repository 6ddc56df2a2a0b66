"""The ``label-refinery`` command: each subcommand parses flags, builds a config, calls one function.

label-refinery chain --dataset fashion-mnist --model cnn-small --generations 2 --epochs 10
label-refinery train --dataset digits --epochs 5 --out runs/gen1
label-refinery train --dataset digits --epochs 5 --refinery runs/gen1 --out runs/gen2
label-refinery bake --refinery runs/gen1 --seed 1 --epochs 5 --out runs/store
label-refinery evaluate runs/gen2
python -m label_refinery --help
torchrun --nproc_per_node=2 -m label_refinery chain --device cpu ...   # train, chain and bake, several processes
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence

from ..errors import UserError, brief
from .datacmd import add_index, cmd_index
from .examples import EXAMPLES
from .flags import BAKE_KEYS, CHAIN_FLAGS, TRAIN_FLAGS, add_flags
from .flags import positive_int as _positive_int
from .runtime import add_runtime, apply_runtime, cmd_report
from .studycmd import cmd_experiment


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config; flags override it")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.gamma=0.2",
    )
    parser.add_argument("--out", help="run folder (default: runs/<command>-<dataset>-<model>); re-run the same command to resume it")
    parser.add_argument("--force", action="store_true", help="write into an --out that is not empty and holds no label-refinery run (its files of the same names are replaced)")


# fmt: off
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="label-refinery",
        description="Train image classifiers with the Label Refinery (Bagherinezhad et al. 2018): generation 1 learns "
        "the ground truth; each next generation learns, from scratch, the refinery's softmax on the very same crop.",
        epilog="Run 'label-refinery COMMAND --help' for a command's flags and examples.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter
    chain = sub.add_parser("chain", help="run generations 1..N, each refined by the one before", epilog=EXAMPLES["chain"], formatter_class=fmt)
    _add_common(chain)
    add_flags(chain, CHAIN_FLAGS + TRAIN_FLAGS)
    train = sub.add_parser("train", help="train one generation (ground truth, or --refinery CKPT)", epilog=EXAMPLES["train"], formatter_class=fmt)
    _add_common(train)
    add_flags(train, TRAIN_FLAGS)
    _add_bake_and_evaluate(sub, fmt)
    _add_label_tools(sub, fmt)
    add_index(sub, fmt)
    chain.add_argument("--report", action="store_true", help="at the end, run `analyze` and `report` on the chain")
    add_runtime(sub)
    return parser


def _add_bake_and_evaluate(sub, fmt) -> None:
    """bake and evaluate: a label store for a run, top-1 of a checkpoint."""
    bake = sub.add_parser("bake", help="label every training crop with a refinery into a label store", epilog=EXAMPLES["bake"], formatter_class=fmt)
    bake.add_argument("--config", help="YAML config; flags override it")
    bake.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    bake.add_argument("--out", required=True, help="store folder (re-run the same command to resume a bake)")
    bake.add_argument("--force", action="store_true", help="bake into an --out that is not empty and holds no label store (its files of the same names are replaced)")
    bake.add_argument("--static", action="store_true", help="one label per image (its evaluation view) instead of per crop; --epochs is then ignored")
    bake.add_argument("--estimate", action="store_true", help="print the store's size and stop")
    bake.add_argument("--batch-size", type=_positive_int, default=512, dest="bake_batch_size", help="images per refinery forward [default: 512]")
    bake.add_argument("--bf16", action="store_true", help="refinery in bfloat16 autocast (faster on GPUs; top-k may change slightly)")
    add_flags(bake, [f for f in TRAIN_FLAGS if f[1] in BAKE_KEYS or f[1].startswith("data.")])
    ev = sub.add_parser("evaluate", help="top-1/top-5 of a checkpoint", epilog=EXAMPLES["evaluate"], formatter_class=fmt)
    ev.add_argument("checkpoint", help="generation folder or model.safetensors")
    ev.add_argument("--split", choices=["test", "train", "val", "both"], default="test",
                    help="val: the checkpoint's held-out validation images (data.val_split); both: train and test")
    ev.add_argument("--dataset", help="default: the checkpoint's dataset")
    ev.add_argument("--data-dir")
    ev.add_argument("--batch-size", type=_positive_int, default=512)


def _add_label_tools(sub, fmt) -> None:
    """analyze, audit, export, report: they read a finished run folder."""
    an = sub.add_parser("analyze", help="label statistics per generation (analysis.json)", epilog=EXAMPLES["analyze"], formatter_class=fmt)
    an.add_argument("run", help="chain folder (gen1/, gen2/, ...) or one generation's folder")
    an.add_argument("--images", type=_positive_int, default=2000, help="training images, a fixed seeded choice [default: 2000]")
    an.add_argument("--crops", type=_positive_int, default=4, help="fixed random crops per image [default: 4]")
    au = sub.add_parser("audit", help="rank training images whose labels look wrong, ambiguous or incomplete", epilog=EXAMPLES["audit"], formatter_class=fmt)
    au.add_argument("run", help="chain folder or one generation's folder")
    au.add_argument("--out", help="output folder: audit.csv, audit.html, probs.npy, audit-summary.json [default: RUN/audit]")
    au.add_argument("--force", action="store_true", help="write into an --out that is not empty and holds no audit or run")
    au.add_argument("--crops", type=_positive_int, default=4, help="fixed random crops per image [default: 4]")
    au.add_argument("--html-rows", type=_positive_int, default=100, help="images shown in audit.html [default: 100]")
    au.add_argument("--folds", type=int, default=0, help="held-out scores: train K fold chains (each without one fold of the images) with the run's generation-1 config; costs K trainings on (K-1)/K of the data; 0: the chain's own generations, in-sample [default: 0]")
    au.add_argument("--fold-generations", type=_positive_int, default=1, help="generations per fold chain (2: add a refined one, still held out) [default: 1]")
    au.add_argument("--fold-seeds", type=_positive_int, default=1, help="train each fold chain with S seeds and average their probabilities (an ensemble, still held out); costs S times the folds' trainings [default: 1]")
    au.add_argument("--fold-epochs", type=_positive_int, help="epochs of each fold training, in folders of their own; the schedule decides how good the held-out models are (Fashion-MNIST, 6,000 images: 30 beat the 10-epoch default by +0.02 to +0.05 precision at k, docs/analysis.md); costs E over the run's epochs [default: the run's generation 1]")
    au.add_argument("--rank", choices=["log_margin", "self_confidence", "normalized_margin", "aum"], default="log_margin",
                    help="order of audit.csv, lowest first; log_margin: log p(given) - log p(strongest other class), good for uniform flips and for flips between look-alike classes; aum: generation 1's area under the margin, recorded while it trained [default: log_margin]")
    rl = sub.add_parser("relabel", help="write a label-override file from an audit (--top N) or its reviewed CSV (--reviewed)", epilog=EXAMPLES["relabel"], formatter_class=fmt)
    rl.add_argument("source", help="audit.csv (with --top) or the reviewed CSV that audit.html downloads (with --reviewed)")
    rl.add_argument("--top", type=_positive_int, help="the first N flagged rows of audit.csv whose suggestion differs from the given label")
    rl.add_argument("--reviewed", action="store_true", help="what a reviewer decided: audit.html's CSV, a FiftyOne samples.json, Label Studio's JSON or CSV export")
    rl.add_argument("--flags", nargs="+", default=["wrong"], choices=["wrong", "ambiguous", "incomplete", "uncertain"], help="which flags --top takes [default: wrong]")
    rl.add_argument("--out", required=True, help="the override file to write (then: train/chain --label-overrides FILE)")
    rl.add_argument("--force", action="store_true", help="replace --out if it exists (it may hold fixes edited by hand)")
    ex = sub.add_parser("export", help="refined labels per training image (csv, npz, parquet, hf), a label store as a table, or an audit for review (fiftyone, label-studio)", epilog=EXAMPLES["export"], formatter_class=fmt)
    ex.add_argument("run", help="chain folder, one generation's folder, or a label store (then parquet or hf)")
    ex.add_argument("--format", choices=["csv", "npz", "parquet", "hf", "fiftyone", "label-studio"], default=None, dest="fmt",
                    help="csv/parquet: top-k per image; npz: also the full [N, C] matrix; hf: a Hugging Face dataset folder; fiftyone/label-studio: "
                         "the run's audit as a review folder [default: csv; a store: parquet]")
    ex.add_argument("--audit", help="fiftyone/label-studio: the audit folder [default: RUN/audit]")
    ex.add_argument("--top", type=_positive_int, help="fiftyone/label-studio: the first N rows of the audit [default: all (fiftyone), the flagged ones (label-studio)]")
    ex.add_argument("--image-root", default="/", help="label-studio: its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; image URLs are relative to it [default: /]")
    ex.add_argument("--generation", type=_positive_int, help="whose labels [default: the last]")
    ex.add_argument("--top-k", type=_positive_int, default=5, help="classes per image [default: 5]")
    ex.add_argument("--out", help="output file [default: RUN/refined-labels.FORMAT]")
    ex.add_argument("--force", action="store_true", help="replace --out if it exists")
    rep = sub.add_parser("report", help="markdown + HTML report with plots, from the run folder's files", epilog=EXAMPLES["report"], formatter_class=fmt)
    rep.add_argument("run", help="chain folder or one generation's folder")
    rep.add_argument("--no-analyze", action="store_true", help="do not analyse generations that lack analysis.json (their columns stay empty)")
    vf = sub.add_parser("verify", help="check checkpoints and label stores against their digests, every byte", epilog=EXAMPLES["verify"], formatter_class=fmt)
    vf.add_argument("paths", nargs="+", metavar="PATH", help="run, generation or label-store folders, or checkpoint files")
    xp = sub.add_parser("experiment", help="a grid of chains over seeds: mean ± std tables", epilog=EXAMPLES["experiment"], formatter_class=fmt)
    xp.add_argument("file", help="experiment YAML (base config, arms, seeds)")
    xp.add_argument("--out", help="results folder [default: the file's `out`]")
    xp.add_argument("--seeds", type=int, nargs="+", help="run these seeds only [default: the file's]")
    xp.add_argument("--arms", nargs="+", help="run these arms only, in the file's order: names or quoted patterns ('strong-*') [default: all]")
    xp.add_argument("--table", action="store_true", help="only rebuild results.md/json from the finished runs")
# fmt: on


def _overrides(args: argparse.Namespace) -> dict:
    keys = {key for _, key, _ in TRAIN_FLAGS + CHAIN_FLAGS}
    out = {k: v for k, v in vars(args).items() if k in keys}
    if out.get("labels.store") == "static":  # --labels static
        if out.get("labels.source", "static") != "static":
            raise UserError(f"--labels static contradicts --label-source {out['labels.source']}")
        out["labels.source"] = "static"
        del out["labels.store"]
    elif out.get("labels.store"):
        out.setdefault("labels.source", "store")
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--set takes KEY=VALUE, got {brief(item)}")
        out[key.strip()] = value.strip()
    return out


def _default_out(command: str, cfg) -> str:
    name = f"{command}-{cfg.data.dataset.split(':')[0]}-{cfg.model}"
    return "runs/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()  # under torchrun only rank 0 shows bars (train_generation)


def _log(args):
    """Lines that do not break the progress bars when they are shown."""
    if _progress(args):
        from tqdm.auto import tqdm

        return tqdm.write
    return print


def cmd_chain(args) -> None:
    from .. import distributed
    from ..config import load_config
    from ..training.chain import run_chain

    cfg = load_config(args.config, _overrides(args))
    distributed.setup(cfg.device)  # torchrun: join the process group (a no-op in one process)
    out = args.out or _default_out("chain", cfg)
    run_chain(cfg, out, progress=_progress(args), log=_log(args), force=args.force)
    if distributed.is_main():
        print(f"table saved to {out}/summary.md")
        if args.report:  # label tools run after training, in this process only
            from ..tools.analyze import analyze_run
            from ..tools.reports import report_run
            from ..training.setup import resolve_device

            analyze_run(out, device=str(resolve_device(cfg.device)), log=_log(args))
            print(f"report saved to {report_run(out)}")


def cmd_train(args) -> None:
    from .. import distributed
    from ..config import load_config
    from ..training.generation import train_generation

    cfg = load_config(args.config, _overrides(args))
    distributed.setup(cfg.device)  # torchrun: join the process group (a no-op in one process)
    out = args.out or _default_out("train", cfg)
    train_generation(cfg, out, progress=_progress(args), log=_log(args), force=args.force)


def cmd_bake(args) -> None:
    from .. import distributed
    from ..config import load_config
    from ..labels.store import bytes_per_crop, estimate_bytes
    from ..training.build import bake_labels, bake_spec, load_refinery
    from ..training.setup import crop_sampler, load_data, resolve_device, resolve_seed

    cfg = resolve_seed(load_config(args.config, _overrides(args)))  # the seed a default `train --refinery` uses
    if cfg.refinery.path is None:
        raise UserError("bake needs --refinery CKPT: the model whose labels are stored")
    distributed.setup(cfg.device)  # torchrun: every process labels its share of the batches
    say = print if distributed.is_main() else (lambda *_: None)
    ds = load_data(cfg)
    sampler = None if args.static else crop_sampler(cfg)  # static: one label per image
    spec = bake_spec(cfg, ds, sampler, batch_size=args.bake_batch_size, bf16=args.bf16)
    size = estimate_bytes(spec.epochs, len(ds.train), ds.num_classes, spec.top_k, spec.prob_dtype)
    per_crop = bytes_per_crop(ds.num_classes, spec.top_k, spec.prob_dtype)
    say(
        f"label store: {spec.epochs} epoch(s) x {len(ds.train)} images x top-{spec.top_k} = {size / 2**20:.1f} MiB ({per_crop} bytes per crop)"
    )
    if args.estimate:
        return
    device, fingerprint = resolve_device(cfg.device), ds.fingerprint()
    refinery = load_refinery(cfg, ds, device, fingerprint, say)
    manifest = bake_labels(
        ds,
        refinery,
        args.out,
        spec,
        sampler=sampler,
        device=device,
        fingerprint=fingerprint,
        progress=_progress(args) and distributed.is_main(),
        log=say,
        force=args.force,
    )
    if manifest.get("bake_images_per_s"):
        say(f"baked at {manifest['bake_images_per_s']:.0f} img/s")


def cmd_evaluate(args) -> None:
    from ..checkpoint import load_checkpoint
    from ..training.engine import evaluate
    from ..training.setup import checkpoint_data, resolve_device

    ckpt = load_checkpoint(args.checkpoint)
    ds = checkpoint_data(ckpt, args.dataset, args.data_dir)
    device = resolve_device(args.device or "auto")
    model = ckpt.build_model(device)
    splits = ["train", "test"] if args.split == "both" else [args.split]
    for name in splits:
        split = getattr(ds, name)
        if split is None:
            raise UserError(f"{args.checkpoint} was trained without a validation split (data.val_split)")
        batches = split.iter_batches(args.batch_size, device=device)
        m = evaluate(model, batches, total=split.num_batches(args.batch_size), progress=_progress(args))
        print(f"{name}: top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  loss {m['loss']:.4f}  ({m['images']} images)")


def cmd_analyze(args) -> None:
    from ..tools.analyze import analyze_run
    from ..training.setup import resolve_device

    analyze_run(args.run, images=args.images, crops_per_image=args.crops, device=str(resolve_device(args.device or "auto")),
                progress=_progress(args))  # fmt: skip
    print(f"analysis saved: {args.run}/gen*/analysis.json")


def cmd_audit(args) -> None:
    from ..tools.audit import AuditSpec, audit_run
    from ..training.setup import resolve_device

    spec = AuditSpec(
        folds=args.folds,
        fold_generations=args.fold_generations,
        fold_seeds=args.fold_seeds,
        fold_epochs=args.fold_epochs,
        rank=args.rank,
        crops_per_image=args.crops,
        html_rows=args.html_rows,
    )
    audit_run(args.run, spec, out=args.out, device=str(resolve_device(args.device or "auto")), progress=_progress(args), force=args.force)


def cmd_relabel(args) -> None:
    from ..tools.relabel import relabel

    n = relabel(args.source, args.out, top=args.top, reviewed=args.reviewed, flags=tuple(args.flags), force=args.force)
    print(f"{n} label(s) to change -> {args.out}; train on them with: label-refinery chain --label-overrides {args.out} ...")
    if args.top is not None:
        print("  unreviewed: some of these suggestions replace correct labels (relabel --help); reviewing them first paid more")


def cmd_export(args) -> None:
    from ..tools.export import export_run
    from ..training.setup import resolve_device

    if args.fmt in ("fiftyone", "label-studio"):
        from ..tools.handoff import export_audit

        out = args.out or f"{args.run.rstrip('/')}/review-{args.fmt}"
        n = export_audit(args.run, out, fmt=args.fmt, audit=args.audit, top=args.top, image_root=args.image_root, force=args.force)
        print(f"{n} images for review -> {out}; decisions come back with: label-refinery relabel "
              f"{out}/{'samples.json' if args.fmt == 'fiftyone' else 'tasks.json'} (exported again after review) --reviewed --out fixes.csv")
        return
    store = os.path.isfile(os.path.join(args.run, "probs.npy"))
    args.fmt = args.fmt or ("parquet" if store else "csv")
    name = "refined-labels" + ("-hf" if args.fmt == "hf" else f".{args.fmt}")
    out = args.out or (f"{args.run.rstrip('/')}-{name}" if store else f"{args.run}/{name}")
    export_run(
        args.run,
        out,
        fmt=args.fmt,
        generation=args.generation,
        top_k=args.top_k,
        device=str(resolve_device(args.device or "auto")),
        progress=_progress(args),
        force=args.force,
    )
    print(f"refined labels saved to {out}")


def cmd_verify(args) -> None:
    from ..tools.verify import verify_paths

    print(f"{verify_paths(args.paths)} artefact(s) checked, none failed")


COMMANDS = {
    "chain": cmd_chain,
    "train": cmd_train,
    "bake": cmd_bake,
    "evaluate": cmd_evaluate,
    "analyze": cmd_analyze,
    "audit": cmd_audit,
    "relabel": cmd_relabel,
    "export": cmd_export,
    "report": cmd_report,
    "verify": cmd_verify,
    "experiment": cmd_experiment,
    "index": cmd_index,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .. import distributed

    try:
        if distributed.launched():  # torchrun with several processes
            if args.command not in ("train", "chain", "bake"):
                raise UserError(f"`{args.command}` runs in one process: start it without torchrun")
        apply_runtime(args)
        COMMANDS[args.command](args)
        # all processes leave together: gloo aborts a process ("terminate called without an active
        # exception") when its peer tears the group down first, which busy cores made likely
        distributed.barrier()
    except UserError as err:
        print(f"error{_rank_tag()}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
    return 0


def _rank_tag() -> str:
    rank = os.environ.get("RANK")
    return f" (rank {rank})" if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""


if __name__ == "__main__":
    sys.exit(main())
