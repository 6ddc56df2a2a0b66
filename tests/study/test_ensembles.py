"""Refinery ensembles in experiments (issue 15): leave-one-out across seeds, and bad references refused."""

from __future__ import annotations

import json

import pytest
import yaml

from label_refinery import UserError
from label_refinery.study.run import run_experiment, stages
from label_refinery.study.spec import load_experiment


def test_experiment_leave_one_out_ensembles(tmp_path):
    doc = {
        "out": str(tmp_path / "xp"),
        "seeds": [0, 1, 2],
        "reference": "self/gen1",
        "analyze": False,
        "base": {"data": {"dataset": "digits", "train_subset": 300, "val_split": 200},
                 "optim": {"epochs": 1, "batch_size": 64}},
        "arms": [
            {"name": "self", "set": {"chain": {"generations": 1}}},
            {"name": "loo", "refinery": "self/gen1@others", "seed_offset": 1, "set": {"chain": {"generations": 1}}},
            {"name": "both", "refinery": ["self/gen1", "loo/gen1"], "seed_offset": 2, "set": {"chain": {"generations": 1}}},
        ],
    }
    path = tmp_path / "xp.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    exp = load_experiment(path)
    # seed 0's student is refined by seeds 1 and 2's generation 1, never its own
    cfg = exp.config(exp.arm("loo"), 0)
    assert [p.split("/")[-3:] for p in cfg.refinery.path] == [["seed1", "self", "gen1"], ["seed2", "self", "gen1"]]
    assert [[a.name for a in s] for s in stages(exp, list(exp.arms))] == [["self"], ["loo", "both"]]
    lines: list[str] = []
    md = run_experiment(exp, log=lines.append)
    order = [x.split("arm ")[1].split(" ->")[0] + x.split(",")[0][-1] for x in lines if x.startswith("== seed") and "->" in x]
    assert order == ["self0", "self1", "self2", "loo0", "both0", "loo1", "both1", "loo2", "both2"]
    meta = json.loads((tmp_path / "xp/seed1/loo/gen1/meta.json").read_text())
    assert len(meta["labels"]["members"]) == 2 and "seed1" not in json.dumps(meta["labels"]["path"])
    assert "the ensemble of self/gen1 of the other 2 seeds" in md
    assert "self/gen1 + loo/gen1" in md


def test_experiment_refuses_bad_ensemble_references(tmp_path):
    doc = {"out": str(tmp_path / "xp"), "seeds": [0], "base": {"data": {"dataset": "digits"}},
           "arms": [{"name": "self"}, {"name": "loo", "refinery": "self/gen1@others"}]}
    path = tmp_path / "xp.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="at least 2 seeds"):
        load_experiment(path)
    doc["seeds"], doc["arms"][1]["refinery"] = [0, 1], "self/gen1@mine"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="ARM/genK@others"):
        load_experiment(path)
