"""Files written safely and identified by content: atomic writes, JSON, SHA-256. No torch here.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target (``os.replace``), so a crash or a full disk leaves the previous file intact (readers see the
old file or the new one, never a part). Config files, run metadata, metrics tables, label-store
manifests and checkpoints are all written through :func:`atomic_write`. Files that belong together
(``audit.csv`` and its ``audit.html``, ``summary.json`` and ``summary.md``) are written into a hidden
folder beside them and moved in together (:func:`together`).

Example:
    >>> write_json("runs/x/summary.json", {"top1": 91.2})                # doctest: +SKIP
    >>> sha256_file("runs/x/summary.json")[:12]                         # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


_FILE_MODE = 0o666 & ~_umask()  # mkstemp creates 0600; give written files the usual mode


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"{path.name} was not written"
        raise UserError(
            f"cannot write {path} ({err.strerror or err}; is the disk full?): {kept}. Free space, then re-run the "
            "same command to resume from the last checkpoint"
        ) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())




_STAGE = ".staging-"  # the hidden folders of :func:`together`
_COMPLETE = ".complete"  # in a staging folder: every file is written; the names to move, one a line


def _move_in(stage: Path, folder: Path) -> None:
    for name in (stage / _COMPLETE).read_text().splitlines():
        if (stage / name).exists():  # not yet moved by an earlier, interrupted call
            os.replace(stage / name, folder / name)
    shutil.rmtree(stage)


def finish_staged(folder: str | Path) -> None:
    """Complete what an interrupted :func:`together` left in ``folder``: a staging folder whose files
    were all written is moved in (it was killed while moving them), any other one is deleted. Call it
    only while holding the folder (:func:`label_refinery.locks.claim`)."""
    for stage in sorted(Path(folder).glob(_STAGE + "*")):
        if (stage / _COMPLETE).is_file():
            _move_in(stage, Path(folder))
        elif stage.is_dir():
            shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def together(folder: str | Path) -> Iterator[Path]:
    """A hidden staging folder inside ``folder``: files written into it appear in ``folder`` together
    when the block ends (renamed in, one after another), or not at all if it raises or the process
    dies; a kill during the renames is completed by the next call (:func:`finish_staged`). Files
    only, no subfolders. Hold the folder (:func:`label_refinery.locks.claim`) while using it.

    Example:
        >>> with together("runs/x") as stage:                                   # doctest: +SKIP
        ...     write_json(stage / "summary.json", rows); atomic_write(stage / "summary.md", table)
    """
    folder = Path(folder)
    finish_staged(folder)
    try:
        stage = Path(tempfile.mkdtemp(prefix=_STAGE, dir=folder))
    except OSError as err:
        raise UserError(f"cannot write {folder}: {err.strerror or err}") from err
    try:
        yield stage
        names = sorted(p.name for p in stage.iterdir())
        atomic_write(stage / _COMPLETE, "".join(f"{n}\n" for n in names).encode())
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _move_in(stage, folder)
