"""Experiments: a grid of chains ("arms") over seeds, resumable, summarised as mean ± std tables.

An experiment file (YAML) names a base config, the arms (each a change of the base: its own chain)
and the seeds::

    out: runs/claims/fashion-mnist
    seeds: [0, 1, 2]
    reference: self/gen1          # deltas are paired against this arm/generation, seed by seed (or a list)
    analyze: true                 # label entropy and (on fashion-scenes) distractor mass per generation
    base:                         # every arm starts from this config (keys as in `train --config`)
      model: cnn-small
      data: {dataset: fashion-mnist, train_subset: 10000, val_split: 5000}
      optim: {epochs: 10}
    arms:
      - {name: self, set: {chain: {generations: 4}}}
      - {name: big, set: {model: "cnn-small:width=2", chain: {generations: 1}}}
      - {name: big-refined, refinery: big/gen1, seed_offset: 1, set: {chain: {generations: 1}}}
      - {name: kd, refinery: big/gen1, seed_offset: 1, set: {labels: {temperature: 4, gt_weight: 0.1}, chain: {generations: 1}}}

``refinery: ARM/genK`` labels the arm's generation 1 with another arm's generation K of the same
seed (that arm must come earlier). A list (``refinery: [big/gen1, self/gen1]``) is a refinery
ensemble, averaged in probability; ``ARM/genK@others`` stands for that generation of every *other*
seed of the experiment (a leave-one-out ensemble of independently trained models: seed S's student
is refined by the models of the other seeds, never its own paired generation 1). Arms refined
across seeds run after every seed of the arms they need. ``store: NAME`` (with a refinery) bakes the
arm's labels into ``OUT/seed{S}/stores/NAME`` instead of labelling live, and every arm naming the same
store reuses that bake: students of different architectures that see the same crops (same seed, crop
settings and epochs) pay for one refinery forward pass per crop, not one each (a store baked for
other crops or another refinery is refused when opened). Add ``store: {top_k: C}`` (C classes) to
its ``set`` to keep whole distributions, as live labels are. Seed ``S`` runs every arm with ``config seed = base seed + 1000 * S
+ seed_offset`` (a chain adds ``g - 1`` for its generation ``g``): with ``seed_offset: 1`` an arm refined
by ``self/gen1`` starts from the same initialisation, crops and batch order as ``self/gen2``, so
the two differ only in their labels.

Layout: ``OUT/seed{S}/{ARM}/`` is a chain run folder (resumable like ``chain``); ``OUT/results.json``
holds every finished row and ``OUT/results.md`` the tables, rewritten after every finished arm. Re-run
the same command to resume; several processes may share an experiment if they take different seeds
(``--seeds``). Test numbers are in the tables for the end of a study: choose settings by ``val top-1``
(``data.val_split``), as docs/results.md does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, config_from_dict, upgrade, validate
from ..errors import UserError, brief
from ..typed import merge, read_yaml_mapping

SEED_STRIDE = 1000  # seeds of different repetitions never meet within a chain


@dataclass(frozen=True)
class Arm:
    name: str
    changes: dict = field(default_factory=dict)  # nested config keys on top of the base
    refinery: tuple[str, ...] = ()  # "ARM/genK" (same seed) or "ARM/genK@others" each; several: an ensemble
    seed_offset: int = 0
    store: str | None = None  # a shared label store's name: OUT/seed{S}/stores/NAME


@dataclass(frozen=True)
class Experiment:
    out: Path
    seeds: tuple[int, ...]
    base: dict
    arms: tuple[Arm, ...]
    references: tuple[str, ...] = ()  # "ARM/genK": one table of paired differences each
    analyze: bool = True
    ensembles: tuple[str, ...] = ()  # "ARM/genK": the top-1 of that generation's models over all seeds, averaged

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise UserError(f"no arm named {brief(name)}; arms: {', '.join(a.name for a in self.arms)}")

    def folder(self, seed: int, arm: str) -> Path:
        return self.out / f"seed{seed}" / arm

    def config(self, arm: Arm, seed: int) -> Config:
        values = merge(upgrade(self.base), upgrade(arm.changes))  # keys of any version (config.LEGACY_KEYS)
        values["seed"] = int(values.get("seed") or 0) + SEED_STRIDE * seed + arm.seed_offset
        if arm.refinery:
            paths = [str(p) for p in self.refinery_paths(arm, seed)]
            values.setdefault("refinery", {})["path"] = paths[0] if len(paths) == 1 else paths
        if arm.store:
            values.setdefault("labels", {}).update(source="store", store=str(self.out / f"seed{seed}" / "stores" / arm.store))
        cfg = config_from_dict(values)
        validate(cfg)
        return cfg

    def _ref_path(self, ref: str, seed: int) -> Path:
        name, gen = split_ref(ref)
        return self.folder(seed, name) / gen

    def refinery_paths(self, arm: Arm, seed: int) -> list[Path]:
        """The generation folders labelling ``arm``'s generation 1 for ``seed`` (several: an ensemble)."""
        out = []
        for ref in arm.refinery:
            base, others = split_others(ref)
            out += (
                [self._ref_path(base, s) for s in self.seeds if s != seed] if others else [self._ref_path(base, seed)]
            )
        return out


