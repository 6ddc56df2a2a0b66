import pytest
import torch

from label_refinery import UserError
from label_refinery.models import check_model_name, count_parameters, create_model


@pytest.mark.parametrize("size", [8, 28, 32])
@pytest.mark.parametrize("name", ["cnn-small", "resnet-cifar", "resnet-cifar:depth=8,width=8", "cnn-small:width=0.5"])
def test_builtin_shapes(name, size):
    model = create_model(name, in_chans=3 if size == 32 else 1, num_classes=7).eval()
    assert model(torch.zeros(2, 3 if size == 32 else 1, size, size)).shape == (2, 7)


def test_builtin_sizes():
    assert 200_000 < count_parameters(create_model("cnn-small", 1, 10)) < 250_000
    assert 260_000 < count_parameters(create_model("resnet-cifar", 3, 10)) < 280_000  # ResNet-20: 0.27M


def test_torchvision_adapted():
    import torchvision

    model = create_model("torchvision:resnet18", in_chans=1, num_classes=5).eval()
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 5)
    # torchvision's own ResNet-18 for 5 classes, with a 1-channel stem: 64 x 2 x 7 x 7 stem weights fewer
    reference = torchvision.models.resnet18(num_classes=5)
    assert count_parameters(model) == count_parameters(reference) - 64 * 2 * 7 * 7
    assert model.conv1.in_channels == 1 and model.fc.out_features == 5


def test_timm_adapted():
    timm = pytest.importorskip("timm", reason="timm is an optional dependency")
    model = create_model("timm:resnet18", in_chans=1, num_classes=5).eval()
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 5)
    assert count_parameters(model) == count_parameters(timm.create_model("resnet18", in_chans=1, num_classes=5))


def test_pretrained_from_local_file(tmp_path):
    from safetensors.torch import save_file

    source = create_model("torchvision:resnet18", 3, 1000)
    save_file(source.state_dict(), str(tmp_path / "r18.safetensors"))
    model = create_model("torchvision:resnet18", in_chans=1, num_classes=4, pretrained=str(tmp_path / "r18.safetensors"))
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)  # weights loaded
    assert model.fc.out_features == 4
    # grey input: the first filters are the RGB filters summed
    assert torch.allclose(model.conv1.weight[:, 0], source.conv1.weight.sum(1), atol=1e-5)


@pytest.mark.parametrize("name", ["nope", "torchvision:nope", "cnn-small:width", "resnet-cifar:depth=9"])
def test_bad_names(name):
    with pytest.raises(UserError):
        create_model(name, 1, 10)


def test_check_model_name():
    check_model_name("cnn-small")
    check_model_name("torchvision:resnet18")
    with pytest.raises(UserError, match="valid names: alexnet, cnn-small, darknet19"):
        check_model_name("alexnet-bn")
