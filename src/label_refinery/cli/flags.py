"""The flags of ``train``, ``chain`` and ``bake``: one row per config key, grouped by config section
in ``--help`` with the key and its default. Flags override a ``--config`` file, which overrides the
defaults (``config.py``)."""

from __future__ import annotations

import argparse

# (flags, dotted config key, argparse options); one row a line, so the table reads as a table
# fmt: off
TRAIN_FLAGS = [
    (["--dataset"], "data.dataset", dict(help="fashion-mnist, fashion-scenes, fashion-pairs (100 classes), digits, imagefolder:ROOT, manifest:FILE.csv, hf:PATH_OR_NAME or wds:INDEX.json (docs/data.md)")),
    (["--data-dir"], "data.data_dir", dict(help="folder to look for dataset files first")),
    (["--image-size"], "data.image_size", dict(type=int, help="side of crops and evaluation views, pixels")),
    (["--train-subset"], "data.train_subset", dict(type=int, help="train on a fixed subset of this many images")),
    (["--subset-seed"], "data.subset_seed", dict(type=int, help="which subset --train-subset takes (0: the one earlier runs used)")),
    (["--stratify"], "data.stratify", dict(action="store_true", help="the subset holds the same number of images of every class")),
    (["--val-split"], "data.val_split", dict(type=int, help="hold out this many training images as a validation split (val top-1 beside test top-1)")),
    (["--label-noise"], "data.label_noise", dict(type=float, metavar="RATE", help="flip this share of the training labels to another class (seeded, saved as label-noise.csv)")),
    (["--label-overrides"], "data.label_overrides", dict(metavar="CSV", help="replace training labels from a CSV of index,label rows (label-refinery relabel); the dataset is never modified")),
    (["--crop-scale"], "data.crop_scale", dict(type=float, nargs=2, metavar=("LOW", "HIGH"), help="crop area as a fraction of the image's")),
    (["--crop-ratio"], "data.crop_ratio", dict(type=float, nargs=2, metavar=("LOW", "HIGH"), help="crop aspect ratio, width / height")),
    (["--no-flip"], "data.flip", dict(action="store_false", help="no horizontal flips")),
    (["--workers"], "data.workers", dict(type=int, help="loader processes for image folders")),
    (["--crops-per-image"], "data.crops_per_image", dict(type=int, metavar="K", help="K training crops from each image read, side by side in a batch (fewer decodes per step; a batch holds batch-size / K images)")),
    (["--model"], "model", dict(help="cnn-small, resnet-cifar[:depth=20,width=16]; the paper's alexnet, mobilenet[-0.75|-0.5|-0.25], "
                                          "resnet18|34|50, xnor-resnet50, vgg16|19, darknet19 (add :small=true for 28-64 px "
                                          "inputs); timm:NAME, torchvision:NAME")),
    (["--pretrained"], "pretrained", dict(help="'hub' or a local weights file (timm/torchvision models)")),
    (["--refinery"], "refinery.path", dict(action="append", metavar="CKPT", help="checkpoint (generation folder or model.safetensors) that labels the crops, "
                                          "or a library's model: timm:NAME, torchvision:NAME, hf-hub:ORG/NAME (its pretrained weights, its own input size and "
                                          "normalisation); repeat for an ensemble averaged in probability (--refinery A --refinery B)")),
    (["--refinery-weights"], "refinery.weights", dict(metavar="FILE", help="weights of a timm:/torchvision: refinery trained elsewhere (.safetensors, or a .pth of tensors only), or a torchvision weights name (IMAGENET1K_V1)")),
    (["--refinery-classes"], "refinery.classes", dict(metavar="FILE", help="dataset class of each refinery output: a line per output in its order ('-': none), or JSON "
                                          "{class: index or [indices]}; default: by WNID or class name, else output i = class i")),
    (["--seed"], "seed", dict(type=int, help="init, batch order and crops (a chain adds generation - 1); "
                                          "default: 0 on ground truth, the refinery's seed + 1 with --refinery")),
    (["--device"], "device", dict(help="auto, cpu, cuda, cuda:N")),
    (["--log"], "log", dict(action="append", choices=["tensorboard", "wandb", "mlflow"], help="also send each epoch's metrics to a tracker (rank 0; repeatable): "
                                          "tensorboard (FOLDER/tensorboard), wandb (offline unless WANDB_MODE), mlflow (FOLDER/mlruns unless MLFLOW_TRACKING_URI)")),
    (["--no-channels-last"], "channels_last", dict(action="store_false", help="keep NCHW memory format")),
    (["--amp"], "amp", dict(choices=["off", "bf16", "fp16", "auto"], help="mixed precision of forward passes (fp16: CUDA, with a grad scaler; auto: bf16 on CUDA, off on CPU)")),
    (["--compile"], "compile", dict(action="store_true", help="torch.compile the student's training forward")),
    (["--eval-every"], "eval_every", dict(type=int, metavar="EPOCHS", help="evaluate test (and val) every EPOCHS epochs; the last epoch always")),
    (["--save-every"], "save_every", dict(type=int, metavar="STEPS", help="also checkpoint every STEPS steps inside an epoch (0: epoch ends)")),
    (["--epochs"], "optim.epochs", dict(type=int, help="epochs per generation")),
    (["--batch-size"], "optim.batch_size", dict(type=int, help="images per step")),
    (["--lr"], "optim.lr", dict(type=float, help="peak learning rate")),
    (["--momentum"], "optim.momentum", dict(type=float)),
    (["--no-nesterov"], "optim.nesterov", dict(action="store_false")),
    (["--weight-decay"], "optim.weight_decay", dict(type=float)),
    (["--schedule"], "optim.schedule", dict(choices=["cosine", "step", "constant"])),
    (["--milestones"], "optim.milestones", dict(type=int, nargs="+", help="epochs where step decay multiplies lr by gamma")),
    (["--gamma"], "optim.gamma", dict(type=float)),
    (["--warmup-epochs"], "optim.warmup_epochs", dict(type=float)),
    (["--temperature"], "loss.temperature", dict(type=float, help="softmax temperature T (the paper: 1)")),
    (["--refinery-temperature"], "refinery.temperature", dict(type=float, help="temperature of the refinery's softmax alone; < 1 sharpens the refined labels (not in the paper)")),
    (["--gt-weight"], "loss.gt_weight", dict(type=float, help="weight of ground-truth CE mixed in (the paper: 0)")),
    (["--label-smoothing"], "loss.label_smoothing", dict(type=float, help="for ground-truth generations")),
    (["--cross-fit"], "refinery.cross_fit", dict(action="store_true", help="the --refinery checkpoints are K fold models: each image labelled by the one that never trained on it")),
    (["--refinery-bn-train"], "refinery.bn_train", dict(action="store_true", help="the 2018 release's refinery BatchNorm in train mode")),
    (["--labels"], "labels.store", dict(metavar="STORE|static", help="train from a baked label store, or 'static': one refined label per image")),
    (["--label-source"], "labels.source", dict(choices=["live", "store", "static"], help="refined labels from a refinery forward per step (live), a store baked first (store), or one label per image (static)")),
    (["--top-k"], "store.top_k", dict(type=int, help="classes kept per crop in a label store")),
    (["--store-dtype"], "store.dtype", dict(choices=["fp16", "uint8"], help="probabilities in a label store")),
    (["--mix"], "mix.kind", dict(choices=["off", "mixup", "cutmix"], help="mix each batch with its reverse; labelled after mixing")),
    (["--mix-alpha"], "mix.alpha", dict(type=float, help="mixing ratio ~ Beta(alpha, alpha)")),
    (["--jitter"], "jitter.enabled", dict(action="store_true", help="adversarial jittering of part of each batch (needs a live refinery)")),
    (["--jitter-eps"], "jitter.eps", dict(help="L-inf radius in pixel units, e.g. 2/255")),
    (["--jitter-fraction"], "jitter.fraction", dict(type=float, help="share of each batch jittered")),
    (["--jitter-steps"], "jitter.steps", dict(type=int, help="1: one sign step; more: projected steps")),
    (["--jitter-step-size"], "jitter.step_size", dict(help="per step, pixel units (default: eps, or 2.5 eps / steps)")),
    (["--jitter-grad"], "jitter.grad", dict(choices=["student", "refinery"], help="whose input gradient makes the step")),
    (["--no-jitter-relabel"], "jitter.relabel", dict(action="store_false", help="keep the clean crop's refined label for the jittered crop")),
]
BAKE_KEYS = {"refinery.path", "refinery.weights", "refinery.classes", "seed", "device", "channels_last", "optim.epochs", "loss.temperature", "refinery.temperature", "store.top_k", "store.dtype"}
CHAIN_FLAGS = [
    (["--generations"], "chain.generations", dict(type=int, help="number of generations")),
    (["--refined-epochs"], "chain.refined_epochs", dict(type=int, help="epochs of the refined generations (default: --epochs, as generation 1)")),
    (["--models"], "chain.models", dict(nargs="+", metavar="MODEL", help="one architecture per generation, e.g. --models resnet-cifar cnn-small cnn-small")),
]
# fmt: on


