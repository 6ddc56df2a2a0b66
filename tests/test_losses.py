import pytest
import torch
import torch.nn.functional as F

from label_refinery.losses import kl_divergence, one_hot_labels, refinery_loss, soft_cross_entropy


def _probs(b=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.softmax(torch.randn(b, c, generator=g) * 2, dim=1)


def test_soft_ce_equals_torch_cross_entropy_with_probability_targets():
    z = torch.randn(6, 5) * 3
    q = _probs()
    assert torch.allclose(soft_cross_entropy(z, q), F.cross_entropy(z, q), atol=1e-6)


def test_soft_ce_with_one_hot_equals_hard_cross_entropy():
    z = torch.randn(8, 7)
    y = torch.randint(0, 7, (8,))
    assert torch.allclose(soft_cross_entropy(z, one_hot_labels(y, 7)), F.cross_entropy(z, y), atol=1e-6)


def test_label_smoothing_matches_torch():
    z = torch.randn(8, 7)
    y = torch.randint(0, 7, (8,))
    ours = soft_cross_entropy(z, one_hot_labels(y, 7, smoothing=0.1))
    assert torch.allclose(ours, F.cross_entropy(z, y, label_smoothing=0.1), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kl_matches_torch_kl_div(temperature):
    z = torch.randn(6, 5)
    q = _probs()
    q[0] = torch.tensor([1.0, 0, 0, 0, 0])  # zeros in q count as 0 * log 0 = 0
    ref = F.kl_div(F.log_softmax(z / temperature, 1), q, reduction="batchmean")
    assert torch.allclose(kl_divergence(z, q, temperature), ref, atol=1e-6)


def test_soft_ce_gradient_equals_kl_gradient():
    z = torch.randn(4, 3, requires_grad=True)
    q = _probs(4, 3)
    (g1,) = torch.autograd.grad(soft_cross_entropy(z, q), z)
    (g2,) = torch.autograd.grad(kl_divergence(z, q), z)
    assert torch.allclose(g1, g2, atol=1e-6)
    # and both equal (softmax(z) - q) / B
    assert torch.allclose(g1, (F.softmax(z, 1) - q) / 4, atol=1e-6)


def test_refinery_loss_defaults_are_the_papers():
    z, q, y = torch.randn(5, 4), _probs(5, 4), torch.randint(0, 4, (5,))
    assert torch.equal(refinery_loss(z, q, y), soft_cross_entropy(z, q))


def test_refinery_loss_temperature_and_gt_weight():
    z, y = torch.randn(5, 4), torch.randint(0, 4, (5,))
    refinery_logits = torch.randn(5, 4)
    T, a = 3.0, 0.25
    q_t = F.softmax(refinery_logits / T, 1)
    expected = (1 - a) * T * T * F.cross_entropy(z / T, q_t) + a * F.cross_entropy(z, y)
    assert torch.allclose(refinery_loss(z, q_t, y, temperature=T, gt_weight=a), expected, atol=1e-6)
    # the KD form: T^2 * KL differs from T^2 * soft CE only by a constant (the refinery's entropy)
    kl = T * T * kl_divergence(z, q_t, T)
    ent = -(q_t * q_t.log()).sum(1).mean() * T * T
    assert torch.allclose(refinery_loss(z, q_t, y, temperature=T), kl + ent, atol=1e-5)
