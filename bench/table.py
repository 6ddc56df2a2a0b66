"""Issue 24's tables, built from the committed results files (one row per finished run), never by hand.

    python bench/table.py tune configs/table/tune.results.json          # the tuning table (markdown)
    python bench/table.py tune configs/table/tune.results.json --into docs/results.md   # ... between its markers
    python bench/table.py paper configs/table/pairs-s*.results.json --figure docs/figures/table.png
    python bench/table.py refineries configs/table/pairs-s*.results.json   # cnn-small refined by each refinery
    python bench/table.py curve configs/table/curve.results.json           # the second task's learning curve
    python bench/table.py demo configs/table/demo.results.json             # make demo's setting over its seeds
    python bench/table.py save configs/table/tune.yaml configs/table/tune.results.json   # refresh it
    python bench/table.py save configs/table/tune.yaml FILE --out runs/elsewhere     # runs made elsewhere

`save` collects an experiment's finished runs (arm, student model, dataset with its pairing seed,
subset seed, seed, val/test/train top-1, gap, seconds) into a small file beside its config, so
every number in docs/results.md can be checked without rerunning anything. `tune` prints, for each
arm family (ground truth `gt-*`, refined by itself `self-*`, refined by the strong refinery
`strong-*`), every trial's changes (read from the experiment file beside the results file), val top-1 and the one chosen on val, with its test top-1; test numbers
of the trials not chosen are shown too, for honesty, and never used to choose.

`paper` is the paper's table, small: per student (a run's `model`), its ground-truth test top-1
and the gains of refined labels, paired by (pairing, subset, seed): `self-*` (refined by its own
generation 1) and `strong-*` (by the strong refinery, arm `refinery`), mean [95 % t-interval] and
how many pairs gained; `--figure` plots each gain against the student's own accuracy (the
paper's claim: the weakest students gain most). Arms are named `gt-STUDENT`, `self-STUDENT`,
`strong-STUDENT`, and `refinery` for the strong refinery itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

KEEP = ("arm", "model", "dataset", "subset_seed", "seed", "generation", "labels", "val_top1", "test_top1",
        "train_top1_clean", "gap", "train_seconds")  # fmt: skip


def save(experiment: Path, target: Path, out: Path | None = None) -> None:
    from label_refinery.study.spec import load_experiment
    from label_refinery.study.tables import collect

    rows = collect(load_experiment(experiment, out))
    slim = [{k: r.get(k) for k in KEEP} for r in rows]
    # run folders do not outlive a session here: rows saved earlier (other seeds, other sessions) are
    # kept unless a finished run of the same arm, data and seed replaces them
    new = {_row_key(r) for r in slim}
    kept = [r for r in (json.loads(target.read_text()) if target.is_file() else []) if _row_key(r) not in new]
    merged = sorted(kept + slim, key=lambda r: (str(r.get("subset_seed")), r["seed"], r["arm"], r.get("generation") or 0))
    target.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"{len(slim)} rows from {out or 'the runs'} ({len(kept)} kept from before) -> {target}")


def _row_key(r: dict) -> tuple:
    return (r["arm"], r.get("dataset"), r.get("subset_seed"), r["seed"], r.get("generation"))


def families(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        family, _, trial = r["arm"].partition("-")
        if trial:  # "strong" alone is the refinery itself
            out.setdefault(family, []).append(r)
    return out


def _flat(changes: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in changes.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        elif f"{prefix}{k}" != "chain.generations":
            out.append(f"{prefix}{k}={v}")
    return out


def settings(experiment: Path | None) -> dict[str, str]:
    """Each arm's changes to the base config, in words (``data.crop_scale=[0.6, 1.0]``, ...)."""
    if experiment is None or not experiment.is_file():
        return {}
    doc = yaml.safe_load(experiment.read_text())
    return {a["name"]: ", ".join(_flat(a.get("set") or {})) or "the base config" for a in doc["arms"]}


