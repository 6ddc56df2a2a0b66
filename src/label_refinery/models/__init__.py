"""Model registry: built-in small models plus any timm or torchvision architecture.

Names:
- ``cnn-small`` (about 227k parameters), ``cnn-small:width=2``;
- ``resnet-cifar`` (ResNet-20, width 16), ``resnet-cifar:depth=32,width=32``;
- ``mlp`` (two hidden layers on the image pooled to 16x16; ``mlp:hidden=512,side=32``) and
  ``vgg-small`` (three VGG stages of widths 32, 64, 128; ``vgg-small:width=64``): issue 24's students;
- the paper's architectures (see :mod:`.paper`): ``alexnet``, ``mobilenet`` (``mobilenet-0.75``,
  ``-0.5``, ``-0.25``), ``resnet18``, ``resnet34``, ``resnet50``, ``xnor-resnet50``, ``vgg16``,
  ``vgg19``, ``darknet19``; add ``:small=true`` for 28-64 pixel inputs, e.g. ``resnet18:small=true``;
- ``timm:NAME`` (``pip install timm``), e.g. ``timm:resnet18``;
- ``torchvision:NAME``, e.g. ``torchvision:resnet18``.

``pretrained`` is ``None`` (random init), ``"hub"`` (the library's own download) or a local file
(safetensors, or a PyTorch state dict loaded with ``weights_only=True``) holding weights for the
architecture's default head; the head and first convolution are then adapted to ``num_classes`` and
``in_chans``.

Example:
    >>> from label_refinery.models import create_model
    >>> m = create_model("cnn-small", in_chans=1, num_classes=10)
    >>> m(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from ..errors import UserError, brief
from .adapt import replace_first_conv, replace_last_linear
from .paper import AlexNetBN, Darknet19, MobileNetV1, flag, torchvision_paper_model
from .small import MLP, CNNSmall, ResNetCifar, VGGSmall
from .xnor import XnorResNet50


def _width(value) -> float:
    w = float(value)
    if not (0 < w <= 16):
        raise ValueError(f"width must be a number in (0, 16], got {brief(value)}")
    return w


def _paper(cls, width: float | None = None):
    """Builder for one of our paper models; ``width`` fixed (an alias such as mobilenet-0.5) or an option."""
    if width is not None:
        return lambda in_chans, num_classes, small=False: cls(in_chans, num_classes, width, flag(small))
    return lambda in_chans, num_classes, width=1.0, small=False: cls(in_chans, num_classes, _width(width), flag(small))


def _tv(arch: str):
    """Builder for a paper model that torchvision defines (random init)."""
    return lambda in_chans, num_classes, small=False: torchvision_paper_model(arch, in_chans, num_classes, flag(small))


BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "cnn-small": lambda in_chans, num_classes, width=1.0: CNNSmall(in_chans, num_classes, float(width)),
    "resnet-cifar": lambda in_chans, num_classes, depth=20, width=16: ResNetCifar(
        in_chans, num_classes, int(depth), int(width)
    ),
    "mlp": lambda in_chans, num_classes, hidden=256, side=16: MLP(in_chans, num_classes, int(hidden), int(side)),
    "vgg-small": lambda in_chans, num_classes, width=32: VGGSmall(in_chans, num_classes, int(width)),
    "alexnet": _paper(AlexNetBN),
    "mobilenet": _paper(MobileNetV1),
    **{f"mobilenet-{w}": _paper(MobileNetV1, float(w)) for w in ("0.75", "0.5", "0.25")},
    "resnet18": _tv("resnet18"),
    "resnet34": _tv("resnet34"),
    "resnet50": _tv("resnet50"),
    "xnor-resnet50": _paper(XnorResNet50),
    "vgg16": _tv("vgg16_bn"),
    "vgg19": _tv("vgg19_bn"),
    "darknet19": _paper(Darknet19),
}
LIBRARIES = ("timm", "torchvision")


def model_names() -> list[str]:
    return sorted(BUILTIN) + [f"{lib}:NAME" for lib in LIBRARIES]


def _options(text: str, name: str) -> dict[str, str]:
    out = {}
    for part in filter(None, text.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise UserError(f"model {brief(name)}: options are key=value pairs separated by commas, e.g. cnn-small:width=2")
        out[key.strip()] = value.strip()
    return out


def load_state_dict_file(path: str, what: str = "pretrained weights file") -> dict[str, torch.Tensor]:
    """Weights from a safetensors file or a weights-only PyTorch file (``weights_only=True``: never
    unpickling objects); a training script's ``{"state_dict"|"model": ...}`` wrapper and DDP's
    ``module.`` prefix are taken off."""
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} {brief(str(p))} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with objects, a truncated file, not a weights file
        raise UserError(
            f"{what} {p}: not a weights file this can read safely (weights_only=True; {type(err).__name__}: {brief(str(err), 200)}); "
            "give a .safetensors file or a .pth holding only tensors (torch.save(model.state_dict(), ...))"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what} {p}: expected a mapping of parameter names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _torchvision(arch: str, in_chans: int, num_classes: int, pretrained: str | None) -> nn.Module:
    import torchvision

    if pretrained is None:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    else:
        model = torchvision.models.get_model(arch, weights="DEFAULT" if pretrained == "hub" else None)
        if pretrained != "hub":
            try:
                model.load_state_dict(load_state_dict_file(pretrained))
            except RuntimeError as err:
                raise UserError(
                    f"{pretrained} does not hold torchvision {arch} weights: {str(err).splitlines()[0]}"
                ) from err
        replace_last_linear(model, num_classes)
    replace_first_conv(model, in_chans)
    return model


def _timm(arch: str, in_chans: int, num_classes: int, pretrained: str | None) -> nn.Module:
    import timm

    kwargs: dict = dict(in_chans=in_chans, num_classes=num_classes)
    if pretrained is not None:
        kwargs["pretrained"] = True
        if pretrained != "hub":
            load_state_dict_file(pretrained)  # fails early and clearly on a missing or unsafe file
            kwargs["pretrained_cfg_overlay"] = dict(file=pretrained)
    return timm.create_model(arch, **kwargs)


def create_model(name: str, in_chans: int, num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Build a classifier by registry name; see the module docstring for names and options."""
    check_model_name(name)
    prefix, _, arg = name.partition(":")
    if prefix == "torchvision":
        return _torchvision(arg, in_chans, num_classes, pretrained)
    if prefix == "timm":
        return _timm(arg, in_chans, num_classes, pretrained)
    if pretrained is not None:
        raise UserError(
            f"{prefix} has no published weights; train it, start from one of our checkpoints, or use "
            "torchvision:NAME / timm:NAME with --pretrained (our vgg16/vgg19 are torchvision's vgg16_bn/vgg19_bn)"
        )
    try:
        return BUILTIN[prefix](in_chans, num_classes, **_options(arg, name))
    except (TypeError, ValueError, OverflowError) as err:
        raise UserError(f"model {brief(name)}: {err}") from err


