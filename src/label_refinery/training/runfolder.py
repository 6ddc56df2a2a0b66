"""The files of a generation folder: config comparison on resume, metrics, refinery checks, metadata.

Run-folder bookkeeping, kept apart from the epoch loop (:mod:`label_refinery.training.generation`). The folder::

    config.yaml         the resolved config of this generation
    metrics.jsonl       one JSON line per epoch (train loss, train top-1 on crops, test top-1/5, ...)
    state.safetensors   the training state of an unfinished generation (:mod:`label_refinery.training.state`)
    model.safetensors   final weights (metadata in the header)
    meta.json           architecture, classes, dataset fingerprint, config, refinery provenance with
                        SHA-256, final metrics; written last: it marks the generation finished
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
import yaml

from .._version import __version__
from ..checkpoint import META, STATE, WEIGHTS, read_meta
from ..config import Config, upgrade
from ..data import ImageDataset
from ..errors import UserError
from ..files import atomic_write, read_json, sha256_file
from ..labels import refinery_sha256
from ..models import count_parameters
from ..typed import merge, to_dict

# Keys that may change between a run and its resumption without changing its results.
# not part of a run's identity: where files are (the SHA-256s are compared), how it runs, what watches it
_NOT_COMPARED = ("refinery.path", "refinery.weights", "refinery.classes", "device", "chain", "data.data_dir",
                 "data.workers", "compile", "save_every", "eval_every", "log")  # fmt: skip


def comparable(cfg_dict: dict) -> dict:
    out = json.loads(json.dumps(cfg_dict))
    for key in _NOT_COMPARED:
        node, *rest = key.split(".")
        if rest:
            out.get(node, {}).pop(rest[0], None)
        else:
            out.pop(node, None)
    return out


def has_progress(folder: Path) -> bool:
    """Whether ``folder`` holds a finished generation or an epoch checkpoint."""
    return (folder / META).is_file() or (folder / STATE).is_file()


def _as_today(values: dict) -> dict:
    """A recorded config (of any version) as today's comparable values: keys added to the config
    after the run was made count as their defaults (old runs still resume)."""
    return comparable(merge(to_dict(Config()), upgrade(values)))


def check_same_config(folder: Path, values: dict) -> None:
    """Refuse to resume (or skip) a run that was made with another config (``values``: ``to_dict(cfg)``)."""
    saved_path = folder / "config.yaml"
    if not saved_path.is_file():
        return
    saved = _as_today(yaml.safe_load(saved_path.read_text()) or {})
    now = comparable(values)
    if saved != now:
        diffs = _diff(saved, now)
        raise UserError(
            f"{folder} holds a run with another config ({'; '.join(diffs[:4])}). Use a new --out folder, "
            "or delete the old one to start over."
        )


def _later(folder: Path, generation: int) -> str:
    return " and the generations after it" if folder.name == f"gen{generation}" else ""


def finished_meta(folder: Path, generation: int) -> dict | None:
    """``meta.json`` of a finished generation in ``folder`` (checked against its weights' header), or None."""
    if not (folder / META).is_file():
        return None
    if not (folder / WEIGHTS).is_file():
        raise UserError(f"{folder} is finished (meta.json) but its {WEIGHTS} is missing: delete {folder}{_later(folder, generation)} to retrain")
    return read_meta(folder)


def check_finished(folder: Path, meta: dict, values: dict, generation: int) -> None:
    """A finished generation is skipped only if it is intact and was trained with this config: its
    weights must have the SHA-256 its ``meta.json`` recorded, and the config recorded there must be
    ``values`` (the folder's ``config.yaml`` alone could be another run's, issue 28)."""
    later = _later(folder, generation)
    weights, recorded = folder / WEIGHTS, meta.get("sha256")
    if recorded is not None:
        if not weights.is_file():
            raise UserError(f"{folder} is finished (meta.json) but its {WEIGHTS} is missing: delete {folder}{later} to retrain")
        if sha256_file(weights) != recorded:
            raise UserError(
                f"{folder}: {WEIGHTS} is not the file meta.json recorded (SHA-256 differs): the weights were changed, "
                f"replaced or are corrupt. Restore them, or delete {folder}{later} to retrain"
            )
    if isinstance(meta.get("config"), dict) and _as_today(meta["config"]) != comparable(values):
        diffs = _diff(_as_today(meta["config"]), comparable(values))
        raise UserError(
            f"{folder} was finished with another config ({'; '.join(diffs[:4])}; recorded in its meta.json). Use a new "
            f"--out folder, or delete {folder}{later} to retrain"
        )


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {_shown(va)} there, {_shown(vb)} now")
    return out


def _shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def metrics_upto(path: Path, last_epoch: int) -> list[dict]:
    """Keep metrics of epochs <= last_epoch (a crash may have logged an epoch it did not checkpoint,
    or cut the last line short)."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("epoch", last_epoch + 1) <= last_epoch:
            rows.append(row)
    atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    return rows


def _current_refinery_sha(cfg: Config) -> str | None:
    """SHA-256 of the refinery this config names: its checkpoint, or the one a named store was baked by."""
    if cfg.refinery.path:
        return refinery_sha256(cfg.refinery)
    if cfg.labels.store:
        manifest = Path(cfg.labels.store) / "manifest.json"
        return read_json(manifest, "label store manifest").get("refinery_sha256") if manifest.is_file() else None
    return None


def check_same_refinery(folder: Path, recorded: str | None, cfg: Config) -> None:
    """A generation's refinery must be the same file it was trained (or started) with."""
    current = _current_refinery_sha(cfg)
    if current != recorded:
        raise UserError(
            f"{folder} was trained with another refinery (SHA-256 {str(recorded)[:12]} there, {str(current)[:12]} now): "
            f"the refinery was retrained or replaced. Delete {folder} (and the generations after it) to retrain."
        )


def final_meta(plan, ds: ImageDataset, student, labels_info: dict, metrics: dict, fingerprint: str) -> dict:
    """meta.json of a finished generation (``plan``: its :class:`~label_refinery.training.setup.Plan`)."""
    return {
        "generation": plan.generation,
        "model": plan.cfg.model,
        "parameters": count_parameters(student),
        "in_chans": ds.in_chans,
        "classes": ds.classes,
        "image_size": ds.image_size,
        "mean": list(ds.mean),
        "std": list(ds.std),
        "dataset": ds.name,
        "dataset_fingerprint": fingerprint,
        "config": plan.values,
        "labels": labels_info,
        "metrics": metrics,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"label_refinery": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def final_metrics(history: list[dict], clean: dict, folder: Path, epochs: int) -> dict:
    """The generation's summary: the last epoch's metrics, clean train top-1 and the gap."""
    if len(history) < epochs or "test_top1" not in history[-1]:
        raise UserError(
            f"{folder / 'metrics.jsonl'} is missing or lacks epochs ({len(history)} of {epochs} logged), so this "
            f"generation's metrics cannot be written. Restore the file, or delete {folder} to retrain the generation"
        )
    last = history[-1]
    return {
        "train_top1_crops": last["train_top1_crops"],
        "train_top1_clean": clean["top1"],
        "test_top1": last["test_top1"],
        "test_top5": last["test_top5"],
        "gap": clean["top1"] - last["test_top1"],
        "train_seconds": sum(r["seconds"] for r in history),
        **({"val_top1": last["val_top1"]} if "val_top1" in last else {}),
    }
