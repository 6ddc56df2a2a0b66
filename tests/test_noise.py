"""Label noise (data.label_noise) and the refined generations' own schedule (chain.refined_epochs)."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from label_refinery import load_config, run_chain
from label_refinery.data import load_dataset


def test_symmetric_noise_flips_the_stated_share_to_other_classes_deterministically():
    clean = load_dataset("digits", train_subset=1000)
    a = load_dataset("digits", train_subset=1000, label_noise=0.3, noise_seed=4)
    b = load_dataset("digits", train_subset=1000, label_noise=0.3, noise_seed=4)
    c = load_dataset("digits", train_subset=1000, label_noise=0.3, noise_seed=5)
    changed = (a.train.targets != clean.train.targets).nonzero().squeeze(1)
    assert len(changed) == 300  # exactly round(0.3 * 1000), every one of them wrong
    assert a.label_changes.ids.tolist() == a.train.ids[changed].tolist()
    assert np.array_equal(a.label_changes.original, clean.train.targets[changed].numpy())
    assert torch.equal(a.train.targets, b.train.targets) and not torch.equal(a.train.targets, c.train.targets)
    assert torch.equal(a.test.targets, clean.test.targets)  # evaluation stays clean
    # roughly uniform over the other classes: no class receives more than twice its share
    shifts = (a.label_changes.given - a.label_changes.original) % 10
    assert set(shifts.tolist()) <= set(range(1, 10)) and np.bincount(shifts, minlength=10)[1:].max() < 2 * 300 / 9
    assert len({clean.fingerprint(), a.fingerprint(), c.fingerprint()}) == 3  # runs on other labels never mix


def test_noisy_run_records_its_flips_and_refined_generations_take_their_own_epochs(tmp_path):
    cfg = load_config(overrides={"data.dataset": "digits", "data.label_noise": 0.2, "optim.epochs": 1,
                                 "chain.generations": 2, "chain.refined_epochs": 3, "device": "cpu"})
    rows = run_chain(cfg, tmp_path / "c", log=lambda _: None)
    assert len(rows) == 2
    for gen, epochs in (("gen1", 1), ("gen2", 3)):
        lines = (tmp_path / "c" / gen / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == epochs
        assert json.loads((tmp_path / "c" / gen / "meta.json").read_text())["config"]["optim"]["epochs"] == epochs
        with open(tmp_path / "c" / gen / "label-noise.csv") as f:
            flips = list(csv.DictReader(f))
        assert len(flips) == round(0.2 * 1438) and all(r["original"] != r["given"] for r in flips)
