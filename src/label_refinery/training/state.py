"""The training state of an unfinished generation: ``state.safetensors``, for an exact resume.

It holds the model, the optimizer (momentum buffers), the grad scaler, the RNG states, the position
(the next epoch and the step inside it) and the epoch's running metrics, so a run killed at any point
and re-run with the same command continues as if it had never stopped. The learning rate needs no
state: it is a function of the step. Written atomically by rank 0; read by every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..checkpoint import STATE, load_tensors, optimizer_tensors, restore_optimizer, save_tensors
from ..errors import UserError
from .engine import Meters


@dataclass
class Position:
    """Where training resumes: the next epoch and the batch inside it, with the epoch's meters so far."""

    epoch: int = 0
    batch: int = 0
    meters: Meters | None = None


def resume(
    folder: Path, student, optimizer, scaler, refinery_sha: str | None, data_fingerprint: str, dynamics=None
) -> Position:
    """Load the training state if there is one (model, optimizer, grad scaler, RNG, position, and the
    per-image training dynamics into ``dynamics``)."""
    if not (folder / STATE).is_file():
        return Position()
    try:
        tensors, meta, _ = load_tensors(folder / STATE)
    except UserError as err:
        raise UserError(
            f"{err}. The training state {folder / STATE} is damaged: delete it to restart this generation"
        ) from None
    if meta.get("refinery_sha256") != refinery_sha:
        raise UserError(f"{folder / STATE} was trained with another refinery; delete {folder} to start over")
    if meta.get("dataset_fingerprint") != data_fingerprint:
        raise UserError(
            f"{folder / STATE} was trained on other data (dataset fingerprints differ); delete {folder} to start over"
        )
    student.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(optimizer, tensors, meta["optimizer"])
    if dynamics is not None:
        dynamics.restore(tensors)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    own = f".rank{distributed.rank()}" if distributed.rank() else ""  # each process resumes its own stream
    for kind in ("cpu", "cuda"):
        key = f"rng.{kind}{own}" if f"rng.{kind}{own}" in tensors else f"rng.{kind}"  # another world size: rank 0's
        if key in tensors and (kind == "cpu" or torch.cuda.is_available()):
            (torch.set_rng_state if kind == "cpu" else torch.cuda.set_rng_state)(tensors[key])
    if "next" not in meta:  # an epoch-end state of version 0.1: "epoch" is the last finished epoch
        return Position(meta["epoch"] + 1)
    meters = Meters.from_list(meta["meters"]) if meta.get("meters") and distributed.is_main() else None
    return Position(meta["next"]["epoch"], meta["next"]["batch"], meters)


def _rng_states() -> dict[str, torch.Tensor]:
    states = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["rng.cuda"] = torch.cuda.get_rng_state()
    return states


def save(
    folder: Path, student, optimizer, scaler, pos: Position, refinery_sha: str | None, data_fingerprint: str,
    dynamics=None,
) -> None:
    """Model, optimizer, grad scaler, RNG and position in one atomically replaced file (rank 0 writes).

    Every process calls it (their RNG states are gathered); rank 0 writes. ``pos.meters`` must
    already be combined over processes (:meth:`Meters.over_processes`). The learning rate needs no state: it is a
    function of the step, which the position gives.
    """
    rngs = distributed.all_gather(_rng_states())  # every process calls save; each keeps its own stream
    dyn = dynamics.state() if dynamics is not None else {}  # combined over processes: every process takes part
    if not distributed.is_main():
        return
    opt_tensors, opt_info = optimizer_tensors(optimizer)
    tensors = {f"model.{k}": v for k, v in student.state_dict().items()}
    tensors.update(opt_tensors)
    tensors.update(dyn)
    for r, states in enumerate(rngs):  # rank 0 as "rng.cpu" (what a single process reads), others ".rankR"
        tensors.update({f"{key}{f'.rank{r}' if r else ''}": value for key, value in states.items()})
    meta = {
        "next": {"epoch": pos.epoch, "batch": pos.batch},
        "meters": pos.meters.as_list() if pos.meters else None,
        "optimizer": opt_info,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "refinery_sha256": refinery_sha,
        "dataset_fingerprint": data_fingerprint,
    }
    save_tensors(folder / STATE, tensors, meta)
