"""One writer per folder, nothing clobbered (issue 28): the folder lock, what makes a folder ours,
file outputs, and files that appear together. Real processes hold the locks here; the commands that
use them are tested in training/test_one_writer.py, labels/test_store.py and tools/test_outputs.py."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import label_refinery.files as files
from label_refinery import UserError
from label_refinery.files import together, write_json
from label_refinery.locks import LOCK, claim, claim_file, kinds_of
from tests.harness import holding

FIXTURE = Path(__file__).parent / "fixtures" / "run-v0.1"  # a chain written before the lock file existed

def test_a_second_writer_is_refused_naming_the_first_and_a_kill_releases_it(tmp_path):
    out = tmp_path / "run"
    with holding(out, "chain") as holder:
        start = time.monotonic()
        with pytest.raises(UserError) as err:
            with claim(out, "chain"):
                pass
        assert time.monotonic() - start < 2  # at once, not after a wait
        message = str(err.value)
        assert f"is being written by another label-refinery command (PID {holder.pid}: " in message
        assert f": -c {out} chain)" in message and "\n" not in message  # its command line (python -c), one line
        assert message.endswith("wait for it to finish (or stop it), or write elsewhere (another --out)")
        record = json.loads((out / LOCK).read_text())
        assert record["pid"] == holder.pid and record["kinds"] == ["chain"]
    # SIGKILLed: the kernel released the lock with the process, and the folder is ours to take now
    with claim(out, "chain"):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()


def test_claims_nest_in_one_process_and_a_refusal_leaves_no_trace(tmp_path):
    out = tmp_path / "new" / "run"
    with claim(out, "chain"):
        with claim(out, "chain"):  # re-entrant: a chain holds its folder while its parts claim it
            (out / "config.yaml").write_text("seed: 0\n")
        with claim(out / "gen1", "generation"):
            pass
    assert sorted(p.name for p in out.iterdir()) == [LOCK, "config.yaml"]  # gen1 held nothing: removed
    with pytest.raises(UserError, match="no such model"):
        with claim(tmp_path / "never" / "written", "generation"):
            raise UserError("no such model")  # e.g. a config refused after the claim
    assert not (tmp_path / "never").exists()  # the folders it created are gone


def test_what_makes_a_folder_ours(tmp_path):
    old = tmp_path / "run-v0.1"
    shutil.copytree(FIXTURE, old)
    assert kinds_of(old) == {"chain"} and kinds_of(old / "gen1") == {"generation"}
    assert kinds_of(old / "gen2") == {"generation"}  # unfinished: config.yaml and a state
    assert kinds_of(old / "gen2" / "labels") == {"store"}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own\n")  # a config.yaml alone is anybody's
    (mine / "summary.md").write_text("my notes\n")
    assert kinds_of(mine) == set()
    with pytest.raises(UserError) as err:
        with claim(mine, "chain"):
            pass
    message = str(err.value)
    assert "is not empty and is not a label-refinery chain folder (it holds config.yaml, summary.md)" in message
    assert "pass another --out, or --force" in message
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "summary.md"]  # nothing written
    with claim(mine, "chain", force=True):
        pass
    assert kinds_of(mine) == {"chain"}  # from now on it is one of ours (the lock file says so)
    with pytest.raises(UserError, match="is a label-refinery generation folder, not a chain"):
        with claim(old / "gen1", "chain"):
            pass
    for n in range(5):
        (tmp_path / "many" / f"{'x' * 200}{n}").mkdir(parents=True)
    with pytest.raises(UserError, match=r"\.\.\. and 2 more\): pass") as err:
        with claim(tmp_path / "many", "store"):
            pass
    assert len(str(err.value)) < 600  # long names are cut short
    (tmp_path / "empty").mkdir()
    with claim(tmp_path / "empty", "store"):  # an empty folder is anybody's to fill
        pass


def test_an_existing_output_file_is_replaced_only_with_force(tmp_path):
    out = tmp_path / "fixes.csv"
    out.write_text("index,label\n1,cat\n")  # fixes edited by hand
    with pytest.raises(UserError, match=r"fixes.csv exists: pass --force to replace it, or another --out"):
        with claim_file(out):
            pass
    assert out.read_text() == "index,label\n1,cat\n"
    with claim_file(out, force=True):
        out.write_text("index,label\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixes.csv"]  # the lock beside it is gone
    with holding(tmp_path / "labels.csv", "file") as holder:
        with pytest.raises(UserError, match=rf"labels.csv is being written by another label-refinery command \(PID {holder.pid}: "):
            with claim_file(tmp_path / "labels.csv", force=True):
                pass
    with claim_file(tmp_path / "labels.csv"):  # released with the process
        pass


def test_files_that_belong_together_appear_together(tmp_path, monkeypatch):
    out = tmp_path / "audit"
    out.mkdir()
    with together(out) as stage:
        write_json(stage / "a.json", 1)
        (stage / "b.html").write_text("one")
        assert not (out / "a.json").exists()  # not before the block ends
    assert (out / "a.json").read_text() == "1\n" and (out / "b.html").read_text() == "one"

    with pytest.raises(RuntimeError):  # a failure while writing: the previous pair stays, nothing half new
        with together(out) as stage:
            write_json(stage / "a.json", 2)
            raise RuntimeError("the HTML could not be made")
    assert (out / "a.json").read_text() == "1\n" and (out / "b.html").read_text() == "one"

    real, moves = os.replace, []

    def killed_after_one(src, dst):  # the process dies between the two renames into the folder
        if Path(dst).parent == out:
            if moves:
                raise KeyboardInterrupt
            moves.append(dst)
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        with together(out) as stage:
            write_json(stage / "a.json", 3)
            (stage / "b.html").write_text("three")
    monkeypatch.setattr(files.os, "replace", real)
    assert (out / "a.json").read_text() == "3\n" and (out / "b.html").read_text() == "one"  # mixed, for now
    files.finish_staged(out)  # what the next writer of the folder does first
    assert (out / "a.json").read_text() == "3\n" and (out / "b.html").read_text() == "three"
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.html"]
    stale = out / ".staging-dead"  # a writer killed while writing: its part is thrown away
    stale.mkdir()
    (stale / "a.json").write_text("half")
    with together(out):
        pass
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.html"] and (out / "a.json").read_text() == "3\n"


def test_a_forked_worker_does_not_keep_the_lock(tmp_path):
    """A DataLoader worker forked while a folder is held closes its copy of the lock: the folder is
    free once the command ends, not once its last worker does."""
    out = tmp_path / "run"
    release, hold = os.pipe()
    with claim(out, "chain"):
        child = os.fork()
        if child == 0:  # the worker: outlives the claim, until the parent closes the pipe
            os.close(hold)
            os.read(release, 1)
            os._exit(0)
    os.close(release)
    try:
        with holding(out, "chain") as other:  # another process takes it while the worker still runs
            assert json.loads((out / LOCK).read_text())["pid"] == other.pid
        assert os.waitpid(child, os.WNOHANG) == (0, 0)  # the worker was alive throughout
    finally:
        os.close(hold)
        os.waitpid(child, 0)
