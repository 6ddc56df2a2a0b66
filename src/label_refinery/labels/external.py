"""Any trained classifier as the refinery: a timm or torchvision model, one from the Hugging Face hub,
or a weights file for one of their architectures (issue 25).

``--refinery timm:NAME``, ``torchvision:NAME`` or ``hf-hub:ORG/NAME`` (the library's own pretrained
weights, its download cache and ``HF_HUB_OFFLINE`` honoured), with ``--refinery-weights FILE`` (a
``.safetensors`` file or a weights-only ``.pth``/``.pt``/``.bin``, loaded with ``weights_only=True``:
no pickled objects) for a model of that architecture trained elsewhere. In an ensemble, a member may
carry its own file: ``timm:resnet50,weights=FILE``.

The refinery keeps **its own** preprocessing (input size, mean/std, interpolation, channels; from
timm's ``pretrained_cfg`` or the torchvision weights' transforms, overridable by ``refinery.image_size``,
``refinery.mean``, ``refinery.std``, ``refinery.interpolation``): :class:`ViewAdapter` takes the
student's crop tensor (normalised with the dataset's mean/std), undoes that normalisation, repeats a grey
channel to 3 (or averages 3 to 1), resamples the crop to the refinery's size and normalises it the
refinery's way. So the refinery sees exactly the student's crop region (same box, same flip) at its
resolution; where the run's ``data.image_size`` is below the refinery's, it sees that crop upsampled
(the student's detail, not the original image's: train at the refinery's size for the paper's setting).

**Classes**: dataset class ``c`` maps to one or more refinery outputs; the refined label of ``c`` is
``softmax`` over the mapped groups' log-sum-exp logits, i.e. the refinery's probability renormalised
over the dataset's classes. Found, in order, from ``refinery.classes`` (a text file, line ``i`` = the
dataset class of output ``i``, ``-`` or empty for outputs outside the dataset; or a JSON object
``{class name: index or [indices]}``), ImageNet WNIDs (folders named ``n01440764`` ... map to
ImageNet-1k's outputs), the refinery's class names (case and ``_``/space insensitive, any of timm's
comma-separated synonyms), or, for a refinery with exactly the dataset's number of outputs and no
names, output ``i`` = class ``i``. A class that maps nowhere is refused, by name.

Identity: ``sha256`` of the reference, the weights' SHA-256 (the file's, or of the loaded tensors for
a library's named weights), the preprocessing and the class mapping; recorded in meta.json and checked
by resume and the label store like a checkpoint's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EXTERNAL as PREFIXES
from ..errors import UserError, brief
from ..files import sha256_bytes, sha256_file
from .libraries import Loaded, Preprocess, load_timm, load_torchvision, num_outputs

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")


def is_external(ref) -> bool:
    """Whether a refinery reference names a library's model rather than one of our checkpoints."""
    return isinstance(ref, str) and ref.startswith(PREFIXES)


@dataclass(frozen=True)
class Options:
    """What a config may say about an external refinery (``RefineryConfig``'s fields of the same names)."""

    weights: str | None = None
    classes: str | None = None
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None

    @classmethod
    def of(cls, refinery_cfg) -> "Options":
        return cls(**{k: getattr(refinery_cfg, k, None) for k in cls.__dataclass_fields__})

    def override(self, pre: Preprocess) -> Preprocess:
        changes = {k: getattr(self, k) for k in ("image_size", "mean", "std", "interpolation") if getattr(self, k) is not None}
        return replace(pre, **{k: tuple(v) if k in ("mean", "std") else v for k, v in changes.items()})


def split_reference(ref: str) -> tuple[str, str, str | None]:
    """``"timm:resnet50,weights=FILE"`` -> ``("timm", "resnet50", "FILE")``."""
    kind, _, rest = ref.partition(":")
    name, *opts = rest.split(",")
    weights = None
    for opt in opts:
        key, eq, value = opt.partition("=")
        if key != "weights" or not eq or not value:
            raise UserError(f"refinery {brief(ref)}: options after the name are weights=FILE, got {brief(opt)}")
        weights = value
    if not name:
        raise UserError(f"refinery {brief(ref)}: name the model after {kind}: (e.g. {kind}:resnet50)")
    return kind, name, weights


_LOADED: dict[tuple, Loaded] = {}  # one load per process: identity() and member() share it


def load(ref: str, weights: str | None = None) -> Loaded:
    """The library model ``ref`` names (see the module docstring), on CPU, in eval mode."""
    kind, name, inline = split_reference(ref)
    weights = inline or weights
    stamp = None
    if weights and Path(weights).expanduser().is_file():
        st = Path(weights).expanduser().stat()
        stamp = (st.st_size, st.st_mtime_ns)
    key = (kind, name, weights, stamp)
    if key not in _LOADED:
        if kind == "torchvision":
            loaded = load_torchvision(name, weights)
        else:
            loaded = load_timm(name, weights, hub=kind == "hf-hub")
        loaded.model.eval().requires_grad_(False)
        _LOADED.clear()  # keep one model at a time (a ResNet-50 is 100 MB)
        _LOADED[key] = loaded
    return _LOADED[key]


