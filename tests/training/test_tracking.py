"""--log: the trackers get the metrics.jsonl rows (training/tracking.py), read back here from
TensorBoard's event files and MLflow's store; a crash and resume leaves each epoch once."""

from __future__ import annotations

import json

import pytest

from label_refinery import load_config, train_generation
from label_refinery.cli import main
from tests.harness import crash, rerun, stop_after_save

BASE = {"data.dataset": "digits", "data.train_subset": 400, "optim.epochs": 4, "device": "cpu"}


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_and_mlflow_get_every_epoch_once_across_a_crash(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    kinds = ["tensorboard"] + (["mlflow"] if _has("mlflow") else [])
    cfg = load_config(overrides={**BASE, "log": kinds})

    def run(folder, log):
        return train_generation(cfg, folder, log=log)

    folder = tmp_path / "run"
    crash(run, folder, stop_after_save((2, 0)))  # stopped after epoch 2 of 4 was saved
    meta, _ = rerun(run, folder)
    rows = _rows(folder)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard")).Reload()
    for key in ("train_loss", "test_top1", "lr"):
        points = events.Scalars(key)
        assert [p.step for p in points] == [1, 2, 3, 4], key  # each epoch once
        assert [p.value for p in points] == pytest.approx([r[key] for r in rows], rel=1e-6), key
    assert events.Scalars("final/train_top1_clean")[0].value == pytest.approx(meta["metrics"]["train_top1_clean"])
    if "mlflow" in kinds:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=(folder / "mlruns").resolve().as_uri())
        run_id = (folder / "mlflow-run-id").read_text().strip()
        history = sorted(client.get_metric_history(run_id, "test_top1"), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3, 4]
        assert [m.value for m in history] == pytest.approx([r["test_top1"] for r in rows])
        info = client.get_run(run_id)
        assert info.info.status == "FINISHED" and info.data.params["optim.epochs"] == "4"


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def test_log_flags_and_what_they_refuse(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--train-subset", "200", "--epochs", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    # a tracker is not part of a run's identity: a finished run with --log added is the same run
    assert main([*argv, "--log", "tensorboard", "--out", str(tmp_path / "a")]) == 0
    assert "finished earlier" in capsys.readouterr().out
    assert main([*argv, "--set", "log=nope", "--out", str(tmp_path / "b")]) == 2
    assert "log: 'nope' is not a tracker; trackers: tensorboard, wandb, mlflow" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--log", "nope", "--out", str(tmp_path / "b")])  # argparse: one of the choices
    if _has("wandb"):
        assert main([*argv, "--log", "wandb", "--out", str(tmp_path / "w")]) == 0
        runs = list((tmp_path / "w/wandb").glob("offline-run-*"))
        assert len(runs) == 1 and any(f.suffix == ".wandb" and f.stat().st_size > 0 for f in runs[0].iterdir())
