"""What an image folder holds, computed once and cached: file list, classes, fingerprint, image sizes.

Scanning ImageNet's training folder stats 1.28 million files, and reading every image's size opens
each one; a chain used to do both per generation and per process. :func:`index_of` scans a split
folder once, writes the result to a cache file, and afterwards checks it by the modification times
of the folder's *directories* only (adding, removing or renaming a file changes its directory's
time): about a thousand ``stat`` calls for ImageNet instead of a million. A directory changed less
than :data:`SETTLE_NS` before the scan is not trusted (file systems stamp times at a clock tick, so a
file added in the same tick would go unseen): such a folder is scanned again until it has settled. Image sizes are read on
first use (label stores need them for the crops' digests) and added to the same cache.

The cache lives in ``$LABEL_REFINERY_CACHE`` (default ``~/.cache/label-refinery``), under
``folders/<sha256 of the folder's absolute path>.npz``; when that is not writable the index is kept
in memory only. A file rewritten in place with the same name and size keeps its directory's time and
is not noticed, exactly as the fingerprint (names, classes and byte sizes) would not notice it.
Within one process an index is also kept in memory, so the generations of a chain share it.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError, brief

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
VERSION = 1
SETTLE_NS = 2_000_000_000  # 2 s
_MEMORY: dict[str, "FolderIndex"] = {}


@dataclass
class FolderIndex:
    """One split folder: ``rel[i]`` (path under ``root``, UTF-8 bytes), ``targets[i]``, ``nbytes[i]``."""

    root: Path
    classes: list[str]
    rel: np.ndarray  # [N] bytes ("S"): one buffer, cheap to hand to loader processes
    targets: np.ndarray  # [N] int64
    nbytes: np.ndarray  # [N] int64 file sizes
    stamp: dict[str, int]  # directory (relative) -> st_mtime_ns, for the cheap check
    scanned_ns: int  # time.time_ns() when scanned
    sizes: np.ndarray | None = None  # [N, 2] (height, width), read on first use
    _fingerprints: dict = field(default_factory=dict, repr=False)
    files = True  # a source of files (decoded.Source): opened again for their decode

    def __len__(self) -> int:
        return len(self.rel)

    def name(self, position: int) -> str:
        return f"{self.root}/{self.rel[position].decode()}"  # not Path's /: called per image

    def open(self, position: int) -> Image.Image:
        return Image.open(self.name(position))

    def fingerprint(self, positions: np.ndarray | None = None) -> str:
        """SHA-256 over ``relative path|class|bytes`` lines of the files at ``positions`` (all: None)."""
        key = None if positions is None else hashlib.sha256(np.ascontiguousarray(positions).tobytes()).hexdigest()
        if key not in self._fingerprints:
            pos = np.arange(len(self.rel)) if positions is None else positions
            lines = b"".join(b"%s|%d|%d\n" % (self.rel[i], self.targets[i], self.nbytes[i]) for i in pos.tolist())
            self._fingerprints[key] = hashlib.sha256(lines).hexdigest()
        return self._fingerprints[key]

    def image_sizes(self) -> np.ndarray:
        """``[N, 2]`` heights and widths from the files' headers (no decode), cached with the index."""
        if self.sizes is None:
            sizes = np.empty((len(self.rel), 2), dtype=np.int64)
            for i, rel in enumerate(self.rel.tolist()):
                path = self.root / rel.decode()
                try:
                    with Image.open(path) as img:
                        sizes[i] = img.size[1], img.size[0]
                except Exception as err:  # PIL raises many types for bad files; a file removed since the scan
                    raise UserError(f"cannot read the size of image {path}: {err}. Remove or replace the file.") from None
            self.sizes = sizes
            _save(self)
        return self.sizes


