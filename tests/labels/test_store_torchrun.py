"""A label store baked by 2 gloo processes under torchrun on CPU: byte for byte the one-process store,
and resumed after a SIGKILL by 2 processes or by 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"  # tests/scripts
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*argv, nproc: int = 1, timeout: int = 300) -> str:
    """Run ``label-refinery ARGV`` (or a script) in ``nproc`` processes; returns stdout + stderr."""
    argv = [str(a) for a in argv]
    target = argv if argv[0].endswith(".py") else ["-m", "label_refinery", *argv]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
    proc = subprocess.run(launcher + target, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_two_process_bake_equals_one_process_byte_for_byte_and_resumes_after_sigkill(tmp_path):
    script = SCRIPTS / "ddp_bake.py"
    run(script, tmp_path / "one")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    killed = subprocess.run([*launcher, str(script), str(tmp_path / "two"), "--kill-after", "20"], env=ENV,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode != 0 and not (tmp_path / "two/manifest.json").exists()
    progress = json.loads((tmp_path / "two/progress.rank1of2.json").read_text())
    assert (progress["epoch"], progress["batch"]) != (0, 0)  # rank 1 got somewhere before it died
    shutil.copytree(tmp_path / "two", tmp_path / "three")  # resumed below by one process instead of two
    log = run(script, tmp_path / "two", nproc=2)  # the same command again: each rank resumes its share
    manifest = json.loads((tmp_path / "two/manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["shape"] == [3, 1438, 5], log
    for name in ("indices", "probs", "ids"):
        one, two = (tmp_path / "one" / f"{name}.npy").read_bytes(), (tmp_path / "two" / f"{name}.npy").read_bytes()
        assert one == two, name
    run(script, tmp_path / "three")  # another number of processes: from the first epoch some rank had not finished
    for name in ("indices", "probs"):
        assert (tmp_path / "one" / f"{name}.npy").read_bytes() == (tmp_path / "three" / f"{name}.npy").read_bytes()
    ref = json.loads((tmp_path / "one/manifest.json").read_text())
    assert ref["crop_digests"] == manifest["crop_digests"] and ref["processes"] == 1
