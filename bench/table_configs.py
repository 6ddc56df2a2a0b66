"""Write issue 24's table studies from the tuning study's choices, so the recipe of every arm is the
one chosen on validation (configs/table/tune.yaml + its committed results), never typed by hand.

    python bench/table_configs.py            # -> configs/table/pairs-s1.yaml, -s2, -s3, curve.yaml

Each file is one training subset (its own pairing of fashion-pairs and its own stratified subset,
validation pairs of held-out items), with seeds 1-3; arms per student: `gt-STUDENT` (the chosen
ground-truth trial), `self-STUDENT` (refined by its own `gt-STUDENT` generation 1, with the chosen
self-refinement trial's knobs), `strong-STUDENT` (refined by `refinery`, the strong refinery of
that subset and seed, with the chosen strong trial's knobs; its labels baked once per (subset,
seed) into a shared store with every class kept, so six students cost one refinery pass). The recipes were tuned on cnn-small
and are applied to every student (stated in docs/results.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parents[1] / "configs" / "table"
STUDENTS = {  # arm suffix -> architecture: 19k to 0.25M parameters; the headline student first
    "cnn": "cnn-small",
    "mlp": "mlp",
    "cnn4": "cnn-small:width=0.25",
    "mobilenet": "mobilenet-0.25:small=true",
    "vgg": "vgg-small:width=16",
    "resnet": "resnet-cifar:depth=14,width=8",
}
SUBSETS = (1, 2, 3)
CLASSES = 100  # fashion-pairs


def chosen(tune: dict, rows: list[dict]) -> dict[str, dict]:
    """The `set` of the trial chosen on val in each family (gt, self, strong), and the refinery's."""
    arms = {a["name"]: a for a in tune["arms"]}
    out = {"refinery": arms["strong"].get("set", {})}
    for family in ("gt", "self", "strong"):
        trials = [r for r in rows if r["arm"].startswith(family + "-")]
        if len(trials) < len([a for a in arms if a.startswith(family + "-")]):
            raise SystemExit(f"the tuning study has {len(trials)} finished {family}-* trials of "
                             f"{len([a for a in arms if a.startswith(family + '-')])}: finish configs/table/tune.yaml first")
        best = max(trials, key=lambda r: r["val_top1"])
        out[family] = dict(arms[best["arm"]].get("set", {}), _trial=best["arm"])
    return out


def arm(name: str, student: str, changes: dict, refinery: str | None = None, seed_offset: int = 0,
        store: str | None = None, classes: int = CLASSES, data: dict | None = None) -> dict:
    changes = {k: v for k, v in changes.items() if not k.startswith("_")}
    if data:  # this arm's own data keys (the learning curve's subset size) beside the recipe's
        changes["data"] = {**changes.get("data", {}), **data}
    out = {"name": name, "set": {**changes, "model": student, "chain": {"generations": 1}}}
    if refinery:
        out["refinery"] = refinery
    if seed_offset:
        out["seed_offset"] = seed_offset
    if store:  # one bake of the strong refinery serves every student (same seed, crops, epochs)
        out["store"] = store
        out["set"]["store"] = {"top_k": classes}  # whole distributions, as live labels are
    return out


def study(subset: int, tune: dict, choice: dict) -> dict:
    base = json.loads(json.dumps(tune["base"]))
    base["data"] |= {"dataset": f"fashion-pairs:seed={100 + subset},val_items=5000", "subset_seed": subset}
    arms = [{"name": "refinery", "seed_offset": 2, "set": {**choice["refinery"], "chain": {"generations": 1}}}]
    # grouped so that two processes can share a (subset, seed) on 2 cores, about evenly:
    #   --arms refinery strong-*        and        --arms gt-* self-*
    arms += [arm(f"gt-{key}", student, choice["gt"]) for key, student in STUDENTS.items()]
    arms += [arm(f"strong-{key}", student, choice["strong"], "refinery/gen1", 1, "strong") for key, student in STUDENTS.items()]
    arms += [arm(f"self-{key}", student, choice["self"], f"gt-{key}/gen1", 1) for key, student in STUDENTS.items()]
    arms += other_refineries(choice)
    return {"out": f"runs/table/pairs-s{subset}", "seeds": [1, 2, 3], "analyze": False, "base": base, "arms": arms}


FOLDS = 3  # the cross-fitted refinery's fold models