def index_of(folder: Path) -> FolderIndex:
    """The index of ``folder`` (``<class>/**/<image>``): from memory or the cache when its directories
    are unchanged, else scanned (and cached)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: expected ImageNet layout ROOT/train/<class>/*, ROOT/val/<class>/*")
    key = str(folder.resolve())
    for index in (_MEMORY.get(key), _load(folder)):
        if index is not None and _fresh(index):
            _MEMORY[key] = index
            return index
    index = scan(folder)
    _MEMORY[key] = index
    _save(index)
    return index


def scan(folder: Path) -> FolderIndex:
    """Class names (sorted sub-folder names) and every image file under them, sorted, with sizes in bytes."""
    classes = sorted(_text_name(e.name, folder) for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"{folder} has no class sub-folders: expected {folder}/<class>/<image files>")
    scanned = time.time_ns()
    rel, targets, nbytes, stamp = [], [], [], {".": os.stat(folder).st_mtime_ns}
    for i, name in enumerate(classes):
        files = []
        for dirpath, dirnames, filenames in os.walk(folder / name):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            stamp[os.path.relpath(dirpath, folder)] = os.stat(dirpath).st_mtime_ns
            for f in filenames:
                if os.path.splitext(f)[1].lower() in EXTENSIONS and not f.startswith("."):
                    path = os.path.join(dirpath, f)
                    files.append((_text_name(os.path.relpath(path, folder), folder), _file_size(path)))
        if not files:
            raise UserError(
                f"class folder {folder / name} has no images (extensions: {', '.join(sorted(EXTENSIONS))}); "
                "remove the folder or add images"
            )
        files.sort(key=lambda f: f[0].split(os.sep))  # as sorted paths: part by part
        rel += [f.encode() for f, _ in files]
        nbytes += [n for _, n in files]
        targets += [i] * len(files)
    return FolderIndex(folder, classes, np.array(rel, dtype=bytes), np.array(targets, dtype=np.int64),
                       np.array(nbytes, dtype=np.int64), stamp, scanned)  # fmt: skip


def _text_name(name: str, folder: Path) -> str:
    """A file or class name that is text: one whose bytes are not UTF-8 (the file system hands it to
    Python with surrogates) cannot be recorded in metadata or CSV files, so it is refused."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        raise UserError(f"image folder {folder}: the name {brief(raw)} is not UTF-8; rename it (e.g. convmv -f latin1 -t utf8)") from None
    return name


def _file_size(path: str) -> int:
    """The size of an image file; a broken or looping symbolic link (or an unreadable file) is refused by name."""
    try:
        return os.stat(path).st_size
    except OSError as err:
        link = " (a symbolic link whose target is missing or loops)" if os.path.islink(path) else ""
        raise UserError(f"image folder: cannot read {path}{link}: {err.strerror or err}; remove or fix it") from None


def _fresh(index: FolderIndex) -> bool:
    if max(index.stamp.values()) > index.scanned_ns - SETTLE_NS:
        return False
    try:
        return all(os.stat(index.root / d).st_mtime_ns == t for d, t in index.stamp.items())
    except OSError:
        return False


def cache_file(folder: Path) -> Path:
    base = Path(os.environ.get("LABEL_REFINERY_CACHE") or Path.home() / ".cache" / "label-refinery")
    return base / "folders" / f"{hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:32]}.npz"


def _save(index: FolderIndex) -> None:
    path = cache_file(index.root)
    arrays = {
        "version": np.array(VERSION),
        "root": np.array(str(Path(index.root).resolve())),
        "classes": np.array(index.classes, dtype=str),
        "rel": index.rel,
        "targets": index.targets,
        "nbytes": index.nbytes,
        "stamp_dirs": np.array(list(index.stamp), dtype=str),
        "stamp_times": np.array(list(index.stamp.values()), dtype=np.int64),
        "scanned_ns": np.array(index.scanned_ns, dtype=np.int64),
    }
    if index.sizes is not None:
        arrays["sizes"] = index.sizes
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    except OSError:  # a read-only home: the index stays in memory
        pass


def _load(folder: Path) -> FolderIndex | None:
    path = cache_file(folder)
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != VERSION or str(z["root"]) != str(Path(folder).resolve()):
                return None
            stamp = dict(zip(z["stamp_dirs"].tolist(), z["stamp_times"].tolist()))
            return FolderIndex(Path(folder), z["classes"].tolist(), z["rel"], z["targets"], z["nbytes"], stamp,
                               int(z["scanned_ns"]), z["sizes"] if "sizes" in z else None)  # fmt: skip
    except (OSError, KeyError, ValueError):
        return None


__all__ = ["EXTENSIONS", "FolderIndex", "cache_file", "index_of", "scan"]
