"""One writer per run folder, nothing clobbered, nothing finished trusted blindly (issue 28): two
chains on one folder, a user's folder given as --out, and a finished generation that was corrupted
or mixed with another run's files."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from label_refinery import UserError, load_config, run_chain, train_generation
from label_refinery.checkpoint import load_checkpoint, save_final
from label_refinery.cli import main
from label_refinery.locks import LOCK, kinds_of
from tests.harness import quiet, start

FAST = {"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64, "device": "cpu"}
CLI = ["--dataset", "digits", "--batch-size", "64", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def chain2(tmp_path_factory):
    """A finished 2-generation chain (1 epoch each); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("one-writer") / "chain"
    run_chain(load_config(overrides={**FAST, "chain.generations": 2}), out, log=quiet)
    return out


def copy(chain2, tmp_path):
    out = tmp_path / "chain"
    shutil.copytree(chain2, out)
    return out


def test_two_chains_on_one_folder_the_second_refuses_and_the_first_is_intact(tmp_path, capsys):
    out = tmp_path / "chain"
    first = start("chain", *CLI, "--epochs", "3", "--generations", "1", "--out", out)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:  # until the first one holds the folder
            try:
                if json.loads((out / LOCK).read_text()).get("pid") == first.pid:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        assert first.poll() is None, first.communicate()[0]
        began = time.monotonic()
        assert main(["chain", *CLI, "--epochs", "3", "--generations", "1", "--seed", "7", "--out", str(out)]) == 2
        assert time.monotonic() - began < 20  # refused at once (what it took: the config check), no training
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {out} is being written by another label-refinery command")
        assert f"(PID {first.pid}: label-refinery chain " in err[0] and f"--out {out}" in err[0]
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    meta = json.loads((out / "gen1/meta.json").read_text())
    assert meta["config"]["seed"] == 0  # the first command's run, not a mix of both
    lines = [json.loads(x) for x in (out / "gen1/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    # and the finished folder now takes the same command as a skip
    assert main(["chain", *CLI, "--epochs", "3", "--generations", "1", "--out", str(out)]) == 0
    assert "generation 1: finished earlier, skipping" in capsys.readouterr().out


def test_a_folder_that_is_not_a_run_is_refused_unless_forced(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own config\n")
    (mine / "summary.md").write_text("my own notes\n")
    args = ["chain", *CLI, "--epochs", "1", "--generations", "1", "--out", str(mine)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "is not empty and is not a label-refinery chain folder (it holds config.yaml, summary.md)" in err
    assert "pass another --out, or --force" in err and "\n" not in err
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "summary.md"]  # untouched
    assert (mine / "summary.md").read_text() == "my own notes\n"
    assert main(args + ["--force"]) == 0  # asked for: written into it
    assert kinds_of(mine) == {"chain"} and (mine / "gen1/meta.json").is_file()
    assert main(args) == 0  # ours now: the same command resumes (a skip) without --force
    # train into a chain's folder: ours, but not a generation's
    assert main(["train", *CLI, "--epochs", "1", "--out", str(mine)]) == 2
    assert "is a label-refinery chain folder, not a generation" in capsys.readouterr().err


def test_resume_refuses_a_corrupt_finished_generation_by_name(chain2, tmp_path):
    out = copy(chain2, tmp_path)
    weights = out / "gen1/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the weights: they still load
    weights.write_bytes(bytes(data))
    cfg = load_config(overrides={**FAST, "chain.generations": 2})
    with pytest.raises(UserError) as err:
        run_chain(cfg, out, log=quiet)
    message = str(err.value)
    assert message.startswith(f"{out / 'gen1'}: model.safetensors is not the file meta.json recorded (SHA-256 differs)")
    assert f"delete {out / 'gen1'} and the generations after it to retrain" in message  # gen1 is blamed, not gen2
    assert (out / "gen2/meta.json").read_bytes() == (chain2 / "gen2/meta.json").read_bytes()
    # trained alone (not in a chain), the fix names the folder only
    with pytest.raises(UserError, match=r"gen1: model.safetensors is not the file .*delete \S+gen1 to retrain$"):
        train_generation(load_config(overrides=FAST), out / "gen1", generation=2, log=quiet)
    (out / "gen1/model.safetensors").unlink()
    with pytest.raises(UserError, match=r"gen1 is finished \(meta.json\) but its model.safetensors is missing"):
        run_chain(cfg, out, log=quiet)


def test_resume_refuses_a_generation_finished_by_another_run(chain2, tmp_path):
    """A folder mixed by two runs (the config.yaml of one, the weights and meta.json of the other):
    the config recorded in meta.json is checked, not only the folder's config.yaml."""
    out = copy(chain2, tmp_path)
    meta = json.loads((out / "gen1/meta.json").read_text())
    meta["config"]["seed"] = 7  # as if the seed-7 chain had finished generation 1 here: weights and meta.json
    model = load_checkpoint(out / "gen1").build_model()
    save_final(out / "gen1", model, {k: v for k, v in meta.items() if k not in ("sha256", "format")})
    with pytest.raises(UserError) as err:
        run_chain(load_config(overrides={**FAST, "chain.generations": 2}), out, log=quiet)
    message = str(err.value)
    assert message.startswith(f"{out / 'gen1'} was finished with another config (seed: 7 there, 0 now; recorded in its meta.json)")
    assert f"delete {out / 'gen1'} and the generations after it" in message