def check_model_name(name: str) -> None:
    """Fail early, before any data is loaded, if ``name`` (with its options) is not a model this
    registry can build. Built-in models are built on the meta device (no memory, no time)."""
    prefix, _, arg = name.partition(":")
    if prefix in BUILTIN:
        options = _options(arg, name)
        try:
            inspect.signature(BUILTIN[prefix]).bind(1, 1, **options)
        except TypeError:
            allowed = [p for p in inspect.signature(BUILTIN[prefix]).parameters if p not in ("in_chans", "num_classes")]
            raise UserError(
                f"model {brief(name)}: unknown option; {prefix} takes {', '.join(allowed) or 'no options'}"
            ) from None
        try:
            with torch.device("meta"):
                BUILTIN[prefix](3, 10, **options)
        except (TypeError, ValueError, OverflowError) as err:
            raise UserError(f"model {brief(name)}: {err}") from None
    elif prefix == "torchvision" and arg:
        import torchvision

        if arg not in torchvision.models.list_models():
            raise UserError(f"unknown torchvision model {brief(arg)}; see torchvision.models.list_models()")
    elif prefix == "timm" and arg:
        try:
            import timm
        except ImportError as err:
            raise UserError("timm models need timm: pip install timm") from err
        if not timm.is_model(arg):
            raise UserError(f"unknown timm model {brief(arg)}; see timm.list_models()")
    else:
        raise UserError(f"unknown model {brief(name)}; valid names: {', '.join(model_names())}")


def check_input_size(name: str, in_chans: int, num_classes: int, size: int) -> None:
    """Refuse, with the fix, an image size too small for the architecture (built on the meta device)."""
    try:
        with torch.device("meta"):
            create_model(name, in_chans, num_classes).eval()(torch.zeros(2, in_chans, size, size))
    except RuntimeError as err:
        hint = (
            f" Use {name.partition(':')[0]}:small=true (built for 28-64 px inputs) or a larger --image-size."
            if name.partition(":")[0] in BUILTIN
            else " Use a larger --image-size."
        )
        raise UserError(f"model {brief(name)} cannot take {size}x{size} images: {str(err).splitlines()[0]}.{hint}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "AlexNetBN",
    "CNNSmall",
    "Darknet19",
    "MobileNetV1",
    "ResNetCifar",
    "XnorResNet50",
    "check_input_size",
    "check_model_name",
    "count_parameters",
    "create_model",
    "load_state_dict_file",
    "model_names",
]