def tune_table(rows: list[dict], changes: dict[str, str] | None = None) -> str:
    by_family, changes = families(rows), changes or {}
    lines = ["| arm | trial | labels | changes to the base | val top-1 | test top-1 | chosen on val |",
             "|---|---|---|---|---:|---:|---|"]  # fmt: skip
    for family in ("gt", "self", "strong"):
        trials = sorted(by_family.get(family, []), key=lambda r: r["arm"])
        if not trials:
            continue
        best = max(trials, key=lambda r: r["val_top1"])
        for r in trials:
            mark = "**chosen**" if r is best else ""
            lines.append(f"| {family} | {r['arm']} | {r['labels']} | {changes.get(r['arm'], '')} | {r['val_top1']:.2f} | "
                         f"{r['test_top1']:.2f} | {mark} |")  # fmt: skip
    refinery = [r for r in rows if r["arm"] == "strong"]
    for r in refinery:
        lines.append(f"| (the strong refinery) | strong | {r['labels']} | {changes.get('strong', '')} | {r['val_top1']:.2f} | "
                     f"{r['test_top1']:.2f} | |")  # fmt: skip
    return "\n".join(lines)


def _key(r: dict) -> tuple:
    return (r.get("dataset"), r.get("subset_seed"), r["seed"])


def paper_rows(rows: list[dict]) -> list[dict]:
    """One dict per student: ground-truth accuracy and the paired gains of each refined arm."""
    from label_refinery.study.stats import mean_std, t_interval

    by = {(r["arm"].partition("-")[0], r["model"], _key(r)): r for r in rows if r["arm"] != "refinery"}
    out = []
    for model in dict.fromkeys(r["model"] for r in rows if r["arm"].startswith("gt-")):
        gt = {k: r for (fam, m, k), r in by.items() if fam == "gt" and m == model}
        entry = {"model": model, "pairs": len(gt), "gt_test": mean_std([r["test_top1"] for r in gt.values()]),
                 "name": next(iter(gt.values()))["arm"].partition("-")[2]}  # fmt: skip
        entry["hours"] = {f: _hours([r for (fam, m, _), r in by.items() if fam == f and m == model]) for f in ("gt", "self", "strong")}
        for family in ("self", "strong"):
            diffs = [by[(family, model, k)]["test_top1"] - r["test_top1"] for k, r in gt.items() if (family, model, k) in by]
            entry[family] = (t_interval(diffs) if len(diffs) >= 2 else (diffs[0], None), sum(d > 0 for d in diffs),
                             len(diffs)) if diffs else None  # fmt: skip
        out.append(entry)
    return out


def _hours(runs: list[dict]) -> float:
    """CPU-hours of a cell: the median run's training seconds x the number of runs. A sum would count the
    wall time of a run that was paused (SIGSTOP) while the machine measured something else."""
    import statistics

    seconds = [r["train_seconds"] for r in runs if r.get("train_seconds")]
    return statistics.median(seconds) * len(runs) / 3600 if seconds else 0.0


def parameters(model: str) -> int:
    from label_refinery.models import count_parameters, create_model

    return count_parameters(create_model(model, in_chans=1, num_classes=100))  # fashion-pairs: grey, 100 classes


def paper_table(rows: list[dict]) -> str:
    refinery = [r for r in rows if r["arm"] == "refinery"]
    lines = ["| student | parameters | pairs | ground truth, test top-1 | refined by itself, Δ test | refined by the strong refinery, Δ test | CPU-hours (gt / self / strong) |",
             "|---|---:|---:|---:|---|---|---|"]  # fmt: skip
    for e in paper_rows(rows):
        cells = []
        for family in ("self", "strong"):
            if e[family] is None:
                cells.append("not run")
                continue
            (m, half), better, n = e[family]
            cells.append(f"{m:+.2f} (one pair, no interval)" if half is None else f"{m:+.2f} [{m - half:+.2f}, {m + half:+.2f}], {better}/{n}")
        hours = " / ".join(f"{e['hours'][f]:.2f}" for f in ("gt", "self", "strong"))
        lines.append(f"| `{e['model']}` | {parameters(e['model']) / 1e3:.0f}k | {e['pairs']} | {e['gt_test'][0]:.2f} ± {e['gt_test'][1]:.2f} "
                     f"| {cells[0]} | {cells[1]} | {hours} |")  # fmt: skip
    if refinery:
        from label_refinery.study.stats import mean_std

        (m, sd), (vm, vsd) = (mean_std([r[k] for r in refinery]) for k in ("test_top1", "val_top1"))
        hours = _hours(refinery)
        lines.append(f"\nThe strong refinery (`{refinery[0]['model']}`): test top-1 {m:.2f} ± {sd:.2f}, val {vm:.2f} ± {vsd:.2f} "
                     f"({len(refinery)} trainings, {hours:.2f} CPU-hours; its labels baked once per (subset, seed) for every student).")  # fmt: skip
    return "\n".join(lines)


