"""The architectures of the Label Refinery paper (arXiv 1805.02641; the results table of its 2018
release's README), by registry name.

=================  ======================================================  ==================
registry name      architecture                                            source
=================  ======================================================  ==================
``alexnet``        the 2018 release's AlexNet: BatchNorm, no dropout/LRN,  this module
                   no classifier bias (Krizhevsky et al. 2012 layout)
``mobilenet``      MobileNet v1, ``width`` multiplier 1.0/0.75/0.5/0.25     this module
                   (Howard et al. 2017, Table 1); aliases ``mobilenet-0.75``,
                   ``mobilenet-0.5``, ``mobilenet-0.25``
``resnet18/34/50`` ResNets (He et al. 2016)                                torchvision
``xnor-resnet50``  ResNet-50 with XNOR-Net binary layers                   :mod:`.xnor`
``vgg16/19``       VGG (Simonyan & Zisserman 2015) with BatchNorm           torchvision
``darknet19``      Darknet-19 (Redmon & Farhadi 2017, YOLO9000 Table 6)     this module
=================  ======================================================  ==================

Every one builds for ImageNet (224x224, 1000 classes) and, with the option ``small=true``, for
inputs of 28 to 64 pixels: a stride-1 first convolution (3x3 for AlexNet and the ResNets) and no
first max-pool (ResNets, VGG, Darknet-19), so the network still has spatial maps to work with;
everything after the stem is unchanged. AlexNet keeps its three max-pools: at 28 px its last map is
3x3, which its adaptive pool spreads to the 6x6 its classifier takes. ``width`` (AlexNet, MobileNet, Darknet-19, XNOR-ResNet-50) scales every channel count,
for small CPU experiments; ``width=1`` is the paper's network.

Choices where the paper is silent (documented, ours):
- VGG uses torchvision's BatchNorm variants (``vgg16_bn``): the release's own AlexNet has
  BatchNorm and its step schedule (lr 0.01, no weight decay) trains plain VGG from scratch poorly.
- Convolutions and fully connected layers followed by BatchNorm have no bias (the BatchNorm shift
  makes it redundant); this includes AlexNet's fc6 and fc7.

Example:
    >>> from label_refinery.models import create_model
    >>> create_model("mobilenet:width=0.25,small=true", in_chans=1, num_classes=10)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import brief
from .adapt import replace_first_conv

TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")


def flag(value: str | bool) -> bool:
    """A boolean model option: true/false, 1/0, yes/no."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in TRUE + FALSE:
        return str(value).lower() in TRUE
    raise ValueError(f"expected true or false, got {brief(value)}")


def scaled(channels: int, width: float) -> int:
    """``channels * width``, at least 8."""
    return max(8, round(channels * float(width)))


def conv_bn_relu(
    cin: int,
    cout: int,
    k: int,
    stride: int = 1,
    groups: int = 1,
    pool: nn.Module | None = None,
    act: nn.Module | None = None,
) -> nn.Sequential:
    """conv (no bias) -> BN -> [pool] -> activation: the release's block order (pool before ReLU)."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if pool is not None:
        layers.append(pool)
    layers.append(act if act is not None else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def kaiming_init(model: nn.Module) -> nn.Module:
    """He-normal convolutions (fan_out), unit BatchNorm, N(0, 0.01) linear layers, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    return model


