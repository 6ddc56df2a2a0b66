"""Issue 24's tables, built from the committed results files (one row per finished run), never by hand.

    python bench/table.py tune configs/table/tune.results.json          # the tuning table (markdown)
    python bench/table.py save configs/table/tune.yaml configs/table/tune.results.json   # refresh it
    python bench/table.py save configs/table/tune.yaml FILE --out runs/elsewhere     # runs made elsewhere

`save` collects an experiment's finished runs (arm, student model, dataset with its pairing seed,
subset seed, seed, val/test/train top-1, gap, seconds) into a small file beside its config, so
every number in docs/results.md can be checked without rerunning anything. `tune` prints, for each
arm family (ground truth `gt-*`, refined by itself `self-*`, refined by the strong refinery
`strong-*`), every trial's val top-1 and the one chosen on val, with its test top-1; test numbers
of the trials not chosen are shown too, for honesty, and never used to choose.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEEP = ("arm", "model", "dataset", "subset_seed", "seed", "generation", "labels", "val_top1", "test_top1",
        "train_top1_clean", "gap", "train_seconds")  # fmt: skip


def save(experiment: Path, target: Path, out: Path | None = None) -> None:
    from label_refinery.study.spec import load_experiment
    from label_refinery.study.tables import collect

    rows = collect(load_experiment(experiment, out))
    slim = [{k: r.get(k) for k in KEEP} for r in rows]
    target.write_text(json.dumps(slim, indent=1) + "\n")
    print(f"{len(slim)} rows -> {target}")


def families(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        family, _, trial = r["arm"].partition("-")
        if trial:  # "strong" alone is the refinery itself
            out.setdefault(family, []).append(r)
    return out


def tune_table(rows: list[dict]) -> str:
    by_family = families(rows)
    lines = ["| arm | trial | labels | val top-1 | test top-1 | chosen on val |", "|---|---|---|---:|---:|---|"]
    for family in ("gt", "self", "strong"):
        trials = sorted(by_family.get(family, []), key=lambda r: r["arm"])
        if not trials:
            continue
        best = max(trials, key=lambda r: r["val_top1"])
        for r in trials:
            mark = "**chosen**" if r is best else ""
            lines.append(f"| {family} | {r['arm']} | {r['labels']} | {r['val_top1']:.2f} | {r['test_top1']:.2f} | {mark} |")
    refinery = [r for r in rows if r["arm"] == "strong"]
    for r in refinery:
        lines.append(f"| (the strong refinery) | strong | {r['model']}, {r['labels']} | {r['val_top1']:.2f} | {r['test_top1']:.2f} | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("save")
    s.add_argument("experiment", type=Path, help="the experiment file")
    s.add_argument("target", type=Path, help="the results file to write")
    s.add_argument("--out", type=Path, help="where its runs are [default: the file's out]")
    t = sub.add_parser("tune")
    t.add_argument("results", type=Path)
    a = p.parse_args()
    if a.what == "save":
        save(a.experiment, a.target, a.out)
    else:
        print(tune_table(json.loads(a.results.read_text())))


if __name__ == "__main__":
    main()
