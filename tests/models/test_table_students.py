"""Issue 24's students: the MLP and the VGG-style network, beside cnn-small at a quarter width."""

import torch

from label_refinery.models import count_parameters, create_model


def test_the_table_students_build_and_span_parameters():
    sizes = {}
    for name in ("mlp", "cnn-small:width=0.25", "vgg-small", "mlp:hidden=64,side=8", "vgg-small:width=8"):
        m = create_model(name, 1, 100).eval()
        assert m(torch.zeros(3, 1, 32, 32)).shape == (3, 100), name
        sizes[name] = count_parameters(m)
    assert sizes["mlp"] == 16 * 16 * 256 + 2 * 256 + 256 * 256 + 2 * 256 + 256 * 100 + 100
    assert sizes["vgg-small"] / sizes["cnn-small:width=0.25"] > 10
