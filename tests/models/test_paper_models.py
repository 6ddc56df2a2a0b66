"""The paper's twelve architectures: shapes at ImageNet and small sizes, parameter counts against
published or hand-computed references, XNOR layers' binary forward and straight-through backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from label_refinery import UserError
from label_refinery.models import check_model_name, count_parameters, create_model
from label_refinery.models.xnor import XnorConv2d, sign_ste

PAPER = ["alexnet", "mobilenet", "mobilenet-0.75", "mobilenet-0.5", "mobilenet-0.25", "resnet18", "resnet34",
         "resnet50", "xnor-resnet50", "vgg16", "vgg19", "darknet19"]


def imagenet_model(name: str) -> nn.Module:
    """Built on the meta device: shapes and counts without allocating (VGG is 138M parameters)."""
    with torch.device("meta"):
        return create_model(name, 3, 1000).eval()


# Published counts at 1000 classes: MobileNet v1 Table 6 (in millions, to 0.1M); torchvision's model
# documentation (exact) for the ResNets and VGG-BN.
PUBLISHED_M = {"mobilenet": 4.2, "mobilenet-0.75": 2.6, "mobilenet-0.5": 1.3, "mobilenet-0.25": 0.5}
TORCHVISION = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "vgg16": 138_365_992, "vgg19": 143_678_248}


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_mobilenet_parameter_counts_published(name):
    assert round(count_parameters(imagenet_model(name)) / 1e6, 1) == PUBLISHED_M[name]


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_parameter_counts_exact(name):
    assert count_parameters(imagenet_model(name)) == TORCHVISION[name]


def multiply_adds(model: nn.Module, size: int = 224) -> int:
    """Multiply-adds of convolutions and linear layers in one forward pass (shapes from the meta device)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.shape[1:].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model(torch.zeros(1, 3, size, size, device="meta"))
    for h in handles:
        h.remove()
    return total


# Published multiply-adds at 224x224 (strides and paddings, which shapes and parameter counts cannot
# catch behind a global pool): MobileNet v1 Table 6 (millions), Darknet-19 5.58 BFLOPs = 2.79G
# multiply-adds (YOLO9000 Table 6), torchvision's ResNet-50 4.09 GFLOPS (its docs count multiply-adds).
@pytest.mark.parametrize("name, published, rel", [
    ("mobilenet", 569e6, 0.002), ("mobilenet-0.75", 325e6, 0.002), ("mobilenet-0.5", 149e6, 0.005),
    ("mobilenet-0.25", 41e6, 0.01), ("darknet19", 2.79e9, 0.005), ("resnet50", 4.09e9, 0.005),
    ("xnor-resnet50", 4.09e9, 0.005),
])
def test_multiply_adds_published(name, published, rel):
    assert multiply_adds(imagenet_model(name)) == pytest.approx(published, rel=rel)


def test_alexnet_multiply_adds_from_the_release_layout():
    # maps 55 -> 27 (pool) -> 27 -> 13 (pool) -> 13 -> 13 -> 13 -> 6 (pool), at 224x224
    expected = (55 * 55 * 96 * 3 * 121 + 27 * 27 * 256 * 96 * 25 + 13 * 13 * (384 * 256 + 384 * 384 + 256 * 384) * 9
                + 9216 * 4096 + 4096 * 4096 + 4096 * 1000)
    assert multiply_adds(imagenet_model("alexnet")) == expected


def conv_bn(cin, cout, k):
    return cin * cout * k * k + 2 * cout  # weights (no bias) + BatchNorm scale and shift


def test_alexnet_count_from_the_release_layout():
    # PAPER.md: 96 k11 | 256 k5 | 384 k3 | 384 k3 | 256 k3 | fc 9216-4096-4096 with BN | fc 4096-1000 no bias
    # (no published count for this variant; layers before BatchNorm have no bias: our choice)
    expected = (conv_bn(3, 96, 11) + conv_bn(96, 256, 5) + conv_bn(256, 384, 3) + conv_bn(384, 384, 3)
                + conv_bn(384, 256, 3) + conv_bn(9216, 4096, 1) + conv_bn(4096, 4096, 1) + 4096 * 1000)
    model = imagenet_model("alexnet")
    assert count_parameters(model) == expected == 62_386_912
    assert model.classifier[-1].bias is None
    assert not any(isinstance(m, (nn.Dropout, nn.LocalResponseNorm)) for m in model.modules())


def test_darknet19_count_from_yolo9000_table6():
    layers = [(3, 32, 3), (32, 64, 3), (64, 128, 3), (128, 64, 1), (64, 128, 3), (128, 256, 3), (256, 128, 1),
              (128, 256, 3), (256, 512, 3), (512, 256, 1), (256, 512, 3), (512, 256, 1), (256, 512, 3),
              (512, 1024, 3), (1024, 512, 1), (512, 1024, 3), (1024, 512, 1), (512, 1024, 3)]
    expected = sum(conv_bn(*layer) for layer in layers) + 1024 * 1000 + 1000  # + the 1x1 classifier conv, with bias
    assert len(layers) + 1 == 19
    assert count_parameters(imagenet_model("darknet19")) == expected


def test_xnor_resnet50_has_resnet50_weights():
    xnor, plain = imagenet_model("xnor-resnet50"), imagenet_model("resnet50")
    weights = lambda m: sum(p.numel() for n, p in m.named_parameters() if p.dim() > 1)  # noqa: E731
    assert weights(xnor) == weights(plain) == 25_502_912  # conv + fc weights; BatchNorm layouts differ


