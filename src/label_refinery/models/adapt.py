"""Adapting an architecture to a dataset: the first convolution to its channels, the last linear
layer to its classes (torchvision models, and the paper's models built on them).

Example:
    >>> import torchvision
    >>> m = torchvision.models.resnet18(weights=None)
    >>> replace_first_conv(m, 1); replace_last_linear(m, 10)
    >>> m.conv1.in_channels, m.fc.out_features
    (1, 10)
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError


def replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """Swap the first Conv2d for one with ``in_chans`` inputs; pretrained filters are averaged."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_chans:
                    return
                new = nn.Conv2d(
                    in_chans,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                    child.padding_mode,
                )
                with torch.no_grad():
                    new.weight.copy_(
                        child.weight.mean(1, keepdim=True).expand_as(new.weight) * (child.in_channels / in_chans)
                    )
                    if child.bias is not None:
                        new.bias.copy_(child.bias)
                setattr(parent, child_name, new)
                return


def replace_last_linear(model: nn.Module, num_classes: int) -> None:
    """Swap the last Linear for a fresh one with ``num_classes`` outputs (kept if it already has them)."""
    last = None
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last = (parent, child_name, child)
    if last is None:
        raise UserError(f"cannot adapt {type(model).__name__} to {num_classes} classes: it has no Linear layer")
    parent, child_name, child = last
    if child.out_features != num_classes:
        setattr(parent, child_name, nn.Linear(child.in_features, num_classes, bias=child.bias is not None))
