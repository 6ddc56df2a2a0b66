"""One writer per folder, and nothing clobbered that is not ours (issue 28). No torch here.

Every command that writes a run folder (a generation, a chain), a label store or an audit first
*claims* it with :func:`claim`:

1. **Ours or empty.** A folder that exists, is not empty and is not one of ours is refused with the fix
   (another ``--out``, or ``--force``). :func:`kinds_of` is the one place that says what makes a
   folder ours: the marker files each kind of folder holds (:data:`KINDS`), or our lock file.
2. **One writer.** An exclusive ``flock`` on ``FOLDER/.label-refinery.lock``, held until the command
   ends; the kernel releases it when the process dies, however it dies (SIGKILL included). The holder
   writes its PID, host and command line into the file, so a second command refuses at once with
   one line naming them. The lock file stays (it marks the folder as ours).

A file output (``relabel --out fixes.csv``, ``export --out labels.csv``) is claimed with
:func:`claim_file`: an existing file is not replaced without ``force``, and a lock file beside it
(``.fixes.csv.lock``, removed afterwards) keeps two writers apart.

Within one process a claim is re-entrant (a chain holds its folder while a generation claims its
own; a fold chain runs inside an audit). Under torchrun, rank 0 alone claims and every rank raises
its refusal, so no rank waits in a collective for one that stopped (:func:`claim`).

Example:
    >>> with claim("runs/x", "chain"):                           # doctest: +SKIP
    ...     run_the_chain()
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError

LOCK = ".label-refinery.lock"

# What makes a folder ours, per kind: each tuple is one set of entries that together mark it (a
# trailing "/" is a folder). Folders written before the lock file existed are recognised by these.
KINDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "generation": tuple(
        ("config.yaml", other)
        for other in ("meta.json", "state.safetensors", "metrics.jsonl", "labels/", "static-labels/")
    ),
    "chain": (("config.yaml", "gen1/"), ("summary.json", "gen1/")),
    "store": (("bake.json",), ("manifest.json",)),
    "audit": (("audit.csv",), ("audit-summary.json",), ("audit.html", "probs.npy")),
}
_NAMES_SHOWN = 3  # entries named when a folder is refused
_TEXT_SHOWN = 300  # characters of a holder's command line (and of a path) in a message

_held: dict[str, int] = {}  # folders (resolved) this process holds -> open lock file descriptor
_fds: set[int] = set()  # every lock descriptor held, folders' and files'


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) closes its copies of the held locks: the lock stays the
    parent's alone, released when the parent ends, not when its last worker does."""
    for fd in _fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _fds.clear()
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _entry_present(folder: Path, entry: str) -> bool:
    return (folder / entry.rstrip("/")).is_dir() if entry.endswith("/") else (folder / entry).is_file()


def _record(path: Path) -> dict:
    """What a lock file says about its (last) holder; {} if unreadable."""
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read(1 << 16))  # ours are a few hundred bytes
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def kinds_of(folder: str | Path) -> set[str]:
    """Which of our kinds (:data:`KINDS`) the folder is: by its marker files, or by what our lock
    file recorded of the commands that wrote it. Empty for a folder that is not ours."""
    folder = Path(folder)
    found = {kind for kind, sets in KINDS.items() if any(all(_entry_present(folder, e) for e in s) for s in sets)}
    recorded = _record(folder / LOCK).get("kinds")
    if isinstance(recorded, list):
        found |= {k for k in recorded if k in KINDS}
    return found


def _short(text: str, limit: int = _TEXT_SHOWN) -> str:
    text = text.encode("ascii", "backslashreplace").decode()  # odd bytes in a name stay on one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_ours(folder: str | Path, accept: tuple[str, ...], *, force: bool = False) -> None:
    """Refuse a folder that exists, holds anything and is none of the kinds ``accept`` (``force``: allow it)."""
    folder = Path(folder)
    if force or not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"{_short(str(folder))} is a file, not a folder: pass another --out")
    names = sorted(p.name for p in folder.iterdir())
    if not names or kinds_of(folder) & set(accept):
        return
    shown = ", ".join(_short(n, 40) for n in names[:_NAMES_SHOWN]) + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")
    ours = sorted(kinds_of(folder))
    article = "an" if accept[0][0] in "aeiou" else "a"
    what = f"a label-refinery {' / '.join(ours)} folder, not {article} {accept[0]}" if ours else f"not a label-refinery {accept[0]} folder"
    raise UserError(
        f"{_short(str(folder))} is not empty and is {what} (it holds {shown}): pass another --out, or --force to "
        "write into it anyway (files of the same names are then replaced)"
    )


