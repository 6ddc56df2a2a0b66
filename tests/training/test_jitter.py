import json

import pytest
import torch
import torch.nn.functional as F

from label_refinery import UserError, load_config, run_chain, train_generation
from label_refinery.config import JitterConfig, OptimConfig
from label_refinery.data import CropSampler, load_dataset
from label_refinery.labels import LiveRefinery
from label_refinery.models import create_model
from label_refinery.training.engine import Step, lr_schedule, make_optimizer, train_one_epoch
from label_refinery.training.jitter import Jitter
from tests.harness import assert_same_weights

FAST = {"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def refinery_dir(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("refinery") / "gen1"
    train_generation(load_config(overrides={**FAST, "optim.epochs": 3}), folder, dataset=digits, log=lambda _: None)
    return folder


def _pixels(images, ds):
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return images * std + mean


def _student():
    torch.manual_seed(0)
    model = create_model("cnn-small", 1, 10)
    model.train()
    return model


@pytest.mark.parametrize("steps, grad", [(1, "student"), (3, "student"), (2, "refinery")])
def test_perturbation_stays_in_the_eps_ball_and_pixel_range(digits, refinery_dir, steps, grad):
    refinery = LiveRefinery.from_checkpoint(refinery_dir)
    eps = 8 / 255
    jitter = Jitter(JitterConfig(enabled=True, eps=eps, steps=steps, grad=grad, fraction=1.0), refinery, digits.mean, digits.std)
    batch = next(digits.train.iter_batches(64, crops=CropSampler(0), order_seed=0))
    student = _student()
    jittered = jitter(student, batch)
    assert student.training  # the attack put it back in train mode
    before, after = _pixels(batch.images, digits), _pixels(jittered.images, digits)
    delta = (after - before).abs()
    assert delta.max() <= eps + 1e-5 and delta.max() > eps / 2  # it moved, and not too far
    assert after.min() >= -1e-5 and after.max() <= 1 + 1e-5
    # the step increases the disagreement it differentiates
    with torch.no_grad():
        student.eval()

        def disagreement(x):
            return -(F.softmax(refinery.model(x), 1) * F.log_softmax(student(x), 1)).sum(1).mean()

        assert disagreement(jittered.images) > disagreement(batch.images)


def test_labels_of_jittered_crops_are_the_refinerys_output(digits, refinery_dir):
    refinery = LiveRefinery.from_checkpoint(refinery_dir)
    batch = next(digits.train.iter_batches(32, crops=CropSampler(0), order_seed=0))
    jitter = Jitter(JitterConfig(enabled=True, eps=4 / 255, fraction=0.5), refinery, digits.mean, digits.std)
    jittered = jitter(_student(), batch)
    refined = refinery(jittered)  # the label source labels the crops the student sees
    assert torch.equal(jittered.images[16:], batch.images[16:])  # half stays clean
    assert not torch.equal(jittered.images[:16], batch.images[:16])
    with torch.no_grad():
        expected = F.softmax(refinery.model(jittered.images), 1)
    assert torch.allclose(refined, expected, atol=1e-6)
    keep = Jitter(JitterConfig(enabled=True, eps=4 / 255, relabel=False), refinery, digits.mean, digits.std)
    kept = keep(_student(), batch)
    assert not torch.equal(kept.images, batch.images)
    assert torch.allclose(refinery(kept), refinery(batch), atol=1e-6)  # R(x), not R(x')


def test_refinery_and_student_statistics_untouched_by_the_attack(digits, refinery_dir):
    refinery = LiveRefinery.from_checkpoint(refinery_dir)
    before = {k: v.clone() for k, v in refinery.model.state_dict().items()}
    student = _student()
    student_buffers = {k: v.clone() for k, v in student.named_buffers()}
    jitter = Jitter(JitterConfig(enabled=True, eps=8 / 255, steps=3, grad="refinery"), refinery, digits.mean, digits.std)
    batch = next(digits.train.iter_batches(64, crops=CropSampler(0), order_seed=0))
    jitter.perturb(student, batch.images)
    assert all(torch.equal(v, dict(student.named_buffers())[k]) for k, v in student_buffers.items())
    assert all(p.grad is None for p in student.parameters())
    # a whole jittered epoch: the refinery never changes and never gets a gradient
    opt = make_optimizer(student, OptimConfig(lr=0.1))
    batches = digits.train.iter_batches(64, epoch=0, crops=CropSampler(0), order_seed=0, drop_last=True)
    train_one_epoch(student, refinery, batches, opt, lr_schedule(OptimConfig(lr=0.1, epochs=1), 22), Step(transform=jitter))
    after = refinery.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not refinery.model.training and all(p.grad is None for p in refinery.model.parameters())


def test_eps_zero_trains_exactly_as_without_jittering(tmp_path, digits, refinery_dir):
    base = {**FAST, "refinery": str(refinery_dir), "optim.epochs": 2}
    train_generation(load_config(overrides=base), tmp_path / "plain", dataset=digits, log=lambda _: None)
    zero = {**base, "jitter.enabled": True, "jitter.eps": 0.0, "jitter.steps": 2}
    train_generation(load_config(overrides=zero), tmp_path / "zero", dataset=digits, log=lambda _: None)
    assert_same_weights(tmp_path / "plain", tmp_path / "zero")


def test_jitter_inside_a_chain(tmp_path):
    cfg = load_config(overrides={**FAST, "chain.generations": 2, "jitter.enabled": True, "jitter.eps": 4 / 255})
    rows = run_chain(cfg, tmp_path / "c", log=lambda _: None)
    assert len(rows) == 2
    g1 = json.loads((tmp_path / "c/gen1/meta.json").read_text())
    g2 = json.loads((tmp_path / "c/gen2/meta.json").read_text())
    assert not g1["config"]["jitter"]["enabled"]  # ground truth: nothing to jitter against
    assert g2["config"]["jitter"]["enabled"] and g2["config"]["jitter"]["eps"] == pytest.approx(4 / 255)
    assert g2["labels"]["kind"] == "live-refinery"


def test_jitter_needs_a_live_refinery(tmp_path, digits):
    with pytest.raises(UserError, match="live refinery"):
        load_config(overrides={**FAST, "jitter.enabled": True, "labels.source": "store"})
    with pytest.raises(UserError, match="live refinery"):
        load_config(overrides={**FAST, "jitter.enabled": True, "labels.store": "somewhere"})
    with pytest.raises(UserError, match="needs a live refinery"):
        train_generation(load_config(overrides={**FAST, "jitter.enabled": True}), tmp_path / "g", dataset=digits, log=lambda _: None)
    with pytest.raises(UserError, match="jitter.eps"):
        load_config(overrides={"jitter.eps": 2})
