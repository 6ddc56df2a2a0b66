"""Bad input through the CLI: exit status 2 and one ``error: ...`` line that names the problem and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from label_refinery.cli import main
from label_refinery.data import fashion_mnist
from tests.harness import launch


def run_cli(capsys, *argv) -> tuple[int, str]:
    """Exit status and stderr of ``label-refinery ARGV``."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def assert_user_error(code: int, err: str, *phrases: str) -> None:
    assert code == 2, err
    assert err.startswith("error: "), err
    for phrase in phrases:
        assert phrase in err, f"{phrase!r} not in {err!r}"


def train_args(out: Path, *extra) -> list:
    return ["train", "--out", out, "--no-progress", *extra]


@pytest.fixture(scope="module")
def digits_gen(tmp_path_factory) -> Path:
    """A finished 1-epoch generation on digits (about a second)."""
    out = tmp_path_factory.mktemp("digits") / "gen1"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert (out / "meta.json").is_file()
    return out


# ---- registries ----


@pytest.mark.parametrize("command", ["train", "chain"])
def test_unknown_dataset_lists_valid_names(capsys, tmp_path, command):
    out = tmp_path / "run"
    code, err = run_cli(capsys, command, "--dataset", "nope", "--epochs", "1", "--out", out, "--no-progress")
    assert_user_error(code, err, "unknown dataset 'nope'", "digits", "fashion-mnist", "imagefolder:PATH")
    assert not out.exists()


def test_unknown_model_lists_valid_names(capsys, tmp_path):
    out = tmp_path / "run"
    code, err = run_cli(capsys, *train_args(out, "--dataset", "digits", "--epochs", "1", "--model", "nope"))
    assert_user_error(code, err, "unknown model 'nope'", "cnn-small", "resnet-cifar")
    assert not out.exists()  # refused before a run folder is created


def test_unknown_model_in_chain_models(capsys, tmp_path):
    out = tmp_path / "chain"
    code, err = run_cli(
        capsys, "chain", "--dataset", "digits", "--epochs", "1", "--generations", "2",
        "--models", "cnn-small", "nope", "--out", out, "--no-progress",
    )
    assert_user_error(code, err, "unknown model 'nope'", "cnn-small")
    assert not out.exists()


# ---- config ----


def test_unknown_key_via_set(capsys, tmp_path):
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--dataset", "digits", "--set", "optim.nope=1"))
    assert_user_error(code, err, "unknown config key optim.nope", "valid keys", "optim.lr", "data.crop_scale")


@pytest.mark.parametrize(
    "text, key",
    [("optim:\n  lr: 0.1\n  nope: 1\n", "optim.nope"), ("colour: red\n", "colour")],
    ids=["nested", "top-level"],
)
def test_unknown_key_in_yaml(capsys, tmp_path, text, key):
    path = tmp_path / "my.yaml"
    path.write_text(text)
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--dataset", "digits", "--config", path))
    assert_user_error(code, err, f"unknown config key {key}", "valid keys", "optim.lr")


def test_missing_config_file(capsys, tmp_path):
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--config", tmp_path / "none.yaml"))
    assert_user_error(code, err, "none.yaml does not exist")


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--crop-scale", "0.9", "0.1"], "data.crop_scale must satisfy 0 < low <= high <= 1"),
        (["--set", "optim.lr=abc"], "optim.lr: expected a number"),
        (["--set", "optim.lr"], "--set takes KEY=VALUE"),
        (["--epochs", "0"], "optim.epochs must be >= 1"),
    ],
    ids=["crop-scale", "not-a-number", "set-without-equals", "zero-epochs"],
)
def test_invalid_values(capsys, tmp_path, flags, phrase):
    out = tmp_path / "run"
    code, err = run_cli(capsys, *train_args(out, "--dataset", "digits", *flags))
    assert_user_error(code, err, phrase)
    assert not out.exists()


# ---- data ----


def test_fashion_mnist_not_found_says_how_to_get_it(capsys, tmp_path, monkeypatch):
    downloads = []
    monkeypatch.setattr(fashion_mnist, "_torchvision_download", lambda: downloads.append(1))  # returns None
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "no-debian-dir"))
    monkeypatch.setattr(fashion_mnist, "CACHE_DIR", tmp_path / "no-cache")
    monkeypatch.delenv("LABEL_REFINERY_DATA", raising=False)
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--dataset", "fashion-mnist", "--epochs", "1"))
    assert_user_error(code, err, "Fashion-MNIST was not found", "apt-get install dataset-fashion-mnist", "--data-dir", "no-debian-dir")
    assert downloads == [1]  # the download was tried last
    assert not (tmp_path / "run").exists()


def test_empty_data_dir_is_not_silently_replaced(capsys, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    downloads = []
    monkeypatch.setattr(fashion_mnist, "_torchvision_download", lambda: downloads.append(1))
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--dataset", "fashion-mnist", "--data-dir", empty, "--epochs", "1"))
    assert_user_error(code, err, f"--data-dir {empty} does not hold the four Fashion-MNIST files", "apt-get install")
    assert downloads == []  # an explicit --data-dir is the only place looked at


def test_data_dir_that_does_not_exist(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "_torchvision_download", lambda: None)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "no-debian-dir"))
    monkeypatch.delenv("LABEL_REFINERY_DATA", raising=False)
    missing = tmp_path / "missing"
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--dataset", "fashion-mnist", "--data-dir", missing))
    assert_user_error(code, err, f"--data-dir {missing} does not exist", "apt-get install dataset-fashion-mnist")


def test_imagefolder_missing_root(capsys, tmp_path):
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--dataset", f"imagefolder:{tmp_path / 'nowhere'}"))
    assert_user_error(code, err, "nowhere does not exist")


