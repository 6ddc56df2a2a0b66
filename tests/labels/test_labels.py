import pytest
import torch
import torch.nn.functional as F

from label_refinery import load_config, train_generation
from label_refinery.config import OptimConfig
from label_refinery.data import CropSampler, load_dataset
from label_refinery.data.mixing import Mix
from label_refinery.labels import GroundTruth, LiveRefinery
from label_refinery.models import create_model
from label_refinery.training.engine import lr_schedule, make_optimizer, train_one_epoch


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_gen(tmp_path_factory, digits):
    """A finished 1-epoch generation on digits (about a second)."""
    out = tmp_path_factory.mktemp("digits") / "gen1"
    train_generation(load_config(overrides={"data.dataset": "digits", "optim.epochs": 1}), out, dataset=digits, log=lambda _: None)
    return out


def _batch(ds, epoch=0):
    return next(ds.train.iter_batches(32, epoch=epoch, crops=CropSampler(0), order_seed=0))


def _trained_refinery():
    model = create_model("cnn-small", 1, 10)
    # give the BatchNorm layers non-trivial running statistics
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 1, 8, 8) * 2 + 1)
    return model


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_refinery_is_frozen_through_student_steps():
    ds = load_dataset("digits")
    refinery_model = _trained_refinery()
    before = _snapshot(refinery_model)
    labels = LiveRefinery(refinery_model)
    student = create_model("cnn-small", 1, 10)
    opt = make_optimizer(student, OptimConfig(lr=0.1))
    batches = ds.train.iter_batches(64, epoch=0, crops=CropSampler(0), order_seed=0, drop_last=True)
    metrics = train_one_epoch(student, labels, batches, opt, lr_schedule(OptimConfig(lr=0.1, epochs=1), 22))
    assert metrics["images"] == 22 * 64
    after = refinery_model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # weights and BatchNorm running stats unchanged
    assert not refinery_model.training
    assert all(not p.requires_grad for p in refinery_model.parameters())
    assert all(p.grad is None for p in refinery_model.parameters())
    # the refinery never became part of the student
    assert not any(m is refinery_model for m in student.modules())


def test_live_refinery_labels_exactly_the_students_crop():
    ds = load_dataset("digits")
    model = _trained_refinery().eval()
    labels = LiveRefinery(model, temperature=2.0)
    batch = next(ds.train.iter_batches(16, epoch=5, crops=CropSampler(7), order_seed=7))
    q = labels(batch)
    with torch.no_grad():
        expected = F.softmax(model(batch.images) / 2.0, 1)
    assert torch.allclose(q, expected, atol=1e-6)
    assert torch.allclose(q.sum(1), torch.ones(16), atol=1e-5)
    assert not q.requires_grad and not q.is_inference()  # usable in the student's backward


def test_release_behaviour_is_opt_in():
    ds = load_dataset("digits")
    model = _trained_refinery()
    before = _snapshot(model)
    labels = LiveRefinery(model, bn_train=True)
    batch = next(ds.train.iter_batches(16, crops=CropSampler(0), order_seed=0))
    labels(batch)
    bn_means = [k for k in before if k.endswith("running_mean")]
    assert any(not torch.equal(before[k], model.state_dict()[k]) for k in bn_means)  # running stats drift
    assert all(not p.requires_grad for p in model.parameters())


def test_ground_truth_labels():
    ds = load_dataset("digits")
    batch = next(ds.train.iter_batches(8))
    q = GroundTruth(10)(batch)
    assert torch.equal(q.argmax(1), batch.targets) and torch.equal(q.sum(1), torch.ones(8))
    smooth = GroundTruth(10, smoothing=0.1)(batch)
    assert torch.allclose(smooth.max(1).values, torch.full((8,), 0.91))


def test_refinery_with_another_normalisation(digits_gen):
    """The dataset's mean/std are recorded in the checkpoint; a refinery normalised otherwise is refused."""
    from dataclasses import replace

    from label_refinery.data import load_dataset
    from label_refinery.errors import UserError
    from label_refinery.labels import LiveRefinery, check_compatible

    ds = load_dataset("digits")
    refinery = LiveRefinery.from_checkpoint(str(digits_gen))
    check_compatible(refinery, ds)  # its own dataset: accepted
    other = replace(ds, mean=(ds.mean[0] + 0.1,))
    with pytest.raises(UserError, match=r"normalised with mean \[.*\], but this dataset's mean is"):
        check_compatible(refinery, other)


def test_the_refinery_labels_the_mixed_crop(digits):
    torch.manual_seed(0)
    refinery = LiveRefinery(create_model("cnn-small", 1, 10))
    mixed = Mix("mixup", alpha=0.4, seed=0)(None, _batch(digits))
    with torch.no_grad():
        expected = F.softmax(refinery.model(mixed.images), 1)
    assert torch.allclose(refinery(mixed), expected, atol=1e-6)  # function matching: R(mixed), not a mix of labels
