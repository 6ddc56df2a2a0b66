"""Typed, frozen configuration: dataclasses loaded from YAML and/or overrides, validated.

One :class:`Config` describes a generation (``train``) or a chain (``chain``; its ``chain`` section
is ignored by ``train``). YAML mirrors the dataclasses::

    model: cnn-small
    seed: 0
    data:   {dataset: fashion-mnist, crop_scale: [0.25, 1.0]}
    optim:  {epochs: 10, batch_size: 128, lr: 0.05, schedule: cosine}
    refinery: {path: runs/g1, temperature: null, bn_train: false}
    labels: {source: live, store: null}
    loss:   {temperature: 1.0, gt_weight: 0.0, label_smoothing: 0.0}
    store:  {top_k: 5, dtype: fp16}
    chain:  {generations: 2}

Each section means one thing: ``refinery`` is the frozen model that labels the crops and how it is
run, ``labels`` where a generation's labels come from, ``loss`` how the student learns them,
``store`` how a bake encodes them. Overrides are dotted keys (``optim.lr=0.1``); the CLI's flags map
onto them. Unknown keys fail with the list of valid keys. Derived values (steps per epoch, the
device) are computed where they are used, never written back.

Keys of earlier versions (``labels.temperature``, ``labels.top_k``, a top-level ``refinery: PATH``,
...; :data:`LEGACY_KEYS`) are translated wherever a config is read, so run folders and label stores
made before keep resuming and keep being checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError, brief
from .files import atomic_write
from .typed import from_dict, merge, nest, read_based, to_dict, valid_keys

EXTERNAL = ("timm:", "torchvision:", "hf-hub:")  # a library's model as the refinery (labels/external.py)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"  # registry name: fashion-mnist | digits | imagefolder:PATH | manifest: | hf: | wds:
    data_dir: str | None = None  # where to look for dataset files first
    image_size: int | None = None  # side of crops and evaluation views, pixels (None: the dataset's own)
    train_subset: int | None = None  # train on a fixed, seeded subset of this many images
    subset_seed: int = 0  # which subset (0: the one every earlier run used)
    stratify: bool = False  # the subset holds train_subset // C images of every class (+1 for train_subset % C of them)
    val_split: int = 0  # hold out this many training images (seeded) as a validation split, evaluated every epoch
    label_noise: float = 0.0  # flip this share of the training labels to another class (seeded; experiments)
    label_noise_seed: int = 0  # which labels are flipped, and to what
    label_overrides: str | None = None  # CSV of index,label rows replacing training labels (label-refinery relabel)
    holdout_fold: tuple[int, int] | None = None  # (k, K): train without fold k of K (the audit's held-out models)
    crop_scale: tuple[float, float] = (0.25, 1.0)  # crop area / image area; the paper's ImageNet runs: 0.08-1
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop width / height
    flip: bool = True  # horizontal flip with probability 0.5
    workers: int = 0  # loader processes (image folders)
    crops_per_image: int = 1  # K training crops from each image read (FKD's trick; a batch holds batch_size / K images)


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 10
    batch_size: int = 128  # images per step, over all processes
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # L2 on all parameters
    schedule: str = "cosine"  # cosine | step | constant
    milestones: tuple[int, ...] = ()  # epochs after which lr is multiplied by gamma (schedule: step)
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0, in epochs


@dataclass(frozen=True)
class RefineryConfig:
    """The frozen model that labels the student's crops, and how its forward pass runs."""

    # checkpoint labelling this run (train), or generation 1 (chain); several: their probabilities averaged
    path: str | tuple[str, ...] | None = None
    # T of the refinery's softmax alone (the student's stays at loss.temperature): < 1 sharpens the
    # refined labels. Not in the paper; None: loss.temperature. See docs/results.md (noisy labels)
    temperature: float | None = None
    bn_train: bool = False  # the 2018 release's behaviour: refinery BatchNorm in train mode
    # path lists K fold models (data.holdout_fold k of K): each image labelled by the one that never
    # trained on it (labels/crossfit.py); otherwise several paths are an ensemble
    cross_fit: bool = False
    # a library model as the refinery (path timm:NAME, torchvision:NAME or hf-hub:ORG/NAME; labels/external.py):
    weights: str | None = None  # its weights file (.safetensors or a weights-only .pth) instead of the library's
    classes: str | None = None  # dataset class per refinery output (text, a line per output) or JSON {class: index}
    image_size: int | None = None  # its view size, mean, std, interpolation: None = the library's own
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None


