"""Experiment trackers fed the same metric rows as ``metrics.jsonl``, which stays the record (``--log``).

- ``tensorboard``: event files in ``FOLDER/tensorboard`` (``pip install tensorboard``); a resumed
  generation purges the steps after the last saved epoch, so a crash leaves no doubled points.
- ``wandb``: a Weights & Biases run in ``FOLDER/wandb``, offline unless ``WANDB_MODE`` says otherwise
  (``wandb sync`` uploads it later); one run id per folder, so a resume continues the same run.
- ``mlflow``: an MLflow run in ``$MLFLOW_TRACKING_URI`` or else a file store ``FOLDER/mlruns``; its
  run id is kept in ``FOLDER/mlflow-run-id`` so a resume continues it.

Rank 0 only. Each epoch's numbers go in at step = epoch (1-based); the finished generation's metrics
(clean train top-1, gap, ...) as ``final/KEY``; the config once, at the start.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import UserError

KINDS = ("tensorboard", "wandb", "mlflow")


def _numbers(row: dict, prefix: str = "") -> dict[str, float]:
    return {prefix + k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


def _flat(values: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = str(v)[:250]
    return out


def _need(kind: str):
    try:
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter
        return __import__(kind)
    except ImportError:
        raise UserError(f"--log {kind} needs {kind}: pip install 'label-refinery[{kind}]'") from None


class Trackers:
    """The trackers ``kinds`` of one generation in ``folder``, starting after ``start_epoch`` epochs."""

    def __init__(self, kinds, folder: Path, values: dict, start_epoch: int, name: str):
        self.kinds, self.folder, self._open = tuple(kinds), Path(folder), []
        for kind in self.kinds:
            getattr(self, f"_open_{kind}")(_need(kind), values, start_epoch, name)

    def _open_tensorboard(self, writer_cls, values, start, name):
        writer = writer_cls(log_dir=str(self.folder / "tensorboard"), purge_step=start + 1 if start else None)
        if not start:
            writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in _flat(values).items()), 0)
        self._open.append(("tensorboard", writer))

    def _open_wandb(self, wandb, values, start, name):
        run_id = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:16]
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "label-refinery"), name=name, id=run_id, resume="allow",
            dir=str(self.folder), config=values, mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new",
        )  # fmt: skip
        self._open.append(("wandb", run))

    def _open_mlflow(self, mlflow, values, start, name):
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a file store beside the run (MLflow >= 3.7 asks to opt in to it; a server or sqlite: set the URI)
            uri = (self.folder / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        id_file = self.folder / "mlflow-run-id"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            exp = client.get_experiment_by_name("label-refinery")
            exp_id = exp.experiment_id if exp else client.create_experiment("label-refinery")
            run_id = client.create_run(exp_id, run_name=name).info.run_id
            for key, value in _flat(values).items():
                client.log_param(run_id, key, value)
            id_file.write_text(run_id + "\n")
        self._open.append(("mlflow", (client, run_id)))

    def epoch(self, epoch: int, row: dict) -> None:
        """The numbers of epoch ``epoch`` (0-based) at step ``epoch + 1``."""
        self._log(_numbers(row), epoch + 1)

    def finish(self, metrics: dict, epochs: int) -> None:
        self._log(_numbers(metrics, "final/"), epochs)

    def _log(self, numbers: dict[str, float], step: int) -> None:
        for kind, handle in self._open:
            if kind == "tensorboard":
                for key, value in numbers.items():
                    handle.add_scalar(key, value, step)
                handle.flush()
            elif kind == "wandb":
                handle.log(numbers, step=step)
            else:
                client, run_id = handle
                for key, value in numbers.items():
                    client.log_metric(run_id, key.replace("/", "_"), value, step=step)

    def close(self, finished: bool) -> None:
        for kind, handle in self._open:
            if kind == "tensorboard":
                handle.close()
            elif kind == "wandb":
                handle.finish(exit_code=0 if finished else 1)
            else:
                client, run_id = handle
                client.set_terminated(run_id, "FINISHED" if finished else "KILLED")
        self._open = []


__all__ = ["KINDS", "Trackers"]
