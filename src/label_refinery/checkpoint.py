"""Checkpoints: safetensors weights with our JSON metadata, written atomically, loaded safely.

A generation directory holds
- ``model.safetensors``: the final weights; the header's metadata carries the JSON below and its
  digests (:data:`DIGEST_KEY`): a SHA-256 of the tensors (names, dtypes, shapes and bytes) and one of
  the metadata text;
- ``meta.json``: the same metadata plus the weights file's SHA-256, written *last*: its presence
  means the generation finished;
- ``state.safetensors``: the resumable training state after the last finished epoch (model and
  optimizer tensors; epoch and config in the header, with the same digests), replaced atomically
  every epoch.

Integrity (issue 28): every load (:func:`load_tensors`, :func:`load_checkpoint`) checks the
tensors against the digest in their own header, so a corrupted ``model.safetensors`` is refused
with or without its ``meta.json``; with ``meta.json`` beside it, the file's SHA-256 and the
metadata must match it too. Cost: a load hashes the tensor bytes once more than before (SHA-256,
about 0.1-0.5 s per 100 MB, a ResNet-50; the file's own SHA-256, the checkpoint's identity, was
already computed). :func:`read_meta`, the one reader of ``meta.json`` (reports, summaries, resumes),
reads only the weights' header: ``meta.json`` must equal the header's metadata, whose digest is
checked, so an edited number in ``meta.json`` is refused instead of reported. Files written before
these digests (no :data:`DIGEST_KEY`) still load, checked against ``meta.json``'s SHA-256 as before.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target (``os.replace``), so a crash or a full disk leaves the previous file intact. Loading uses
``safetensors`` only: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import UserError, brief
from .files import atomic_write, read_json, sha256_bytes, write_json

FORMAT = "label-refinery-checkpoint/1"
META_KEY = "label_refinery"
DIGEST_KEY = "label_refinery_sha256"  # header metadata: {"tensors": SHA-256, "meta": SHA-256 of META_KEY's text}
WEIGHTS, META, STATE = "model.safetensors", "meta.json", "state.safetensors"
_CORRUPT = "retrain or restore it"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor in name order: its name, dtype, shape and raw bytes (CPU, C order).
    The layout of the file does not enter, so it is computed from the tensors before saving."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """Save tensors with ``meta`` and their digests in the safetensors header, atomically; returns the
    file's SHA-256."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    text = json.dumps({"format": FORMAT, **meta}, sort_keys=True)
    digests = {"tensors": tensors_sha256(flat), "meta": sha256_bytes(text.encode())}
    data = st_save(flat, metadata={META_KEY: text, DIGEST_KEY: json.dumps(digests, sort_keys=True)})
    atomic_write(path, data)
    return sha256_bytes(data)


def _header_meta(header: bytes, path: Path) -> tuple[dict, dict | None]:
    """``(our metadata, its digests or None for files written before them)`` from a safetensors header;
    the metadata text is checked against its digest."""
    try:
        fields = json.loads(header).get("__metadata__") or {}
        raw, field = fields.get(META_KEY), fields.get(DIGEST_KEY)
        # the first digest format: one SHA-256 of the metadata text + NUL + the tensor bytes (load_tensors checks it)
        digests = {"content": field} if _is_sha256(field) else json.loads(field or "null")
        meta = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError, AttributeError) as err:
        raise UserError(f"{path} is corrupt or not a safetensors file (its header: {err}); {_CORRUPT}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(
            f"{path} is a safetensors file but not a label-refinery checkpoint (no {brief(FORMAT)} metadata); "
            "to start from foreign weights use --pretrained FILE instead"
        )
    if digests is not None and (
        not isinstance(digests, dict) or ("content" not in digests and digests.get("meta") != sha256_bytes(raw.encode()))
    ):
        raise UserError(f"{path} is corrupt: its metadata does not match the SHA-256 in its header; {_CORRUPT}")
    return meta, digests


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _tensors_match(data: bytes, header_len: int, tensors: dict, digests: dict) -> bool:
    if "content" in digests:  # the first format: metadata text and the raw tensor bytes, hashed together
        raw = json.loads(data[8 : 8 + header_len])["__metadata__"][META_KEY]
        return digests["content"] == sha256_bytes(raw.encode() + b"\0" + data[8 + header_len :])
    return digests.get("tensors") == tensors_sha256(tensors)