GROUPS = {
    "chain": "chain",
    "data": "data and crops",
    "optim": "optimisation",
    "refinery": "refinery (the model that labels the crops)",
    "labels": "where labels come from",
    "loss": "loss",
    "store": "label store encoding",
    "jitter": "adversarial jittering",
    "mix": "mixing (function matching)",
    "": "model and run",
}


def _default_of(key: str):
    from ..config import Config

    node = Config()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def add_flags(parser: argparse.ArgumentParser, table) -> None:
    """Flags grouped by config section; help shows the config key and its default."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flags, key, opts in table:
        section = key.split(".")[0] if "." in key else ""
        group = groups.setdefault(section, parser.add_argument_group(GROUPS[section]))
        opts = dict(opts)
        if opts.get("action") not in ("store_true", "store_false"):
            opts.setdefault("metavar", flags[0][2:].upper().replace("-", "_"))
        default = _default_of(key)
        shown = (
            " ".join(map(str, default))
            if isinstance(default, tuple)
            else f"{default:.4g}"
            if isinstance(default, float)
            else default
        )
        opts["help"] = (opts.get("help", "") + f" [{key}; default: {shown if shown != '' else 'none'}]").strip()
        group.add_argument(*flags, dest=key, default=argparse.SUPPRESS, **opts)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
