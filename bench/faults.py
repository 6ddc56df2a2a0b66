"""Fault injection (issue 28): kill, race, fill the disk and corrupt every artefact kind, then check
that nothing was lost and nothing was silently trusted.

    python bench/faults.py                      # the whole suite (a few minutes on 2 cores)
    python bench/faults.py --quick              # one case of each kind
    python bench/faults.py --kills 5 --seed 3   # more random kill points

Every case runs the real command line (``python -m label_refinery ...``) on scikit-learn's digits in
a scratch folder, against a reference made by the same commands uninterrupted:

- **kill**: ``train``, ``chain``, ``bake``, ``audit --folds 2`` and ``export``, each SIGKILLed at a
  random moment (seeded; uniform over the reference's wall time), then run again to the end: the
  result must equal the reference (weights bit for bit, label-store arrays, audit.csv, the export).
- **race**: two ``train``, ``chain``, ``bake`` or ``audit`` commands started together on one
  ``--out``: one must finish, the other refuse at once with one line naming the holder's PID; the
  finished one equals the reference.
- **disk**: ``train`` into a 2 MiB tmpfs (as root; skipped with the reason otherwise): one clear
  line, exit 2; the tmpfs grown, the same command resumes and equals the reference.
- **corrupt**: random bytes of each artefact kind (weights, weights without their meta.json, resume
  state, meta.json, config.yaml, label-store arrays and manifest, audit.csv) overwritten, then the
  command that reads it: it must refuse with one line (exit 2, no traceback) or give the reference's
  result; a different result is "silently trusted", a traceback is a broken promise.

Prints one markdown table (cases run, held, broken per kind) and every broken case; exits 1 if any.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = ["--dataset", "digits", "--train-subset", "600", "--val-split", "200", "--no-progress"]
TRAIN = ["train", *DATA, "--epochs", "4", "--batch-size", "64", "--save-every", "3", "--seed", "0"]
CHAIN = ["chain", *DATA, "--epochs", "2", "--batch-size", "64", "--generations", "2", "--seed", "0"]


def lr(*argv, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "label_refinery", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=env)  # fmt: skip


def start(*argv) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "label_refinery", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)  # fmt: skip


def one_clear_line(p: subprocess.CompletedProcess) -> bool:
    """Refused as promised: exit 2, no traceback, one non-empty line of error."""
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    return p.returncode == 2 and "Traceback" not in p.stderr and len(lines) == 1 and len(lines[0]) < 2000


def same_tree(a: Path, b: Path, names: tuple[str, ...]) -> bool:
    """The result files ``names`` (globs) under ``a`` and ``b``: same tensors / arrays / bytes."""
    from safetensors.numpy import load_file

    for name in names:
        left, right = sorted(a.glob(name)), sorted(b.glob(name))
        if [p.relative_to(a) for p in left] != [p.relative_to(b) for p in right] or not left:
            return False
        for x, y in zip(left, right):
            if x.suffix == ".safetensors":
                u, v = load_file(x), load_file(y)
                if u.keys() != v.keys() or any(not np.array_equal(u[k], v[k]) for k in u):
                    return False
            elif x.suffix == ".npy":
                if not np.array_equal(np.load(x), np.load(y)):
                    return False
            elif not filecmp.cmp(x, y, shallow=False):
                return False
    return True


class Suite:
    def __init__(self, root: Path, rng: random.Random, quick: bool):
        self.root, self.rng, self.quick = root, rng, quick
        self.results: dict[str, list[tuple[str, bool]]] = {}

    def record(self, kind: str, case: str, held: bool, why: str = "") -> None:
        self.results.setdefault(kind, []).append((f"{case}: {why}" if why else case, held))
        print(f"[{'held' if held else 'BROKEN'}] {kind}: {case} {why}", flush=True)

    def fresh(self, name: str) -> Path:
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    # ---- references -------------------------------------------------------------------------
    def references(self) -> dict[str, tuple[list, Path, tuple[str, ...], float]]:
        """command -> (argv with OUT, reference folder, result globs, reference seconds)."""
        gen1 = self.root / "ref-chain"
        specs = {
            "train": (TRAIN + ["--out", "OUT"], ("model.safetensors",)),
            "chain": (CHAIN + ["--out", "OUT"], ("gen*/model.safetensors",)),
            "bake": (["bake", *DATA, "--refinery", gen1 / "gen1", "--epochs", "6", "--seed", "1", "--out", "OUT"],
                     ("*.npy",)),
            "audit": (["audit", gen1, "--folds", "2", "--out", "OUT", "--no-progress"], ("audit.csv",)),
            "export": (["export", gen1, "--out", "OUT/labels.csv", "--no-progress"], ("labels.csv",)),
        }  # fmt: skip
        refs = {}
        for name in ["chain", *[k for k in specs if k != "chain"]]:  # the chain first: the others read it
            argv, globs = specs[name]
            out = self.fresh(f"ref-{name}")
            t = time.perf_counter()
            p = lr(*[str(a).replace("OUT", str(out)) for a in argv])
            if p.returncode:
                raise SystemExit(f"reference {name} failed:\n{p.stderr[-3000:]}")
            refs[name] = (argv, out, globs, time.perf_counter() - t)
        return refs

    # ---- cases ------------------------------------------------------------------------------
    def kills(self, refs, n: int) -> None:
        for name, (argv, ref, globs, seconds) in refs.items():
            for k in range(1 if self.quick else n):
                out = self.fresh(f"kill-{name}-{k}")
                args = [str(a).replace("OUT", str(out)) for a in argv]
                at, killed = self.rng.uniform(0.15, 0.9) * seconds, False
                while not killed and at > 0.3:  # a run faster than the reference: kill earlier, afresh
                    shutil.rmtree(out, ignore_errors=True)
                    proc = start(*args)
                    time.sleep(at)
                    killed = proc.poll() is None
                    if killed:
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    at = at if killed else at / 2
                p = lr(*args)
                ok = p.returncode == 0 and same_tree(out, ref, globs)
                self.record("kill", f"{name} at {at:.1f} s{'' if killed else ' (had finished)'}", ok,
                            "" if ok else p.stderr[-400:])  # fmt: skip

    def race(self, refs) -> None:
        """Two of the same command started together on one output: one finishes (the reference's
        result), the other refuses at once in one line naming the holder's PID."""
        for name in ("train", "chain", "bake", "audit"):
            argv, ref, globs, _ = refs[name]
            out = self.fresh(f"race-{name}")
            args = [str(a).replace("OUT", str(out)) for a in argv]
            procs = [start(*args) for _ in range(2)]
            done = [(p.wait(), p.stderr.read()) for p in procs]
            codes = sorted(c for c, _ in done)
            refused = [err for c, err in done if c == 2]
            ok = codes == [0, 2] and "PID" in refused[0] and "Traceback" not in refused[0] and same_tree(out, ref, globs)
            why = "" if ok else f"exit codes {codes}: {(refused or [done[-1][1]])[0][-300:]!r}"
            self.record("race", f"two {name} commands on one --out", ok, why)

    def disk(self, refs) -> None:
        argv, ref, globs, _ = refs["train"]
        if os.geteuid() != 0 or not shutil.which("mount"):
            self.record("disk", "skipped: needs root to mount a small tmpfs", True)
            return
        mnt = self.fresh("disk")
        mnt.mkdir(parents=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode:
            self.record("disk", "skipped: mounting a tmpfs failed here (a container without the right)", True)
            return
        try:
            out = mnt / "run"
            args = [str(a).replace("OUT", str(out)) for a in argv]
            shutil.copy(REPO / "README.md", mnt / "filler")  # leave less than one checkpoint's room
            while shutil.disk_usage(mnt).free > 60_000:
                with open(mnt / "filler", "ab") as f:
                    f.write(b"\0" * min(65536, shutil.disk_usage(mnt).free - 50_000))
            full = lr(*args)
            os.remove(mnt / "filler")
            subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
            again = lr(*args)
            ok = one_clear_line(full) and again.returncode == 0 and same_tree(out, ref, globs)
            why = "" if ok else f"full: exit {full.returncode} {full.stderr[-300:]!r}; again: exit {again.returncode}"
            self.record("disk", "train into a full disk, then resume", ok, why)
        finally:
            subprocess.run(["umount", str(mnt)])

    def corrupt(self, refs) -> None:
        chain, store = refs["chain"][1], refs["bake"][1]
        student = lambda d: ["train", *DATA, "--epochs", "6", "--batch-size", "64", "--labels", d, "--refinery",
                             chain / "gen1", "--seed", "1", "--out", d / "student"]  # noqa: E731  # fmt: skip
        cases = [  # (name, the folder copied, the artefact damaged in the copy, the command that reads it)
            ("weights", chain, "gen1/model.safetensors", lambda d: ["evaluate", d / "gen1", "--split", "val"]),
            ("weights without meta.json", chain, "gen1/model.safetensors",
             lambda d: ["evaluate", d / "gen1" / "model.safetensors", "--split", "val"]),
            ("meta.json", chain, "gen1/meta.json", lambda d: ["report", d]),
            ("config.yaml", chain, "config.yaml", lambda d: [*CHAIN, "--out", d]),
            ("resume state", None, "state.safetensors", lambda d: [str(a).replace("OUT", str(d)) for a in TRAIN + ["--out", "OUT"]]),
            ("label-store arrays", store, "probs.npy", student),
            ("label-store indices", store, "indices.npy", student),
            ("label-store manifest", store, "manifest.json", student),
            ("audit.csv", refs["audit"][1], "audit.csv", lambda d: ["relabel", d / "audit.csv", "--top", "5", "--out", d / "fixes.csv"]),
        ]  # fmt: skip
        for name, source, rel, reader in cases:
            for k in range(1 if self.quick else 3):
                self._corrupt_one(name, source, rel, reader, k)

    def _stopped_run(self, folder: Path) -> bool:
        """A train run killed after its first resume state was written (the "resume state" case)."""
        proc = start(*[str(a).replace("OUT", str(folder)) for a in TRAIN + ["--out", "OUT"]])
        while proc.poll() is None and not (folder / "state.safetensors").is_file():
            time.sleep(0.05)
        if proc.poll() is None:
            time.sleep(0.2)  # let the atomic write finish
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return (folder / "state.safetensors").is_file() and not (folder / "model.safetensors").is_file()

    def _corrupt_one(self, name: str, source: Path | None, rel: str, reader, k: int) -> None:
        """The reader on a pristine copy and on a damaged one: refused in one line, or the same result."""
        tag = name.replace(" ", "-").replace(".", "-")
        clean, copy = self.fresh(f"clean-{tag}-{k}"), self.fresh(f"corrupt-{tag}-{k}")
        for folder in (clean, copy):
            if source is None:
                if not self._stopped_run(folder):
                    self.record("corrupt", f"{name}: skipped, the run finished before its first save", True)
                    return
            else:
                shutil.copytree(source, folder, ignore=shutil.ignore_patterns("student", "fixes.csv", "report*"))
            if name == "weights without meta.json":
                (folder / "gen1" / "meta.json").unlink()
        target = copy / rel
        data = bytearray(target.read_bytes())
        n = self.rng.randint(1, 4)
        for _ in range(n):
            data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        target.write_bytes(bytes(data))
        base, p = lr(*reader(clean)), lr(*reader(copy))
        if base.returncode:
            self.record("corrupt", f"{name}: the pristine copy failed too", False, base.stderr[-300:])
            return
        self.record("corrupt", f"{name} ({n} bytes)", *self._judge(p, base, copy, clean))

    @staticmethod
    def _judge(p, base, copy: Path, clean: Path) -> tuple[bool, str]:
        if "Traceback" in p.stderr:
            return False, "a traceback: " + p.stderr.strip().splitlines()[-1][:300]
        if p.returncode == 2:
            return one_clear_line(p), p.stderr.strip()[:200]
        if p.returncode:
            return False, f"exit {p.returncode}: {p.stderr[-300:]}"
        same_out = p.stdout.replace(str(copy), "DIR") == base.stdout.replace(str(clean), "DIR")
        weights = sorted(x.relative_to(clean) for x in clean.rglob("model.safetensors"))
        same = same_out and all(same_tree(copy, clean, (str(w),)) for w in weights)
        return same, "accepted, same result" if same else "SILENTLY TRUSTED: another result"

    def table(self) -> str:
        lines = ["| kind | cases | held | broken |", "|---|---:|---:|---:|"]
        for kind, rows in self.results.items():
            held = sum(ok for _, ok in rows)
            lines.append(f"| {kind} | {len(rows)} | {held} | {len(rows) - held} |")
        broken = [f"- {kind}: {case}" for kind, rows in self.results.items() for case, ok in rows if not ok]
        return "\n".join(lines + ([""] + broken if broken else []))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=3, help="random kill points per command [default: 3]")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill points and corrupted bytes")
    p.add_argument("--quick", action="store_true", help="one case of each kind")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it [default: a temporary one]")
    a = p.parse_args()
    root = a.keep or Path(tempfile.mkdtemp(prefix="faults-"))
    root.mkdir(parents=True, exist_ok=True)
    suite = Suite(root, random.Random(a.seed), a.quick)
    start_s = time.perf_counter()
    try:
        refs = suite.references()
        suite.kills(refs, a.kills)
        suite.race(refs)
        suite.disk(refs)
        suite.corrupt(refs)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{suite.table()}\n\n({time.perf_counter() - start_s:.0f} s)")
    return int(any(not ok for rows in suite.results.values() for _, ok in rows))


if __name__ == "__main__":
    sys.exit(main())
