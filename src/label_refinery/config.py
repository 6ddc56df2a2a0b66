"""Typed, frozen configuration: dataclasses loaded from YAML and/or overrides, validated.

One :class:`Config` describes a generation (``train``) or a chain (``chain``; its ``chain`` section
is ignored by ``train``). YAML mirrors the dataclasses::

    model: cnn-small
    seed: 0
    data:   {dataset: fashion-mnist, crop_scale: [0.25, 1.0]}
    optim:  {epochs: 10, batch_size: 128, lr: 0.05, schedule: cosine}
    labels: {temperature: 1.0, gt_weight: 0.0}
    chain:  {generations: 2}

Overrides are dotted keys (``optim.lr=0.1``); the CLI's flags map onto them. Unknown keys fail
with the list of valid keys. Derived values (steps per epoch, the device) are computed where they
are used, never written back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .files import atomic_write


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"  # registry name: fashion-mnist | digits | imagefolder:PATH
    data_dir: str | None = None  # where to look for dataset files first
    image_size: int | None = None  # side of crops and evaluation views, pixels (None: the dataset's own)
    train_subset: int | None = None  # train on a fixed, seeded subset of this many images
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
class LabelConfig:
    temperature: float = 1.0  # T of refinery and student softmax; the paper: 1
    gt_weight: float = 0.0  # alpha: weight of the ground-truth cross-entropy; the paper: 0
    # the refinery's softmax alone (the student's stays at `temperature`): < 1 sharpens the refined labels.
    # Not in the paper; None: `temperature`. See docs/results.md (noisy labels)
    refinery_temperature: float | None = None
    label_smoothing: float = 0.0  # generation 1 (ground truth) only
    refinery_bn_train: bool = False  # the 2018 release's behaviour: refinery BatchNorm in train mode
    source: str = (
        "live"  # live: refinery forward per step | store: bake, then train from the store | static: one label per image
    )
    store: str | None = None  # an existing label store to train from (see `label-refinery bake`)
    top_k: int = 5  # classes kept per crop in a label store
    store_dtype: str = "fp16"  # probabilities in a label store: fp16 | uint8


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
    # checkpoint labelling this run (train), or generation 1 (chain); several: their probabilities averaged
    refinery: str | tuple[str, ...] | None = None
    # init, batch order and crops; a chain uses seed + generation - 1. None (the default): 0 on ground
    # truth, else the refinery's own seed + 1, so a student never replays its refinery's crops and init
    seed: int | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    channels_last: bool = True  # memory format of images and models (faster convolutions on CPU)
    amp: str = "off"  # mixed precision of forward passes: off | bf16 | fp16 (CUDA only, grad scaler) | auto (bf16 on CUDA)
    compile: bool = False  # torch.compile the student's training forward (needs a C++ compiler on CPU)
    save_every: int = 0  # also checkpoint every N steps inside an epoch (0: at epoch ends only)
    eval_every: int = 1  # evaluate the test (and val) split every N epochs; the last epoch always
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    jitter: JitterConfig = field(default_factory=JitterConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)


def refinery_paths(cfg: Config) -> tuple[str, ...]:
    """The checkpoints ``cfg.refinery`` names: none, one, or an ensemble's members (in order)."""
    if cfg.refinery is None:
        return ()
    return (cfg.refinery,) if isinstance(cfg.refinery, str) else tuple(cfg.refinery)