def _readable(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    if path.suffix != ".safetensors":
        raise UserError(
            f"{path} is not a label-refinery checkpoint: expected a .safetensors file written by label-refinery "
            "(pickled .pt/.pth files are never loaded, since unpickling can run arbitrary code)"
        )


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Tensors, metadata and SHA-256 of a file written by :func:`save_tensors`; the tensors must
    match the digest in the header (files from before the digests have none to match)."""
    path = Path(path)
    _readable(path)
    data = path.read_bytes()
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is corrupt or not a safetensors file ({err}); {_CORRUPT}") from err
    header_len = int.from_bytes(data[:8], "little")
    meta, digests = _header_meta(data[8 : 8 + header_len], path)
    if digests is not None and not _tensors_match(data, header_len, tensors, digests):
        raise UserError(f"{path} is corrupt: its tensors do not match the SHA-256 in its header (changed after it was written); {_CORRUPT}")
    return tensors, meta, sha256_bytes(data)


def read_header(path: str | Path) -> tuple[dict, dict | None]:
    """``(metadata, digests or None)`` of a checkpoint from its header alone (no tensor is read)."""
    path = Path(path)
    _readable(path)
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= min(path.stat().st_size - 8, 100 << 20):
                raise UserError(f"{path} is corrupt or not a safetensors file (header size {size}); {_CORRUPT}")
            header = f.read(size)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from err
    return _header_meta(header, path)


def _same_meta(sidecar: Path, recorded: dict, meta: dict, weights: Path) -> None:
    """``meta.json`` (less its ``sha256``) must say what the weights' header says."""
    def text(m):
        return json.dumps({k: v for k, v in m.items() if k != "sha256"}, sort_keys=True)

    if text(recorded) != text(meta):
        keys = sorted(k for k in set(recorded) | set(meta) if k != "sha256" and text({k: recorded.get(k)}) != text({k: meta.get(k)}))
        raise UserError(
            f"{sidecar} does not match the metadata in the header of {weights} (they differ in {brief(keys, 80)}): it was "
            f"edited or belongs to other weights; restore it, or delete {sidecar.parent} to retrain that generation"
        )


def _recorded(sidecar: Path) -> dict:
    """The JSON object in a generation's ``meta.json``, or one clear line (truncated, not an object)."""
    fix = f"; restore it, or delete {sidecar.parent} to retrain that generation"
    recorded = read_json(sidecar, "generation metadata", fix)
    if not isinstance(recorded, dict):
        raise UserError(f"generation metadata {sidecar} is not a JSON object{fix}")
    return recorded


def read_meta(path: str | Path) -> dict:
    """``meta.json`` of a finished generation (its folder, its ``meta.json`` or its weights), checked
    against the metadata in ``model.safetensors``' header (whose digest is checked); reads the header
    only. A truncated or edited ``meta.json``, or one without its weights, is a :class:`UserError`.

    Example:
        >>> read_meta("runs/demo/gen1")["metrics"]["test_top1"]    # doctest: +SKIP
        91.2
    """
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    sidecar, weights = folder / META, folder / WEIGHTS
    recorded = _recorded(sidecar)
    if not weights.is_file():
        raise UserError(f"{sidecar} has no {WEIGHTS} beside it: restore the weights, or delete {folder} to retrain")
    _same_meta(sidecar, recorded, read_header(weights)[0], weights)
    return recorded


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
        recorded = _recorded(sidecar)
        if recorded.get("sha256") and recorded["sha256"] != digest:
            raise UserError(f"{weights} does not match {sidecar} (SHA-256 differs): the file was changed or is corrupt")
        _same_meta(sidecar, recorded, meta, weights)
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