@pytest.mark.parametrize("name", PAPER)
def test_imagenet_forward_shape(name):
    assert imagenet_model(name)(torch.zeros(2, 3, 224, 224, device="meta")).shape == (2, 1000)


@pytest.mark.parametrize("name", PAPER)
def test_small_inputs(name):
    torch.manual_seed(0)
    grey = create_model(f"{name}:small=true", in_chans=1, num_classes=10).eval()
    out = grey(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    with torch.device("meta"):
        rgb = create_model(f"{name}:small=1", in_chans=3, num_classes=10).eval()
    assert rgb(torch.zeros(2, 3, 32, 32, device="meta")).shape == (2, 10)


@pytest.mark.parametrize("name, lr", [
    ("mobilenet-0.25:small=true", 3e-3), ("alexnet:width=0.25,small=true", 3e-3), ("darknet19:width=0.25,small=true", 3e-3),
    ("xnor-resnet50:width=0.25,small=true", 1e-2),  # binary layers need a larger step (at 3e-3: 0.57 x the start)
])
def test_small_models_fit_a_batch(name, lr):
    """Real learning: 40 Adam steps on 32 fixed 16x16 images bring the loss well below its start."""
    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=4)
    x, y = torch.randn(32, 1, 16, 16), torch.arange(32) % 4
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_width_and_small_change_what_they_say():
    full, quarter = imagenet_model("mobilenet"), imagenet_model("mobilenet:width=0.25")
    assert full.classifier.in_features == 1024 and quarter.classifier.in_features == 256
    assert create_model("resnet18", 3, 10).conv1.stride == (2, 2)
    small = create_model("resnet18:small=true", 3, 10)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.Identity)


@pytest.mark.parametrize("name, phrase", [
    ("mobilenet-0.5:width=1", "unknown option"),
    ("resnet18:width=2", "takes small"),
    ("alexnet:small=maybe", "true or false"),
    ("alexnet:depth=3", "takes width, small"),
    ("alexnet:width=0", "width must be"),
    ("darknet19:width=inf", "width must be"),
    ("mobilenet:width=abc", "could not convert"),
])
def test_bad_options(name, phrase):
    with pytest.raises(UserError, match=phrase):
        check_model_name(name)
        create_model(name, 1, 10)


@pytest.mark.parametrize("name, size", [("darknet19", 28), ("alexnet", 32), ("vgg16", 28)])
def test_too_small_images_refused_with_the_fix(name, size):
    from label_refinery.models import check_input_size

    with pytest.raises(UserError, match=f"{name}:small=true"):
        check_input_size(name, 1, 10, size)
    check_input_size(f"{name}:small=true", 1, 10, size)  # the fix works


def test_no_published_weights_for_our_models():
    with pytest.raises(UserError, match="torchvision:NAME"):
        create_model("resnet50", 3, 1000, pretrained="hub")


# --- XNOR ---------------------------------------------------------------------------------------------

def test_sign_ste_forward_and_straight_through_backward():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]  # sign(0) = +1: always binary
    g = torch.arange(1.0, 8.0)
    y.backward(g)
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 6, 0]  # grad * 1[|x| <= 1]


def test_xnor_conv_runs_on_binary_operands(monkeypatch):
    torch.manual_seed(0)
    layer = XnorConv2d(4, 6, 3, 1, 1)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    seen = []
    real_conv = F.conv2d

    def spy(inp, weight, *args):
        seen.append((inp.detach(), weight.detach()))
        return real_conv(inp, weight, *args)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    out = layer(x)
    monkeypatch.undo()
    (inp, weight), = seen
    assert set(inp.unique().tolist()) == {-1.0, 1.0} and set(weight.unique().tolist()) == {-1.0, 1.0}
    # XNOR-Net eq. 11: (sign(I) * sign(W)) . K . alpha, K the window mean of mean_c |I|
    alpha = layer.weight.detach().abs().mean(dim=(1, 2, 3))
    k = F.avg_pool2d(x.detach().abs().mean(1, keepdim=True), 3, 1, 1)
    expected = real_conv(x.detach().sign(), layer.weight.detach().sign(), None, 1, 1) * k * alpha.view(1, -1, 1, 1)
    assert torch.allclose(out.detach(), expected, atol=1e-5)
    out.square().sum().backward()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_xnor_weight_gradient_is_straight_through():
    """One 1x1 filter on an all-ones input (K = 1): out = alpha * sign(w) = |w| * sign(w), so
    d out / d w = sign(w)^2 (through alpha) + |w| * STE(w)."""
    layer = XnorConv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.5)
    layer(torch.ones(1, 1, 1, 1)).sum().backward()
    assert layer.weight.grad.item() == pytest.approx(1.0 + 0.5 * 1)  # |w| <= 1: the STE passes the gradient
    with torch.no_grad():
        layer.weight.fill_(2.0)
    layer.weight.grad = None
    layer(torch.ones(1, 1, 1, 1)).sum().backward()
    assert layer.weight.grad.item() == pytest.approx(1.0)  # |w| > 1: the STE passes nothing, alpha's term stays


def test_xnor_resnet50_first_and_last_layers_full_precision():
    model = imagenet_model("xnor-resnet50")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert type(convs[0]) is nn.Conv2d  # the stem
    assert all(isinstance(m, XnorConv2d) for m in convs[1:])
    assert len(convs[1:]) == 3 * 16 + 4  # 16 bottlenecks of 3 binary convs, 4 binary projection shortcuts
    assert type(model.head[-1]) is nn.Linear
