"""analyze_run (tools/analyze.py) on a chain: the distractor mass of fashion-scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from label_refinery.checkpoint import load_checkpoint
from label_refinery.data import load_dataset
from label_refinery.tools.probe import ANALYSIS_SEED


def test_analyze_measures_distractor_mass_on_scenes(tmp_path):
    from label_refinery import load_config, run_chain
    from label_refinery.tools.analyze import analyze_run

    try:
        ds = load_dataset("fashion-scenes", image_size=24, train_subset=600, val_split=300)
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not available here: {err}")
    assert (ds.train.distractors != ds.train.targets).all() and len(ds.val.distractors) == 300
    cfg = load_config(overrides={"data.dataset": "fashion-scenes", "data.image_size": 24, "data.train_subset": 600,
                                 "data.val_split": 300, "optim.epochs": 2, "chain.generations": 1})
    run_chain(cfg, tmp_path / "run", log=lambda _: None, dataset=ds)
    rows = analyze_run(tmp_path / "run", images=200, crops_per_image=2, examples=0, log=lambda _: None, dataset=ds)
    row = rows[0]
    for view in ("crops", "images"):
        assert 0 < row[f"distractor_mass_{view}"] < 1 and 0 < row[f"given_mass_{view}"] < 1
        assert row[f"distractor_mass_{view}"] + row[f"given_mass_{view}"] <= 1 + 1e-6
    # whole images, by hand: the 200 images analyze draws (its fixed seed), the model's softmax on
    # their evaluation views, the mean probability on the given and on the distractor class, and the
    # share whose top-1 is the distractor
    pos = np.sort(np.random.default_rng(ANALYSIS_SEED).permutation(len(ds.train))[:200])
    sample = ds.train.subset(pos)
    batch = next(sample.iter_batches(len(sample)))
    model = load_checkpoint(tmp_path / "run/gen1").build_model().eval()
    with torch.no_grad():
        p = torch.softmax(model(batch.images), 1)
    assert torch.equal(batch.targets, sample.targets)  # in the split's order
    y, d = sample.targets, sample.distractors
    assert row["given_mass_images"] == pytest.approx(float(p[torch.arange(200), y].mean()), abs=1e-5)
    assert row["distractor_mass_images"] == pytest.approx(float(p[torch.arange(200), d].mean()), abs=1e-5)
    assert row["distractor_top1_images"] == pytest.approx(float((p.argmax(1) == d).float().mean()), abs=1e-9)
    k = 400 * row["distractor_top1_crops"]  # a count of the 200 x 2 crops
    assert 0 <= k <= 400 and round(k, 6) == round(k)
    assert json.loads((tmp_path / "run/gen1/analysis.json").read_text())["distractor_mass_crops"] == row["distractor_mass_crops"]
    assert not (tmp_path / "run/analysis").exists()  # examples=0: no example figure data