def _gain(rows: list[dict], gt_arm: str, arm: str, key: str = "test_top1") -> str:
    """``arm``'s test top-1 minus ``gt_arm``'s, paired by (pairing, subset, seed): mean [95 % interval], wins/pairs."""
    from label_refinery.study.stats import t_interval

    gt = {_key(r): r for r in rows if r["arm"] == gt_arm}
    diffs = [r[key] - gt[_key(r)][key] for r in rows if r["arm"] == arm and _key(r) in gt]
    if not diffs:
        return "not run"
    if len(diffs) == 1:
        return f"{diffs[0]:+.2f} (one pair, no interval)"
    m, half = t_interval(diffs)
    return f"{m:+.2f} [{m - half:+.2f}, {m + half:+.2f}], {sum(d > 0 for d in diffs)}/{len(diffs)}"


def _acc(rows: list[dict], arms: tuple[str, ...], key: str = "test_top1") -> str:
    from label_refinery.study.stats import mean_std

    values = [r[key] for r in rows if r["arm"] in arms]
    if not values:
        return "–"
    m, sd = mean_std(values)
    return f"{m:.2f} ± {sd:.2f} ({len(values)})"


# cnn-small's refineries on fashion-pairs: (row, refinery arms, the refined student's arm)
REFINERIES = (("itself (its generation 1)", ("gt-cnn",), "self-cnn"),
              ("`vgg-small:width=16` on ground truth", ("gt-vgg",), "mid-cnn"),
              ("the strong refinery (ResNet-20 + cutmix)", ("refinery",), "strong-cnn"),
              ("the strong refinery cross-fitted (3 fold models)", ("fold-0", "fold-1", "fold-2"), "xfit-cnn"))  # fmt: skip


def refineries_table(rows: list[dict]) -> str:
    """cnn-small refined by each refinery, paired against its tuned ground truth (``gt-cnn``)."""
    lines = ["| cnn-small refined by | refinery's test top-1 (trainings) | Δ test vs ground truth | CPU-hours of the refinery + student |",
             "|---|---:|---|---:|"]  # fmt: skip
    for name, ref_arms, arm in REFINERIES:
        paired = {_key(r) for r in rows if r["arm"] == arm}
        hours = _hours([r for r in rows if r["arm"] in ref_arms and _key(r) in paired]) + _hours([r for r in rows if r["arm"] == arm])
        lines.append(f"| {name} | {_acc([r for r in rows if _key(r) in paired], ref_arms)} | {_gain(rows, 'gt-cnn', arm)} | {hours:.2f} |")
    return "\n".join(lines)


