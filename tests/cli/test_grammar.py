"""One CLI grammar (issue 25): the shared flags on every command where they mean anything, and a
report that fills its own columns or says which command does."""

from __future__ import annotations

import json

import pytest

from label_refinery.cli import main
from label_refinery.cli.commands import build_parser
from label_refinery.cli.runtime import RUNTIME

FLAGS = {"progress": "--no-progress", "device": "--device", "threads": "--threads"}


def test_every_command_takes_the_shared_flags_it_can_use():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, kinds in RUNTIME.items():
        options = sub.choices[name]._option_string_actions
        for kind in kinds:
            assert FLAGS[kind] in options, (name, FLAGS[kind])
    assert "--threads" not in sub.choices["relabel"]._option_string_actions  # nothing there it would speed up


def test_report_analyses_what_it_needs_or_says_which_command_does(tmp_path, capsys):
    run = tmp_path / "chain"
    assert main(["chain", "--dataset", "digits", "--train-subset", "300", "--epochs", "1", "--generations", "2",
                 "--no-progress", "--threads", "1", "--out", str(run)]) == 0  # fmt: skip
    assert main(["report", str(run), "--no-analyze", "--no-progress"]) == 0
    page = (run / "report.html").read_text()
    assert "2 of 2 generations have no label statistics" in page and f"label-refinery analyze {run}" in page
    assert "label-refinery analyze" in (run / "report.md").read_text()
    capsys.readouterr()
    assert main(["report", str(run), "--no-progress", "--device", "cpu", "--threads", "1"]) == 0
    assert "analysing" in capsys.readouterr().out
    assert all((run / f"gen{g}/analysis.json").is_file() for g in (1, 2))
    page = (run / "report.html").read_text()
    assert "no label statistics" not in page
    rows = [line.split(" | ") for line in (run / "report.md").read_text().splitlines() if line.startswith("| 2 ")]
    agreement = json.loads((run / "gen2/analysis.json").read_text())["agreement_crops"]
    assert rows[0][8] == f"{100 * agreement:.2f}" and "–" not in rows[0][7:]  # entropy, agreement, KL: filled


def test_experiment_device_and_threads(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"out: {tmp_path / 'out'}\nseeds: [1]\nanalyze: false\nbase: {{data: {{dataset: digits, train_subset: 200}}, "
                   "optim: {epochs: 1}}\narms:\n  - {name: gt, set: {chain: {generations: 1}}}\n")
    assert main(["experiment", str(exp), "--device", "cpu", "--threads", "1", "--no-progress"]) == 0
    cfg = (tmp_path / "out/seed1/gt/gen1/config.yaml").read_text()
    assert "device: cpu" in cfg
    with pytest.raises(SystemExit):
        main(["relabel", "x.csv", "--top", "1", "--out", "y.csv", "--threads", "1"])