def other_refineries(choice: dict) -> list[dict]:
    """More refineries for the headline student (after the table's arms, so the table runs first):
    `mid-cnn`, refined by `vgg-small:width=16` on ground truth (`gt-vgg`, ~5x cheaper to train than the
    strong refinery: what a 6-minute demo can afford), and `xfit-cnn`, refined by a cross-fitted
    strong refinery (`fold-K`: the strong recipe trained without fold K of FOLDS; each training image
    labelled by the fold model that never saw it; live labels, as cross-fitting requires)."""
    arms = [arm("mid-cnn", "cnn-small", choice["strong"], "gt-vgg/gen1", 1)]
    for k in range(FOLDS):
        fold = {**choice["refinery"], "data": {**choice["refinery"].get("data", {}), "holdout_fold": [k, FOLDS]}}
        arms.append({"name": f"fold-{k}", "seed_offset": 2, "set": {**fold, "chain": {"generations": 1}}})
    xfit = arm("xfit-cnn", "cnn-small", choice["strong"], seed_offset=1)
    xfit["refinery"] = [f"fold-{k}/gen1" for k in range(FOLDS)]
    xfit["set"]["refinery"] = {"cross_fit": True}
    return arms + [xfit]


CURVE = (1000, 3000, 10000)  # training images of the second task's learning curve


TUNED_SIZE = 3000  # the recipes were chosen on 3,000 training images


def steps(changes: dict, n: int, default: int) -> dict:
    """A recipe at ``n`` training images: above the size it was tuned at, its epochs shrink so that it
    takes the same number of optimizer steps (10,000 images x 60 epochs = 3,000 x 200), which keeps the
    largest size's compute that of the tuned one; at or below it, the recipe's epochs as chosen."""
    epochs = changes.get("optim", {}).get("epochs", default)
    if n <= TUNED_SIZE:
        return changes
    return {**changes, "optim": {**changes.get("optim", {}), "epochs": round(epochs * TUNED_SIZE / n)}}


def curve(tune: dict, choice: dict) -> dict:
    """The second task (goal 4): 10-class Fashion-MNIST at several training-set sizes, cnn-small
    refined by itself and by the strong refinery recipe, against the tuned ground truth; the recipes
    are the ones chosen on fashion-pairs (not tuned again here: stated in docs/results.md)."""
    base = json.loads(json.dumps(tune["base"]))
    base["data"] = {"dataset": "fashion-mnist", "val_split": 5000, "stratify": True, "subset_seed": 1}
    default = base["optim"]["epochs"]
    arms = []
    for n in CURVE:
        size = {"train_subset": n}
        recipe = {k: steps(v, n, default) for k, v in choice.items()}
        ref = dict(recipe["refinery"], data={**recipe["refinery"].get("data", {}), **size})
        arms.append({"name": f"refinery-{n}", "seed_offset": 2, "set": {**ref, "chain": {"generations": 1}}})
        arms.append(arm(f"gt-{n}", "cnn-small", recipe["gt"], data=size))
        arms.append(arm(f"self-{n}", "cnn-small", recipe["self"], f"gt-{n}/gen1", 1, data=size))
        arms.append(arm(f"strong-{n}", "cnn-small", recipe["strong"], f"refinery-{n}/gen1", 1, classes=10, data=size))
    return {"out": "runs/table/curve", "seeds": [1, 2, 3, 4, 5], "analyze": False, "base": base, "arms": arms}


def main() -> None:
    tune = yaml.safe_load((HERE / "tune.yaml").read_text())
    choice = chosen(tune, json.loads((HERE / "tune.results.json").read_text()))
    for subset in SUBSETS:
        path = HERE / f"pairs-s{subset}.yaml"
        head = (f"# Issue 24's table, training subset {subset}: written by bench/table_configs.py from the tuning study's\n"
                f"# choices on val ({choice['gt']['_trial']}, {choice['self']['_trial']}, {choice['strong']['_trial']}).\n"
                f"# One (subset, seed) on 2 cores, two processes (bench/table_run.sh does this):\n"
                f"#   label-refinery experiment {path.relative_to(HERE.parents[1])} --seeds S --threads 1 --no-progress --arms refinery strong-*\n"
                f"#   label-refinery experiment {path.relative_to(HERE.parents[1])} --seeds S --threads 1 --no-progress --arms gt-* self-*\n")  # fmt: skip
        path.write_text(head + yaml.safe_dump(study(subset, tune, choice), sort_keys=False, width=120))
        print(path)
    path = HERE / "curve.yaml"
    head = ("# Issue 24's second task: Fashion-MNIST (10 classes) at 1,000 / 3,000 / 10,000 training images, cnn-small;\n"
            "# written by bench/table_configs.py with the recipes chosen on fashion-pairs (at 10,000 images their epochs\n"
            "# shrink to keep the tuned size's steps). One seed on 2 cores, two processes (~70 min; bench/curve_run.sh):\n"
            "#   label-refinery experiment configs/table/curve.yaml --seeds S --threads 1 --no-progress --arms '*-1000' 'refinery-10000' 'strong-10000'\n"
            "#   label-refinery experiment configs/table/curve.yaml --seeds S --threads 1 --no-progress --arms '*-3000' 'gt-10000' 'self-10000'\n")  # fmt: skip
    path.write_text(head + yaml.safe_dump(curve(tune, choice), sort_keys=False, width=120))
    print(path)


if __name__ == "__main__":
    main()
