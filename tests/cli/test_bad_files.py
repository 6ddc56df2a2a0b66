"""Damaged artefacts and bad input files through the CLI (issue 28, goals 3 and 4): each is refused
with exit status 2 and one ``error: ...`` line naming the file (and its line, key, epoch or row);
none trains, reports or loads silently, none prints a traceback or an unbounded value."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from label_refinery.cli import main
from tests.cli.test_cli_errors import assert_user_error, run_cli

DIGITS = ["--dataset", "digits", "--train-subset", "300", "--epochs", "1", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """A finished 2-generation chain on 300 digits (a few seconds)."""
    out = tmp_path_factory.mktemp("chain") / "run"
    assert main(["chain", *DIGITS, "--generations", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(chain, tmp_path) -> Path:
    """A copy of the chain to damage."""
    shutil.copytree(chain, tmp_path / "run")
    return tmp_path / "run"


def _one_line(err: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err


# ---- config files ----


@pytest.mark.parametrize(
    "yaml_text, phrase",
    [
        ("optim:\n  epochs: .inf\n", "config key optim.epochs: expected an integer, got inf"),
        ("optim:\n  epochs: true\n", "config key optim.epochs: expected an integer, got True (true/false is not a number)"),
        ("loss:\n  temperature: .inf\n", "config key loss.temperature: expected a finite number, got inf"),
        ("refinery:\n  temperature: .nan\n", "config key refinery.temperature: expected a finite number, got nan"),
        ("data:\n  crop_ratio: [0.5, .inf]\n", "config key data.crop_ratio: expected a finite number, got inf"),
        ("optim:\n  lr: true\n", "config key optim.lr: expected a number, got True"),
    ],
    ids=["inf-epochs", "bool-epochs", "inf-temperature", "nan-refinery-temperature", "inf-crop-ratio", "bool-lr"],
)
def test_bad_numbers_in_a_config(capsys, tmp_path, yaml_text, phrase):
    (tmp_path / "c.yaml").write_text(yaml_text)
    code, err = run_cli(capsys, "train", "--dataset", "digits", "--config", tmp_path / "c.yaml", "--out", tmp_path / "r",
                        "--no-progress")  # fmt: skip
    assert_user_error(code, err, phrase)
    assert not (tmp_path / "r").exists()


def test_a_config_of_aliases_gives_a_short_error(capsys, tmp_path):
    """207 bytes of YAML whose value's repr has 3 MB (9**6 leaves; issue 28 saw a 580 MB line)."""
    levels = ["&a [x,x,x,x,x,x,x,x,x]"] + [f"&{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(5)]
    (tmp_path / "bomb.yaml").write_text("optim:\n  epochs: [" + ", ".join(levels) + "]\n")
    code, err = run_cli(capsys, "train", "--dataset", "digits", "--config", tmp_path / "bomb.yaml", "--out", tmp_path / "r")
    assert_user_error(code, err, "config key optim.epochs: expected an integer, got [[")
    assert len(err) < 300, len(err)


# ---- label overrides ----


@pytest.mark.parametrize(
    "data, phrase",
    [
        ("index,label\n0,caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 2)"),
        (bytes(range(256)) * 4, "is a binary file, not text"),
        (b"index,label\n", "hold a header and no rows: nothing to override"),
        (b"index,label\n0," + b"x" * 200 * 1024 + b"\n", "line 2: a field is longer than 128 KiB"),
        ("index,label\n0,\u00b2\n".encode(), "line 2: unknown class '²'"),
        (b"index,label\n\xef\xbc\x93,1\n", "line 2: index must be a non-negative integer, got '３'"),
    ],
    ids=["latin-1", "binary", "header-only", "big-field", "superscript-two", "fullwidth-digit"],
)
def test_bad_label_overrides(capsys, tmp_path, data, phrase):
    (tmp_path / "fixes.csv").write_bytes(data)
    code, err = run_cli(capsys, "train", *DIGITS, "--label-overrides", tmp_path / "fixes.csv", "--out", tmp_path / "r")
    assert_user_error(code, err, str(tmp_path / "fixes.csv"), phrase)
    _one_line(err)
    assert len(err) < 400 and not (tmp_path / "r/model.safetensors").exists()


def test_overrides_saved_by_a_spreadsheet_train(capsys, tmp_path):
    """A byte-order mark and CRLF line ends, as spreadsheets save CSV (refused as '\\ufeffindex' before)."""
    from label_refinery.data import load_dataset

    first = int(load_dataset("digits", train_subset=300).train.ids[0])
    (tmp_path / "fixes.csv").write_bytes(f"\ufeffindex,label\r\n{first},3\r\n".encode())
    assert main(["train", *DIGITS, "--label-overrides", str(tmp_path / "fixes.csv"), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r/label-overrides.csv").read_text().splitlines()[1].startswith(f"{first},")


# ---- checkpoints and their meta.json ----


@pytest.mark.parametrize("command", ["evaluate", "report", "audit", "chain"])
def test_truncated_meta_json(capsys, run, command):
    meta = run / "gen1/meta.json"
    meta.write_text(meta.read_text()[:100])
    argv = {"evaluate": ["evaluate", run / "gen1", "--device", "cpu"], "report": ["report", run],
            "audit": ["audit", run, "--device", "cpu", "--no-progress"],
            "chain": ["chain", *DIGITS, "--generations", "2", "--out", run]}[command]  # fmt: skip
    code, err = run_cli(capsys, *argv)
    assert_user_error(code, err, f"generation metadata {meta} is not valid JSON (truncated?)", "restore it")
    _one_line(err)


def test_edited_metrics_are_never_reported(capsys, run):
    meta = run / "gen1/meta.json"
    values = json.loads(meta.read_text())
    values["metrics"]["test_top1"] = 99.9
    meta.write_text(json.dumps(values))
    summary = (run / "summary.md").read_text()
    for argv in (["report", run], ["chain", *DIGITS, "--generations", "2", "--out", run]):
        code, err = run_cli(capsys, *argv)
        assert_user_error(code, err, f"{meta} does not match the metadata in the header of {run / 'gen1/model.safetensors'}",
                          "differ in ['metrics']")  # fmt: skip
        _one_line(err)
    assert not (run / "report.md").exists() and (run / "summary.md").read_text() == summary and "99.9" not in summary


def test_corrupt_weights_copied_without_meta_json(capsys, run, tmp_path):
    lone = tmp_path / "lone" / "model.safetensors"
    lone.parent.mkdir()
    data = bytearray((run / "gen1/model.safetensors").read_bytes())
    data[-200] ^= 0x40  # a byte of the last tensor
    lone.write_bytes(bytes(data))
    code, err = run_cli(capsys, "evaluate", lone, "--device", "cpu")
    assert_user_error(code, err, f"{lone} is corrupt: its tensors do not match the SHA-256 in its header")
    code, err = run_cli(capsys, "train", *DIGITS, "--refinery", lone.parent, "--out", tmp_path / "student")
    assert_user_error(code, err, f"{lone} is corrupt")
    assert not (tmp_path / "student/model.safetensors").exists()


# ---- label stores ----


def test_an_edited_label_store_does_not_train(capsys, run, tmp_path):
    store, gen1 = tmp_path / "store", run / "gen1"
    assert main(["bake", "--refinery", str(gen1), *DIGITS[:-3], "--epochs", "2", "--seed", "1", "--out", str(store),
                 "--no-progress"]) == 0  # fmt: skip
    train = ["train", *DIGITS[:-3], "--labels", store, "--no-progress"]  # the crops of the store's seed
    probs = np.load(store / "probs.npy", mmap_mode="r+")
    probs[1, 0, 0] = probs[1, 0, 1]  # epoch 1: one probability moved
    probs.flush()
    code, err = run_cli(capsys, *train, "--epochs", "2", "--out", tmp_path / "s2")
    assert_user_error(code, err, f"label store array {store / 'probs.npy'}, epoch 1, does not match its digest")
    assert not (tmp_path / "s2/model.safetensors").exists()
    code, err = run_cli(capsys, *train, "--epochs", "1", "--out", tmp_path / "s1")
    assert code == 0, err  # epoch 0 is intact


# ---- label-refinery verify ----


def test_verify_checks_every_artefact_and_names_the_bad_one(capsys, run):
    assert main(["verify", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.count("checkpoint ") == 2 and "2 artefact(s) checked, none failed" in out
    weights = run / "gen2/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-9] ^= 1
    weights.write_bytes(bytes(data))
    code = main(["verify", str(run)])
    out, err = capsys.readouterr()
    assert_user_error(code, err, "1 of 2 artefacts failed their check", f"{weights} is corrupt")
    assert f"checkpoint {run / 'gen1/model.safetensors'}: ok" in out and f"FAILED: {weights} is corrupt" in out


def test_verify_reads_every_epoch_of_a_label_store(capsys, run, tmp_path):
    store = tmp_path / "store"
    assert main(["bake", "--refinery", str(run / "gen1"), *DIGITS[:-3], "--epochs", "3", "--out", str(store), "--no-progress"]) == 0
    assert main(["verify", str(store)]) == 0 and "3 epoch(s) x 300 images against the manifest's digests" in capsys.readouterr().out
    indices = np.load(store / "indices.npy", mmap_mode="r+")
    indices[2, 7, 0] = indices[2, 7, 1]  # the last epoch, which a shorter run would never read
    indices.flush()
    code, err = run_cli(capsys, "verify", store)
    assert_user_error(code, err, f"label store array {store / 'indices.npy'}, epoch 2, does not match its digest")


# ---- image folders ----


@pytest.mark.parametrize("case", ["dangling", "loop", "not-utf8"])
def test_image_folder_with_a_bad_file_name(capsys, three_class_folder, tmp_path, case):
    folder = three_class_folder / "train" / "a"
    if case == "dangling":
        os.symlink(folder / "gone.png", folder / "x.png")
        phrase = f"cannot read {folder / 'x.png'} (a symbolic link whose target is missing or loops)"
    elif case == "loop":
        os.symlink(folder / "y.png", folder / "z.png")
        os.symlink(folder / "z.png", folder / "y.png")
        phrase = "(a symbolic link whose target is missing or loops): Too many levels of symbolic links"
    else:
        with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as f:
            f.write((folder / "0.png").read_bytes())
        phrase = "the name b'a/caf\\xe9.png' is not UTF-8; rename it"
    code, err = run_cli(capsys, "train", "--dataset", f"imagefolder:{three_class_folder}", "--image-size", "8",
                        "--epochs", "1", "--device", "cpu", "--out", tmp_path / "r", "--no-progress")  # fmt: skip
    assert_user_error(code, err, phrase)
    _one_line(err)


# ---- names in what we write ----


def test_report_escapes_names_as_markdown(capsys, chain, tmp_path):
    run = tmp_path / "a|b *c* <i>"
    shutil.copytree(chain, run)
    assert main(["report", str(run)]) == 0
    title = (run / "report.md").read_text().splitlines()[0]
    assert title == "# Label Refinery report: a\\|b \\*c\\* \\<i\\>"
