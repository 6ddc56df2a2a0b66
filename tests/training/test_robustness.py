"""Nothing lost, nothing unsafe: NaN losses, a full disk, damaged training state, malicious pickles.

(Bad data — corrupt images, empty class folders, train/val classes that differ, refineries of other
classes, truncated label stores — is tested in data/test_imagefolder.py, cli/test_cli_errors.py and
labels/test_store.py.)
"""

from __future__ import annotations

import errno
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file

import label_refinery.files as files
from label_refinery import UserError, load_config, train_generation
from label_refinery.checkpoint import load_checkpoint, load_tensors
from label_refinery.data import load_dataset
from label_refinery.models import create_model
from tests.harness import Interruption, crash, metric_rows, nan_loss_at, position, raise_in, rerun


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def config(**extra):
    return load_config(overrides={"data.dataset": "digits", "optim.epochs": 2, "optim.batch_size": 32, "device": "cpu", **extra})


def trainer(cfg, dataset):
    """The run of the harness: train_generation(cfg) into a folder."""
    return lambda folder, log: train_generation(cfg, folder, dataset=dataset, log=log)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    train = trainer(config(save_every=10), digits)
    # step 52: inside epoch 2 (44 steps per epoch)
    err = crash(train, tmp_path / "run", nan_loss_at(53), match="loss became nan at step 52")
    assert "re-run the same command to resume" in str(err.value)
    assert position(tmp_path / "run") == (1, 6)  # global step 50, the last checkpoint before the NaN
    tensors, _, _ = load_tensors(tmp_path / "run/state.safetensors")
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model.") and t.is_floating_point())
    meta, _ = rerun(train, tmp_path / "run")  # resumes, finishes
    assert meta["metrics"]["test_top1"] > 50


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, digits):
    real_fsync, state_writes = os.fsync, {"n": 0}

    def fsync_full_on_second_state(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".state.safetensors." in name:
            state_writes["n"] += 1
            if state_writes["n"] == 2:  # the state after epoch 2
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    full_disk = Interruption(UserError, patches=[(files.os, "fsync", fsync_full_on_second_state)])
    train = trainer(config(), digits)
    err = crash(train, tmp_path / "run", full_disk, match="No space left on device; is the disk full")
    assert "the previous state.safetensors is intact" in str(err.value)
    assert position(tmp_path / "run") == (1, 0)  # epoch 1's state, loadable
    assert not list((tmp_path / "run").glob(".*.tmp"))  # the partial file was removed
    meta, _ = rerun(train, tmp_path / "run")  # resumes from epoch 1's state, finishes
    assert json.loads((tmp_path / "run/meta.json").read_text()) == meta and meta["metrics"]["test_top1"] > 50
    assert [r["epoch"] for r in metric_rows(tmp_path / "run")] == [0, 1]  # epoch 2 logged once, not twice


def test_damaged_training_state_is_named(tmp_path, digits):
    from label_refinery.config import save_values
    from label_refinery.training.setup import plan_generation

    (tmp_path / "run").mkdir()
    save_values(plan_generation(config(), tmp_path / "run").values, tmp_path / "run/config.yaml")  # as the run wrote it
    (tmp_path / "run/state.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="damaged: delete it to restart"):
        train_generation(config(), tmp_path / "run", dataset=digits, log=lambda _: None)


def test_missing_metrics_of_a_trained_generation_is_a_clear_error(tmp_path, digits):
    """Issue 13: every epoch trained (the state says so) but metrics.jsonl deleted: a clear error, not an IndexError."""
    import label_refinery.training.generation as generation

    train = trainer(config(), digits)
    crash(train, tmp_path / "run", raise_in(generation, "save_final"))  # stopped during the final save, after the last epoch's state
    assert position(tmp_path / "run") == (2, 0)
    (tmp_path / "run/metrics.jsonl").unlink()
    with pytest.raises(UserError, match=r"metrics.jsonl is missing or lacks epochs \(0 of 2 logged\).*delete .* to retrain"):
        rerun(train, tmp_path / "run")


class Payload:
    """Unpickling this runs code: it creates the folder ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_malicious_pickles_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil_pt = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": Payload(marker)}}, evil_pt)
    evil_st = tmp_path / "evil.safetensors"
    evil_st.write_bytes(evil_pt.read_bytes())  # a pickle under a safetensors name
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "model.safetensors").write_bytes(evil_pt.read_bytes())

    with pytest.raises(UserError, match="never loaded"):
        load_checkpoint(evil_pt)
    for path in (evil_st, gen):
        with pytest.raises(UserError):
            load_checkpoint(path)
    with pytest.raises(UserError, match="weights_only=True"):
        create_model("torchvision:resnet18", 3, 10, pretrained=str(evil_pt))
    with pytest.raises(UserError):
        train_generation(config(refinery=str(evil_pt)), tmp_path / "run", log=lambda _: None)
    with pytest.raises(UserError, match="weights_only=True"):  # a library model as the refinery, its weights a pickle
        train_generation(config(**{"refinery.path": "torchvision:resnet18", "refinery.weights": str(evil_pt)}),
                         tmp_path / "run2", log=lambda _: None)  # fmt: skip
    assert not marker.exists()  # no code ran

    pickle.loads(pickle.dumps(Payload(marker)))  # the payload is real: plain unpickling runs it
    assert marker.is_dir()


def test_grad_scaler_state_round_trips(tmp_path):
    """fp16 training keeps its loss scale across a resume (the scaler itself runs on CUDA only)."""
    from label_refinery.training.state import Position, resume, save

    model = create_model("cnn-small", 1, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    scaler.update(512.0)
    save(tmp_path, model, opt, scaler, Position(2, 5), None, "fp")
    fresh = torch.amp.GradScaler("cpu")
    pos = resume(tmp_path, create_model("cnn-small", 1, 10), torch.optim.SGD(model.parameters(), lr=0.1), fresh, None, "fp")
    assert (pos.epoch, pos.batch) == (2, 5)
    assert fresh.state_dict()["scale"] == 512.0 and fresh.state_dict()["growth_interval"] == 7
    assert load_file(tmp_path / "state.safetensors").keys() >= {"rng.cpu"}


def test_meters_wait_on_the_device_and_a_late_nan_still_saves_nothing(tmp_path, digits, monkeypatch):
    """On a GPU the meters reach the host every SETTLE_STEPS steps (no sync per step); simulated here on
    the CPU: the NaN of step 52 is found at the settle after step 54, and no checkpoint holds it."""
    import label_refinery.training.engine as engine

    m = engine.Meters()
    logits, refined, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 0])
    m.add(logits, refined, y, torch.tensor(0.5), 1.0)
    m.add(logits, refined, y, torch.tensor(0.25), 2.0)
    assert (m.loss_sum, m.correct, m.images) == (0.0, 0, 4)  # nothing read back yet
    assert m.as_list() == [4, 1.5, 2, 2, 2.0]  # settled: 0.5 * 2 + 0.25 * 2; top-1 right twice; agrees twice
    m.add(logits, refined, y, torch.tensor(float("nan")), 3.0)
    with pytest.raises(engine.NonFinite):
        m.settle()
    monkeypatch.setattr(engine, "_settle_every", lambda device: 5)
    crash(trainer(config(save_every=10), digits), tmp_path / "run", nan_loss_at(53), match=r"loss became nan or inf at step 50\.\.54")
    assert position(tmp_path / "run") == (1, 6)  # step 50: the last checkpoint before the NaN
    tensors, _, _ = load_tensors(tmp_path / "run/state.safetensors")
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model.") and t.is_floating_point())


def test_cuda_settings_leave_a_cpu_run_alone():
    from label_refinery.training.engine import autocast
    from label_refinery.training.setup import cuda_speedups

    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32)
    cuda_speedups(torch.device("cpu"))
    assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32) == before
    with autocast(torch.device("cpu"), "auto"):  # the ImageNet recipes' amp: float32 on a CPU
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    from pathlib import Path

    assert load_config(Path(__file__).parents[2] / "configs/imagenet/resnet50.yaml").amp == "auto"