@dataclass(frozen=True)
class LabelConfig:
    """Where a generation's labels come from."""

    # live: refinery forward per step | store: bake, then train from the store | static: one label per image
    source: str = "live"
    store: str | None = None  # an existing label store to train from (see `label-refinery bake`)


@dataclass(frozen=True)
class LossConfig:
    """How the student learns its labels: soft cross-entropy at T, plus alpha of ground truth."""

    temperature: float = 1.0  # T of refinery and student softmax; the paper: 1
    gt_weight: float = 0.0  # alpha: weight of the ground-truth cross-entropy; the paper: 0
    label_smoothing: float = 0.0  # generation 1 (ground truth) only


@dataclass(frozen=True)
class StoreConfig:
    """How a bake encodes refined labels in a label store."""

    top_k: int = 5  # classes kept per crop
    dtype: str = "fp16"  # probabilities: fp16 | uint8


@dataclass(frozen=True)
class MixConfig:
    """Mixing as function matching (Beyer et al. 2022): see mixing.py. Labelled after mixing."""

    kind: str = "off"  # off | mixup | cutmix
    alpha: float = 1.0  # mixing ratio ~ Beta(alpha, alpha)


@dataclass(frozen=True)
class JitterConfig:
    """Adversarial jittering (our reading of the paper; its recipe is not public): see jitter.py."""

    enabled: bool = False
    eps: float = 2 / 255  # L-inf radius in pixel units of the original image (1/255 ... 8/255)
    fraction: float = 0.5  # share of each batch that is jittered
    steps: int = 1  # 1: FGSM-like sign step; more: projected steps inside the eps-ball
    step_size: float | None = None  # per step, pixel units; None: eps if steps == 1, else 2.5 * eps / steps
    grad: str = "student"  # whose input gradient makes the step: student | refinery
    relabel: bool = True  # label the jittered crop with the refinery (R(x')); false: keep R(x)


@dataclass(frozen=True)
class ChainConfig:
    generations: int = 2  # ground truth, then one refinement: further generations lost accuracy (docs/claims-study.md)
    models: tuple[str, ...] = ()  # one architecture per generation; empty: `model` for all
    refined_epochs: int | None = None  # epochs of the refined generations (a refinery labels them); None: optim.epochs


@dataclass(frozen=True)
class Config:
    model: str = "cnn-small"
    pretrained: str | None = None  # "hub" or a local weights file for timm/torchvision models
    # init, batch order and crops; a chain uses seed + generation - 1. None (the default): 0 on ground
    # truth, else the refinery's own seed + 1, so a student never replays its refinery's crops and init
    seed: int | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    channels_last: bool = True  # memory format of images and models (faster convolutions on CPU)
    amp: str = "off"  # mixed precision of forward passes: off | bf16 | fp16 (CUDA only, grad scaler) | auto (bf16 on CUDA)
    compile: bool = False  # torch.compile the student's training forward (needs a C++ compiler on CPU)
    save_every: int = 0  # also checkpoint every N steps inside an epoch (0: at epoch ends only)
    eval_every: int = 1  # evaluate the test (and val) split every N epochs; the last epoch always
    log: tuple[str, ...] = ()  # trackers fed metrics.jsonl's rows: tensorboard, wandb, mlflow (training/tracking.py)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    refinery: RefineryConfig = field(default_factory=RefineryConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    jitter: JitterConfig = field(default_factory=JitterConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)


def refinery_paths(cfg: Config) -> tuple[str, ...]:
    """The checkpoints ``cfg.refinery.path`` names: none, one, or an ensemble's members (in order)."""
    path = cfg.refinery.path
    if path is None:
        return ()
    return (path,) if isinstance(path, str) else tuple(path)


