"""Our refined training against timm's LogitDistillationTask (bench/peers.py, issue 25): the same loss up
to the teacher's entropy, so the same gradients; and the bench's timm arm trains the same student on the
same batches as our trainer, so at toy scale both end at (nearly) the same weights."""

from __future__ import annotations

import importlib.util
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from label_refinery.losses import refinery_loss
from label_refinery.training.generation import train_generation

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "bench/peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Data:
    mean, std = (0.5,), (0.25,)


def test_timm_task_has_our_gradients_and_loss_minus_teacher_entropy(peers):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 5, (16,))
    task = peers.timm_task(student, teacher, Data()).train()
    assert not task.teacher.training  # timm keeps its teacher in eval mode too

    grads, losses = [], []
    for loss_of in (lambda: refinery_loss(student(x), torch.softmax(teacher(x), 1)), lambda: task(x, y)["loss"]):
        student.zero_grad()
        loss = loss_of()
        loss.backward()
        grads.append([p.grad.clone() for p in student.parameters()])
        losses.append(loss.item())
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    q = torch.softmax(teacher(x), 1)
    entropy = -(q * q.log()).sum(1).mean().item()
    assert losses[0] - losses[1] == pytest.approx(entropy, abs=1e-5)
    assert entropy > 0.5  # a soft teacher: the check above is not 0 == 0


def test_the_timm_arm_trains_what_our_trainer_trains(peers, tmp_path):
    args = Namespace(model="cnn-small", dataset="digits", subset=300, epochs=2, device="cpu", out=tmp_path)
    teacher = tmp_path / "gen1"
    train_generation(peers.config(args, 0), teacher, log=lambda _: None)

    ours = peers.train_ours(args, 1, "live", teacher)
    theirs = peers.train_timm(args, 1, teacher, keep=True)
    assert ours["images_per_s"] > 0 and theirs["images_per_s"] > 0
    # same init, crops, batches, optimizer and schedule: weights differ only by float rounding
    a = load_file(tmp_path / "live-seed1/model.safetensors")
    b = theirs["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k].to(a[k].dtype), rtol=1e-3, atol=1e-4)
    assert abs(ours["test_top1"] - theirs["test_top1"]) <= 1.0

    check = peers.same_gradients(args, teacher)
    assert check["max_rel_grad_diff"] < 1e-4
    assert check["loss_ours"] - check["loss_timm"] == pytest.approx(check["teacher_entropy"], abs=1e-4)
