"""Label-quality metrics against hand-computed examples and references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from label_refinery.tools import analysis as A
from label_refinery.tools.analysis import distractor_mass


def test_entropy_and_max_prob():
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    assert A.entropy(p).tolist() == pytest.approx([0.0, math.log(4), math.log(2)], abs=1e-6)
    assert A.max_prob(p).tolist() == [1.0, 0.25, 0.5]


def test_agreement_given_prob_and_margin():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.45, 0.1, 0.45]])
    y = torch.tensor([0, 0, 2])
    assert A.agreement(p, y) == pytest.approx(1 / 3)  # row 2 says 1; row 3 ties and argmax takes class 0
    assert A.given_prob(p, y).tolist() == pytest.approx([0.7, 0.3, 0.45])
    assert A.margin(p, y).tolist() == pytest.approx([0.5, -0.3, 0.0])


def test_kl_matches_torch():
    torch.manual_seed(0)
    p, q = torch.rand(5, 7).softmax(1), torch.rand(5, 7).softmax(1)
    ref = F.kl_div(q.log(), p, reduction="none").sum(1)
    assert torch.allclose(A.kl(p, q), ref, atol=1e-6)
    assert torch.allclose(A.kl(p, p), torch.zeros(5), atol=1e-6)


def test_soft_confusion_by_hand():
    p = torch.tensor([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.1, 0.1, 0.8]])
    y = torch.tensor([0, 0, 2])
    m = A.soft_confusion(p, y, 3)
    assert m[0].tolist() == pytest.approx([0.7, 0.3, 0.0])  # mean of rows 1 and 2
    assert m[1].tolist() == [0.0, 0.0, 0.0]  # no image labelled 1
    assert m[2].tolist() == pytest.approx([0.1, 0.1, 0.8])
    assert A.ambiguous_pairs(m, k=2) == [(0, 1, pytest.approx(0.3)), (0, 2, pytest.approx(0.1))]  # M[0,1]+M[1,0], M[0,2]+M[2,0]


def test_crop_disagreement_and_summary():
    y = torch.tensor([0, 1])
    crop_top1 = torch.tensor([[0, 0, 1, 2], [1, 1, 1, 1]])
    assert A.crop_disagreement(crop_top1, y).tolist() == [0.5, 0.0]
    p_images = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    p_crops = torch.tensor([[[0.9, 0.1], [0.4, 0.6]], [[0.3, 0.7], [0.1, 0.9]]])  # [N=2, K=2, C=2]
    s = A.label_summary(p_images, p_crops, y)
    assert (s["images"], s["crops_per_image"]) == (2, 2)
    assert s["agreement_images"] == 1.0 and s["agreement_crops"] == 0.75 and s["crops_other_top1"] == 0.25
    assert s["max_prob_crops"] == pytest.approx((0.9 + 0.6 + 0.7 + 0.9) / 4)


def test_distractor_mass_by_hand():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7], [0.5, 0.5, 0.0]])
    y = torch.tensor([0, 0, 1])
    d = torch.tensor([1, 2, 2])
    out = distractor_mass(p, y, d)
    assert out["distractor_mass"] == pytest.approx((0.3 + 0.7 + 0.0) / 3)
    assert out["given_mass"] == pytest.approx((0.6 + 0.2 + 0.5) / 3)
    assert out["other_mass"] == pytest.approx((0.1 + 0.1 + 0.5) / 3)  # 3 classes: one "other" per row
    assert out["distractor_top1"] == pytest.approx(1 / 3)  # only row 2's top-1 is its distractor