# ---- checkpoints ----


def test_evaluate_text_file(capsys, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a model\n")
    code, err = run_cli(capsys, "evaluate", path)
    assert_user_error(code, err, "is not a label-refinery checkpoint", ".safetensors")


def test_evaluate_pickled_torch_file(capsys, tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    code, err = run_cli(capsys, "evaluate", path)
    assert_user_error(code, err, "is not a label-refinery checkpoint", "pickled .pt/.pth files are never loaded")


def test_evaluate_foreign_safetensors(capsys, tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    code, err = run_cli(capsys, "evaluate", path)
    assert_user_error(code, err, "is a safetensors file but not a label-refinery checkpoint", "--pretrained")


def test_evaluate_corrupt_safetensors(capsys, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    code, err = run_cli(capsys, "evaluate", path)
    assert_user_error(code, err, "is corrupt or not a safetensors file")


def test_evaluate_missing_checkpoint(capsys, tmp_path):
    (tmp_path / "empty-run").mkdir()
    code, err = run_cli(capsys, "evaluate", tmp_path / "empty-run")
    assert_user_error(code, err, "model.safetensors does not exist")


def test_evaluate_on_a_dataset_with_other_classes(capsys, digits_gen, three_class_folder):
    code, err = run_cli(capsys, "evaluate", digits_gen, "--dataset", f"imagefolder:{three_class_folder}")
    assert_user_error(code, err, "was trained on other classes")


def test_refinery_with_other_class_count(capsys, tmp_path, digits_gen, three_class_folder):
    out = tmp_path / "student"
    code, err = run_cli(
        capsys, *train_args(out, "--dataset", f"imagefolder:{three_class_folder}", "--image-size", "8",
                            "--epochs", "1", "--batch-size", "2", "--refinery", digits_gen),
    )
    assert_user_error(code, err, "predicts 10 classes but the dataset has 3", "use a refinery trained on the same classes")
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_refinery_with_other_input_channels(capsys, tmp_path, digits_gen, command):
    root = tmp_path / "ten"  # the digits' class names '0'..'9', but RGB images
    for split in ("train", "val"):
        for c in range(10):
            (root / split / str(c)).mkdir(parents=True)
            Image.new("RGB", (10, 10), (c * 20, 0, 0)).save(root / split / str(c) / "0.png")
    if command == "train":
        argv = train_args(tmp_path / "student", "--dataset", f"imagefolder:{root}", "--image-size", "8",
                          "--epochs", "1", "--batch-size", "4", "--refinery", digits_gen)
    else:
        argv = ["evaluate", digits_gen, "--dataset", f"imagefolder:{root}"]
    code, err = run_cli(capsys, *argv)
    assert_user_error(code, err, "channel")


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--schedule", "bogus", "--no-progress"])
    assert exc.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_help_teaches_with_examples(capsys):
    for command in ("chain", "train", "evaluate"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"label-refinery {command}" in out


def test_python_dash_m_entry_point():
    done = launch("--help", timeout=120)  # python -m label_refinery --help
    assert done.returncode == 0 and "chain" in done.stdout and "Label Refinery" in done.stdout


def test_unknown_device(capsys, tmp_path):
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--dataset", "digits", "--epochs", "1", "--device", "tpu9"))
    assert_user_error(code, err, "unknown device 'tpu9'")


def test_refinery_trained_at_another_image_size(capsys, tmp_path, digits_gen):
    """Issue 13: the refinery would see 12-px views after training on 8-px ones; refused with both sizes and the fix."""
    out = tmp_path / "student"
    code, err = run_cli(capsys, *train_args(out, "--dataset", "digits", "--image-size", "12", "--epochs", "1", "--refinery", digits_gen))
    assert_user_error(code, err, "trained on 8-px views", "cuts 12-px crops", "--image-size 8")
    assert not out.exists()


def test_train_with_a_refinery_defaults_to_the_refinerys_seed_plus_one(tmp_path, digits_gen):
    """Issue 13: `train --refinery` without --seed must not replay the refinery's init, crops and batch
    order (both used to default to 0); it takes the refinery's recorded seed + 1, as a chain does, and
    records it. An explicit --seed is kept."""
    import json

    import yaml

    def cli(*argv):
        return [str(a) for a in train_args(*argv)]

    assert json.loads((digits_gen / "meta.json").read_text())["config"]["seed"] == 0
    assert main(cli(tmp_path / "g2", "--dataset", "digits", "--epochs", "1", "--refinery", digits_gen)) == 0
    assert yaml.safe_load((tmp_path / "g2/config.yaml").read_text())["seed"] == 1
    assert json.loads((tmp_path / "g2/meta.json").read_text())["config"]["seed"] == 1
    assert main(cli(tmp_path / "g3", "--dataset", "digits", "--epochs", "1", "--refinery", tmp_path / "g2")) == 0
    assert json.loads((tmp_path / "g3/meta.json").read_text())["config"]["seed"] == 2
    assert main(cli(tmp_path / "g2b", "--dataset", "digits", "--epochs", "1", "--refinery", digits_gen, "--seed", "0")) == 0
    assert json.loads((tmp_path / "g2b/meta.json").read_text())["config"]["seed"] == 0
    # re-running the same command resumes (skips) rather than seeing another config
    assert main(cli(tmp_path / "g2", "--dataset", "digits", "--epochs", "1", "--refinery", digits_gen)) == 0


def test_contradicting_label_flags(capsys, tmp_path):
    from label_refinery.cli import main

    code = main(["train", "--dataset", "digits", "--labels", "static", "--label-source", "store", "--out", str(tmp_path / "x")])
    assert code == 2 and "contradicts" in capsys.readouterr().err