def identity(ref: str, options: Options) -> str:
    """The SHA-256 a run records for this refinery: model name, weights, the overrides of its
    preprocessing and the class file (the class mapping follows from them and the dataset's classes,
    which the dataset fingerprint covers). Equal to :func:`member`'s provenance ``sha256``."""
    kind, name, inline = split_reference(ref)
    loaded = load(ref, options.weights)
    record = {
        "model": f"{kind}:{name}",
        "weights_sha256": loaded.weights_sha256,
        "preprocess": asdict(options.override(loaded.preprocess)),
        "classes_file_sha256": sha256_file(Path(options.classes).expanduser()) if options.classes else None,
    }
    return sha256_bytes(json.dumps(record, sort_keys=True).encode())


class ViewAdapter(nn.Module):
    """A library model seeing the student's crops its own way (module docstring).

    ``forward(x)``: ``x`` ``[B, c, h, w]`` crops normalised with the dataset's ``data_mean``/``data_std``
    -> ``[B, C]`` logits over the dataset's classes (``class_map``: the outputs of each, combined by
    log-sum-exp, so their softmax is the refinery's probability renormalised over the dataset's classes).
    """

    def __init__(self, model: nn.Module, pre: Preprocess, data_mean, data_std, mapping: tuple[tuple[int, ...], ...]):
        super().__init__()
        self.model, self.pre = model, pre
        self.register_buffer("data_mean", torch.tensor(data_mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("data_std", torch.tensor(data_std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        width = max(len(g) for g in mapping)
        index = torch.tensor([list(g) + [g[0]] * (width - len(g)) for g in mapping])  # [C, width]
        valid = torch.tensor([[True] * len(g) + [False] * (width - len(g)) for g in mapping])
        self.identity = width == 1 and index[:, 0].tolist() == list(range(num_outputs(model)))
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("valid", valid, persistent=False)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """The refinery's input for crops ``x``: pixels back, channels, size, its normalisation."""
        x = x.float() * self.data_std + self.data_mean  # [B, c, h, w] in [0, 1]
        if x.shape[1] != self.pre.in_chans:
            x = x.expand(-1, self.pre.in_chans, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        size = self.pre.image_size
        if x.shape[-2:] != (size, size):
            mode = self.pre.interpolation
            smooth = mode in ("bilinear", "bicubic")
            x = F.interpolate(x, size=(size, size), mode=mode, antialias=smooth, align_corners=False if smooth else None)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.view(x)).float()  # [B, outputs]
        if self.identity:
            return logits
        grouped = logits[:, self.index]  # [B, C, width]
        return torch.logsumexp(grouped.masked_fill(~self.valid, float("-inf")), dim=2)  # [B, C]


def _where(weights: str | None) -> str | None:
    """A weights file as an absolute path; a library's weights name (``IMAGENET1K_V1``) as given."""
    p = Path(weights).expanduser() if weights else None
    return str(p.resolve()) if p is not None and p.is_file() else weights


def member(ref: str, ds, options: Options, device="cpu", channels_last: bool = False, log=None):
    """``(ViewAdapter, provenance)`` for the library model ``ref`` labelling dataset ``ds``'s crops.

    The provenance records what it sees as the dataset's (classes, channels, view size, mean/std: the
    adapter takes the run's crops), so ensembles with our checkpoints and the checks of
    :func:`~label_refinery.labels.check_compatible` hold; ``external`` records the library side."""
    from .classmap import class_map, describe

    loaded = load(ref, options.weights)
    pre = options.override(loaded.preprocess)
    if pre.interpolation not in INTERPOLATIONS:
        raise UserError(f"refinery.interpolation must be one of {', '.join(INTERPOLATIONS)}, got {brief(pre.interpolation)}")
    if len(pre.mean) != pre.in_chans or len(pre.std) != pre.in_chans:
        raise UserError(f"the refinery {ref} takes {pre.in_chans} channels; refinery.mean and .std need {pre.in_chans} values each")
    outputs = num_outputs(loaded.model)
    mapping = class_map(list(ds.classes), loaded.names, loaded.wnids, outputs, options.classes, log)
    adapter = ViewAdapter(loaded.model, pre, list(ds.mean), list(ds.std), mapping).to(device)
    if channels_last:
        adapter = adapter.to(memory_format=torch.channels_last)
    external = {
        "reference": ref,
        "weights": _where(options.weights),
        "weights_sha256": loaded.weights_sha256,
        "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(pre).items()},
        "outputs": outputs,
        "class_map": describe(mapping),
        "classes_file_sha256": sha256_file(Path(options.classes).expanduser()) if options.classes else None,
    }
    provenance = {
        "path": ref,
        "sha256": identity(ref, options),
        "model": ref,
        "classes": list(ds.classes),
        "in_chans": ds.in_chans,
        "image_size": ds.image_size,
        "mean": list(ds.mean),
        "std": list(ds.std),
        "generation": 0,  # not one of a chain's generations
        "dataset_fingerprint": None,
        "external": external,
    }
    return adapter, provenance


__all__ = ["Options", "Preprocess", "ViewAdapter", "identity", "is_external", "load", "member"]
