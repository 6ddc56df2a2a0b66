"""Frozen dataclasses from plain nested dicts (YAML, JSON, dotted overrides) and back, with types checked.

The machinery behind :mod:`label_refinery.config`; it knows nothing of what the keys mean.

Example:
    >>> from label_refinery.config import OptimConfig
    >>> from_dict(OptimConfig, nest({"epochs": "3", "milestones": "1,2"}))
    OptimConfig(epochs=3, batch_size=128, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.0005, schedule='cosine', milestones=(1, 2), gamma=0.1, warmup_epochs=0.0)
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError, brief


def valid_keys(cls, prefix: str = "") -> list[str]:
    """Every dotted key of the dataclass ``cls`` (nested dataclasses as ``section.key``)."""
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(_hints(cls)[f.name]):
            out += valid_keys(_hints(cls)[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
            return None
        inner = [a for a in args if a is not type(None)]
        several = [a for a in inner if typing.get_origin(a) is tuple]
        if several and isinstance(value, (list, tuple)):  # "one or several": a list of one is the one
            value = _coerce(value, several[0], key)
            return value[0] if len(value) == 1 and str in inner else value
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, str):  # "a b" or "a,b" (use spaces when items contain commas)
            value = value.split() if any(c.isspace() for c in value.strip()) else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key}: expected a list, got {brief(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise UserError(f"config key {key}: expected {len(args)} values, got {brief(list(value))}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise UserError(f"config key {key}: expected true/false, got {brief(value)}")
    if tp in (int, float):
        return _number(value, tp, key)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"config key {key}: expected a string, got {brief(value)}")
        return str(value)
    return value


def _number(value: Any, tp: type, key: str) -> int | float:
    """An int or a finite float: ``true`` is not 1, ``.inf`` and ``nan`` are no numbers of a config,
    ``2/255`` is a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        yes_no = " (true/false is not a number)" if isinstance(value, bool) else ""
        raise UserError(f"config key {key}: expected {'an integer' if tp is int else 'a number'}, got {brief(value)}{yes_no}")
    try:
        if tp is float and isinstance(value, str) and "/" in value:  # e.g. jitter.eps=2/255
            num, _, den = value.partition("/")
            out = float(num) / float(den)
        else:
            out = tp(value)
        if tp is int and isinstance(value, float) and value != out:
            raise ValueError
    except (ValueError, ZeroDivisionError, OverflowError):
        kind = "an integer" if tp is int else "a number such as 0.008 or 2/255"
        raise UserError(f"config key {key}: expected {kind}, got {brief(value)}") from None
    if not math.isfinite(out):
        raise UserError(f"config key {key}: expected a finite number, got {brief(value)}")
    return out


def from_dict(cls, values: dict, prefix: str = "", root=None):
    """An instance of the frozen dataclass ``cls`` from a nested dict of plain values (YAML, JSON or
    dotted overrides nested by :func:`nest`), each coerced to its field's type; unknown keys and
    wrong types are a :class:`UserError` naming the key and listing ``root``'s valid keys."""
    root = root or cls
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown config key {prefix}{unknown[0]}; valid keys: {', '.join(valid_keys(root))}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"config key {prefix}{name}: expected a mapping of {', '.join(valid_keys(tp))}")
            kwargs[name] = from_dict(tp, value, f"{prefix}{name}.", root)
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists), for YAML and JSON."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def nest(overrides: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``, nested mappings merged key by key (``extra`` wins)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict:
    """The mapping a YAML file holds (empty file: ``{}``); a missing file, bad YAML or another
    top-level type is a :class:`UserError` naming ``what`` the file is and what it should hold."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{what} {p} is not valid YAML: {err}") from err
    if not isinstance(loaded, dict):
        raise UserError(f"{what} {p} must hold {expected}")
    return loaded


def read_based(path: str | Path, what: str, expected: str, prepare=lambda v: v, seen: tuple[Path, ...] = ()) -> dict:
    """The mapping a YAML file holds, ``prepare``d; ``base: OTHER.yaml`` (relative to the file) starts
    from another such file, this one's keys changing it (:func:`merge`); a loop of bases is refused."""
    p = Path(path).resolve()
    if p in seen:
        raise UserError(f"{what} {path}: its base files form a loop ({' -> '.join(str(s) for s in (*seen, p))})")
    values = read_yaml_mapping(path, what, expected)
    base = values.pop("base", None)
    if base is None:
        return prepare(values)
    if not isinstance(base, str) or not base:
        raise UserError(f"{what} {path}: base names another file (a path), got {brief(base)}")
    return merge(read_based(p.parent / base, what, expected, prepare, (*seen, p)), prepare(values))
