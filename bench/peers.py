"""Our refined generation against a peer's implementation of the same loss: timm's
``LogitDistillationTask`` (issue 25, goal 4).

    python bench/peers.py                                   # Fashion-MNIST 10,000 images, cnn-small, 10 epochs, seeds 1-3
    python bench/peers.py --seeds 1 2 3 4 5 --threads 1 --out runs/peers

One generation 1 (ground truth, seed 0) is the teacher of every arm. For each seed, three students of
the same architecture train from the same initial weights, on the same batches of the same crops, with
the same optimizer and learning-rate schedule, for the same epochs:

- **ours, live**: ``label-refinery train --refinery GEN1`` (our trainer, the refinery labelling each crop);
- **ours, store**: the same with ``--label-source store`` (the refinery's labels of every epoch's crops
  baked once, top-5 in fp16, then read back; the bake is in the arm's wall time);
- **timm**: timm's ``LogitDistillationTask(student, teacher, temperature=1, task_loss_weight=0,
  distill_loss_weight=1)`` computing the loss in a plain loop over our batches (our crops, our
  optimizer and schedule, our evaluation): ``KL(softmax(teacher) || softmax(student))``, which differs
  from our soft cross-entropy by the teacher's entropy, a constant, so the gradients are the same.

It first checks that on one batch: the gradient of every student weight under both losses (max
relative difference) and the loss difference against the teacher's entropy; and times the two
training loops alone on the same prebuilt batches, alternately (no loader, no checkpoints). Then it trains the arms,
interleaved seed by seed so that drifts in the machine's load hit them alike, and prints test top-1
per arm (mean and 95 % interval over seeds), the paired difference to timm, and training images/s
(the median epoch of the training loop: forward, labels, backward and step; evaluation excluded) with
their ratios to timm, measured side by side in this one run. Results go to OUT/peers.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from label_refinery.checkpoint import load_checkpoint
from label_refinery.config import load_config
from label_refinery.losses import refinery_loss
from label_refinery.study.stats import t_interval
from label_refinery.training.engine import lr_schedule
from label_refinery.training.generation import train_generation
from label_refinery.training.runfolder import metrics_upto
from label_refinery.training.setup import build_run, load_data, plan_generation

ARMS = ("ours-live", "ours-store", "timm")


def config(args, seed: int, **more):
    values = {
        "model": args.model,
        "seed": seed,
        "eval_every": args.epochs,  # the test split once, at the end, in every arm
        "data.dataset": args.dataset,
        "data.train_subset": args.subset,
        "optim.epochs": args.epochs,
        "device": args.device,
    }
    return load_config(overrides=values | more)


def train_ours(args, seed: int, source: str, teacher: Path) -> dict:
    folder = args.out / f"{source}-seed{seed}"
    start = time.perf_counter()
    meta = train_generation(
        config(args, seed, **{"refinery.path": str(teacher), "labels.source": source}), folder, generation=2,
        log=lambda _: None,
    )  # fmt: skip
    rows = metrics_upto(folder / "metrics.jsonl", args.epochs - 1)
    return {
        "test_top1": meta["metrics"]["test_top1"],
        "images_per_s": statistics.median(r["images_per_s"] for r in rows),
        "wall_s": time.perf_counter() - start,
    }


def timm_task(student: nn.Module, teacher: nn.Module, ds):
    """timm's task at the paper's setting; both models told our normalisation, so timm's
    re-normalisation of the teacher's input is the identity (the teacher is trained on our crops)."""
    from timm.task import LogitDistillationTask
    from timm.task.distillation import DistillationTeacher

    for m in (student, teacher):
        m.pretrained_cfg = {"mean": tuple(ds.mean), "std": tuple(ds.std)}
    return LogitDistillationTask(
        student, DistillationTeacher(teacher), criterion=nn.CrossEntropyLoss(), task_loss_weight=0.0,
        distill_loss_weight=1.0, temperature=1.0, device=next(student.parameters()).device, verbose=False,
    )  # fmt: skip