class AlexNetBN(nn.Module):
    """The AlexNet of the 2018 release (its ``models/alexnet.py``, as described in PAPER.md):

    conv 96 k11 s4 p2 -> BN -> maxpool 2 -> ReLU; conv 256 k5 p2 -> BN -> maxpool 2 -> ReLU;
    conv 384 k3 -> BN -> ReLU; conv 384 k3 -> BN -> ReLU; conv 256 k3 -> BN -> maxpool 2 -> ReLU;
    fc 9216 -> 4096 -> BN -> ReLU; fc 4096 -> 4096 -> BN -> ReLU; fc 4096 -> classes, no bias.
    Convolution groups are 1 (the release has no two-GPU split), so it has 62.4M parameters at
    1000 classes, against the original's 61M. Default PyTorch initialisation, as in the release.
    ``small``: first convolution 3x3 stride 1. An adaptive average pool to 6x6 (the identity at
    224x224) lets any input size reach the 9216-wide classifier.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, width: float = 1.0, small: bool = False):
        super().__init__()
        c1, c2, c3, c4, c5, hidden = (scaled(c, width) for c in (96, 256, 384, 384, 256, 4096))
        first = nn.Conv2d(in_chans, c1, 3, 1, 1, bias=False) if small else nn.Conv2d(in_chans, c1, 11, 4, 2, bias=False)
        self.features = nn.Sequential(
            nn.Sequential(first, nn.BatchNorm2d(c1), nn.MaxPool2d(2), nn.ReLU(inplace=True)),
            conv_bn_relu(c1, c2, 5, pool=nn.MaxPool2d(2)),
            conv_bn_relu(c2, c3, 3),
            conv_bn_relu(c3, c4, 3),
            conv_bn_relu(c4, c5, 3, pool=nn.MaxPool2d(2)),
            nn.AdaptiveAvgPool2d(6),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c5 * 36, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # [B, C5, 6, 6] -> [B, classes]


# MobileNet v1 body (Howard et al. 2017, Table 1): (output channels, stride) of each
# depthwise-separable layer after the 32-channel stride-2 stem.
MOBILENET_V1 = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class MobileNetV1(nn.Module):
    """MobileNet v1 with width multiplier alpha: 4.2M / 2.6M / 1.3M / 0.5M parameters at
    alpha = 1 / 0.75 / 0.5 / 0.25 and 1000 classes (the paper's Table 6). Each layer is a 3x3
    depthwise conv -> BN -> ReLU, then a 1x1 conv -> BN -> ReLU; global average pool; fc.
    ``small``: the stem has stride 1 (total stride 16 instead of 32).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, width: float = 1.0, small: bool = False):
        super().__init__()
        cin = scaled(32, width)
        layers = [conv_bn_relu(in_chans, cin, 3, 1 if small else 2)]
        for cout, stride in MOBILENET_V1:
            cout = scaled(cout, width)
            layers += [conv_bn_relu(cin, cin, 3, stride, groups=cin), conv_bn_relu(cin, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(cin, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # [B, 1024*alpha] -> [B, classes]


# Darknet-19 (YOLO9000, Table 6): channels of each convolution (3x3 unless marked 1x1 by a
# negative number), "M" a 2x2 max-pool.
DARKNET19 = (
    32,
    "M",
    64,
    "M",
    128,
    -64,
    128,
    "M",
    256,
    -128,
    256,
    "M",
    512,
    -256,
    512,
    -256,
    512,
    "M",
    1024,
    -512,
    1024,
    -512,
    1024,
)


class Darknet19(nn.Module):
    """Darknet-19: 19 conv -> BN -> leaky ReLU (0.1) layers and five max-pools, then a 1x1
    convolution to the classes (with bias) and a global average pool; 20.8M parameters at 1000
    classes. ``small``: the first max-pool is dropped (total stride 16).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, width: float = 1.0, small: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        cin, pools = in_chans, 0
        for item in DARKNET19:
            if item == "M":
                pools += 1
                if not (small and pools == 1):
                    layers.append(nn.MaxPool2d(2))
                continue
            cout = scaled(abs(item), width)
            layers.append(conv_bn_relu(cin, cout, 1 if item < 0 else 3, act=nn.LeakyReLU(0.1, inplace=True)))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Conv2d(cin, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # [B, 1024, H/32, W/32] -> [B, classes]


def small_stem(model: nn.Module, in_chans: int) -> nn.Module:
    """A torchvision ResNet or VGG for small inputs: a 3x3 stride-1 first conv (ResNet) and no
    first max-pool, so 32x32 inputs reach the last stage at 4x4 (ResNet) or 2x2 (VGG) instead of
    1x1."""
    if hasattr(model, "conv1"):  # ResNet: conv 7x7/2 + maxpool -> conv 3x3/1
        model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    else:  # VGG: drop the first of its five max-pools
        first = next(i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d))
        model.features[first] = nn.Identity()
    return model


def torchvision_paper_model(arch: str, in_chans: int, num_classes: int, small: bool = False) -> nn.Module:
    """torchvision's ``arch`` (random init) with ``in_chans`` inputs, optionally for small inputs."""
    import torchvision

    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if small:
        small_stem(model, in_chans)
    replace_first_conv(model, in_chans)
    return model


__all__ = ["AlexNetBN", "Darknet19", "MobileNetV1", "flag", "torchvision_paper_model"]
