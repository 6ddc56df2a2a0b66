"""Experiments (study/spec.py, run.py, tables.py): arms x seeds of chains, their tables, resume and file errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from label_refinery import UserError
from label_refinery.cli import main
from label_refinery.data import load_dataset
from label_refinery.study.run import run_experiment
from label_refinery.study.spec import SEED_STRIDE, load_experiment
from label_refinery.study.stats import mean_std


def _write(tmp_path, arms, **extra):
    doc = {
        "out": str(tmp_path / "xp"),
        "seeds": [0, 1],
        "reference": "self/gen1",
        "analyze": True,
        "base": {"data": {"dataset": "digits", "train_subset": 500, "val_split": 300}, "optim": {"epochs": 2, "batch_size": 64}},
        "arms": arms,
        **extra,
    }
    path = tmp_path / "xp.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


ARMS = [
    {"name": "self", "set": {"chain": {"generations": 2}}},
    {"name": "static", "refinery": "self/gen1", "seed_offset": 1, "set": {"labels": {"source": "static"}, "chain": {"generations": 1}}},
]


def test_experiment_runs_arms_over_seeds_and_tables_are_right(tmp_path):
    exp = load_experiment(_write(tmp_path, ARMS, ensembles=["self/gen1"]))
    md = run_experiment(exp, log=lambda _: None)
    # the ensemble ceiling: both seeds' generation-1 models, probabilities averaged, on val and test
    from label_refinery.checkpoint import load_checkpoint
    from label_refinery.models.ensemble import ProbabilityEnsemble

    ens = json.loads((tmp_path / "xp/ensembles.json").read_text())["self/gen1"]
    assert ens["seeds"] == [0, 1] and ens["models"] == 2
    ds = load_dataset("digits", train_subset=500, val_split=300)
    members = [load_checkpoint(tmp_path / f"xp/seed{s}/self/gen1").build_model().eval() for s in (0, 1)]
    batch = next(ds.test.iter_batches(1000))  # all 359 test images
    with torch.no_grad():
        p = sum(torch.softmax(m(batch.images), 1) for m in members) / 2  # [359, 10]
        assert torch.allclose(ProbabilityEnsemble(members)(batch.images).exp(), p, atol=1e-5)
    hand = 100 * float((p.argmax(1) == batch.targets).float().mean())
    assert len(batch.targets) == len(ds.test) and ens["test_top1"] == pytest.approx(hand, abs=100 / 359)  # one image's worth of rounding
    assert "| self/gen1 | 2 |" in md
    rows = json.loads((tmp_path / "xp/results.json").read_text())
    assert sorted((r["seed"], r["arm"], r["generation"]) for r in rows) == [
        (0, "self", 1), (0, "self", 2), (0, "static", 1), (1, "self", 1), (1, "self", 2), (1, "static", 1)]
    metas = {(s, a, g): json.loads((tmp_path / f"xp/seed{s}/{a}/gen{g}/meta.json").read_text())
             for s, a, g in [(0, "self", 1), (1, "self", 1), (0, "self", 2), (0, "static", 1)]}
    # seeds: base + 1000 * repetition (+ generation - 1 in a chain); seed_offset 1 matches self/gen2
    assert metas[(1, "self", 1)]["config"]["seed"] == SEED_STRIDE
    assert metas[(0, "static", 1)]["config"]["seed"] == metas[(0, "self", 2)]["config"]["seed"] == 1
    assert metas[(0, "static", 1)]["config"]["refinery"]["path"].endswith("seed0/self/gen1")
    assert metas[(0, "static", 1)]["config"]["labels"]["source"] == "static"
    # the table's mean ± std is the seeds' sample mean and std
    tests = [metas[(s, "self", 1)]["metrics"]["test_top1"] for s in (0, 1)]
    mean, std = sum(tests) / 2, abs(tests[0] - tests[1]) / math.sqrt(2)
    line = next(x for x in md.splitlines() if x.startswith("| self | 1 |"))
    assert f"{mean:.2f} ± {std:.2f}" in line and line.endswith("| 2 |")
    assert "| static | 1 | cnn-small | static from self/gen1 |" in md
    assert main(["evaluate", str(tmp_path / "xp/seed0/self/gen1"), "--split", "val"]) == 0
    # paired differences: per seed, minus the reference of the same seed
    rows_by = {(r["seed"], r["arm"], r["generation"]): r for r in rows}
    deltas = [rows_by[(s, "self", 2)]["test_top1"] - rows_by[(s, "self", 1)]["test_top1"] for s in (0, 1)]
    dline = next(x for x in md.splitlines() if x.startswith("| self | 2 | per-crop from self/gen1 |"))
    m, sd = mean_std(deltas)
    half = 12.706 * sd / math.sqrt(2)  # t(0.975, 1 degree of freedom)
    assert f"{m:+.2f} [{m - half:+.2f}, {m + half:+.2f}]" in dline and dline.endswith(f"| {sum(d > 0 for d in deltas)}/2 |")
    # analyze ran on every generation: each row carries that generation's own analysis.json
    for r in rows:
        analysis = json.loads((tmp_path / f"xp/seed{r['seed']}/{r['arm']}/gen{r['generation']}/analysis.json").read_text())
        assert r["entropy_crops"] == analysis["entropy_crops"] and 0 < r["entropy_crops"] < math.log(10)
    # a second run resumes: nothing is retrained
    stamp = (tmp_path / "xp/seed0/self/gen1/model.safetensors").stat().st_mtime_ns
    assert run_experiment(load_experiment(tmp_path / "xp.yaml"), log=lambda _: None) == md
    assert (tmp_path / "xp/seed0/self/gen1/model.safetensors").stat().st_mtime_ns == stamp
    # a second reference: static labels against per-crop self/gen2, the same seed and schedule
    second = load_experiment(_write(tmp_path, ARMS, reference=["self/gen1", "self/gen2"]))
    md2 = run_experiment(second, log=lambda _: None)
    part = md2.split("Paired differences to self/gen2 (same seed), mean [95 % t-interval]:")[1]
    d2 = [rows_by[(s, "static", 1)]["test_top1"] - rows_by[(s, "self", 2)]["test_top1"] for s in (0, 1)]
    m2, sd2 = mean_std(d2)
    sline = next(x for x in part.splitlines() if x.startswith("| static | 1 |"))
    assert f"{m2:+.2f} [{m2 - 12.706 * sd2 / math.sqrt(2):+.2f}," in sline


def test_experiment_file_errors(tmp_path):
    with pytest.raises(UserError, match="must be an earlier arm"):
        load_experiment(_write(tmp_path, list(reversed(ARMS))))
    with pytest.raises(UserError, match="unknown key 'sets'"):
        load_experiment(_write(tmp_path, [{"name": "a", "sets": {}}]))
    with pytest.raises(UserError, match="no arm named 'self'"):  # the reference must be an arm
        load_experiment(_write(tmp_path, [{"name": "a"}]))
    with pytest.raises(UserError, match="unknown config key"):  # every arm's config is checked before training
        load_experiment(_write(tmp_path, [{"name": "self", "set": {"optim": {"epoch": 3}}}]))
    with pytest.raises(UserError, match="ARM/genK"):
        load_experiment(_write(tmp_path, [ARMS[0], {**ARMS[1], "refinery": "self"}]))
    with pytest.raises(UserError, match="arm 'self' has 2 generation"):
        load_experiment(_write(tmp_path, ARMS, reference="self/gen3"))
    with pytest.raises(UserError, match="non-empty"):
        load_experiment(_write(tmp_path, ARMS, seeds=[]))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_experiment(tmp_path / "list.yaml")
    with pytest.raises(UserError, match="unique"):
        load_experiment(_write(tmp_path, [ARMS[0], ARMS[0]]))
    exp = load_experiment(_write(tmp_path, ARMS))
    with pytest.raises(UserError, match="not finished: run that arm first"):
        run_experiment(exp, arms=["static"], log=lambda _: None)


def test_experiment_cli(tmp_path, capsys):
    path = _write(tmp_path, ARMS[:1], seeds=[0])
    assert main(["experiment", str(path), "--seeds", "3"]) == 2
    assert "not in the experiment's seeds" in capsys.readouterr().err
    assert main(["experiment", str(path), "--arms", "nope"]) == 2
    assert "no arm named 'nope'" in capsys.readouterr().err
    assert main(["experiment", str(path), "--arms", "x*"]) == 2  # a pattern matching no arm
    assert "no arm named 'x*'" in capsys.readouterr().err
    assert main(["experiment", str(path), "--table"]) == 0
    assert "no finished generation yet" in capsys.readouterr().out
    assert main(["experiment", str(path), "--no-progress", "--arms", "s*"]) == 0
    assert "| self | 2 |" in (tmp_path / "xp/results.md").read_text()


def test_arms_naming_one_store_share_one_bake(tmp_path):
    """``store: NAME``: students of two architectures that see the same crops train from one bake of
    their refinery; the labels are the ones an arm baking its own store gets (same weights)."""
    top = {"store": {"top_k": 10}, "chain": {"generations": 1}}
    arms = [
        {"name": "self", "set": {"chain": {"generations": 1}}},
        {"name": "a", "refinery": "self/gen1", "seed_offset": 1, "store": "shared", "set": top},
        {"name": "b", "refinery": "self/gen1", "seed_offset": 1, "store": "shared", "set": {**top, "model": "mlp"}},
        {"name": "own", "refinery": "self/gen1", "seed_offset": 1, "set": {**top, "labels": {"source": "store"}}},
    ]
    exp = load_experiment(_write(tmp_path, arms, seeds=[0], reference=[], analyze=False))
    logs: list[str] = []
    run_experiment(exp, log=logs.append)
    store = tmp_path / "xp/seed0/stores/shared"
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["refinery_sha256"] and manifest["shape"][:2] == [2, 500] and manifest["top_k"] == 10
    assert sum("finished earlier, reusing it" in line and "stores/shared" in line for line in logs) == 1  # b reused a's bake
    assert not (tmp_path / "xp/seed0/a/gen1/labels").exists() and (tmp_path / "xp/seed0/own/gen1/labels/manifest.json").is_file()
    meta = lambda arm: json.loads((tmp_path / f"xp/seed0/{arm}/gen1/meta.json").read_text())  # noqa: E731
    assert meta("a")["config"]["labels"] == {"source": "store", "store": str(store)} and meta("b")["config"]["model"] == "mlp"
    assert meta("a")["metrics"]["test_top1"] == meta("own")["metrics"]["test_top1"]  # same labels, same run
    from safetensors.torch import load_file

    wa, wo = (load_file(tmp_path / f"xp/seed0/{arm}/gen1/model.safetensors") for arm in ("a", "own"))
    assert all(torch.equal(wa[k], wo[k]) for k in wa)
    # an arm with other crops naming the same store is refused when it opens it, before training
    bad = arms[:2] + [{"name": "c", "refinery": "self/gen1", "seed_offset": 2, "store": "shared", "set": top}]
    with pytest.raises(UserError, match="finished label store with other settings"):
        run_experiment(load_experiment(_write(tmp_path, bad, seeds=[0], reference=[], analyze=False)), log=lambda _: None)
    with pytest.raises(UserError, match="needs a refinery"):
        load_experiment(_write(tmp_path, [{"name": "x", "store": "s"}], seeds=[0], reference=[]))
