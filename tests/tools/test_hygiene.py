"""Image hygiene in the audit (issue 27, goal 3): nearest neighbours in a model's embedding, training
images that duplicate test images, near-duplicates and outliers, as audit columns and a section of
audit.html."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from label_refinery import load_config, train_generation
from label_refinery.data import load_dataset
from label_refinery.models import create_model
from label_refinery.tools.audit import AuditSpec, audit_run
from label_refinery.tools.hygiene import class_similarity, classifier_input, hygiene, nearest


def test_nearest_by_hand():
    e = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
    pos, sim = nearest(e, e, 2, same=True)  # an image is never its own neighbour
    assert pos[:, 0].tolist() == [1, 0, 1, 2] and sim[:, 0] == pytest.approx([0.8, 0.8, 0.6, 0.0], abs=1e-6)
    assert pos[3].tolist() == [2, 1]  # [-1, 0] is least unlike [0, 1]
    pos, sim = nearest(e[:1], e[2:], 1)
    assert pos.tolist() == [[0]] and sim.tolist() == [[0.0]]


def test_outliers_far_from_every_class_rank_first_even_as_a_cluster_of_their_own():
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:3]  # three classes along three axes
    inliers = centres[np.repeat(np.arange(3), 50)] + 0.05 * rng.standard_normal((150, 4))
    junk = np.array([0, 0, 0, 1.0]) + 0.01 * rng.standard_normal((6, 4))  # six alike images off every class,
    e = np.concatenate([inliers, junk])  # given random labels
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    y = np.concatenate([np.repeat(np.arange(3), 50), rng.integers(0, 3, 6)])
    score = 1 - class_similarity(e, y)
    assert set(np.argsort(-score)[:6]) == set(range(150, 156))
    _, sim = nearest(e, e, 5, same=True)  # their nearest neighbours are each other: a kNN score misses them
    assert (1 - sim.mean(1))[150:].max() < np.median(1 - sim.mean(1))


def test_a_training_image_in_the_test_split_is_found(tmp_path):
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = create_model("cnn-small", ds.in_chans, ds.num_classes).eval()
    assert isinstance(classifier_input(model), torch.nn.Linear)
    leaked = ds.train.subset(list(range(0, 300, 10)))  # 30 training images posing as a test split
    h = hygiene(model, ds.train, leaked)
    ids = ds.train.ids.numpy()
    copies = np.isin(ids, leaked.ids.numpy())
    assert (h["test_duplicate_of"][copies] == ids[copies]).all()  # each finds itself
    assert h["test_duplicate_sim"][copies] == pytest.approx(1.0, abs=1e-5)
    assert h["test_duplicate_sim"][~copies].max() < 1.0 - 1e-4
    assert (h["duplicate_of"] != ids).all()  # never itself among the training images
    assert h["outlier_score"].shape == (len(ds.train),) and (h["outlier_score"] >= -1e-6).all()
    assert (h["outlier_score"] <= 2 + 1e-6).all()


def test_the_audit_writes_hygiene_columns_and_its_page_shows_them(tmp_path):
    cfg = load_config(overrides={"data.dataset": "digits", "optim.epochs": 2, "device": "cpu"})
    train_generation(cfg, tmp_path / "run", log=lambda _: None)
    audit_run(tmp_path / "run", AuditSpec(hygiene_rows=5), log=lambda _: None)
    rows = list(csv.DictReader(open(tmp_path / "run/audit/audit.csv")))
    test_ids = set(load_dataset("digits").test.ids.tolist())
    for r in rows[:20]:
        assert int(r["test_duplicate_of"]) in test_ids and -1 <= float(r["test_duplicate_sim"]) <= 1
        assert int(r["duplicate_of"]) != int(r["index"]) and float(r["outlier_score"]) >= -1e-6
    page = (tmp_path / "run/audit/audit.html").read_text()
    assert "Image hygiene" in page and page.count("class='hygiene'") == 3
    assert page.count("showOnly(") >= 4  # a filter button per table, and all


def test_too_many_pairs_skips_hygiene_and_says_so(tmp_path, monkeypatch, capsys):
    from label_refinery.tools import audit

    cfg = load_config(overrides={"data.dataset": "digits", "optim.epochs": 1, "device": "cpu"})
    train_generation(cfg, tmp_path / "run", log=lambda _: None)
    monkeypatch.setattr(audit, "MAX_PAIRS", 1000)
    audit_run(tmp_path / "run", log=lambda _: None)
    assert "image hygiene skipped" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "run/audit/audit.csv")))
    assert {r["test_duplicate_sim"] for r in rows} == {""} and {r["duplicate_of"] for r in rows} == {""}
    assert "Image hygiene" not in (tmp_path / "run/audit/audit.html").read_text()