def teacher_module(path: Path, device, channels_last: bool) -> nn.Module:
    model = load_checkpoint(path).build_model(device).eval().requires_grad_(False)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def train_timm(args, seed: int, teacher: Path, keep: bool = False) -> dict:
    """The student of a ground-truth run of this seed (our init, optimizer, crops and batches), trained by
    timm's task on the teacher's logits; ``keep``: its final weights too (``state_dict``)."""
    start = time.perf_counter()
    plan = plan_generation(config(args, seed), args.out / f"timm-seed{seed}")
    run = build_run(plan, load_data(plan.cfg), log=lambda _: None, progress=False)
    cfg, ds = run.cfg, run.ds
    task = timm_task(run.model, teacher_module(teacher, run.device, cfg.channels_last), ds)
    lr_at, step, rates = lr_schedule(cfg.optim, run.steps), 0, []
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for epoch in range(cfg.optim.epochs):
        task.train()
        batches = ds.train.iter_batches(
            cfg.optim.batch_size, epoch=epoch, crops=run.crops, order_seed=cfg.seed, device=run.device, drop_last=True
        )
        t0, images = time.perf_counter(), 0
        for batch in batches:
            for group in run.optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = task(batch.images.contiguous(memory_format=fmt), batch.targets)["loss"]
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            step, images = step + 1, images + len(batch.targets)
        rates.append(images / (time.perf_counter() - t0))
    test = run.evaluate_on(ds.test, "test", progress=False)
    out = {"test_top1": test["top1"], "images_per_s": statistics.median(rates), "wall_s": time.perf_counter() - start}
    if keep:
        out["state_dict"] = {k: v.contiguous() for k, v in run.student.state_dict().items()}
    return out


def same_gradients(args, teacher: Path) -> dict:
    """One batch, one student: the gradients of our loss and of timm's task, and their loss gap against
    the teacher's mean entropy (KL = soft cross-entropy - H(teacher))."""
    plan = plan_generation(config(args, 1), args.out / "gradient-check")
    run = build_run(plan, load_data(plan.cfg), log=lambda _: None, progress=False)
    refinery = teacher_module(teacher, run.device, run.cfg.channels_last)
    task = timm_task(run.student, refinery, run.ds).train()
    batch = next(iter(run.ds.train.iter_batches(128, crops=run.crops, order_seed=1, drop_last=True)))
    x = batch.images.contiguous(memory_format=torch.channels_last)
    grads, losses = [], []
    for loss_of in (
        lambda: refinery_loss(run.student(x), torch.softmax(refinery(x), 1)),
        lambda: task(x, batch.targets)["loss"],
    ):
        run.student.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in run.student.parameters()]))
        losses.append(float(loss.detach()))
    with torch.no_grad():
        q = torch.softmax(refinery(x), 1)
        entropy = float(-(q * q.clamp_min(1e-30).log()).sum(1).mean())
    return {
        "max_rel_grad_diff": float((grads[0] - grads[1]).abs().max() / grads[0].abs().max()),
        "loss_ours": losses[0],
        "loss_timm": losses[1],
        "teacher_entropy": entropy,
    }


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    mean, half = t_interval(values)
    return mean, mean - half, mean + half


