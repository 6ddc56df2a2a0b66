"""Refinery ensembles (issue 15): several checkpoints averaged in probability as one label source,
live and in a label store, from the CLI (in experiments: study/test_ensembles.py)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from label_refinery import UserError
from label_refinery.checkpoint import ensemble_sha256, load_checkpoint
from label_refinery.cli import main
from label_refinery.data import CropSampler, load_dataset
from label_refinery.files import sha256_file
from label_refinery.labels import LiveRefinery

BASE = ["--dataset", "digits", "--train-subset", "300", "--epochs", "1", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two generation-1 models on digits (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("members")
    for seed in (0, 1):
        assert main(["train", *BASE, "--seed", str(seed), "--out", str(root / f"g{seed}")]) == 0
    return root / "g0", root / "g1"


def test_ensemble_labels_are_the_members_mean_probability(members):
    ds = load_dataset("digits", train_subset=300)
    batch = next(ds.train.iter_batches(32, crops=CropSampler(5), epoch=0))
    ens = LiveRefinery.from_checkpoints([str(m) for m in members])
    probs = [F.softmax(load_checkpoint(m).build_model().eval()(batch.images), 1) for m in members]
    assert torch.allclose(ens(batch), (probs[0] + probs[1]) / 2, atol=1e-6)
    assert ens.provenance["sha256"] == ensemble_sha256([sha256_file(m / "model.safetensors") for m in members])
    assert ens.provenance["path"] == [str(m / "model.safetensors") for m in members]
    assert ens.provenance["model"] == "ensemble of 2: cnn-small, cnn-small"
    one = LiveRefinery.from_checkpoints([str(members[0])])  # one member: the plain refinery
    assert torch.allclose(one(batch), probs[0], atol=1e-6) and one.provenance["sha256"] == sha256_file(
        members[0] / "model.safetensors"
    )


def test_train_and_store_with_an_ensemble_and_resume_checks_it(members, tmp_path, capsys):
    a, b = map(str, members)
    assert main(["train", *BASE, "--refinery", a, "--refinery", b, "--out", str(tmp_path / "live")]) == 0
    meta = json.loads((tmp_path / "live/meta.json").read_text())
    digest = ensemble_sha256([sha256_file(m / "model.safetensors") for m in members])
    assert meta["labels"]["sha256"] == digest and len(meta["labels"]["members"]) == 2
    assert meta["config"]["refinery"]["path"] == [a, b]
    assert meta["config"]["seed"] == 1  # the first member's seed (0) + 1
    # a label store baked from the ensemble: the same labels up to its top-5 and fp16 rounding
    assert main(["train", *BASE, "--refinery", a, "--refinery", b, "--label-source", "store", "--out", str(tmp_path / "st")]) == 0
    manifest = json.loads((tmp_path / "st/labels/manifest.json").read_text())
    assert manifest["refinery_sha256"] == digest
    st = json.loads((tmp_path / "st/meta.json").read_text())
    assert abs(st["metrics"]["test_top1"] - meta["metrics"]["test_top1"]) < 2.0
    # the same command again: finished, nothing retrained; another member order is another refinery
    stamp = (tmp_path / "live/model.safetensors").stat().st_mtime_ns
    assert main(["train", *BASE, "--refinery", a, "--refinery", b, "--out", str(tmp_path / "live")]) == 0
    assert (tmp_path / "live/model.safetensors").stat().st_mtime_ns == stamp
    assert main(["train", *BASE, "--refinery", b, "--refinery", a, "--seed", "1", "--out", str(tmp_path / "live")]) == 2
    assert "was trained with another refinery" in capsys.readouterr().err


def test_ensemble_members_must_see_the_same_inputs(members, tmp_path):
    main(["train", "--dataset", "digits", "--train-subset", "300", "--epochs", "1", "--image-size", "12",
          "--no-progress", "--out", str(tmp_path / "big")])
    with pytest.raises(UserError, match="see different inputs"):
        LiveRefinery.from_checkpoints([str(members[0]), str(tmp_path / "big")])
