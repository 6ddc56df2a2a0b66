"""A label store baked by 2 gloo processes under torchrun on CPU: byte for byte the one-process store,
and resumed after a SIGKILL by 2 processes or by 1."""

from __future__ import annotations

import json
import shutil

from tests.harness import SCRIPTS, assert_same_arrays, launch, run


def test_two_process_bake_equals_one_process_byte_for_byte_and_resumes_after_sigkill(tmp_path):
    script = SCRIPTS / "ddp_bake.py"
    run(script, tmp_path / "one")
    killed = launch(script, tmp_path / "two", "--kill-after", "20", nproc=2)  # rank 1 SIGKILLs itself
    assert killed.returncode != 0 and not (tmp_path / "two/manifest.json").exists()
    progress = json.loads((tmp_path / "two/progress.rank1of2.json").read_text())
    assert (progress["epoch"], progress["batch"]) != (0, 0)  # rank 1 got somewhere before it died
    shutil.copytree(tmp_path / "two", tmp_path / "three")  # resumed below by one process instead of two
    log = run(script, tmp_path / "two", nproc=2)  # the same command again: each rank resumes its share
    manifest = json.loads((tmp_path / "two/manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["shape"] == [3, 1438, 5], log
    assert_same_arrays(tmp_path / "one", tmp_path / "two", ("indices", "probs", "ids"), byte_for_byte=True)
    run(script, tmp_path / "three")  # another number of processes: from the first epoch some rank had not finished
    assert_same_arrays(tmp_path / "one", tmp_path / "three", ("indices", "probs"), byte_for_byte=True)
    ref = json.loads((tmp_path / "one/manifest.json").read_text())
    assert ref["crop_digests"] == manifest["crop_digests"] and ref["processes"] == 1
