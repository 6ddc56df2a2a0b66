
import torch
import torch.nn.functional as F

from label_refinery.config import OptimConfig
from label_refinery.data import CropSampler, load_dataset
from label_refinery.labels import GroundTruth, LiveRefinery
from label_refinery.models import create_model
from label_refinery.training.engine import lr_schedule, make_optimizer, train_one_epoch


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


def test_training_lowers_the_loss_and_learns():
    ds = load_dataset("digits")
    student = create_model("cnn-small", 1, 10)
    cfg = OptimConfig(lr=0.05, epochs=4)
    opt = make_optimizer(student, cfg)
    lr_at = lr_schedule(cfg, ds.train.num_batches(64, drop_last=True))
    losses = []
    for epoch in range(4):
        batches = ds.train.iter_batches(64, epoch=epoch, crops=CropSampler(0, scale=(0.6, 1.0), flip_p=0), order_seed=0, drop_last=True)
        m = train_one_epoch(student, GroundTruth(10), batches, opt, lr_at, first_step=epoch * 22)
        losses.append(m["train_loss"])
    assert losses[-1] < 0.6 * losses[0]
    assert m["train_top1_crops"] > 70


def test_lr_schedules():
    cos = lr_schedule(OptimConfig(lr=1.0, epochs=10, warmup_epochs=1), 10)
    assert cos(0) == 0.1 and cos(9) == 1.0 and abs(cos(99)) < 1e-3
    assert cos(10) > cos(50) > cos(90)
    step = lr_schedule(OptimConfig(lr=1.0, epochs=10, schedule="step", milestones=(4, 8), gamma=0.1), 10)
    assert step(39) == 1.0 and abs(step(40) - 0.1) < 1e-12 and abs(step(85) - 0.01) < 1e-12


def test_oracle_refinery_reproduces_generation_1_exactly(tmp_path, monkeypatch):
    """Issue 15: a refinery whose softmax is the one-hot ground truth, through the live path of a
    refined generation (a real refinery forward per step, its checkpoint, provenance and loss), trains
    the same weights as generation 1 with the same seed, bit for bit: the refined path adds nothing
    but its labels."""
    import label_refinery.training.setup as setup
    from label_refinery import load_config, train_generation
    from label_refinery.checkpoint import load_checkpoint

    class Oracle(LiveRefinery):
        def __call__(self, batch):
            super().__call__(batch)  # the real refinery forward, whose output the oracle replaces
            return F.softmax(200.0 * F.one_hot(batch.targets, self.num_classes).float(), dim=1)  # exactly one-hot

    ds = load_dataset("digits")
    base = {"data.dataset": "digits", "optim.epochs": 2, "optim.batch_size": 64, "device": "cpu", "seed": 3}
    train_generation(load_config(overrides={**base, "seed": 9}), tmp_path / "refinery", dataset=ds, log=lambda _: None)
    train_generation(load_config(overrides=base), tmp_path / "gen1", dataset=ds, log=lambda _: None)
    real = setup.build_label_source

    def oracle_source(*args, **kwargs):
        live = real(*args, **kwargs)
        return Oracle(live.model, provenance=live.provenance)

    monkeypatch.setattr(setup, "build_label_source", oracle_source)
    meta = train_generation(load_config(overrides={**base, "refinery": str(tmp_path / "refinery")}), tmp_path / "oracle",
                            dataset=ds, log=lambda _: None)
    assert meta["labels"]["kind"] == "live-refinery"
    a, b = load_checkpoint(tmp_path / "gen1").state_dict, load_checkpoint(tmp_path / "oracle").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refinery_temperature_sharpens_the_refinerys_softmax_alone(tmp_path):
    """labels.refinery_temperature applies to the refinery's softmax only (the loss keeps labels.temperature)."""
    from label_refinery import load_config, train_generation
    from label_refinery.training.build import build_label_source, build_step

    ds = load_dataset("digits")
    base = {"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64, "device": "cpu"}
    train_generation(load_config(overrides=base), tmp_path / "g1", dataset=ds, log=lambda _: None)
    cfg = load_config(overrides={**base, "refinery": str(tmp_path / "g1"), "labels.refinery_temperature": 0.5})
    labels = build_label_source(cfg, ds, folder=tmp_path / "g2", sampler=CropSampler(1), device="cpu",
                                fingerprint=ds.fingerprint(), log=lambda _: None)
    batch = next(ds.train.iter_batches(16, crops=CropSampler(1), order_seed=1))
    with torch.no_grad():
        logits = labels.model(batch.images)
    assert torch.allclose(labels(batch), F.softmax(logits / 0.5, 1), atol=1e-6)  # sharper than T = 1
    z = torch.randn(16, 10)
    q = labels(batch)
    assert torch.allclose(build_step(cfg, ds, labels).loss(z, q, batch.targets), -(q * F.log_softmax(z, 1)).sum(1).mean())
