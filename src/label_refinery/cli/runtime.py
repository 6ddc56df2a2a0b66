"""The flags every command shares where they mean anything: ``--no-progress``, ``--device``,
``--threads`` (one grammar: issue 25), and ``report``, which runs the analysis its columns need."""

from __future__ import annotations

import argparse

from .flags import positive_int

# command -> the shared flags it takes (relabel and verify compute nothing a device or threads speed up,
# and show no bars; index reads headers and files)
RUNTIME = {
    "chain": ("progress", "device", "threads"),
    "train": ("progress", "device", "threads"),
    "bake": ("progress", "device", "threads"),
    "evaluate": ("progress", "device", "threads"),
    "analyze": ("progress", "device", "threads"),
    "audit": ("progress", "device", "threads"),
    "export": ("progress", "device", "threads"),
    "report": ("progress", "device", "threads"),
    "experiment": ("progress", "device", "threads"),
    "index": ("progress",),
}
HELP = {
    "progress": (["--no-progress"], dict(action="store_true", help="no progress bars (they are off anyway when not a terminal)")),
    "device": (["--device"], dict(default=None, help="auto, cpu, cuda, cuda:N [default: auto, or the config's]")),
    "threads": (["--threads"], dict(type=positive_int, help="CPU threads of this process (e.g. 1 with two processes on 2 cores)")),
}


def add_runtime(sub: argparse._SubParsersAction) -> None:
    """Give each command of :data:`RUNTIME` its shared flags (those it does not define itself)."""
    for name, kinds in RUNTIME.items():
        parser = sub.choices[name]
        for kind in kinds:
            flags, options = HELP[kind]
            if flags[0] not in parser._option_string_actions:
                parser.add_argument(*flags, **options)


def apply_runtime(args: argparse.Namespace) -> None:
    """What the shared flags do before any command runs: ``--threads``."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def cmd_report(args) -> None:
    """The report; a run whose generations were not all analysed is analysed first (``--no-analyze``:
    the page says which command fills its empty columns)."""
    import sys

    from ..tools.probe import generations
    from ..tools.reports import report_run

    missing = [g for g in generations(args.run) if not (g / "analysis.json").is_file()]
    if missing and not args.no_analyze:
        from ..tools.analyze import analyze_run
        from ..training.setup import resolve_device

        print(f"analysing {args.run} first ({len(missing)} generation(s) without analysis.json; --no-analyze skips this)")
        analyze_run(args.run, device=str(resolve_device(args.device or "auto")),
                    progress=not args.no_progress and sys.stderr.isatty())  # fmt: skip
    print(f"report saved to {report_run(args.run)} (and report.md)")


__all__ = ["add_runtime", "apply_runtime", "cmd_report"]
