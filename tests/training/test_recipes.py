"""The ImageNet recipes in configs/imagenet: every one loads, validates, builds its model, follows the
2018 release's schedule, is documented in docs/imagenet.md, and runs end to end on a tiny image folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from label_refinery.cli import main
from label_refinery.config import load_config
from label_refinery.data import load_dataset
from label_refinery.models import check_model_name, create_model
from label_refinery.training.engine import lr_schedule
from tests.harness import top1

PAPER = ["alexnet", "mobilenet", "mobilenet-0.75", "mobilenet-0.5", "mobilenet-0.25", "resnet18", "resnet34",
         "resnet50", "xnor-resnet50", "vgg16", "vgg19", "darknet19"]
REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs" / "imagenet").glob("*.yaml"))


def test_one_recipe_per_paper_architecture():
    assert sorted(load_config(p).model for p in RECIPES) == sorted(PAPER)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_builds(path):
    cfg = load_config(path)
    check_model_name(cfg.model)
    o, d = cfg.optim, cfg.data
    # the release: batch 256, SGD momentum 0.9 (no Nesterov), no weight decay, 200 epochs, lr / 10 after 140 and 170
    assert (o.batch_size, o.momentum, o.nesterov, o.weight_decay, o.epochs) == (256, 0.9, False, 0.0, 200)
    assert (o.schedule, o.milestones, o.gamma, o.warmup_epochs) == ("step", (140, 170), 0.1, 0)
    assert (d.image_size, d.crop_scale, d.flip) == (224, (0.08, 1.0), True)
    assert d.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert (cfg.loss.temperature, cfg.loss.gt_weight) == (1.0, 0.0)
    lr = lr_schedule(o, steps_per_epoch=10)
    # epochs 1-140 at lr, 141-170 at lr/10, 171-200 at lr/100 (1-based, as the release counts)
    assert [lr(10 * e) for e in (0, 139, 140, 169, 170, 199)] == pytest.approx([o.lr, o.lr, o.lr / 10, o.lr / 10, o.lr / 100, o.lr / 100])
    with torch.device("meta"):
        model = create_model(cfg.model, 3, 1000).eval()
    assert model(torch.zeros(1, 3, 224, 224, device="meta")).shape == (1, 1000)


def test_release_learning_rates():
    lrs = {p.stem: load_config(p).optim.lr for p in RECIPES}
    assert lrs["alexnet"] == 0.01 and lrs["resnet50"] == 0.1  # the release's LR_REGIME of each model
    assert load_config(REPO / "configs/imagenet/alexnet.yaml").chain.generations == 5  # AlexNet 1 -> 5


def test_docs_document_every_recipe():
    readme = (REPO / "docs/imagenet.md").read_text()  # the README links to it
    section = readme.split("# ImageNet recipes", 1)[1]
    assert "docs/imagenet.md" in (REPO / "README.md").read_text()
    for path in RECIPES:
        assert f"configs/imagenet/{path.name}" in section, path.name
    for ref in set(re.findall(r"configs/imagenet/[\w.-]+\.yaml", readme)):
        assert (REPO / ref).is_file(), ref
    for number in ("57.93", "59.97", "60.87", "61.22", "61.37", "66.28", "73.39", "54.62", "70.34", "74.47"):
        assert number in section, number


@pytest.mark.parametrize("recipe", ["alexnet", "xnor-resnet50"])
def test_recipe_runs_end_to_end(tmp_path, three_class_folder, recipe):
    """The recipe itself, shrunk only in size and length: 2 epochs on a tiny image folder with the
    small-input variant of its model, the step decay moved to epoch 1."""
    out = tmp_path / "run"
    code = main([
        "train", "--config", str(REPO / f"configs/imagenet/{recipe}.yaml"), "--dataset", f"imagefolder:{three_class_folder}",
        "--model", f"{recipe}:width=0.125,small=true", "--image-size", "16", "--epochs", "2", "--milestones", "1",
        "--batch-size", "3", "--workers", "0", "--device", "cpu", "--out", str(out), "--no-progress",
    ])
    assert code == 0
    base_lr = load_config(REPO / f"configs/imagenet/{recipe}.yaml").optim.lr
    assert json.loads((out / "meta.json").read_text())["config"]["optim"]["lr"] == base_lr
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["lr"] for line in lines] == pytest.approx([base_lr, base_lr / 10])  # the step decay happened
    # every test top-1 counts some of the folder's 6 validation images; the last is the saved model's
    assert all(round(6 * line["test_top1"] / 100, 6) == round(6 * line["test_top1"] / 100) for line in lines), lines
    ds = load_dataset(f"imagefolder:{three_class_folder}", image_size=16)
    assert len(ds.test) == 6 and lines[-1]["test_top1"] == pytest.approx(top1(out, ds.test), abs=1e-9)


BY_RESNET50 = sorted((REPO / "configs" / "imagenet" / "by-resnet50").glob("*.yaml"))


@pytest.mark.parametrize("path", BY_RESNET50, ids=lambda p: p.stem)
def test_refined_by_resnet50_variants_are_their_recipe_plus_torchvisions_resnet50(path):
    """configs/imagenet/by-resnet50/NAME.yaml = ../NAME.yaml (its `base`) with the paper's refinery:
    torchvision's ImageNet ResNet-50, one generation; nothing else changed."""
    cfg, recipe = load_config(path), load_config(path.parents[1] / path.name)
    assert (cfg.refinery.path, cfg.refinery.weights, cfg.chain.generations) == ("torchvision:resnet50", "IMAGENET1K_V1", 1)
    assert (cfg.model, cfg.data, cfg.optim, cfg.loss) == (recipe.model, recipe.data, recipe.optim, recipe.loss)
    assert f"configs/imagenet/by-resnet50/{path.name}" in (REPO / "docs/imagenet.md").read_text()


def test_a_refined_by_resnet50_variant_runs_at_toy_scale(tmp_path):
    """alexnet refined by a ResNet-50 (random weights saved to a file: no download here) on a few
    images in ImageNet's WNID layout: the refinery sees each 32-px training crop at its own 224 px."""
    import numpy as np
    import torchvision
    from PIL import Image

    root, rng = tmp_path / "imagenet", np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537", "n01484850"):  # tench, goldfish, great white shark
            (root / split / wnid).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / split / wnid / f"{i}.JPEG")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    out = tmp_path / "run"
    assert main([
        "train", "--config", str(REPO / "configs/imagenet/by-resnet50/alexnet.yaml"), "--dataset", f"imagefolder:{root}",
        "--refinery-weights", str(tmp_path / "resnet50.pth"), "--model", "alexnet:width=0.125,small=true",
        "--image-size", "32", "--epochs", "2", "--milestones", "1", "--batch-size", "3", "--workers", "0", "--device", "cpu",
        "--out", str(out), "--no-progress",
    ]) == 0  # fmt: skip
    labels = json.loads((out / "meta.json").read_text())["labels"]
    assert labels["model"] == "torchvision:resnet50" and labels["external"]["preprocess"]["image_size"] == 224
    assert labels["external"]["class_map"] == "[[0],[1],[2]]"  # the WNID folders are ImageNet's outputs 0, 1, 2
