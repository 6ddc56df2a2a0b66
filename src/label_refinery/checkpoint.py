"""Checkpoints: safetensors weights with our JSON metadata, written atomically, loaded safely.

A generation directory holds
- ``model.safetensors``: the final weights; the header's metadata carries the JSON below;
- ``meta.json``: the same metadata plus the weights file's SHA-256, written *last*: its presence
  means the generation finished;
- ``state.safetensors``: the resumable training state after the last finished epoch (model and
  optimizer tensors; epoch and config in the header), replaced atomically every epoch.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target (``os.replace``), so a crash or a full disk leaves the previous file intact. Loading uses
``safetensors`` only: nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import UserError, brief
from .files import atomic_write, sha256_bytes, sha256_file, write_json

FORMAT = "label-refinery-checkpoint/1"
META_KEY = "label_refinery"
WEIGHTS, META, STATE = "model.safetensors", "meta.json", "state.safetensors"


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """Save tensors with ``meta`` in the safetensors header, atomically; returns the file's SHA-256."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data = st_save(flat, metadata={META_KEY: json.dumps({"format": FORMAT, **meta}, sort_keys=True)})
    atomic_write(path, data)
    return sha256_bytes(data)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Tensors, metadata and SHA-256 of a file written by :func:`save_tensors`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    if path.suffix != ".safetensors":
        raise UserError(
            f"{path} is not a label-refinery checkpoint: expected a .safetensors file written by label-refinery "
            "(pickled .pt/.pth files are never loaded, since unpickling can run arbitrary code)"
        )
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is corrupt or not a safetensors file ({err}); retrain or restore it") from err
    raw = (header.get("__metadata__") or {}).get(META_KEY)
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{path} is a safetensors file but not a label-refinery checkpoint (no {brief(FORMAT)} metadata); "
            "to start from foreign weights use --pretrained FILE instead"
        )
    return tensors, meta, sha256_bytes(data)


@dataclass
class Checkpoint:
    """A finished model: weights, metadata and where they came from."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    meta: dict
    sha256: str

    def build_model(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The model with these weights (architecture, channels and classes from the metadata)."""
        from .models import create_model

        model = create_model(self.meta["model"], self.meta["in_chans"], len(self.meta["classes"]))
        model.load_state_dict(self.state_dict)
        return model.to(device)


def resolve(path: str | Path) -> Path:
    """A run's generation folder or its ``model.safetensors`` -> the weights file."""
    p = Path(path).expanduser()
    return p / WEIGHTS if p.is_dir() else p


def ensemble_sha256(member_shas: list[str]) -> str:
    """The identity of a refinery ensemble: a SHA-256 over its members' SHA-256s, in order."""
    return sha256_bytes(("ensemble:" + ",".join(member_shas)).encode())


def refinery_sha256(refinery: str | tuple[str, ...] | list[str]) -> str:
    """SHA-256 of the refinery a config names: its weights file, or for several checkpoints (an
    ensemble) :func:`ensemble_sha256` of theirs. Recorded in a run's state and meta.json."""
    if isinstance(refinery, (str, Path)):
        return sha256_file(resolve(refinery))
    shas = [sha256_file(resolve(p)) for p in refinery]
    return shas[0] if len(shas) == 1 else ensemble_sha256(shas)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a finished model; accepts a generation folder or its ``model.safetensors``.

    Example:
        >>> ckpt = load_checkpoint("runs/demo/gen1")          # doctest: +SKIP
        >>> model = ckpt.build_model().eval()                  # doctest: +SKIP
    """
    weights = resolve(path)
    tensors, meta, digest = load_tensors(weights)
    sidecar = weights.parent / META
    if weights.name == WEIGHTS and sidecar.is_file():
        recorded = json.loads(sidecar.read_text()).get("sha256")
        if recorded and recorded != digest:
            raise UserError(f"{weights} does not match {sidecar} (SHA-256 differs): the file was changed or is corrupt")
    for key in ("model", "in_chans", "classes"):
        if key not in meta:
            raise UserError(f"{weights} has no {brief(key)} in its metadata; it is not a finished label-refinery model")
    return Checkpoint(weights, tensors, meta, digest)


def save_final(folder: str | Path, model: torch.nn.Module, meta: dict) -> dict:
    """Write ``model.safetensors`` then ``meta.json`` (the commit marker); returns the metadata."""
    folder = Path(folder)
    digest = save_tensors(folder / WEIGHTS, model.state_dict(), meta)
    full = {"format": FORMAT, **meta, "sha256": digest}
    write_json(folder / META, full)
    return full


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (for safetensors) and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in info["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
