"""XNOR-Net layers and the paper's ResNetXnor-50 (Rastegari et al. 2016, "XNOR-Net", Sec. 3).

A binary convolution approximates ``I * W`` by ``(sign(I) * sign(W)) . K . alpha``:

- ``alpha`` [C_out]: the mean absolute weight of each filter, so ``alpha * sign(W)`` is the best
  binary approximation of W in L2 (XNOR-Net eq. 4);
- ``K`` [B, 1, H', W']: the mean absolute input over channels, averaged over each convolution
  window (XNOR-Net Fig. 2, "K = A * k");
- ``sign`` maps 0 to +1, so both operands of the convolution are +-1 (the zero padding at borders
  aside, which K accounts for the same way).

Gradients pass ``sign`` by the straight-through estimator of XNOR-Net Sec. 3.2 (from Hubara et al.
2016): ``d sign(r) / dr = 1 if |r| <= 1 else 0``; ``alpha`` and ``K`` are differentiated as written.
Blocks use XNOR-Net's order BatchNorm -> binary activation -> binary convolution, and, as in XNOR-Net,
the first convolution and the last fully connected layer stay full precision (so does the BatchNorm
after them). Binary layers are simulated in float arithmetic; this is for accuracy studies, not speed.

Example:
    >>> from label_refinery.models import create_model
    >>> m = create_model("xnor-resnet50:width=0.25,small=true", in_chans=1, num_classes=10)
    >>> m(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .paper import kaiming_init, scaled


class SignSTE(torch.autograd.Function):
    """``sign`` with sign(0) = +1 forward; straight-through ``grad * 1[|x| <= 1]`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    return SignSTE.apply(x)


class XnorConv2d(nn.Conv2d):
    """A convolution with binary weights (scaled per filter by alpha) and binary inputs (scaled
    per position by K); same constructor as :class:`torch.nn.Conv2d` (no bias)."""

    def __init__(self, *args, **kwargs):
        kwargs["bias"] = False
        super().__init__(*args, **kwargs)

    def binary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sign(W), alpha)``: [C_out, C_in/g, k, k] of +-1 and [C_out] mean |W| per filter."""
        return sign_ste(self.weight), self.weight.abs().mean(dim=(1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_sign, alpha = self.binary_weight()
        x_sign = sign_ste(x)  # [B, C_in, H, W], +-1
        a = x.abs().mean(dim=1, keepdim=True)  # [B, 1, H, W]: A of XNOR-Net
        k = F.avg_pool2d(a, self.kernel_size, self.stride, self.padding, count_include_pad=True)  # [B, 1, H', W']
        out = F.conv2d(x_sign, w_sign, None, self.stride, self.padding, self.dilation, self.groups)
        return out * k * alpha.view(1, -1, 1, 1)


def xnor_unit(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    """BatchNorm -> sign -> binary conv (XNOR-Net Fig. 3's block order)."""
    return nn.Sequential(nn.BatchNorm2d(cin), XnorConv2d(cin, cout, k, stride, k // 2))


class XnorBottleneck(nn.Module):
    """ResNet-50's bottleneck (1x1, 3x3 with the stride, 1x1 to 4x) with every convolution
    binary, the projection shortcut included; the residual sum stays full precision."""

    def __init__(self, cin: int, mid: int, stride: int):
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(xnor_unit(cin, mid, 1), xnor_unit(mid, mid, 3, stride), xnor_unit(mid, cout, 1))
        self.shortcut = xnor_unit(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class XnorResNet50(nn.Module):
    """ResNetXnor-50: ResNet-50's layout (3, 4, 6, 3 bottlenecks; widths 64-128-256-512 x 4) with
    XNOR bottlenecks; full-precision 7x7 stem (``small``: 3x3 stride 1, no max-pool), final
    BatchNorm -> ReLU -> average pool and full-precision fc. 25.6M parameters at 1000 classes."""

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, width: float = 1.0, small: bool = False):
        super().__init__()
        base = scaled(64, width)
        stem_conv = (
            nn.Conv2d(in_chans, base, 3, 1, 1, bias=False) if small else nn.Conv2d(in_chans, base, 7, 2, 3, bias=False)
        )
        self.stem = nn.Sequential(
            stem_conv, nn.BatchNorm2d(base), nn.ReLU(inplace=True), nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        )
        blocks, cin = [], base
        for stage, count in enumerate((3, 4, 6, 3)):
            mid = base * 2**stage
            for i in range(count):
                blocks.append(XnorBottleneck(cin, mid, 2 if (stage > 0 and i == 0) else 1))
                cin = 4 * mid
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(cin, num_classes),
        )
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))  # [B, 2048, H/32, W/32] -> [B, classes]


__all__ = ["SignSTE", "XnorBottleneck", "XnorConv2d", "XnorResNet50", "sign_ste"]
