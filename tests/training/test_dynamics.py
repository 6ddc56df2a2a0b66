"""Per-image training dynamics recorded during training (issue 27): the margin of the given label
(area under the margin), forgetting events and the epoch an image was learned, by hand and on a run
with flipped labels."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from label_refinery import UserError, load_config, train_generation
from label_refinery.tools.audit import AuditSpec, audit_run
from label_refinery.training.dynamics import Dynamics, load


def test_margins_forgetting_and_learning_by_hand():
    d = Dynamics(torch.tensor([30, 10, 20]))  # ids need not be positions or sorted
    y = torch.tensor([0, 1])
    # epoch 0: id 10 right (margin 2 - 1 = 1), id 20 wrong (margin 0 - 3 = -3); id 30 not seen
    d.add(torch.tensor([10, 20]), torch.tensor([[2.0, 1.0, 0.0], [3.0, 0.0, -1.0]]), y)
    d.close_epoch(0)
    # epoch 1: id 10 seen twice (two crops): margins -1 and -3, both wrong -> forgotten; id 20 right (margin 1)
    d.add(torch.tensor([10, 10, 20]), torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 0, 1]))
    d.close_epoch(1)
    a = d.arrays()
    assert a["ids"].tolist() == [30, 10, 20]
    assert a["epochs"].tolist() == [0, 2, 2]
    assert a["aum"].tolist() == pytest.approx([0.0, (1 + (-1 - 3) / 2) / 2, (-3 + 1) / 2])
    assert a["forgotten"].tolist() == [0, 1, 0]
    assert a["learned_epoch"].tolist() == [-1, -1, 1]
    assert a["correct_last"].tolist() == [-1, 0, 1]

    restored = Dynamics(torch.tensor([30, 10, 20]))
    restored.restore(d.state())
    assert all(np.array_equal(restored.arrays()[k], a[k]) for k in a)


def test_flipped_labels_have_low_margins_and_mixing_records_none(tmp_path):
    cfg = load_config(overrides={"data.dataset": "digits", "data.label_noise": 0.1, "optim.epochs": 6, "device": "cpu"})
    train_generation(cfg, tmp_path / "noisy", log=lambda _: None)
    d = load(tmp_path / "noisy")
    flipped = {int(r["index"]) for r in csv.DictReader(open(tmp_path / "noisy/label-noise.csv"))}
    wrong = np.array([int(i) in flipped for i in d["ids"]])
    k = int(wrong.sum())
    assert k > 100 and d["epochs"].min() >= 1 and d["epochs"].mean() > 5.5  # drop_last leaves out 30 images an epoch
    assert d["aum"][wrong].mean() < 0 < d["aum"][~wrong].mean()
    assert wrong[np.argsort(d["aum"], kind="stable")[:k]].mean() > 0.6  # precision at k of the margin alone
    assert (d["correct_last"][wrong] == 0).mean() > 0.5  # most flipped labels never fit in 6 epochs

    # the audit ranks by it (its own column beside the refined probabilities' scores)
    audit_run(tmp_path / "noisy", AuditSpec(rank="aum"), log=lambda _: None)
    rows = list(csv.DictReader(open(tmp_path / "noisy/audit/audit.csv")))
    assert [float(r["aum"]) for r in rows[:k]] == sorted(float(r["aum"]) for r in rows[:k])
    assert np.mean([int(r["index"]) in flipped for r in rows[:k]]) > 0.6 and rows[0]["forgotten"] != ""

    mixed = load_config(overrides={"data.dataset": "digits", "optim.epochs": 1, "mix.kind": "mixup", "device": "cpu"})
    train_generation(mixed, tmp_path / "mixed", log=lambda _: None)
    assert load(tmp_path / "mixed") is None and (tmp_path / "mixed/meta.json").is_file()
    with pytest.raises(UserError, match="--rank aum needs the training dynamics"):
        audit_run(tmp_path / "mixed", AuditSpec(rank="aum"), log=lambda _: None)
    audit_run(tmp_path / "mixed", log=lambda _: None)  # other rankings do without: the columns stay empty
    assert {r["aum"] for r in csv.DictReader(open(tmp_path / "mixed/audit/audit.csv"))} == {""}