def refinery_temperature(cfg: Config) -> float:
    """The temperature of the refinery's softmax: ``refinery.temperature``, else ``loss.temperature``."""
    return cfg.loss.temperature if cfg.refinery.temperature is None else cfg.refinery.temperature


# Keys of earlier versions -> their section now (issue 23: one meaning per section).
LEGACY_KEYS = {
    "labels.temperature": "loss.temperature",
    "labels.gt_weight": "loss.gt_weight",
    "labels.label_smoothing": "loss.label_smoothing",
    "labels.refinery_temperature": "refinery.temperature",
    "labels.refinery_bn_train": "refinery.bn_train",
    "labels.top_k": "store.top_k",
    "labels.store_dtype": "store.dtype",
}


def upgrade(values: dict) -> dict:
    """A config mapping of any version in today's sections: :data:`LEGACY_KEYS` moved, a top-level
    ``refinery: PATH`` (or a list) becomes ``refinery.path``. A key given both ways with two values
    is refused. Today's mappings come back equal.

    Example:
        >>> upgrade({"refinery": "runs/g1", "labels": {"temperature": 4, "source": "live"}})
        {'refinery': {'path': 'runs/g1'}, 'labels': {'source': 'live'}, 'loss': {'temperature': 4}}
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    if "refinery" in out and not isinstance(out["refinery"], dict):
        out["refinery"] = {"path": out["refinery"]}
    for old, new in LEGACY_KEYS.items():
        (old_sec, old_key), (new_sec, new_key) = old.split("."), new.split(".")
        section = out.get(old_sec)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        target = out.setdefault(new_sec, {})
        if not isinstance(target, dict):
            raise UserError(f"config key {new_sec}: expected a mapping of {', '.join(valid_keys(Config))}")
        if new_key in target and target[new_key] != value:
            raise UserError(f"config keys {old} (an earlier name) and {new} are both given, {brief(value)} and {brief(target[new_key])}")
        target[new_key] = value
    return out


def config_from_dict(values: dict) -> Config:
    """A :class:`Config` from a plain mapping of any version (a saved ``config.yaml``, ``meta.json``'s
    ``config``), keys translated by :func:`upgrade`; not validated (see :func:`validate`)."""
    return from_dict(Config, upgrade(values))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file, then dotted ``overrides``; validated.

    Example:
        >>> cfg = load_config(overrides={"optim.epochs": 2, "data.dataset": "digits"})
        >>> cfg.optim.epochs, cfg.data.dataset
        (2, 'digits')
    """
    values = read_config_file(path) if path is not None else {}
    values = merge(values, upgrade(nest(overrides or {})))
    cfg = config_from_dict(values)
    validate(cfg)
    return cfg


