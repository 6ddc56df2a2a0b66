"""torchrun with 2 gloo processes on CPU: the same training as one process, and only rank 0 writes.

Each test starts real processes with ``python -m torch.distributed.run --standalone`` (a free port),
so they take a few seconds each.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from label_refinery.locks import LOCK, claim
from tests.harness import SCRIPTS, launch, metric_rows, run


def test_two_processes_give_the_single_process_weights(tmp_path):
    """A BatchNorm-free model through train_one_epoch/evaluate: averaged shard gradients equal the
    global batch's gradient, so the weights agree to float rounding and the counts exactly."""
    script = SCRIPTS / "ddp_exact.py"
    run(script, tmp_path / "one.safetensors")
    run(script, tmp_path / "two.safetensors", nproc=2)
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    # Two shards sum each gradient and loss in another order than one process (and another CPU's
    # kernels, e.g. AVX-512, in yet another): float32 rounding, ~1e-7 relative per step, which 22 SGD
    # steps at lr 0.1 with momentum can grow to ~1e-6. A real fault (a shard missed, gradients not
    # averaged) moves weights by > 1e-2, so these tolerances still catch it.
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    m1, m2 = (json.loads((tmp_path / f"{n}.safetensors.json").read_text()) for n in ("one", "two"))
    assert m2["world"] == 2 and m1["steps"] == m2["steps"] == 22
    assert m1["train"]["images"] == m2["train"]["images"] == 22 * 64  # counts are exact
    assert m1["train"]["train_loss"] == pytest.approx(m2["train"]["train_loss"], rel=1e-5)  # a sum of per-shard means
    # sharded evaluation: the same counts over all 359 images, exactly; the mean loss is a float sum in
    # another order (seen on an AVX-512 CPU: 1.732695088 vs 1.732695173, 5e-8 relative)
    for key in ("images", "top1", "top5"):
        assert m1["test"][key] == m2["test"][key], key
    assert m1["test"]["loss"] == pytest.approx(m2["test"]["loss"], rel=1e-5)

    # Issue 13, in the same 2 processes (scripts/ddp_ranks.py): dropout and the like draw seed + rank
    # per process; a saved state restores every process's own stream; the wall seconds of a resumed
    # epoch are the slowest process's, not a sum.
    report = json.loads((tmp_path / "ranks.json").read_text())
    assert report["world"] == 2 and report["backend"] == "gloo"
    assert report["same_init"] and report["streams_differ"] and report["own_stream_restored"]
    assert report["meters"] == [30, 2.0, 1, 0, 6.0]  # images, loss sum, correct, agree summed; seconds: max(5, 6)


def test_torchrun_cli_matches_one_process_and_only_rank0_writes(tmp_path):
    args = ["train", "--dataset", "digits", "--epochs", "6", "--batch-size", "64", "--device", "cpu", "--no-progress"]
    run(*args, "--out", tmp_path / "one")
    log = run(*args, "--out", tmp_path / "two", nproc=2)
    one, two = metric_rows(tmp_path / "one", drop=()), metric_rows(tmp_path / "two", drop=())
    assert len(two) == 6  # one line per epoch: rank 1 appended nothing
    assert log.count("epoch 6/6") == 1 and log.count(" done: ") == 1  # only rank 0 logs
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [LOCK, "config.yaml", "dynamics.npz", "meta.json", "metrics.jsonl",
                                                                    "model.safetensors"]  # fmt: skip
    d1, d2 = (np.load(tmp_path / f / "dynamics.npz") for f in ("one", "two"))
    # every image counted once per epoch over both shards (the epoch's sums are all-reduced), as in one process
    assert (d1["ids"] == d2["ids"]).all() and (d1["epochs"] == d2["epochs"]).all() and d2["epochs"].max() == 6
    assert np.corrcoef(d1["aum"], d2["aum"])[0, 1] > 0.8  # BatchNorm per shard: close margins, not equal
    assert json.loads((tmp_path / "two" / LOCK).read_text())["kinds"] == ["generation"]  # rank 0's claim alone
    assert all(a["images"] == b["images"] for a, b in zip(one, two))  # the same global batches
    # BatchNorm normalises over each process's 32 crops instead of 64: close, not equal (measured: 95.26 vs 96.10)
    assert abs(one[-1]["test_top1"] - two[-1]["test_top1"]) < 3.0
    assert two[-1]["train_loss"] == pytest.approx(one[-1]["train_loss"], rel=0.1)


def test_torchrun_every_label_path(tmp_path):
    """Ground truth, a live refinery with jittering, and a label store baked by both processes."""
    common = ["--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--no-progress"]
    log = run("chain", *common, "--generations", "2", "--jitter", "--out", tmp_path / "chain", nproc=2)
    assert log.count("table saved") == 1
    summary = json.loads((tmp_path / "chain/summary.json").read_text())
    assert [r["generation"] for r in summary] == [1, 2] and summary[1]["test_top1"] > 30  # learned from the refinery
    run("train", *common, "--refinery", tmp_path / "chain/gen1", "--label-source", "store", "--out", tmp_path / "stored", nproc=2)
    meta = json.loads((tmp_path / "stored/meta.json").read_text())
    assert meta["labels"]["kind"] == "stored" and meta["metrics"]["test_top1"] > 30
    assert json.loads((tmp_path / "stored/labels/manifest.json").read_text())["processes"] == 2  # both ranks baked


def test_a_folder_in_use_is_refused_by_every_rank_at_once(tmp_path):
    """Rank 0 alone claims the folder and every rank raises its refusal: none waits in a collective
    for a rank that stopped (the group ends well before the collective timeout)."""
    with claim(tmp_path / "busy", "chain"):  # this process holds it
        began = time.monotonic()
        proc = launch("chain", "--dataset", "digits", "--epochs", "1", "--device", "cpu", "--no-progress",
                      "--out", tmp_path / "busy", nproc=2, timeout=240)  # fmt: skip
        took = time.monotonic() - began
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and took < 200, log
    for rank in (0, 1):
        assert f"error (rank {rank}): {tmp_path / 'busy'} is being written by another label-refinery command (PID {os.getpid()}: " in log
    assert not (tmp_path / "busy/gen1").exists()
