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

from .errors import UserError
from .files import atomic_write, read_json, sha256_bytes, sha256_file, write_json

FORMAT = "label-refinery-checkpoint/1"
META_KEY = "label_refinery"
WEIGHTS, META, STATE = "model.safetensors", "meta.json", "state.safetensors"


DIGEST_KEY = "label_refinery_sha256"  # header key: SHA-256 of the metadata JSON + the tensor bytes


def _content_digest(meta_json: str, body: bytes) -> str:
    return sha256_bytes(meta_json.encode() + b"\0" + body)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """Save tensors with ``meta`` in the safetensors header, atomically; returns the file's SHA-256.

    The header also carries a digest of the metadata and every tensor byte (``DIGEST_KEY``), so a
    file checks itself on every load, with or without its meta.json (cost: one SHA-256 pass over
    the file, ~0.3 s for a 100 MB ResNet-50)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta_json = json.dumps({"format": FORMAT, **meta}, sort_keys=True)
    plain = st_save(flat, metadata={META_KEY: meta_json})  # the tensor bytes do not depend on the header
    body = plain[8 + int.from_bytes(plain[:8], "little") :]
    data = st_save(flat, metadata={META_KEY: meta_json, DIGEST_KEY: _content_digest(meta_json, body)})
    atomic_write(path, data)
    return sha256_bytes(data)


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    if path.suffix != ".safetensors":
        raise UserError(
            f"{path} is not a label-refinery checkpoint: expected a .safetensors file written by label-refinery "
            "(pickled .pt/.pth files are never loaded, since unpickling can run arbitrary code)"
        )
    return path.read_bytes()


def _checked_meta(path: Path, data: bytes) -> dict:
    """The metadata in the header of ``data`` (a file's bytes), checked against the header's own digest."""
    try:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is corrupt or not a safetensors file ({err}); retrain or restore it") from err
    raw = (header.get("__metadata__") or {}).get(META_KEY)
    recorded = (header.get("__metadata__") or {}).get(DIGEST_KEY)  # files of before 0.x have none
    if recorded and recorded != _content_digest(raw or "", data[8 + header_len :]):
        raise UserError(f"{path} is corrupt: its weights or metadata do not match the digest in its own header; "
                        "restore it or retrain")  # fmt: skip
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError as err:
        raise UserError(f"{path} is corrupt (its header's metadata is not JSON); restore it or retrain") from err
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{path} is a safetensors file but not a label-refinery checkpoint (no {FORMAT!r} metadata); "
            "to start from foreign weights use --pretrained FILE instead"
        )
    return meta


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Tensors, metadata and SHA-256 of a file written by :func:`save_tensors`."""
    path = Path(path)
    data = _read(path)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as err:
        raise UserError(f"{path} is corrupt or not a safetensors file ({err}); retrain or restore it") from err
    return tensors, _checked_meta(path, data), sha256_bytes(data)


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
        recorded = read_json(sidecar, "metadata").get("sha256")
        if recorded and recorded != digest:
            raise UserError(f"{weights} does not match {sidecar} (SHA-256 differs): the file was changed or is corrupt")
    for key in ("model", "in_chans", "classes"):
        if key not in meta:
            raise UserError(f"{weights} has no {key!r} in its metadata; it is not a finished label-refinery model")
    return Checkpoint(weights, tensors, meta, digest)


def read_meta(folder: str | Path) -> dict:
    """A finished generation's meta.json, checked against the weights it describes: the numbers a
    report or summary prints come from here, so an edited meta.json (or weights replaced beside it)
    is one clear error, not a number trusted. Reads and hashes the weights file once."""
    folder = Path(folder)
    meta = read_json(folder / META, "metadata")
    if not isinstance(meta, dict):
        raise UserError(f"metadata {folder / META} is corrupt (not a JSON object); restore it or retrain {folder}")
    data = _read(folder / WEIGHTS)  # the header and its digest; no tensors built
    header, digest = _checked_meta(folder / WEIGHTS, data), sha256_bytes(data)
    if meta.get("sha256") != digest or {k: v for k, v in meta.items() if k != "sha256"} != header:
        raise UserError(f"{folder / META} does not match {folder / WEIGHTS} (edited, corrupt or from another "
                        f"run): restore it, or delete {folder} and retrain")  # fmt: skip
    return meta


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