def read_config_file(path: str | Path) -> dict:
    """A YAML config's values, upgraded; ``base: OTHER.yaml`` starts from another (:func:`typed.read_based`)."""
    expected = f"a mapping of keys; valid keys: base, {', '.join(valid_keys(Config))}"
    return read_based(path, "config file", expected, upgrade)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate(cfg: Config) -> None:
    """Precise errors for values that cannot work."""
    o, d, ch = cfg.optim, cfg.data, cfg.chain
    _check(cfg.amp in ("off", "bf16", "fp16", "auto"), f"amp must be off, bf16, fp16 or auto, got {brief(cfg.amp)}")
    _check(cfg.eval_every >= 1, f"eval_every must be >= 1 epochs, got {cfg.eval_every}")
    _check(cfg.save_every >= 0, f"save_every must be >= 0 steps, got {cfg.save_every}")
    _check(o.epochs >= 1, f"optim.epochs must be >= 1, got {o.epochs}")
    _check(
        ch.refined_epochs is None or ch.refined_epochs >= 1,
        f"chain.refined_epochs must be >= 1, got {ch.refined_epochs}",
    )
    _check(o.batch_size >= 1, f"optim.batch_size must be >= 1, got {o.batch_size}")
    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(o.momentum >= 0, f"optim.momentum must be >= 0, got {o.momentum}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(o.gamma > 0, f"optim.gamma must be > 0, got {o.gamma}")
    _check(d.image_size is None or d.image_size >= 1, f"data.image_size must be >= 1, got {d.image_size}")
    _check(d.train_subset is None or d.train_subset >= 1, f"data.train_subset must be >= 1, got {d.train_subset}")
    _check(d.subset_seed >= 0, f"data.subset_seed must be >= 0, got {d.subset_seed}")
    _check(d.val_split >= 0, f"data.val_split must be >= 0 images, got {d.val_split}")
    _check(0 <= d.label_noise < 1, f"data.label_noise must be a share in [0, 1), got {d.label_noise}")
    _check(
        d.holdout_fold is None or (d.holdout_fold[1] >= 2 and 0 <= d.holdout_fold[0] < d.holdout_fold[1]),
        f"data.holdout_fold must be (k, K) with K >= 2 and 0 <= k < K, got {d.holdout_fold}",
    )
    _check(d.workers >= 0, f"data.workers must be >= 0, got {d.workers}")
    _check(d.crops_per_image >= 1, f"data.crops_per_image must be >= 1, got {d.crops_per_image}")
    _check(
        o.batch_size % d.crops_per_image == 0,
        f"optim.batch_size ({o.batch_size}) must be a multiple of data.crops_per_image ({d.crops_per_image})",
    )
    _check(
        d.crops_per_image == 1 or (cfg.labels.source == "live" and not cfg.labels.store),
        "data.crops_per_image > 1 needs labels.source=live: a label store holds one crop per image and epoch",
    )
    _check(
        o.schedule in ("cosine", "step", "constant"),
        f"optim.schedule must be cosine, step or constant, got {brief(o.schedule)}",
    )
    _check(0 <= o.warmup_epochs < o.epochs, f"optim.warmup_epochs must be in [0, epochs), got {o.warmup_epochs}")
    _check(
        all(0 < m < o.epochs for m in o.milestones),
        f"optim.milestones must lie in 1..epochs-1, got {list(o.milestones)}",
    )
    _check(
        0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
        f"data.crop_scale must satisfy 0 < low <= high <= 1, got {list(d.crop_scale)}",
    )
    _check(
        0 < d.crop_ratio[0] <= d.crop_ratio[1],
        f"data.crop_ratio must satisfy 0 < low <= high, got {list(d.crop_ratio)}",
    )
    _validate_labels_and_transforms(cfg)
    bad = [k for k in cfg.log if k not in ("tensorboard", "wandb", "mlflow")]
    _check(not bad, f"log: {brief(bad[0]) if bad else ''} is not a tracker; trackers: tensorboard, wandb, mlflow")


def _validate_labels_and_transforms(cfg: Config) -> None:
    """The label source, the loss and the batch transforms (mixing, jittering), and their combinations."""
    lab, loss, ref, j, ch = cfg.labels, cfg.loss, cfg.refinery, cfg.jitter, cfg.chain
    _check(loss.temperature > 0, f"loss.temperature must be > 0, got {loss.temperature}")
    _check(
        ref.temperature is None or ref.temperature > 0, f"refinery.temperature must be > 0, got {ref.temperature}"
    )
    _check(0 <= loss.gt_weight <= 1, f"loss.gt_weight must be in [0, 1], got {loss.gt_weight}")
    _check(0 <= loss.label_smoothing < 1, f"loss.label_smoothing must be in [0, 1), got {loss.label_smoothing}")
    _check(
        lab.source in ("live", "store", "static"), f"labels.source must be live, store or static, got {brief(lab.source)}"
    )
    _check(cfg.store.top_k >= 1, f"store.top_k must be >= 1, got {cfg.store.top_k}")
    _check(cfg.store.dtype in ("fp16", "uint8"), f"store.dtype must be fp16 or uint8, got {brief(cfg.store.dtype)}")
    _check(not (lab.store and lab.source == "static"), "labels.store and labels.source=static exclude each other")
    paths = refinery_paths(cfg)
    _check(all(p for p in paths), "refinery: an empty checkpoint path")
    _check(len(set(paths)) == len(paths), f"refinery: a checkpoint is named twice in the ensemble {list(paths)}")
    _check(
        not (ref.bn_train and (lab.source != "live" or lab.store)),
        "refinery.bn_train needs a live refinery (labels.source=live, no labels.store)",
    )
    _validate_external(ref, paths)
    _check(
        not ref.cross_fit or (len(paths) >= 2 and lab.source == "live" and not lab.store and not j.enabled),
        "refinery.cross_fit needs two or more fold models (--refinery FOLD1 --refinery FOLD2 ...) labelling live "
        "(labels.source=live, no label store, no jitter)",
    )
    _check(cfg.mix.kind in ("off", "mixup", "cutmix"), f"mix.kind must be off, mixup or cutmix, got {brief(cfg.mix.kind)}")
    _check(cfg.mix.alpha > 0, f"mix.alpha must be > 0, got {cfg.mix.alpha}")
    _check(
        cfg.mix.kind == "off" or (lab.source == "live" and not lab.store),
        f"--mix {cfg.mix.kind} needs labels.source=live: the refinery must label the mixed crop (function matching), "
        "and a label store holds labels of unmixed crops",
    )
    _check(0 <= j.eps <= 1, f"jitter.eps is in pixel units of [0, 1] images (e.g. 2/255 = 0.0078), got {j.eps}")
    _check(0 < j.fraction <= 1, f"jitter.fraction must be in (0, 1], got {j.fraction}")
    _check(j.steps >= 1, f"jitter.steps must be >= 1, got {j.steps}")
    _check(j.step_size is None or j.step_size >= 0, f"jitter.step_size must be >= 0, got {j.step_size}")
    _check(j.grad in ("student", "refinery"), f"jitter.grad must be student or refinery, got {brief(j.grad)}")
    _check(
        not (j.enabled and (lab.store or lab.source != "live")),
        "jitter needs a live refinery (labels.source=live): a label store only holds labels of the un-jittered crops",
    )
    _check(
        not (j.enabled and ref.bn_train),
        "jitter cannot run with refinery.bn_train: the attack would move the refinery's BatchNorm statistics",
    )
    _check(ch.generations >= 1, f"chain.generations must be >= 1, got {ch.generations}")
    _check(
        not ch.models or len(ch.models) == ch.generations,
        f"chain.models names {len(ch.models)} architectures for {ch.generations} generations; name one per generation or none",
    )


def _validate_external(ref: RefineryConfig, paths: tuple[str, ...]) -> None:
    """The settings of a library model as the refinery (labels/external.py) go with one."""
    external = [p for p in paths if isinstance(p, str) and p.startswith(EXTERNAL)]
    given = [k for k in ("weights", "classes", "image_size", "mean", "std", "interpolation") if getattr(ref, k) is not None]
    _check(
        not given or external,
        f"refinery.{given[0] if given else ''} describes a library model as the refinery: give --refinery timm:NAME, "
        "torchvision:NAME or hf-hub:ORG/NAME with it",
    )
    _check(
        not (ref.weights and len(external) > 1),
        "refinery.weights is ambiguous with several library models in the ensemble: give each its own, "
        "--refinery timm:NAME,weights=FILE",
    )
    _check(not (ref.cross_fit and external), "refinery.cross_fit combines fold models trained here, not library models")
    _check(ref.image_size is None or ref.image_size >= 8, f"refinery.image_size must be >= 8, got {ref.image_size}")
    _check(ref.std is None or all(s > 0 for s in ref.std), f"refinery.std must be > 0 in every channel, got {ref.std}")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML (atomically): what ``load_config(path)`` reads back equal."""
    save_values(to_dict(cfg), path)


def save_values(values: dict, path: str | Path) -> None:
    """Write a config's plain values (``to_dict(cfg)``) as YAML, atomically."""
    atomic_write(path, yaml.safe_dump(values, sort_keys=False).encode())
