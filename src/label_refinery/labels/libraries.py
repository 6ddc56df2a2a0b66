"""The libraries' side of an external refinery (``external.py``): building a timm, torchvision or
hf-hub model with its pretrained or given weights, and what it says of itself (preprocessing, class
names, ImageNet WNIDs, the weights' SHA-256)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError, brief
from ..files import sha256_bytes, sha256_file
from ..models import load_state_dict_file


@dataclass(frozen=True)
class Preprocess:
    """How the refinery wants its input: ``[B, in_chans, image_size, image_size]``, normalised with
    ``mean``/``std`` (of ``[0, 1]`` pixels), resampled with ``interpolation``."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    in_chans: int = 3


@dataclass
class Loaded:
    """A library model and what it says of itself."""

    model: nn.Module
    preprocess: Preprocess
    names: list[str] | None  # a name (or synonyms "a, b") per output, when known
    wnids: list[str] | None  # ImageNet WNIDs per output, when the outputs are ImageNet-1k's
    weights_sha256: str


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, shapes, dtypes and bytes (for weights that have no file of ours)."""
    parts = []
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        parts.append(f"{k}:{tuple(t.shape)}:{t.dtype}:".encode() + sha256_bytes(t.view(torch.uint8).numpy().tobytes()).encode())
    return sha256_bytes(b"\n".join(parts))


def _outputs_of(state: dict[str, torch.Tensor], classifier: str | None) -> int | None:
    w = state.get(f"{classifier}.weight") if classifier else None
    return int(w.shape[0]) if w is not None and w.ndim == 2 else None


def load_timm(name: str, weights: str | None, hub: bool) -> Loaded:
    try:
        import timm
        import timm.data
    except ImportError:
        raise UserError("a timm: or hf-hub: refinery needs timm: pip install 'label-refinery[timm]'") from None
    arch = f"hf-hub:{name}" if hub else name
    if not hub and name not in timm.list_models(pretrained=False):
        raise UserError(f"timm has no model {brief(name)} (timm.list_models() lists them)")
    try:
        if weights:
            state = load_state_dict_file(weights, "--refinery-weights")
            cfg = timm.create_model(arch, pretrained=False).pretrained_cfg
            n = _outputs_of(state, cfg.get("classifier")) or cfg.get("num_classes", 1000)
            model = timm.create_model(arch, pretrained=False, num_classes=n)
            _load_state(model, state, weights)
        else:
            model = timm.create_model(arch, pretrained=True)
    except UserError:
        raise
    except Exception as e:  # offline, unknown hub repo, no pretrained weights for this name
        raise _download_error(f"timm:{name}" if not hub else f"hf-hub:{name}", e) from None
    cfg = model.pretrained_cfg
    size = cfg.get("input_size", (3, 224, 224))
    pre = Preprocess(int(size[-1]), tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225))),
                     str(cfg.get("interpolation") or "bilinear"), int(size[0]))  # fmt: skip
    n = model.num_classes
    names, wnids = cfg.get("label_names"), None
    if n in (1000, 1001) and timm.data.infer_imagenet_subset(model) == "imagenet-1k":
        info = timm.data.ImageNetInfo("imagenet-1k")
        wnids, names = _pad(info.label_names(), n), _pad(info.label_descriptions(), n)
    sha = sha256_file(Path(weights).expanduser()) if weights else tensors_sha256(model.state_dict())
    return Loaded(model, pre, names, wnids, sha)


def _pad(values: list[str], n: int) -> list[str]:
    """1001-output models (background first) keep the names aligned with their outputs."""
    return (["background"] if n == len(values) + 1 else []) + list(values)


def load_torchvision(name: str, weights: str | None) -> Loaded:
    import torchvision

    if name not in torchvision.models.list_models():
        raise UserError(f"torchvision has no model {brief(name)} (torchvision.models.list_models() lists them)")
    try:
        default = torchvision.models.get_model_weights(name).DEFAULT
    except Exception:
        default = None
    tags = {w.name: w for w in torchvision.models.get_model_weights(name)} if default is not None else {}
    if weights in tags:  # a named set of torchvision's weights, e.g. IMAGENET1K_V1 (the paper's ResNet-50)
        default, weights = tags[weights], None
    try:
        if weights:
            state = load_state_dict_file(weights, "--refinery-weights")
            head = [k for k, v in state.items() if k.endswith(".weight") and v.ndim == 2]
            n = int(state[head[-1]].shape[0]) if head else 1000
            model = torchvision.models.get_model(name, weights=None, num_classes=n)
            _load_state(model, state, weights)
        else:
            if default is None:
                raise UserError(f"torchvision:{name} has no pretrained weights: give --refinery-weights FILE")
            model = torchvision.models.get_model(name, weights=default)
    except UserError:
        raise
    except Exception as e:
        raise _download_error(f"torchvision:{name}", e) from None
    pre = Preprocess(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    names = None
    if default is not None:
        t = default.transforms()
        crop = getattr(t, "crop_size", [224])
        pre = Preprocess(int(crop[0]), tuple(t.mean), tuple(t.std), str(t.interpolation.value))
        names = default.meta.get("categories")
    n = num_outputs(model)
    wnids = None
    if names is not None and len(names) != n:
        names = None
    elif names is not None and n == 1000:
        wnids = _imagenet_wnids()
    sha = sha256_file(Path(weights).expanduser()) if weights else tensors_sha256(model.state_dict())
    return Loaded(model, pre, names, wnids, sha)


def _imagenet_wnids() -> list[str] | None:
    try:
        import timm.data

        return timm.data.ImageNetInfo("imagenet-1k").label_names()
    except ImportError:  # without timm, WNID folders are matched by name only
        return None


def num_outputs(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return last[-1].out_features if isinstance(last[-1], nn.Linear) else last[-1].out_channels


def _load_state(model: nn.Module, state: dict, path: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"--refinery-weights {path} does not fit this architecture: missing {brief(missing[:3])}, "
            f"unexpected {brief(unexpected[:3])} (of {len(missing)} and {len(unexpected)})"
        )


def _download_error(ref: str, e: Exception) -> UserError:
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    why = "offline (HF_HUB_OFFLINE is set) and not in the local cache" if offline else f"{type(e).__name__}: {brief(str(e), 200)}"
    return UserError(
        f"the refinery {ref}'s pretrained weights could not be loaded: {why}. Download them once where there is a network "
        "(the library's cache is reused), or give a local file with --refinery-weights FILE"
    )
