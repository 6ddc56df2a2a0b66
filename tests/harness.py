"""The crash-and-resume harness: run something, stop it part way, run it again, compare.

Many tests check that an interrupted run loses nothing: a training process SIGKILLed at a chosen
step, a generation stopped by an exception right after a checkpoint, a NaN loss, a full disk, a
label-store bake whose refinery fails mid-epoch, a torchrun group whose rank dies. They share the
pieces below (imported as ``from tests import harness`` or ``from tests.harness import ...``).

Runs in this process
    A *run* is ``run(folder, log)``: it writes into ``folder`` and logs through ``log(message)``
    (e.g. ``lambda folder, log: train_generation(cfg, folder, dataset=ds, log=log)``).

    crash(run, folder, by=..., expect=..., match=...)  runs it under an :class:`Interruption`; it must
                                                       stop with that exception; returns pytest's info
    rerun(run, folder)                                 the same run again, uninterrupted: (result, log)

    Interruptions: :func:`stop_on_log`, :func:`stop_after_save`, :func:`raise_in`, :func:`nan_loss_at`;
    :class:`FailsAt` wraps a module (a refinery) whose n-th forward raises. Their patches last only
    while the interrupted run runs (their own MonkeyPatch, not the test's).

Processes
    command(*argv, nproc=1)   ``python -m label_refinery ARGV`` (or ``python SCRIPT.py ARGV``), under
                              ``torchrun --standalone`` when nproc > 1
    start(*argv)              that command as a running process (stdout and stderr piped)
    launch(*argv, ...)        run it to the end: the CompletedProcess, whatever its exit status
    run(*argv, ...)           run it, assert it succeeded, return stdout + stderr
    kill_when(argv, folder, ready)  start it; SIGKILL it as soon as ``ready(position(folder))``

    holding(target, kind)     another process holding ``target`` (a folder claimed as ``kind``, or a file
                              with ``kind="file"``, :mod:`label_refinery.locks`) until the block ends

What a run left, and comparisons
    position(folder)          (next epoch, next step) of its state.safetensors, or None
    metric_rows(folder)       metrics.jsonl without wall-clock fields
    assert_same_weights(a, b) two finished runs hold the same weights, bit for bit
    assert_same_arrays(a, b, names)  two label stores hold the same .npy arrays
    top1(folder, split)       the finished run's top-1 (%) on a split, computed here (a reference for
                              the accuracies the run recorded)

Pages in a browser (audit and report pages)
    chromium(why)             the browser's path, or skip the test saying what was not checked
    dump_dom(browser, page)   the DOM of ``page`` after its scripts ran, in headless Chromium
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pytest
import torch
from torch import nn

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SCRIPTS = TESTS / "scripts"  # torchrun scripts the tests launch by path
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMING = ("seconds", "images_per_s")  # metrics.jsonl fields that measure wall time, not training

Log = Callable[[str], None]
Run = Callable[[Path, Log], Any]


def quiet(_message: str) -> None:
    """A log that drops everything."""


class Stop(Exception):
    """The interruption a test arranged (nothing in the library raises it)."""


# ---- interruptions of a run in this process ----


class Interruption:
    """How a run is stopped part way: the exception that stops it, the log it gets and the patches
    in place while it runs, as ``(target, attribute name, value)``."""

    def __init__(self, raises: type[BaseException] = Stop, log: Log = quiet, patches: Iterable[tuple] = ()):
        self.raises, self.log, self.patches = raises, log, list(patches)

    @contextlib.contextmanager
    def applied(self):
        with pytest.MonkeyPatch.context() as mp:
            for target, name, value in self.patches:
                mp.setattr(target, name, value)
            yield


def stop_on_log(text: str, raises: type[BaseException] = KeyboardInterrupt) -> Interruption:
    """Stop at the first log message that contains ``text`` (e.g. ``"epoch 1/3"``: after epoch 1)."""

    def log(message: str) -> None:
        if text in message:
            raise raises

    return Interruption(raises, log)


def stop_after_save(at: tuple[int, int], raises: type[BaseException] = Stop) -> Interruption:
    """Stop right after the training state of position ``at`` = (epoch, batch), 0-based, was saved."""
    import label_refinery.training.state as state

    real_save = state.save

    def save_then_stop(folder, student, optimizer, scaler, pos, *rest):
        real_save(folder, student, optimizer, scaler, pos, *rest)
        if (pos.epoch, pos.batch) == tuple(at):
            raise raises

    return Interruption(raises, patches=[(state, "save", save_then_stop)])


def raise_in(target: Any, name: str, raises: type[BaseException] = KeyboardInterrupt) -> Interruption:
    """``target.name`` raises instead of running (e.g. the final save of a generation)."""

    def crash(*args, **kwargs):
        raise raises

    return Interruption(raises, patches=[(target, name, crash)])


def nan_loss_at(call: int) -> Interruption:
    """The ``call``-th loss of the run (1-based, so step ``call - 1``) is NaN: the run stops with a
    UserError (pass ``match=``)."""
    import label_refinery.losses as losses
    from label_refinery import UserError

    real_loss, calls = losses.refinery_loss, {"n": 0}

    def loss_that_blows_up(*args, **kwargs):
        calls["n"] += 1
        out = real_loss(*args, **kwargs)
        return out * float("nan") if calls["n"] == call else out

    # what every generation's loss is built from
    return Interruption(UserError, patches=[(losses, "refinery_loss", loss_that_blows_up)])


class FailsAt(nn.Module):
    """``inner`` (a refinery), failing on its ``call``-th forward pass (an interrupted bake)."""

    def __init__(self, inner: nn.Module, call: int, raises: type[BaseException] = Stop):
        super().__init__()
        self.inner, self.call, self.raises, self.calls = inner, call, raises, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.call:
            raise self.raises
        return self.inner(x)


def crash(run: Run, folder: Path, by: Interruption | None = None, *, expect: type[BaseException] | None = None,
          match: str | None = None) -> pytest.ExceptionInfo:
    """Run into ``folder`` under the interruption ``by``; the run must stop with ``expect`` (by
    default the interruption's own exception), whose message matches ``match``."""
    by = by or Interruption()
    with by.applied(), pytest.raises(expect or by.raises, match=match) as info:
        run(folder, by.log)
    return info


def rerun(run: Run, folder: Path) -> tuple[Any, list[str]]:
    """The same run into the same folder, uninterrupted: what it returned and what it logged."""
    messages: list[str] = []
    return run(folder, messages.append), messages


# ---- processes ----


def command(*argv, nproc: int = 1) -> list[str]:
    """``label-refinery ARGV`` (or ``python SCRIPT.py ARGV`` if ARGV starts with a script) as a
    command line, in ``nproc`` processes under torchrun when nproc > 1."""
    argv = [str(a) for a in argv]
    target = argv if argv[0].endswith(".py") else ["-m", "label_refinery", *argv]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
    return launcher + target


def start(*argv, nproc: int = 1) -> subprocess.Popen:
    """The command running, stdout and stderr piped together."""
    return subprocess.Popen(command(*argv, nproc=nproc), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def launch(*argv, nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the command to its end; its exit status is the caller's to check."""
    return subprocess.run(command(*argv, nproc=nproc), env=ENV, capture_output=True, text=True, timeout=timeout)


def run(*argv, nproc: int = 1, timeout: int = 300) -> str:
    """Run the command; it must succeed. Returns stdout + stderr."""
    proc = launch(*argv, nproc=nproc, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def kill_when(argv: list, folder: Path, ready: Callable[[tuple[int, int] | None], bool], limit_s: float = 120) -> bool:
    """Start the command (training into ``folder``); SIGKILL it as soon as ``ready(position(folder))``
    holds. False if it finished first."""
    proc = start(*argv)
    deadline = time.monotonic() + limit_s
    while proc.poll() is None and time.monotonic() < deadline:
        if ready(position(folder)):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.communicate()
    return False


_HOLDER = """
import sys, time
from label_refinery.locks import claim, claim_file
target, kind = sys.argv[1], sys.argv[2]
with (claim_file(target) if kind == "file" else claim(target, kind)):
    print("held", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def holding(target: Path, kind: str):
    """Another process (``python -c``, the source tree on its path) that holds ``target`` while the
    block runs; SIGKILLed at the end (the kernel then releases its lock). Yields the process."""
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), ENV.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target), kind], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held", "the holder did not start"
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


# ---- what a run left ----


def position(folder: Path) -> tuple[int, int] | None:
    """(next epoch, next step) of the run's state file, if there is one."""
    from label_refinery.checkpoint import load_tensors

    try:
        nxt = load_tensors(Path(folder) / "state.safetensors")[1]["next"]
    except Exception:  # not written yet, or replaced while we read it
        return None
    return nxt["epoch"], nxt["batch"]


def metric_rows(folder: Path, drop: Iterable[str] = TIMING) -> list[dict]:
    """The rows of the run's metrics.jsonl, without the fields in ``drop`` (wall-clock ones by default)."""
    drop = set(drop)
    lines = (Path(folder) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def assert_same_weights(a: Path, b: Path) -> None:
    """The finished runs (or weight files) ``a`` and ``b`` hold the same tensors, bit for bit."""
    from label_refinery.checkpoint import load_checkpoint

    wa, wb = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    assert wa.keys() == wb.keys(), sorted(wa.keys() ^ wb.keys())
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ between {a} and {b}: {differ[:5]}"


def assert_same_arrays(a: Path, b: Path, names: Iterable[str], byte_for_byte: bool = False) -> None:
    """The label stores ``a`` and ``b`` hold the same ``NAME.npy`` arrays (the same file bytes, with
    ``byte_for_byte``)."""
    for name in names:
        fa, fb = Path(a) / f"{name}.npy", Path(b) / f"{name}.npy"
        if byte_for_byte:
            assert fa.read_bytes() == fb.read_bytes(), name
        else:
            assert np.array_equal(np.load(fa), np.load(fb)), name


def top1(folder: Path, split, batch_size: int = 512) -> float:
    """Top-1 (%) of the finished run's model on ``split``'s evaluation views, computed here from the
    checkpoint (eval mode, plain argmax): a reference for the accuracies the run recorded."""
    from label_refinery.checkpoint import load_checkpoint

    model = load_checkpoint(folder).build_model().eval()
    correct = n = 0
    with torch.no_grad():
        for batch in split.iter_batches(batch_size):
            correct += int((model(batch.images).argmax(1) == batch.targets).sum())
            n += len(batch.targets)
    assert n == len(split), (n, len(split))
    return 100.0 * correct / n


# ---- pages in a browser ----


def chromium(why: str) -> str:
    """The path of Chromium; without it the test skips, saying ``why`` it mattered."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip(f"no Chromium on this machine (Debian: apt-get install chromium): {why}")
    return browser


def dump_dom(browser: str, page: Path, timeout: int = 120) -> str:
    """The DOM of the page after its scripts ran (5 s of virtual time), in headless Chromium."""
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--virtual-time-budget=5000", "--dump-dom", Path(page).resolve().as_uri()],
                          capture_output=True, text=True, timeout=timeout).stdout
