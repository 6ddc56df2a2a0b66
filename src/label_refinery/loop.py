"""Refined labels in your own training loop: the pieces this tool's trainer is made of, as a small API
(docs/own-loop.md shows a plain PyTorch loop and a PyTorch Lightning module built from them).

- :class:`Refinery`: a frozen model (one of our checkpoints, a timm / torchvision / hf-hub model, or
  any ``nn.Module`` with its preprocessing) called on a batch of crops -> soft labels ``[B, C]``.
- :func:`refinery_loss`: the student's loss on them (soft cross-entropy at ``T``; the paper: ``T = 1``,
  no ground truth).
- :class:`CropTransform`: the random-resized crop + flip as a *value*, torchvision-v2 style:
  ``view, crop = t(image, index)``; the same ``(seed, epoch, index)`` gives the same crop anywhere, so a
  refinery, a label store and your loop agree on what each image's view was.
- :class:`~label_refinery.labels.store.StoredLabels`: a baked label store (``label-refinery bake``),
  ``store.labels(epoch, indices)`` -> ``[B, C]``, for the crops a ``CropTransform`` with the store's
  seed and crop settings cuts (``CropTransform.for_store``).

Example:
    >>> from label_refinery.loop import CropTransform, Refinery, refinery_loss   # doctest: +SKIP
    >>> refinery = Refinery.from_checkpoint("runs/digits/gen1")                   # doctest: +SKIP
    >>> loss = refinery_loss(student(views), refinery(views))                     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from .data.crops import Crop, CropSampler, apply_crops
from .errors import UserError
from .labels import refine
from .labels.store import StoredLabels, read_manifest
from .losses import refinery_loss

__all__ = ["CropTransform", "Refinery", "StoredLabels", "refinery_loss"]


class Refinery:
    """A frozen refinery: ``refinery(crops)`` -> ``softmax(model(preprocess(crops)) / T)``, float32 ``[B, C]``.

    Args:
        model: any classifier; it is put in eval mode (BatchNorm uses its running statistics) and
            frozen, and it is not an ``nn.Module`` attribute of anything, so a framework's ``.train()``
            on your student (Lightning's, say) never switches it back to train mode.
        preprocess: applied to the crops before the model (e.g. a resize and the refinery's own
            normalisation); ``None``: the crops as given.
        temperature: ``T`` of the softmax (the paper: 1).
    """

    def __init__(self, model: nn.Module, preprocess: Callable | None = None, temperature: float = 1.0):
        if not temperature > 0:
            raise UserError(f"the refinery's temperature must be > 0, got {temperature}")
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.temperature = temperature
        self.info: dict = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device="cpu", temperature: float = 1.0) -> "Refinery":
        """One of our checkpoints (a generation folder or its model.safetensors). It expects crops the
        way it was trained: ``info["image_size"]`` px, normalised with ``info["mean"]``/``info["std"]``."""
        from .checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        ref = cls(ckpt.build_model(device), temperature=temperature)
        ref.info = {k: ckpt.meta.get(k) for k in ("model", "classes", "in_chans", "image_size", "mean", "std")}
        ref.info["sha256"] = ckpt.sha256
        return ref

    @classmethod
    def from_library(
        cls, ref: str, classes: list[str], mean, std, *, weights: str | None = None, classes_file: str | None = None,
        device="cpu", temperature: float = 1.0,
    ) -> "Refinery":  # fmt: skip
        """A library's model (``timm:NAME``, ``torchvision:NAME``, ``hf-hub:ORG/NAME``) labelling crops
        normalised with ``mean``/``std`` (yours: a tuple per channel), for your ``classes`` (mapped to its
        outputs as ``--refinery`` maps them: docs/configuration.md). It sees each crop at its own
        input size and normalisation."""
        from .labels.external import Options, member

        data = SimpleNamespace(classes=list(classes), mean=tuple(mean), std=tuple(std), in_chans=len(mean), image_size=None)
        adapter, provenance = member(ref, data, Options(weights=weights, classes=classes_file), device)
        out = cls(adapter, temperature=temperature)
        out.info = provenance
        return out

    def to(self, device) -> "Refinery":
        self.model.to(device)
        return self

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = crops if self.preprocess is None else self.preprocess(crops)
            probs = refine(self.model, x, self.temperature)  # [B, C]
        return probs.clone()  # an inference tensor cannot be saved for the student's backward


def _as_tensor(image) -> torch.Tensor:
    """``[C, H, W]`` float in [0, 1] from a PIL image, a uint8 tensor/array (HWC) or a float tensor."""
    from torchvision.transforms.v2.functional import to_image

    t = to_image(image).as_subclass(torch.Tensor)  # PIL, HWC arrays and CHW/HW tensors -> [C, H, W]
    return t.float() / 255 if t.dtype == torch.uint8 else t.float()


class CropTransform:
    """The training crop of one image as a value: ``view, crop = t(image, index)``.

    ``view`` is ``[C, size, size]`` float (normalised with ``mean``/``std`` if given), ``crop`` the
    :class:`~label_refinery.data.crops.Crop` it was cut from (rows, columns, flip), a pure function of
    ``(seed, epoch, index, image size)``: call :meth:`set_epoch` each epoch (from every
    ``DataLoader`` worker it reaches: the transform holds no random state, so workers agree).
    The rule is torchvision's ``RandomResizedCrop`` + horizontal flip; the resampling is this tool's
    (antialiased bilinear), the same as its trainer's, so views equal the trainer's and a label store's.
    """

    def __init__(self, size: int, seed: int = 0, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p: float = 0.5,
                 mean=None, std=None):  # fmt: skip
        self.size, self.sampler, self.epoch = size, CropSampler(seed, tuple(scale), tuple(ratio), flip_p), 0
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    @classmethod
    def for_store(cls, store: str | Path, size: int, mean=None, std=None) -> "CropTransform":
        """The crops a label store was baked for (its sampler's seed and settings), so that
        ``store.labels(epoch, indices)`` labels exactly these views."""
        s = read_manifest(store).get("sampler")
        if not s:
            raise UserError(f"label store {store} holds static labels (one per image): it has no crops to replay")
        return cls(size, s["seed"], s["scale"], s["ratio"], s["flip_p"], mean, std)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def crop(self, image, index: int) -> Crop:
        """The crop of image ``index`` this epoch, without cutting it."""
        t = _as_tensor(image)
        return self.sampler.sample(int(index), self.epoch, t.shape[-2], t.shape[-1])

    def cut(self, image, crop: Crop, size: int | None = None) -> torch.Tensor:
        """``crop`` of ``image`` at ``size`` px (default: the transform's), normalised: e.g. the same
        crop at a refinery's larger input size."""
        t = _as_tensor(image)
        view = apply_crops(t[None], torch.tensor([list(crop)], dtype=torch.int64), size or self.size)[0]
        return view if self.mean is None else (view - self.mean) / self.std

    def __call__(self, image, index: int) -> tuple[torch.Tensor, Crop]:
        crop = self.crop(image, index)
        return self.cut(image, crop), crop
