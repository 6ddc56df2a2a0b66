"""The training loop and its schedules (training/engine.py)."""


from label_refinery.config import OptimConfig
from label_refinery.data import CropSampler, load_dataset
from label_refinery.labels import GroundTruth
from label_refinery.models import create_model
from label_refinery.training.engine import lr_schedule, make_optimizer, train_one_epoch


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