def valid_keys(cls=Config, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(_hints(cls)[f.name]):
            out += valid_keys(_hints(cls)[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
            return None
        inner = [a for a in args if a is not type(None)]
        several = [a for a in inner if typing.get_origin(a) is tuple]
        if several and isinstance(value, (list, tuple)):  # "one or several": a list of one is the one
            value = _coerce(value, several[0], key)
            return value[0] if len(value) == 1 and str in inner else value
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, str):  # "a b" or "a,b" (use spaces when items contain commas)
            value = value.split() if any(c.isspace() for c in value.strip()) else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise UserError(f"config key {key}: expected {len(args)} values, got {list(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise UserError(f"config key {key}: expected true/false, got {value!r}")
    if tp is float and isinstance(value, str) and "/" in value:  # e.g. jitter.eps=2/255
        num, _, den = value.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            raise UserError(f"config key {key}: expected a number such as 0.008 or 2/255, got {value!r}") from None
    if tp in (int, float):
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise UserError(f"config key {key}: expected a number, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise UserError(f"config key {key}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise UserError(f"config key {key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, values: dict, prefix: str = ""):
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown config key {prefix}{unknown[0]}; valid keys: {', '.join(valid_keys())}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"config key {prefix}{name}: expected a mapping of {', '.join(valid_keys(tp))}")
            kwargs[name] = from_dict(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists), for YAML and JSON."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def _nest(overrides: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict:
    """The mapping a YAML file holds (empty file: ``{}``); a missing file, bad YAML or another
    top-level type is a :class:`UserError` naming ``what`` the file is and what it should hold."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{what} {p} is not valid YAML: {err}") from err
    if not isinstance(loaded, dict):
        raise UserError(f"{what} {p} must hold {expected}")
    return loaded


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file, then dotted ``overrides``; validated.

    Example:
        >>> cfg = load_config(overrides={"optim.epochs": 2, "data.dataset": "digits"})
        >>> cfg.optim.epochs, cfg.data.dataset
        (2, 'digits')
    """
    values: dict = {}
    if path is not None:
        values = read_yaml_mapping(path, "config file", f"a mapping of keys; valid keys: {', '.join(valid_keys())}")
    values = merge(values, _nest(overrides or {}))
    cfg = from_dict(Config, values)
    validate(cfg)
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate(cfg: Config) -> None:
    """Precise errors for values that cannot work."""
    o, d, ch = cfg.optim, cfg.data, cfg.chain
    _check(cfg.amp in ("off", "bf16", "fp16", "auto"), f"amp must be off, bf16, fp16 or auto, got {cfg.amp!r}")
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
        f"optim.schedule must be cosine, step or constant, got {o.schedule!r}",
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


def _validate_labels_and_transforms(cfg: Config) -> None:
    """The label source, the loss and the batch transforms (mixing, jittering), and their combinations."""
    lab, j, ch = cfg.labels, cfg.jitter, cfg.chain
    _check(lab.temperature > 0, f"labels.temperature must be > 0, got {lab.temperature}")
    _check(
        lab.refinery_temperature is None or lab.refinery_temperature > 0,
        f"labels.refinery_temperature must be > 0, got {lab.refinery_temperature}",
    )
    _check(0 <= lab.gt_weight <= 1, f"labels.gt_weight must be in [0, 1], got {lab.gt_weight}")
    _check(0 <= lab.label_smoothing < 1, f"labels.label_smoothing must be in [0, 1), got {lab.label_smoothing}")
    _check(
        lab.source in ("live", "store", "static"), f"labels.source must be live, store or static, got {lab.source!r}"
    )
    _check(lab.top_k >= 1, f"labels.top_k must be >= 1, got {lab.top_k}")
    _check(lab.store_dtype in ("fp16", "uint8"), f"labels.store_dtype must be fp16 or uint8, got {lab.store_dtype!r}")
    _check(not (lab.store and lab.source == "static"), "labels.store and labels.source=static exclude each other")
    paths = refinery_paths(cfg)
    _check(all(p for p in paths), "refinery: an empty checkpoint path")
    _check(len(set(paths)) == len(paths), f"refinery: a checkpoint is named twice in the ensemble {list(paths)}")
    _check(
        not (lab.refinery_bn_train and (lab.source != "live" or lab.store)),
        "labels.refinery_bn_train needs a live refinery (labels.source=live, no labels.store)",
    )
    _check(cfg.mix.kind in ("off", "mixup", "cutmix"), f"mix.kind must be off, mixup or cutmix, got {cfg.mix.kind!r}")
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
    _check(j.grad in ("student", "refinery"), f"jitter.grad must be student or refinery, got {j.grad!r}")
    _check(
        not (j.enabled and (lab.store or lab.source != "live")),
        "jitter needs a live refinery (labels.source=live): a label store only holds labels of the un-jittered crops",
    )
    _check(
        not (j.enabled and lab.refinery_bn_train),
        "jitter cannot run with labels.refinery_bn_train: the attack would move the refinery's BatchNorm statistics",
    )
    _check(ch.generations >= 1, f"chain.generations must be >= 1, got {ch.generations}")
    _check(
        not ch.models or len(ch.models) == ch.generations,
        f"chain.models names {len(ch.models)} architectures for {ch.generations} generations; name one per generation or none",
    )


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write(path, yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