def split_others(ref: str) -> tuple[str, bool]:
    """``ARM/genK@others`` -> (``ARM/genK``, True); ``ARM/genK`` -> (itself, False)."""
    base, at, what = ref.partition("@")
    if at and what != "others":
        raise UserError(f"a refinery reference is ARM/genK or ARM/genK@others, got {brief(ref)}")
    return base, bool(at)


def _as_list(value) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)


def split_ref(ref: str) -> tuple[str, str]:
    """``ARM/genK`` -> (``ARM``, ``genK``); anything else is refused."""
    name, _, gen = ref.partition("/")
    if not name or not gen.startswith("gen") or not gen[3:].isdigit():
        raise UserError(f"a reference is ARM/genK (e.g. self/gen1), got {brief(ref)}")
    return name, gen


def load_experiment(path: str | Path, out: str | Path | None = None) -> Experiment:
    """Read and check an experiment file: arm names unique, references to earlier arms, every
    arm's config valid (before anything trains)."""
    p = Path(path)
    raw = read_yaml_mapping(
        p, "experiment file", "a mapping with out, seeds, base, arms (see label_refinery/study/spec.py)"
    )
    keys = ("out", "seeds", "base", "arms", "reference", "analyze", "ensembles")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise UserError(f"experiment file {p}: unknown key {brief(unknown[0])}; keys: {', '.join(keys)}")
    if not raw.get("arms"):
        raise UserError(f"experiment file {p} names no arms (a list of {{name, set, refinery, seed_offset}})")
    arms, seen = [], set()
    for i, a in enumerate(raw["arms"]):
        if not isinstance(a, dict) or "name" not in a:
            raise UserError(f"experiment file {p}: arm {i + 1} needs a name")
        extra = sorted(set(a) - {"name", "set", "refinery", "seed_offset", "store"})
        if extra:
            raise UserError(f"arm {brief(a['name'])}: unknown key {brief(extra[0])}; keys: name, set, refinery, seed_offset, store")
        name = str(a["name"])
        if name in seen or "/" in name:
            raise UserError(f"arm names must be unique and contain no '/': {brief(name)}")
        refs = _as_list(a.get("refinery"))
        for ref in refs:
            if split_ref(split_others(ref)[0])[0] not in seen:
                raise UserError(f"arm {brief(name)}: its refinery {brief(ref)} must be an earlier arm's generation")
        store = a.get("store")
        if store is not None and (not refs or not str(store) or "/" in str(store) or str(store).startswith(".")):
            raise UserError(f"arm {brief(name)}: store is the name of a shared label store (no '/') and needs a refinery")
        seen.add(name)
        arms.append(Arm(name, a.get("set") or {}, refs, int(a.get("seed_offset", 0)), None if store is None else str(store)))
    seeds = tuple(int(s) for s in raw.get("seeds", [0, 1, 2]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"experiment file {p}: seeds must be a non-empty list of distinct integers, got {list(seeds)}")
    exp = Experiment(
        Path(out or raw.get("out") or f"runs/{p.stem}"),
        seeds,
        raw.get("base") or {},
        tuple(arms),
        _as_list(raw.get("reference")),
        bool(raw.get("analyze", True)),
        _as_list(raw.get("ensembles")),
    )
    for arm in exp.arms:
        exp.config(arm, exp.seeds[0])  # every arm's config must be valid before anything trains
    if any(split_others(r)[1] for a in exp.arms for r in a.refinery) and len(exp.seeds) < 2:
        raise UserError(f"experiment file {p}: a refinery ARM/genK@others needs at least 2 seeds")
    refs = list(exp.references) + list(exp.ensembles) + [split_others(r)[0] for a in exp.arms for r in a.refinery]
    for ref in refs:
        name, gen = split_ref(ref)
        have = exp.config(exp.arm(name), exp.seeds[0]).chain.generations
        if int(gen[3:]) > have:
            raise UserError(f"{ref}: arm {brief(name)} has {have} generation(s)")
    return exp
