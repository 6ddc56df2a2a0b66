"""Files written safely, read carefully and identified by content: atomic writes, JSON, CSV,
SHA-256. No torch here.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target (``os.replace``), so a crash or a full disk leaves the previous file intact (readers see the
old file or the new one, never a part). Config files, run metadata, metrics tables, label-store
manifests and checkpoints are all written through :func:`atomic_write`. Files that belong together
(``audit.csv`` and its ``audit.html``, ``summary.json`` and ``summary.md``) are written into a hidden
folder beside them and moved in together (:func:`together`).

Reading: every JSON artefact goes through :func:`read_json` and every CSV the project reads
(label overrides, audit.csv, the reviewed CSV) through :func:`read_csv`, so a truncated, binary or
mis-encoded file is one :class:`UserError` line naming the file (and the line), never a traceback.

CSV cells we write that begin with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return would run
as formulas in a spreadsheet (CSV injection); :func:`csv_cell` prefixes such text with ``'`` as
OWASP recommends (a cell that begins with ``'`` gets one more), and :func:`read_csv` removes that
one prefix again, so class names make the round trip unchanged.

Example:
    >>> write_json("runs/x/summary.json", {"top1": 91.2})                # doctest: +SKIP
    >>> sha256_file("runs/x/summary.json")[:12]                         # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UserError, brief


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
def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror or err}") from err


def _text(data: bytes, path: Path, what: str, fix: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped); a binary or otherwise encoded file is refused."""
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise UserError(f"{what} {path} is a binary file, not text (a NUL byte on line {line}){fix}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}): save it as UTF-8{fix}"
        ) from None


def read_json(path: str | Path, what: str = "file", fix: str = "") -> Any:
    """The JSON value in ``path``; a missing, truncated, binary or invalid file is a :class:`UserError`
    naming ``what`` the file is, the line, and ``fix`` (appended to the message, e.g. "; restore it")."""
    path = Path(path)
    text = _text(_read_bytes(path, what), path, what, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        cut = " (truncated?)" if err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated") else ""
        raise UserError(f"{what} {path} is not valid JSON{cut} ({err.msg}: line {err.lineno}, column {err.colno}){fix}") from None


CSV_FIELD_LIMIT = 128 * 1024  # characters in one CSV field (the csv module's own default limit)
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value for a CSV cell we write: text beginning with ``= + - @``, a tab or a carriage return
    (a spreadsheet formula) or with ``'`` gets a ``'`` in front; numbers stay numbers.

    Example:
        >>> csv_cell("=HYPERLINK(1)"), csv_cell("cat"), csv_cell(-1.5)
        ("'=HYPERLINK(1)", 'cat', -1.5)
    """
    return "'" + value if isinstance(value, str) and value.startswith((*_FORMULA, "'")) else value


def _uncell(text: str) -> str:
    """The text :func:`csv_cell` was given: one ``'`` in front of a formula character (or ``'``) removed."""
    return text[1:] if text.startswith("'") and text[1:].startswith((*_FORMULA, "'")) else text


def csv_text(header: Iterable[str], rows: Iterable[dict]) -> str:
    """CSV text of ``rows`` (dicts with the ``header`` keys), every cell through :func:`csv_cell`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")  # quotes cells with commas
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


def read_csv(path: str | Path, what: str, columns: Iterable[str] = (), fix: str = "") -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` for every row of a CSV file with a header, ``row`` a dict from column to text.

    UTF-8 (a leading byte-order mark, as spreadsheets save one, is dropped), fields of at most
    :data:`CSV_FIELD_LIMIT` characters, every row as many fields as the header, the header holding
    ``columns``; cells come back as :func:`csv_cell` was given them. Anything else is a
    :class:`UserError` naming ``what`` the file is, the line and ``fix``. Blank lines are skipped.
    """
    path = Path(path)
    text = _text(_read_bytes(path, what), path, what, fix)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # a broken quote is an error, not a guess
    rows: list[tuple[int, dict[str, str]]] = []
    header = None
    try:
        for fields in reader:
            if any(len(f) > CSV_FIELD_LIMIT for f in fields):
                raise csv.Error("field larger than field limit")
            if not fields:
                continue
            fields = [_uncell(f) for f in fields]
            if header is None:
                header = [f.strip() for f in fields]
                missing = [c for c in columns if c not in header]
                if missing:
                    raise UserError(f"{what} {path} lacks the column(s) {', '.join(missing)} (its header: {brief(header)}){fix}")
                continue
            if len(fields) != len(header):
                raise UserError(f"{what} {path}, line {reader.line_num}: {len(fields)} fields, the header has {len(header)}{fix}")
            rows.append((reader.line_num, dict(zip(header, fields))))
    except csv.Error as err:
        line = reader.line_num
        if "field limit" in str(err):
            raise UserError(f"{what} {path}, line {line}: a field is longer than {CSV_FIELD_LIMIT // 1024} KiB; is this the right file?{fix}") from None
        raise UserError(f"{what} {path}, line {line}: not valid CSV ({err}){fix}") from None
    if header is None:
        raise UserError(f"{what} {path} is empty: expected a header with the columns {', '.join(columns)}{fix}")
    return rows
