"""Exact resume: a training process killed with SIGKILL at several points (inside an epoch, at an
epoch's end, at a random moment) and re-run with the same command ends with the weights and metrics
of an uninterrupted run, bit for bit, on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from label_refinery import UserError, load_config, train_generation
from label_refinery.checkpoint import load_checkpoint, load_tensors
from label_refinery.data import load_dataset

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# digits upsampled to 32x32 so an epoch lasts about a second: long enough to kill inside it
ARGS = ["train", "--dataset", "digits", "--image-size", "32", "--epochs", "2", "--batch-size", "32", "--save-every", "7",
        "--device", "cpu", "--no-progress"]
TIMING = ("seconds", "images_per_s")
FAST = {"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64, "device": "cpu"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "label_refinery", *ARGS, "--out", str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def position(out: Path) -> tuple[int, int] | None:
    """(next epoch, next step) of the state file, if there is one."""
    try:
        nxt = load_tensors(out / "state.safetensors")[1]["next"]
    except Exception:  # not written yet, or replaced while we read it
        return None
    return nxt["epoch"], nxt["batch"]


def kill_when(out: Path, ready, limit_s: float = 120) -> bool:
    """Start training into ``out``; SIGKILL it as soon as ``ready(position)`` holds. False if it finished first."""
    proc = start(out)
    deadline = time.monotonic() + limit_s
    while proc.poll() is None and time.monotonic() < deadline:
        if ready(position(out)):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.communicate()
    return False


def rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_anywhere_then_resume_equals_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    assert start(ref).wait() == 0
    out = tmp_path / "killed"
    kills = [
        lambda p: p is not None and p[0] == 0 and p[1] > 0,  # inside epoch 1, after a step checkpoint
        lambda p: p is not None and p[0] == 1 and p[1] == 0,  # right after epoch 1 ended
        lambda p: p is not None and p[0] == 1 and p[1] >= 14,  # inside epoch 2
        lambda p: p is not None and p[0] == 2,  # all epochs done: during the final evaluation or save
    ]
    killed = [kill_when(out, ready) for ready in kills]
    assert sum(killed) >= 3, killed  # the last one may lose the race against a fast final save
    t0 = time.monotonic()
    assert kill_when(out, lambda p: time.monotonic() - t0 > 0.8) or (out / "meta.json").is_file()  # a random moment
    proc = start(out)
    log = proc.communicate()[0]
    assert proc.returncode == 0, log
    assert not (out / "state.safetensors").exists() and (out / "meta.json").is_file()
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rows(ref) == rows(out)  # losses, accuracies and learning rates of every epoch, exactly
    ref_meta, meta = (json.loads((d / "meta.json").read_text())["metrics"] for d in (ref, out))
    assert {k: v for k, v in ref_meta.items() if k != "train_seconds"} == {k: v for k, v in meta.items() if k != "train_seconds"}
    assert not list(out.glob(".*.tmp"))  # no half-written temporary file left behind


def test_resume_inside_an_epoch_in_process(tmp_path, monkeypatch):
    """The same through the Python API: stop right after the step checkpoint at epoch 2, step 11 (global
    step 55 = 11 x save_every), resume, compare."""
    import label_refinery.training.state as state
    from label_refinery import load_config, train_generation
    from label_refinery.data import load_dataset

    cfg = load_config(overrides={"data.dataset": "digits", "optim.epochs": 2, "optim.batch_size": 32, "save_every": 5, "device": "cpu"})
    ds = load_dataset("digits")  # 1,438 training images: 44 steps per epoch
    train_generation(cfg, tmp_path / "ref", dataset=ds, log=lambda _: None)

    class Stop(Exception):
        pass

    real_save = state.save

    def save_then_stop(folder, student, optimizer, scaler, pos, *rest):
        real_save(folder, student, optimizer, scaler, pos, *rest)
        if (pos.epoch, pos.batch) == (1, 11):
            raise Stop

    monkeypatch.setattr(state, "save", save_then_stop)
    try:
        train_generation(cfg, tmp_path / "cut", dataset=ds, log=lambda _: None)
    except Stop:
        pass
    monkeypatch.undo()
    assert position(tmp_path / "cut") == (1, 11) and not (tmp_path / "cut/meta.json").exists()
    messages = []
    train_generation(cfg, tmp_path / "cut", dataset=ds, log=messages.append)
    assert any("resuming in epoch 2 after step 11 of 44" in m for m in messages), messages
    a, b = load_file(tmp_path / "ref/model.safetensors"), load_file(tmp_path / "cut/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rows(tmp_path / "ref") == rows(tmp_path / "cut")


def test_mixing_resumes_exactly_and_refuses_a_label_store(tmp_path, digits, monkeypatch):
    import label_refinery.training.state as state

    cfg = load_config(overrides={**FAST, "optim.epochs": 2, "mix.kind": "cutmix", "save_every": 7})
    train_generation(cfg, tmp_path / "ref", dataset=digits, log=lambda _: None)
    real_save = state.save

    def save_then_stop(folder, student, optimizer, scaler, pos, *rest):
        real_save(folder, student, optimizer, scaler, pos, *rest)
        if (pos.epoch, pos.batch) == (1, 6):
            raise KeyboardInterrupt

    monkeypatch.setattr(state, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_generation(cfg, tmp_path / "cut", dataset=digits, log=lambda _: None)
    monkeypatch.undo()
    train_generation(cfg, tmp_path / "cut", dataset=digits, log=lambda _: None)
    a, b = load_checkpoint(tmp_path / "ref").state_dict, load_checkpoint(tmp_path / "cut").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="needs labels.source=live"):  # refused before anything is baked
        load_config(overrides={**FAST, "mix.kind": "mixup", "refinery": str(tmp_path / "ref"), "labels.source": "store"})