def _holder(path: Path) -> str:
    """The holder of a lock we could not take, as its record names it (read again briefly: the holder
    writes its record just after taking the lock)."""
    deadline = time.monotonic() + 1.0
    record = _record(path)
    while not record.get("pid") and time.monotonic() < deadline:
        time.sleep(0.05)
        record = _record(path)
    if not record.get("pid"):
        return "another process"
    host = record.get("host")
    where = f" on {_short(str(host), 40)}" if host and host != socket.gethostname() else ""
    return f"PID {record['pid']}{where}: {_short(str(record.get('command', '?')))}"


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    if argv[0].endswith(("label_refinery/__main__.py", "label-refinery")) or argv[0] == "-m":
        argv[0] = "label-refinery"
    return " ".join(argv)


def _open_locked(path: Path, what: str) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as err:
        raise UserError(f"cannot write {_short(str(path.parent))}: {err.strerror or err}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError(
                f"{_short(str(what))} is being written by another label-refinery command ({_holder(path)}); wait for "
                "it to finish (or stop it), or write elsewhere (another --out)"
            ) from None
        raise UserError(f"cannot lock {_short(str(path))}: {err.strerror or err}") from None
    return fd


def _lock(path: Path, what: str) -> int:
    """An open descriptor holding ``path``'s exclusive flock; a UserError naming the holder if taken.
    A lock file may be removed by a holder that is done with it (:func:`claim_file`, an empty folder
    tidied away): then the one taken is no longer at ``path``, and the lock is taken again."""
    while True:
        fd = _open_locked(path, what)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                _fds.add(fd)
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _release(fd: int) -> None:
    _fds.discard(fd)
    os.close(fd)  # releases the lock


def _write_record(fd: int, kind: str, previous: dict) -> None:
    kinds = sorted({kind, *(k for k in previous.get("kinds", []) if isinstance(k, str))})
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(), "kinds": kinds,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


@contextmanager
def _claim_here(folder: Path, kind: str, accept: tuple[str, ...], force: bool) -> Iterator[Path]:
    key = str(folder.resolve())
    if key in _held:  # this process already holds it (checked when it was claimed)
        yield folder
        return
    check_ours(folder, accept, force=force)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # created here, innermost first
    previous = _record(folder / LOCK)
    fd = _lock(folder / LOCK, str(folder))
    _held[key] = fd
    try:
        _write_record(fd, kind, previous)
        yield folder
    finally:
        del _held[key]
        if made and [p.name for p in folder.iterdir()] == [LOCK]:  # refused before it wrote: leave no trace
            (folder / LOCK).unlink(missing_ok=True)
            for empty in made:
                try:
                    empty.rmdir()
                except OSError:
                    break
        _release(fd)


@contextmanager
def claim(
    folder: str | Path, kind: str, *, accept: tuple[str, ...] | None = None, force: bool = False
) -> Iterator[Path]:
    """Hold ``folder`` as the one writer of a ``kind`` folder (:data:`KINDS`) while the block runs.

    Refuses (:class:`UserError`) a folder that is not empty and none of the kinds ``accept``
    (default: ``kind``) unless ``force``, and a folder another process holds, naming its PID and
    command. Creates the folder. Re-entrant within a process. Under torchrun (several processes)
    every rank calls it at the same point: rank 0 claims, and every rank raises rank 0's refusal.
    """
    folder, accept = Path(folder), accept or (kind,)
    distributed = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun (one process needs no torch here)
        from . import distributed
    if distributed is None or distributed.world() == 1:
        with _claim_here(folder, kind, accept, force):
            yield folder
        return
    with ExitStack() as held:
        refusal = None
        if distributed.is_main():
            try:
                held.enter_context(_claim_here(folder, kind, accept, force))
            except UserError as err:
                refusal = str(err)
        refusal = distributed.broadcast(refusal)  # every rank learns whether rank 0 holds it
        if refusal is not None:
            raise UserError(refusal)
        yield folder


@contextmanager
def claim_file(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Hold the output file ``path`` while the block writes it: refused if it exists (unless
    ``force``) or another process is writing it. One process only (the tools that write files)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{_short(str(path))} is a folder: --out names the file to write")
    lock = path.with_name(f".{path.name}.lock")
    fd = _lock(lock, str(path))
    try:
        _write_record(fd, "file", {})
        if path.exists() and not force:
            raise UserError(f"{_short(str(path))} exists: pass --force to replace it, or another --out")
        yield path
    finally:
        lock.unlink(missing_ok=True)  # while still held, so a waiter retries on a fresh file
        _release(fd)


__all__ = ["KINDS", "LOCK", "check_ours", "claim", "claim_file", "kinds_of"]