def curve_table(rows: list[dict]) -> str:
    """The second task: per training-set size, the refinery, the tuned ground truth and the gains."""
    sizes = sorted({int(r["arm"].rpartition("-")[2]) for r in rows if r["arm"].startswith("gt-")})
    lines = ["| training images | seeds | strong refinery, test top-1 | ground truth, test top-1 | refined by itself, Δ test | refined by the strong refinery, Δ test |",
             "|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for n in sizes:
        seeds = len([r for r in rows if r["arm"] == f"gt-{n}"])
        lines.append(f"| {n:,} | {seeds} | {_acc(rows, (f'refinery-{n}',))} | {_acc(rows, (f'gt-{n}',))} "
                     f"| {_gain(rows, f'gt-{n}', f'self-{n}')} | {_gain(rows, f'gt-{n}', f'strong-{n}')} |")  # fmt: skip
    return "\n".join(lines)


def demo_table(rows: list[dict]) -> str:
    """`make demo`'s setting (configs/table/demo.yaml) over the seeds run: each arm's val and test top-1,
    and the refined student's gains paired by seed."""
    lines = ["| arm | model | val top-1 | test top-1 | Δ val vs gt-cnn | Δ test vs gt-cnn | CPU-hours |",
             "|---|---|---:|---:|---|---|---:|"]  # fmt: skip
    for arm in ("gt-cnn", "gt-vgg", "refined-cnn"):
        runs = [r for r in rows if r["arm"] == arm]
        if not runs:
            continue
        gains = ("", "") if arm == "gt-cnn" else (_gain(rows, "gt-cnn", arm, "val_top1"), _gain(rows, "gt-cnn", arm))
        lines.append(f"| {arm} | `{runs[0]['model']}` | {_acc(rows, (arm,), 'val_top1')} | {_acc(rows, (arm,))} "
                     f"| {gains[0]} | {gains[1]} | {_hours(runs):.2f} |")  # fmt: skip
    return "\n".join(lines)


def paper_figure(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for family, color in (("self", "tab:blue"), ("strong", "tab:red")):
        points = [(e["gt_test"][0], e[family][0][0], e[family][0][1] or 0, e["name"]) for e in paper_rows(rows) if e[family]]
        if points:
            x, y, err, names = zip(*points)
            ax.errorbar(x, y, yerr=err, fmt="o", color=color, capsize=3, label=f"refined by {'itself' if family == 'self' else 'the strong refinery'}")
            ordered = sorted(zip(x, y, names))
            for i, (xi, yi, name) in enumerate(ordered):
                left = i + 1 < len(ordered) and ordered[i + 1][0] - xi < 1.0  # the next label would overlap: write this one leftwards
                ax.annotate(name, (xi, yi), fontsize=7, xytext=(-3 if left else 3, 3), textcoords="offset points", ha="right" if left else "left")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("student's ground-truth test top-1 (%)")
    ax.set_ylabel("gain in test top-1 (points, 95 % interval)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def into(path: Path, marker: str, text: str) -> None:
    """Replace what stands between ``<!-- MARKER -->`` and ``<!-- /MARKER -->`` in ``path`` by ``text``."""
    doc = path.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in doc or end not in doc:
        raise SystemExit(f"{path} has no {start} ... {end} block")
    head, rest = doc.split(start, 1)
    path.write_text(head + start + "\n" + text.strip() + "\n" + end + rest.split(end, 1)[1])
    print(f"{path}: {marker} rewritten")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("save")
    s.add_argument("experiment", type=Path, help="the experiment file")
    s.add_argument("target", type=Path, help="the results file to write")
    s.add_argument("--out", type=Path, help="where its runs are [default: the file's out]")
    t = sub.add_parser("tune")
    t.add_argument("results", type=Path)
    t.add_argument("--into", type=Path, help="write it between <!-- TUNE --> markers of this file instead")
    q = sub.add_parser("paper")
    q.add_argument("results", type=Path, nargs="+", help="results files of the table's studies (one per subset)")
    q.add_argument("--figure", type=Path, help="also plot the gains against the students' accuracy")
    q.add_argument("--into", type=Path, help="write it between <!-- PAPER --> markers of this file instead")
    for name in ("refineries", "curve", "demo"):
        x = sub.add_parser(name)
        x.add_argument("results", type=Path, nargs="+")
        x.add_argument("--into", type=Path, help=f"write it between <!-- {name.upper()} --> markers of this file instead")
    a = p.parse_args()
    if a.what in ("refineries", "curve", "demo"):
        rows = [r for f in a.results for r in json.loads(f.read_text())]
        text = {"refineries": refineries_table, "curve": curve_table, "demo": demo_table}[a.what](rows)
        into(a.into, a.what.upper(), text) if a.into else print(text)
        return
    if a.what == "save":
        save(a.experiment, a.target, a.out)
    elif a.what == "tune":
        experiment = a.results.with_name(a.results.name.replace(".results.json", ".yaml"))
        text = tune_table(json.loads(a.results.read_text()), settings(experiment))
        into(a.into, "TUNE", text) if a.into else print(text)
    else:
        rows = [r for f in a.results for r in json.loads(f.read_text())]
        text = paper_table(rows)
        into(a.into, "PAPER", text) if a.into else print(text)
        if a.figure:
            paper_figure(rows, a.figure)


if __name__ == "__main__":
    main()
