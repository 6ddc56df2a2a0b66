"""Check artefacts against their digests, in full: ``label-refinery verify PATH ...``.

    label-refinery verify runs/fmnist            # every checkpoint and label store under the folder
    label-refinery verify runs/g1-store          # one label store: every epoch of every array
    label-refinery verify runs/fmnist/gen2/model.safetensors

What is checked (issue 28):

- a checkpoint (``*.safetensors``): its tensors against the SHA-256 in its header; beside a
  ``meta.json``, also the file's SHA-256 and the metadata recorded there (what every load checks);
- a label store (a folder with ``manifest.json``): every epoch of ``indices.npy`` and ``probs.npy``
  and ``ids.npy`` against the manifest's digests, and every class index and probability in range
  (:meth:`~label_refinery.labels.store.StoredLabels.verify`; training checks only the epochs it reads).

Artefacts written before the digests existed are checked as far as they can be and say so.
Each artefact gets one line; any failure makes the command fail (exit status 2) after the others
were checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..checkpoint import META, WEIGHTS, load_checkpoint, load_tensors, read_header
from ..errors import UserError
from ..labels.store import StoredLabels


def artefacts(path: Path) -> list[Path]:
    """Checkpoints (files) and label stores (folders) at or under ``path``, in path order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path} does not exist")
    stores = [m.parent for m in path.rglob("manifest.json")]
    found = sorted([*stores, *path.rglob("*.safetensors")])
    if not found:
        raise UserError(f"{path} holds no checkpoint (*.safetensors) and no label store (manifest.json)")
    return found


def check(item: Path) -> str:
    """Check one artefact in full; returns what was checked (a :class:`UserError` if it fails)."""
    if item.is_dir():
        store = StoredLabels(item).verify()
        epochs, images, _ = store.indices.shape
        if store.digests is None:
            return f"label store {item}: ok ({epochs} epoch(s) x {images} images in range; baked before array digests)"
        return f"label store {item}: ok ({epochs} epoch(s) x {images} images against the manifest's digests, in range)"
    digests = read_header(item)[1]
    with_meta = item.name == WEIGHTS and (item.parent / META).is_file()
    load_checkpoint(item) if with_meta else load_tensors(item)
    checked = ["tensors against the header's digest"] * (digests is not None) + ["meta.json's SHA-256 and metadata"] * with_meta
    old = [] if digests else ["written before header digests"]
    return f"checkpoint {item}: " + (f"ok ({'; '.join(checked + old)})" if checked else f"nothing to check it against ({old[0]}, no meta.json)")


def verify_paths(paths: Iterable[str | Path], log: Callable[[str], None] = print) -> int:
    """Check every artefact at or under ``paths`` (one line each through ``log``); returns how many
    were checked. Raises a :class:`UserError` after all were checked if any failed.

    Example:
        >>> verify_paths(["runs/fmnist"])                  # doctest: +SKIP
        checkpoint runs/fmnist/gen1/model.safetensors: ok (tensors against the header's digest; meta.json's SHA-256 and metadata)
        3
    """
    items = [item for p in paths for item in artefacts(Path(p))]
    failed = []
    for item in items:
        try:
            log(check(item))
        except UserError as err:
            failed.append(err)
            log(f"FAILED: {err}")
    if len(failed) == 1 and len(items) == 1:
        raise failed[0]
    if failed:
        raise UserError(f"{len(failed)} of {len(items)} artefacts failed their check (listed above); first: {failed[0]}")
    return len(items)


__all__ = ["verify_paths"]