def loop_seconds(args, teacher: Path, repeats: int = 10, steps: int = 40) -> dict:
    """The two training loops alone, on the same ``steps`` batches built beforehand (no loader, no
    checkpoints), after a warm-up, ``repeats`` times in alternating order (ABBA): median seconds of each
    (our ``train_one_epoch`` with the live refinery; timm's task in a plain loop)."""
    from label_refinery.labels import LiveRefinery
    from label_refinery.training.engine import Step, train_one_epoch

    plan = plan_generation(config(args, 1), args.out / "loop-check")
    run = build_run(plan, load_data(plan.cfg), log=lambda _: None, progress=False)
    batches = list(run.ds.train.iter_batches(run.cfg.optim.batch_size, crops=run.crops, order_seed=1, drop_last=True))
    batches = batches[:steps]
    refinery = teacher_module(teacher, run.device, run.cfg.channels_last)
    task, live, opt = timm_task(run.model, refinery, run.ds), LiveRefinery(refinery), run.optimizer
    times: dict[str, list[float]] = {"ours-live": [], "timm": []}

    def ours() -> None:
        train_one_epoch(run.model, live, iter(batches), opt, lambda _: 0.01, Step(channels_last=run.cfg.channels_last))

    def theirs() -> None:
        task.train()
        for batch in batches:
            loss = task(batch.images.contiguous(memory_format=torch.channels_last), batch.targets)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    theirs(), ours()  # warm-up
    for r in range(repeats):  # ABBA: neither loop always runs first
        for name, loop in (("ours-live", ours), ("timm", theirs))[:: 1 if r % 2 == 0 else -1]:
            t0 = time.perf_counter()
            loop()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def summary(results: dict, seeds: list[int]) -> list[str]:
    rows = ["| arm | test top-1, mean [95 % interval] | minus timm, paired | train img/s (median over seeds) | ratio to timm |",
            "|---|---:|---:|---:|---:|"]  # fmt: skip
    timm = [results["timm"][s] for s in seeds]
    for arm in ARMS:
        r = [results[arm][s] for s in seeds]
        m, lo, hi = mean_interval([x["test_top1"] for x in r])
        d = mean_interval([x["test_top1"] - t["test_top1"] for x, t in zip(r, timm)]) if arm != "timm" else None
        rate = statistics.median(x["images_per_s"] for x in r)
        ratio = statistics.median(x["images_per_s"] / t["images_per_s"] for x, t in zip(r, timm))
        diff = f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]" if d else ""
        rows.append(f"| {arm} | {m:.2f} [{lo:.2f}, {hi:.2f}] | {diff} | {rate:,.0f} | {ratio:.3f} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=10000, help="training images")
    p.add_argument("--model", default="cnn-small", help="teacher and student architecture")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/peers"))
    args = p.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty: pass a new --out (a finished run is skipped, so it cannot be timed again)")
    torch.set_num_threads(args.threads)
    import timm

    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, {args.dataset} "
          f"{args.subset} images, {args.model}, {args.epochs} epochs, seeds {args.seeds}", flush=True)  # fmt: skip
    teacher = args.out / "gen1"
    meta = train_generation(config(args, 0), teacher, log=lambda _: None)
    print(f"teacher (generation 1, ground truth, seed 0): test top-1 {meta['metrics']['test_top1']:.2f}", flush=True)
    check = same_gradients(args, teacher)
    print(f"one batch: max relative gradient difference {check['max_rel_grad_diff']:.2e}; loss ours - timm "
          f"{check['loss_ours'] - check['loss_timm']:.6f}, teacher entropy {check['teacher_entropy']:.6f}", flush=True)
    loop = loop_seconds(args, teacher)
    print(f"the loops alone, same prebuilt batches: ours {loop['ours-live']:.3f} s, timm {loop['timm']:.3f} s "
          f"(our speed / timm's {loop['timm'] / loop['ours-live']:.3f})", flush=True)
    results = {arm: {} for arm in ARMS}
    for seed in args.seeds:
        results["ours-live"][seed] = train_ours(args, seed, "live", teacher)
        results["ours-store"][seed] = train_ours(args, seed, "store", teacher)
        results["timm"][seed] = train_timm(args, seed, teacher)
        print(f"seed {seed}: " + "  ".join(f"{a} {results[a][seed]['test_top1']:.2f} "
              f"({results[a][seed]['images_per_s']:,.0f} img/s, {results[a][seed]['wall_s']:.0f} s)" for a in ARMS),
              flush=True)  # fmt: skip
    (args.out / "peers.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "gradient_check": check, "loop_seconds": loop,
                                                      "teacher_test_top1": meta["metrics"]["test_top1"],
                                                      "results": results}, indent=1))  # fmt: skip
    print("\n".join(summary(results, args.seeds)))


if __name__ == "__main__":
    main()
