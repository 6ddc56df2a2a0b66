"""Dataset classes -> a refinery's outputs (an external refinery's class mapping; see ``external.py``).

A mapping is a tuple per dataset class (in the dataset's order) of the refinery outputs that make it:
usually one, several where a dataset class groups the refinery's finer ones (``dog`` <- 120 breeds).

Example:
    >>> class_map(["goldfish", "tench"], names=["tench, Tinca tinca", "goldfish"], wnids=None, outputs=2)
    ((1,), (0,))
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UserError, brief
from ..files import read_json

WNID = re.compile(r"^n\d{8}$")


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _from_file(path: str, classes: list[str], outputs: int) -> dict[str, list[int]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"--refinery-classes {brief(str(p))}: no such file")
    groups: dict[str, list[int]] = {}
    if p.suffix == ".json":
        obj = read_json(p, "refinery class mapping", "a JSON object {class name: output index or [indices]}")
        if not isinstance(obj, dict):
            raise UserError(f"--refinery-classes {p}: expected a JSON object {{class name: output index or [indices]}}")
        for name, value in obj.items():
            idx = value if isinstance(value, list) else [value]
            if not idx or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
                raise UserError(f"--refinery-classes {p}: {brief(name)} maps to {brief(value)}, not an index or a list of indices")
            groups[str(name)] = list(idx)
    else:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
        if len(lines) != outputs:
            raise UserError(
                f"--refinery-classes {p} has {len(lines)} lines but the refinery has {outputs} outputs: one line per output, "
                "in its order, naming the dataset class it means ('-' or empty for outputs outside the dataset)"
            )
        for i, line in enumerate(lines):
            name = line.strip()
            if name and name != "-":
                groups.setdefault(name, []).append(i)
    bad = sorted({i for idx in groups.values() for i in idx if not 0 <= i < outputs})
    if bad:
        raise UserError(f"--refinery-classes {p}: output index {bad[0]} is outside the refinery's {outputs} outputs")
    unknown = [n for n in groups if n not in classes]
    if unknown:
        raise UserError(f"--refinery-classes {p} names classes the dataset does not have: {brief(unknown[:5])}")
    return groups


def _by_names(classes: list[str], names: list[str] | None, wnids: list[str] | None) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    if wnids and any(WNID.match(c) for c in classes):
        where = {w: i for i, w in enumerate(wnids)}
        found |= {c: [where[c]] for c in classes if c in where}
    if names:
        where: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            for synonym in {_key(name), *(_key(s) for s in name.split(",") if s.strip())}:
                where.setdefault(synonym, []).append(i)
        for c in classes:
            hits = where.get(_key(c))
            if c not in found and hits and len(hits) == 1:  # a name two outputs share decides nothing
                found[c] = hits
    return found


def class_map(
    classes: list[str], names: list[str] | None, wnids: list[str] | None, outputs: int, file: str | None = None,
    log=None,
) -> tuple[tuple[int, ...], ...]:
    """The refinery outputs of each dataset class (module docstring); refuses a class that maps nowhere."""
    classes = [str(c) for c in classes]
    if file:
        groups = _from_file(file, classes, outputs)
    else:
        groups = _by_names(classes, names, wnids)
        if not groups and outputs == len(classes):  # e.g. a model fine-tuned elsewhere on these classes
            if log:
                log(f"note: the refinery's {outputs} outputs are taken as the dataset's classes in order (no class names to match)")
            return tuple((i,) for i in range(outputs))
    missing = [c for c in classes if c not in groups]
    if missing:
        how = "names the refinery knows" if names or wnids else "its outputs (it carries no class names)"
        raise UserError(
            f"{len(missing)} of the dataset's {len(classes)} classes map to no refinery output ({brief(missing[:5])}): "
            f"they are not among {how}. Give --refinery-classes FILE: one line per refinery output naming the dataset "
            'class it means, or a JSON object {"class": output index or [indices]}'
        )
    return tuple(tuple(groups[c]) for c in classes)


def describe(mapping: tuple[tuple[int, ...], ...]) -> str:
    """A short stable text of a mapping (for its identity)."""
    return json.dumps([list(g) for g in mapping], separators=(",", ":"))


__all__ = ["class_map", "describe"]
