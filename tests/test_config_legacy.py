"""Config keys of earlier versions are translated (issue 23): a run folder and a label store written
before the config got its ``refinery`` / ``labels`` / ``loss`` / ``store`` sections still resume and
are still checked. ``tests/fixtures/run-v0.1`` was written by the code before that change: a digits
chain (``cnn-small:width=0.25``, 2 epochs, labels from a baked store, refinery T = 0.5, top-3 uint8,
label smoothing 0.1), generation 1 finished, generation 2 stopped after its first epoch."""

import json
import shutil
from pathlib import Path

import pytest

from label_refinery import UserError, load_config, run_chain, train_generation
from label_refinery.config import LEGACY_KEYS, config_from_dict, upgrade

FIXTURE = Path(__file__).parent / "fixtures" / "run-v0.1"
SETTINGS = {  # the fixture's settings, in today's keys
    "data.dataset": "digits",
    "model": "cnn-small:width=0.25",
    "optim.epochs": 2,
    "chain.generations": 2,
    "labels.source": "store",
    "refinery.temperature": 0.5,
    "store.top_k": 3,
    "store.dtype": "uint8",
    "loss.label_smoothing": 0.1,
}


def test_every_legacy_key_lands_in_its_section():
    values = {"temperature": 4.0, "gt_weight": 0.1, "label_smoothing": 0.2, "refinery_temperature": 0.5,
              "refinery_bn_train": True, "top_k": 3, "store_dtype": "uint8"}  # fmt: skip
    assert {k.split(".")[1] for k in LEGACY_KEYS} == set(values)
    old = {"refinery": ["a", "b"], "labels": {**values, "source": "store"}}
    new = upgrade(old)
    for key, target in LEGACY_KEYS.items():
        section, name = target.split(".")
        assert new[section][name] == values[key.split(".")[1]], key
    assert new["labels"] == {"source": "store"} and new["refinery"]["path"] == ["a", "b"]
    assert upgrade(new) == new  # today's mappings come back equal
    cfg = config_from_dict(old)
    assert (cfg.loss.temperature, cfg.loss.gt_weight, cfg.loss.label_smoothing) == (4.0, 0.1, 0.2)
    assert (cfg.refinery.path, cfg.refinery.temperature, cfg.refinery.bn_train) == (("a", "b"), 0.5, True)
    assert (cfg.store.top_k, cfg.store.dtype, cfg.labels.source) == (3, "uint8", "store")


def test_legacy_and_new_key_with_two_values_are_refused():
    with pytest.raises(UserError, match="labels.temperature .*loss.temperature"):
        upgrade({"labels": {"temperature": 2}, "loss": {"temperature": 4}})
    assert upgrade({"labels": {"temperature": 4}, "loss": {"temperature": 4}})["loss"] == {"temperature": 4}


def test_old_keys_in_overrides_and_yaml_still_work(tmp_path):
    p = tmp_path / "old.yaml"
    p.write_text("refinery: runs/g1\nlabels: {temperature: 4, gt_weight: 0.1, top_k: 3}\n")
    cfg = load_config(p, {"labels.refinery_temperature": 0.5})
    assert cfg.refinery.path == "runs/g1" and cfg.refinery.temperature == 0.5
    assert (cfg.loss.temperature, cfg.loss.gt_weight, cfg.store.top_k) == (4.0, 0.1, 3)
    assert load_config(p, {"loss.temperature": 2}).loss.temperature == 2  # a flag overrides the file's old key


def test_a_run_folder_of_the_earlier_layout_resumes(tmp_path):
    run = tmp_path / "run-v0.1"
    shutil.copytree(FIXTURE, run)
    store = run / "gen2" / "labels"
    manifest_before = (store / "manifest.json").read_bytes()
    lines = []
    rows = run_chain(load_config(overrides=SETTINGS), run, log=lines.append)

    assert any(line.startswith("generation 1: finished earlier") for line in lines)
    assert any("label store" in line and "reusing it" in line for line in lines)  # checked, not baked again
    assert any(line.startswith("generation 2: resuming after epoch 1") for line in lines)
    assert [r["generation"] for r in rows] == [1, 2]
    assert (store / "manifest.json").read_bytes() == manifest_before
    metrics = [json.loads(line) for line in (run / "gen2" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1]  # the old run's epoch 1, then ours
    meta = json.loads((run / "gen2" / "meta.json").read_text())
    assert meta["config"]["refinery"]["temperature"] == 0.5 and meta["config"]["store"] == {"top_k": 3, "dtype": "uint8"}
    assert meta["labels"]["kind"] == "stored" and meta["labels"]["temperature"] == 0.5
    # generation 1's metadata is of the earlier layout and still reads as today's config
    old_meta = json.loads((run / "gen1" / "meta.json").read_text())
    assert "refinery_temperature" in old_meta["config"]["labels"]
    assert config_from_dict(old_meta["config"]).loss.label_smoothing == 0.1


def test_a_run_folder_of_the_earlier_layout_is_still_checked(tmp_path):
    run = tmp_path / "run-v0.1"
    shutil.copytree(FIXTURE, run)
    with pytest.raises(UserError, match=r"refinery.temperature: 0.5 there, 0.25 now"):
        run_chain(load_config(overrides={**SETTINGS, "refinery.temperature": 0.25}), run, log=lambda _: None)
    # the label store of the earlier layout checks what it was baked for
    other = {**SETTINGS, "chain.generations": 1, "seed": 1, "labels.store": str(run / "gen2" / "labels"), "refinery.temperature": 0.25}
    with pytest.raises(UserError, match="baked at temperature 0.5"):
        train_generation(load_config(overrides=other), tmp_path / "student", log=lambda _: None)
