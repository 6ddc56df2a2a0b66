"""Files written safely and identified by content: atomic writes, JSON, SHA-256. No torch here.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target (``os.replace``), so a crash or a full disk leaves the previous file intact (readers see the
old file or the new one, never a part). Config files, run metadata, metrics tables, label-store
manifests and checkpoints are all written through :func:`atomic_write`.

Example:
    >>> write_json("runs/x/summary.json", {"top1": 91.2})                # doctest: +SKIP
    >>> sha256_file("runs/x/summary.json")[:12]                         # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

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


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise UserError(f"{what} {path} does not exist") from err
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror or err}") from err


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON file this project wrote (meta.json, manifest.json, ...), or one clear error naming it:
    missing, unreadable, not UTF-8, truncated or not JSON (a damaged or hand-edited file)."""
    path = Path(path)
    raw = _read_bytes(path, what)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise UserError(f"{what} {path} is corrupt or truncated (not valid UTF-8 JSON: {str(err)[:120]}); "
                        "restore it or delete the folder that holds it and re-run") from err  # fmt: skip


def read_csv(path: str | Path, what: str, needed: set[str], hint: str = "") -> list[dict[str, str]]:
    """The rows of a CSV a user gives us (label overrides, a reviewed audit), as dicts; the one CSV
    reader. UTF-8 with or without the BOM spreadsheets write; one clear error naming the file (and
    line) for a missing file, another encoding or binary data, a field over 128 KiB, or missing
    columns. A file with a header and no rows gives ``[]``: the caller decides whether that is an error."""
    import csv
    import io

    path = Path(path)
    raw = _read_bytes(path, what)
    if b"\0" in raw[:65536]:
        raise UserError(f"{what} {path} is binary, not a CSV text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(f"{what} {path}, line {line}: not UTF-8 text (save the CSV as UTF-8)") from err
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = needed - {(f or "").strip() for f in reader.fieldnames or []}
        if missing:
            raise UserError(f"{what} {path} lacks the column(s) {', '.join(sorted(missing))}" + (f": {hint}" if hint else ""))
        rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except csv.Error as err:  # e.g. a field over the csv module's 128 KiB limit
        raise UserError(f"{what} {path}, line {reader.line_num + 1}: {str(err)[:120]}") from err
    return rows
