"""Experiments (arms x seeds of chains), the validation split and the label-completeness metric."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from label_refinery import UserError, load_config, run_chain
from label_refinery.cli import main
from label_refinery.data import load_dataset
from label_refinery.study.run import run_experiment
from label_refinery.study.spec import SEED_STRIDE, load_experiment
from label_refinery.study.stats import mean_std
from label_refinery.tools.analysis import distractor_mass


def test_val_split_is_held_out_seeded_and_disjoint():
    full = load_dataset("digits")
    ds = load_dataset("digits", val_split=300, train_subset=500)
    again = load_dataset("digits", val_split=300, train_subset=500)
    assert len(ds.val) == 300 and len(ds.train) == 500
    train_ids, val_ids = set(ds.train.ids.tolist()), set(ds.val.ids.tolist())
    assert not train_ids & val_ids  # no validation image is ever trained on
    assert torch.equal(ds.val.ids, again.val.ids) and torch.equal(ds.train.ids, again.train.ids)
    assert torch.equal(ds.val.targets, full.train.targets[ds.val.ids])  # ids still index the full split
    assert ds.fingerprint() != load_dataset("digits", train_subset=500).fingerprint()
    assert load_dataset("digits").val is None
    with pytest.raises(UserError, match="val_split must be in"):
        load_dataset("digits", val_split=len(full.train))


def test_chain_reports_val_top1_every_epoch(tmp_path):
    cfg = load_config(overrides={"data.dataset": "digits", "data.val_split": 300, "optim.epochs": 2, "optim.batch_size": 64,
                                 "chain.generations": 1})
    rows = run_chain(cfg, tmp_path / "c", log=lambda _: None)
    lines = [json.loads(x) for x in (tmp_path / "c/gen1/metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(0 <= r["val_top1"] <= 100 for r in lines)
    assert rows[0]["val_top1"] == lines[-1]["val_top1"]
    assert "| val top-1 |" in (tmp_path / "c/summary.md").read_text()


def test_distractor_mass_by_hand():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7], [0.5, 0.5, 0.0]])
    y = torch.tensor([0, 0, 1])
    d = torch.tensor([1, 2, 2])
    out = distractor_mass(p, y, d)
    assert out["distractor_mass"] == pytest.approx((0.3 + 0.7 + 0.0) / 3)
    assert out["given_mass"] == pytest.approx((0.6 + 0.2 + 0.5) / 3)
    assert out["other_mass"] == pytest.approx((0.1 + 0.1 + 0.5) / 3)  # 3 classes: one "other" per row
    assert out["distractor_top1"] == pytest.approx(1 / 3)  # only row 2's top-1 is its distractor


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
    assert all("entropy_crops" in r for r in rows)  # analyze ran on every generation
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


def test_t_interval_matches_the_t_distribution():
    from label_refinery.study.stats import t_interval

    values = [0.3, -0.1, 0.4, 0.2, 0.5]  # n = 5: t(0.975, 4) = 2.776
    m, half = t_interval(values)
    assert m == pytest.approx(0.26) and half == pytest.approx(2.776 * mean_std(values)[1] / math.sqrt(5))
    stats = pytest.importorskip("scipy.stats", reason="scipy (from scikit-learn) checks the tabulated quantiles")
    for n in (2, 3, 10, 31):
        assert t_interval([0.0, 1.0] * (n // 2) + [0.5] * (n % 2))[1] == pytest.approx(
            stats.t.ppf(0.975, n - 1) * mean_std([0.0, 1.0] * (n // 2) + [0.5] * (n % 2))[1] / math.sqrt(n), rel=2e-3 if n <= 31 else 0.02)


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
    assert main(["experiment", str(path), "--table"]) == 0
    assert "no finished generation yet" in capsys.readouterr().out
    assert main(["experiment", str(path), "--no-progress"]) == 0
    assert "| self | 2 |" in (tmp_path / "xp/results.md").read_text()


def test_eval_every_skips_evaluations_but_not_the_last(tmp_path):
    base = {"data.dataset": "digits", "data.val_split": 200, "optim.epochs": 3, "optim.batch_size": 64, "chain.generations": 1}
    rows = run_chain(load_config(overrides={**base, "eval_every": 2}), tmp_path / "c", log=lambda _: None)
    lines = [json.loads(x) for x in (tmp_path / "c/gen1/metrics.jsonl").read_text().splitlines()]
    assert ["test_top1" in r for r in lines] == [False, True, True]  # after epoch 2, and after the last
    assert ["val_top1" in r for r in lines] == [False, True, True]
    assert rows[0]["test_top1"] == lines[-1]["test_top1"]
    # the evaluation frequency does not change training: a run may resume with another eval_every
    assert run_chain(load_config(overrides=base), tmp_path / "c", log=lambda _: None) == rows


def test_runs_made_before_a_config_key_existed_still_resume(tmp_path):
    """A saved config.yaml without a key added later (e.g. data.val_split) counts as that key's default."""
    cfg = load_config(overrides={"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64, "chain.generations": 1})
    rows = run_chain(cfg, tmp_path / "c", log=lambda _: None)
    for path in (tmp_path / "c/config.yaml", tmp_path / "c/gen1/config.yaml"):
        saved = yaml.safe_load(path.read_text())
        del saved["data"]["val_split"], saved["eval_every"]
        path.write_text(yaml.safe_dump(saved))
    assert run_chain(cfg, tmp_path / "c", log=lambda _: None) == rows  # skipped as finished, not refused
    with pytest.raises(UserError, match="another config"):
        run_chain(load_config(overrides={"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64, "data.val_split": 100}),
                  tmp_path / "c", log=lambda _: None)
