"""Exact resume: a training process killed with SIGKILL at several points (inside an epoch, at an
epoch's end, at a random moment) and re-run with the same command ends with the weights and metrics
of an uninterrupted run, bit for bit, on CPU."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from label_refinery import UserError, load_config, train_generation
from label_refinery.data import load_dataset
from tests.harness import assert_same_weights, crash, kill_when, metric_rows, position, rerun, start, stop_after_save

# digits upsampled to 32x32 so an epoch lasts about a second: long enough to kill inside it
ARGS = ["train", "--dataset", "digits", "--image-size", "32", "--epochs", "2", "--batch-size", "32", "--save-every", "7",
        "--device", "cpu", "--no-progress"]
FAST = {"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64, "device": "cpu"}


def assert_same_dynamics(a, b):
    """The per-image training dynamics (margins, forgetting) of a resumed run equal the uninterrupted run's."""
    x, y = np.load(a / "dynamics.npz"), np.load(b / "dynamics.npz")
    assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_sigkill_anywhere_then_resume_equals_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    assert start(*ARGS, "--out", ref).wait() == 0
    out = tmp_path / "killed"
    argv = [*ARGS, "--out", out]
    kills = [
        lambda p: p is not None and p[0] == 0 and p[1] > 0,  # inside epoch 1, after a step checkpoint
        lambda p: p is not None and p[0] == 1 and p[1] == 0,  # right after epoch 1 ended
        lambda p: p is not None and p[0] == 1 and p[1] >= 14,  # inside epoch 2
        lambda p: p is not None and p[0] == 2,  # all epochs done: during the final evaluation or save
    ]
    killed = [kill_when(argv, out, ready) for ready in kills]
    assert sum(killed) >= 3, killed  # the last one may lose the race against a fast final save
    t0 = time.monotonic()
    assert kill_when(argv, out, lambda p: time.monotonic() - t0 > 0.8) or (out / "meta.json").is_file()  # a random moment
    proc = start(*argv)
    log = proc.communicate()[0]
    assert proc.returncode == 0, log
    assert not (out / "state.safetensors").exists() and (out / "meta.json").is_file()
    assert_same_weights(ref, out)
    assert metric_rows(ref) == metric_rows(out)  # losses, accuracies and learning rates of every epoch, exactly
    assert_same_dynamics(ref, out)
    ref_meta, meta = (json.loads((d / "meta.json").read_text())["metrics"] for d in (ref, out))
    assert {k: v for k, v in ref_meta.items() if k != "train_seconds"} == {k: v for k, v in meta.items() if k != "train_seconds"}
    assert not list(out.glob(".*.tmp"))  # no half-written temporary file left behind


def test_resume_inside_an_epoch_in_process(tmp_path):
    """The same through the Python API: stop right after the step checkpoint at epoch 2, step 11 (global
    step 55 = 11 x save_every), resume, compare."""
    cfg = load_config(overrides={"data.dataset": "digits", "optim.epochs": 2, "optim.batch_size": 32, "save_every": 5, "device": "cpu"})
    ds = load_dataset("digits")  # 1,438 training images: 44 steps per epoch

    def train(folder, log):
        return train_generation(cfg, folder, dataset=ds, log=log)

    train(tmp_path / "ref", lambda _: None)
    crash(train, tmp_path / "cut", stop_after_save((1, 11)))
    assert position(tmp_path / "cut") == (1, 11) and not (tmp_path / "cut/meta.json").exists()
    _, messages = rerun(train, tmp_path / "cut")
    assert any("resuming in epoch 2 after step 11 of 44" in m for m in messages), messages
    assert_same_weights(tmp_path / "ref", tmp_path / "cut")
    assert metric_rows(tmp_path / "ref") == metric_rows(tmp_path / "cut")
    assert_same_dynamics(tmp_path / "ref", tmp_path / "cut")  # the epoch's partial sums were in the state


def test_mixing_resumes_exactly_and_refuses_a_label_store(tmp_path, digits):
    cfg = load_config(overrides={**FAST, "optim.epochs": 2, "mix.kind": "cutmix", "save_every": 7})

    def train(folder, log):
        return train_generation(cfg, folder, dataset=digits, log=log)

    train(tmp_path / "ref", lambda _: None)
    crash(train, tmp_path / "cut", stop_after_save((1, 6), raises=KeyboardInterrupt))
    rerun(train, tmp_path / "cut")
    assert_same_weights(tmp_path / "ref", tmp_path / "cut")
    with pytest.raises(UserError, match="needs labels.source=live"):  # refused before anything is baked
        load_config(overrides={**FAST, "mix.kind": "mixup", "refinery": str(tmp_path / "ref"), "labels.source": "store"})
