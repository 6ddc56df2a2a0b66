"""docs/own-loop.md runs as written (a plain loop, a label-store loop, a Lightning module), and the
pieces it uses are the trainer's: CropTransform cuts the trainer's crops, a store's labels are the
refinery's on them (label_refinery/loop.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from label_refinery.cli import main
from label_refinery.data import CropSampler, load_dataset
from label_refinery.loop import CropTransform, Refinery, StoredLabels

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-loop.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)  # plain loop, label store, Lightning


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """What the page's commands make: a generation 1 on digits and a label store of its labels."""
    root = tmp_path_factory.mktemp("own-loop")
    common = ["--dataset", "digits", "--no-progress", "--device", "cpu"]
    assert main(["train", *common, "--epochs", "8", "--out", str(root / "runs/digits/gen1")]) == 0
    assert main(["bake", *common, "--refinery", str(root / "runs/digits/gen1"), "--epochs", "6", "--top-k", "10",
                 "--out", str(root / "runs/digits/labels")]) == 0  # fmt: skip
    return root


def _accuracy(student) -> float:
    ds = load_dataset("digits")
    x = ((ds.test.images.float() / 255) - ds.mean[0]) / ds.std[0]
    with torch.no_grad():
        return (student(x).argmax(1) == ds.test.targets).float().mean().item() * 100


@pytest.fixture
def in_runs(runs):
    cwd = os.getcwd()
    os.chdir(runs)
    yield runs
    os.chdir(cwd)


def test_the_pages_loops_run_as_written_and_their_students_learn(in_runs):
    assert len(BLOCKS) == 3
    ns: dict = {}
    exec(compile(BLOCKS[0], "own-loop.md: plain loop", "exec"), ns)
    assert _accuracy(ns["student"]) > 80  # from refined labels alone (10 % is chance)
    assert not any(m.training for m in ns["refinery"].model.modules())  # still frozen in eval mode
    exec(compile(BLOCKS[1], "own-loop.md: label store", "exec"), ns)
    assert _accuracy(ns["student"]) > 70
    pytest.importorskip("pytorch_lightning")
    exec(compile(BLOCKS[2], "own-loop.md: Lightning", "exec"), ns)
    assert _accuracy(ns["student"]) > 80
    assert not any(m.training for m in ns["refinery"].model.modules())  # Lightning's .train() did not reach it


def test_crop_transform_cuts_the_trainers_crops_and_a_store_labels_them(in_runs):
    ds = load_dataset("digits")
    sampler = CropSampler(7, (0.25, 1.0))
    batch = next(ds.train.iter_batches(16, crops=sampler, epoch=3))
    crops = CropTransform(8, seed=7, scale=(0.25, 1.0), mean=ds.mean, std=ds.std)
    crops.set_epoch(3)
    views = torch.stack([crops(ds.train.images[int(i)], int(i))[0] for i in batch.indices])  # digits: id = position
    assert torch.allclose(views, batch.images, atol=1e-5)
    # the store's crops, replayed: its labels are the refinery's on them (top-10 of 10 classes, fp16)
    store, refinery = StoredLabels("runs/digits/labels"), Refinery.from_checkpoint("runs/digits/gen1")
    crops = CropTransform.for_store("runs/digits/labels", 8, ds.mean, ds.std)
    for epoch in (0, 5):
        crops.set_epoch(epoch)
        ids = ds.train.ids[:32]
        views = torch.stack([crops(ds.train.images[int(i)], int(i))[0] for i in ids])
        assert torch.allclose(store.labels(epoch, ids), refinery(views), atol=2e-3)
    with pytest.raises(Exception, match="holds no labels for image 99999"):
        store.labels(0, [99999])


def test_a_library_model_as_the_refinery_of_your_loop(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from label_refinery.labels import LiveRefinery
    from label_refinery.labels.external import Options

    save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), tmp_path / "w.safetensors")
    ds = load_dataset("digits")
    batch = next(ds.train.iter_batches(8, crops=CropSampler(1), epoch=0))
    mine = Refinery.from_library("timm:test_resnet", ds.classes, ds.mean, ds.std, weights=str(tmp_path / "w.safetensors"))
    theirs = LiveRefinery.from_checkpoints(["timm:test_resnet"], ds=ds, options=Options(weights=str(tmp_path / "w.safetensors")))
    assert torch.allclose(mine(batch.images), theirs(batch), atol=1e-6)  # the trainer's refinery, same labels
    assert mine.info["external"]["preprocess"]["image_size"] == 160
