"""``label-refinery experiment``: a grid of arms x seeds of chains (label_refinery.study)."""

from __future__ import annotations

import sys

from ..errors import UserError


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _chosen_arms(exp, patterns: list[str]) -> list[str]:
    """Arm names or shell patterns (``'strong-*'``), in the file's order; one matching nothing is refused."""
    import fnmatch

    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(a.name, pattern) for a in exp.arms):
            exp.arm(pattern)  # fails with the list of arms
    return [a.name for a in exp.arms if any(fnmatch.fnmatchcase(a.name, p) for p in patterns)]


def cmd_experiment(args) -> None:
    from ..study.run import run_experiment
    from ..study.spec import load_experiment
    from ..study.tables import write_results

    exp = load_experiment(args.file, args.out)
    if args.device:  # every arm on this device (not part of a run's identity: finished runs stay finished)
        import dataclasses

        exp = dataclasses.replace(exp, base={**exp.base, "device": args.device})
    if args.table:
        print(write_results(exp))
        return
    unknown = sorted(set(args.seeds or []) - set(exp.seeds))
    if unknown:
        raise UserError(f"seed {unknown[0]} is not in the experiment's seeds {list(exp.seeds)}")
    order = _chosen_arms(exp, args.arms) if args.arms else None
    print(run_experiment(exp, seeds=args.seeds, arms=order, progress=_progress(args)))
    print(f"results: {exp.out}/results.md")


__all__ = ["cmd_experiment"]
