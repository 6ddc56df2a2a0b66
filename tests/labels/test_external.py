"""A library's model as the refinery (issue 25): timm and torchvision models with weights saved here,
seeing the student's crops at their own size and normalisation, their outputs mapped to the dataset's
classes (by id, WNID, name or a file), live, in a label store, beside our checkpoints, jittered,
checked on resume; the hub path up to its offline error."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from label_refinery import UserError
from label_refinery.cli import main
from label_refinery.config import RefineryConfig
from label_refinery.data import CropSampler, load_dataset
from label_refinery.labels import LiveRefinery, refinery_sha256
from label_refinery.labels.external import Options

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

BASE = ["--dataset", "digits", "--train-subset", "200", "--epochs", "1", "--batch-size", "50", "--no-progress"]
SMALL = ["--set", "refinery.image_size=32"]  # timm's test_resnet wants 160 px; 32 keeps the tests quick


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random weights of timm's tiny test_resnet (10 outputs, safetensors) and torchvision's
    squeezenet1_1 (ImageNet's 1000 outputs, a weights-only .pth)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), root / "tr10.safetensors")
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), root / "sq.pth")
    return root


def _by_hand(model, x, ds_mean, ds_std, size, mean, std, mode="bilinear"):
    pixels = x * torch.tensor(ds_std).view(1, -1, 1, 1) + torch.tensor(ds_mean).view(1, -1, 1, 1)
    pixels = pixels.expand(-1, 3, -1, -1)
    view = F.interpolate(pixels, size=(size, size), mode=mode, antialias=True, align_corners=False)
    return model((view - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))


def test_a_timm_model_labels_the_students_crop_at_its_own_size_and_normalisation(weights):
    ds = load_dataset("digits", train_subset=200)
    batch = next(ds.train.iter_batches(16, crops=CropSampler(3), epoch=0))  # 8-px grey crops
    opts = Options(weights=str(weights / "tr10.safetensors"))
    ref = LiveRefinery.from_checkpoints(["timm:test_resnet"], ds=ds, options=opts)
    model = timm.create_model("test_resnet", num_classes=10)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(weights / "tr10.safetensors"))
    expected = F.softmax(_by_hand(model.eval(), batch.images, ds.mean, ds.std, 160, (0.5,) * 3, (0.5,) * 3), 1)
    assert torch.allclose(ref(batch), expected, atol=1e-5)
    ext = ref.provenance["external"]
    assert ext["preprocess"]["image_size"] == 160 and ext["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert ext["class_map"] == json.dumps([[i] for i in range(10)], separators=(",", ":"))  # by id: no names
    assert ref.provenance["sha256"] == refinery_sha256(RefineryConfig(path="timm:test_resnet", weights=opts.weights))
    # overrides: another size and normalisation are another refinery
    small = LiveRefinery.from_checkpoints(["timm:test_resnet"], ds=ds, options=Options(weights=opts.weights, image_size=32, mean=(0.4,) * 3))
    expected = F.softmax(_by_hand(model, batch.images, ds.mean, ds.std, 32, (0.4,) * 3, (0.5,) * 3), 1)
    assert torch.allclose(small(batch), expected, atol=1e-5)
    assert small.provenance["sha256"] != ref.provenance["sha256"]


def _folder(root, classes, n=2):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _squeeze(weights):
    model = torchvision.models.squeezenet1_1(weights=None)
    model.load_state_dict(torch.load(weights / "sq.pth", weights_only=True))
    return model.eval()


def test_imagenet_wnid_and_name_folders_map_to_the_refinerys_outputs(weights, tmp_path):
    opts = Options(weights=str(weights / "sq.pth"), image_size=64)
    model = _squeeze(weights)
    # WNID folders (ImageNet's layout): tench = output 0, goldfish = 1, great white shark = 2
    ds = load_dataset(f"imagefolder:{_folder(tmp_path / 'wnid', ['n01440764', 'n01443537', 'n01484850'])}", image_size=16)
    batch = next(ds.train.iter_batches(6, crops=CropSampler(1), epoch=0))
    ref = LiveRefinery.from_checkpoints(["torchvision:squeezenet1_1"], ds=ds, options=opts)
    tv = torchvision.models.SqueezeNet1_1_Weights.DEFAULT.transforms()
    logits = _by_hand(model, batch.images, ds.mean, ds.std, 64, tuple(tv.mean), tuple(tv.std))
    assert torch.allclose(ref(batch), F.softmax(logits[:, [0, 1, 2]], 1), atol=1e-5)  # renormalised over the three
    # class names (torchvision's categories), any order and case
    ds = load_dataset(f"imagefolder:{_folder(tmp_path / 'names', ['Goldfish', 'great_white_shark', 'tench'])}", image_size=16)
    batch = next(ds.train.iter_batches(6, crops=CropSampler(1), epoch=0))
    ref = LiveRefinery.from_checkpoints(["torchvision:squeezenet1_1"], ds=ds, options=opts)
    logits = _by_hand(model, batch.images, ds.mean, ds.std, 64, tuple(tv.mean), tuple(tv.std))
    assert torch.allclose(ref(batch), F.softmax(logits[:, [1, 2, 0]], 1), atol=1e-5)
    # a JSON file grouping outputs: a class's probability is its outputs' sum, then renormalised
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"Goldfish": [1, 7], "great_white_shark": 2, "tench": [0, 3, 4]}))
    ref = LiveRefinery.from_checkpoints(["torchvision:squeezenet1_1"], ds=ds, options=Options(**{**vars(opts), "classes": str(groups)}))
    p = F.softmax(logits, 1)
    mine = torch.stack([p[:, [1, 7]].sum(1), p[:, 2], p[:, [0, 3, 4]].sum(1)], 1)
    assert torch.allclose(ref(batch), mine / mine.sum(1, keepdim=True), atol=1e-5)


def test_class_mappings_that_cannot_work_are_refused_by_name(weights, tmp_path):
    ds = load_dataset(f"imagefolder:{_folder(tmp_path / 'f', ['goldfish', 'my_widget', 'other thing'])}", image_size=16)
    opts = Options(weights=str(weights / "sq.pth"), image_size=32)
    with pytest.raises(UserError, match=r"2 of the dataset's 3 classes map to no refinery output .*my_widget.*other thing.*--refinery-classes"):
        LiveRefinery.from_checkpoints(["torchvision:squeezenet1_1"], ds=ds, options=opts)
    lines = tmp_path / "lines.txt"
    lines.write_text("goldfish\nmy_widget\n")
    with pytest.raises(UserError, match="has 2 lines but the refinery has 1000 outputs"):
        LiveRefinery.from_checkpoints(["torchvision:squeezenet1_1"], ds=ds, options=Options(**{**vars(opts), "classes": str(lines)}))
    lines.write_text("goldfish\nmy_widget\nnot_a_class\n" + "-\n" * 997)
    with pytest.raises(UserError, match="names classes the dataset does not have: \\['not_a_class'\\]"):
        LiveRefinery.from_checkpoints(["torchvision:squeezenet1_1"], ds=ds, options=Options(**{**vars(opts), "classes": str(lines)}))
    lines.write_text("goldfish\nmy_widget\nother thing\n" + "-\n" * 997)  # one line per output: output i -> line i
    ref = LiveRefinery.from_checkpoints(["torchvision:squeezenet1_1"], ds=ds, options=Options(**{**vars(opts), "classes": str(lines)}))
    assert ref.provenance["external"]["class_map"] == "[[0],[1],[2]]"


def test_train_store_resume_ensemble_and_jitter_with_a_timm_refinery(weights, tmp_path, capsys):
    w = str(weights / "tr10.safetensors")
    ext = ["--refinery", "timm:test_resnet", "--refinery-weights", w, *SMALL]
    assert main(["train", *BASE, *ext, "--out", str(tmp_path / "live")]) == 0
    live = json.loads((tmp_path / "live/meta.json").read_text())
    assert live["labels"]["model"] == "timm:test_resnet" and live["labels"]["external"]["weights_sha256"]
    assert live["config"]["refinery"]["weights"] == w and live["config"]["seed"] == 1
    capsys.readouterr()
    assert main(["train", *BASE, *ext, "--out", str(tmp_path / "live")]) == 0  # finished: the same refinery
    assert "finished earlier" in capsys.readouterr().out
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), other)
    assert main(["train", *BASE, "--refinery", "timm:test_resnet", "--refinery-weights", str(other), *SMALL, "--out", str(tmp_path / "live")]) == 2
    assert "was trained with another refinery" in capsys.readouterr().err
    # a label store baked by it: the same labels as live up to fp16 and top-5, checked against the refinery
    assert main(["train", *BASE, *ext, "--label-source", "store", "--out", str(tmp_path / "st")]) == 0
    manifest = json.loads((tmp_path / "st/labels/manifest.json").read_text())
    assert manifest["refinery_sha256"] == live["labels"]["sha256"]
    st = json.loads((tmp_path / "st/meta.json").read_text())
    assert abs(st["metrics"]["test_top1"] - live["metrics"]["test_top1"]) < 3.0
    # `bake` takes the same flags: its store is the same refinery's (checked when a run opens it)
    assert main(["bake", "--dataset", "digits", "--train-subset", "200", "--epochs", "1", "--no-progress", *ext,
                 "--out", str(tmp_path / "baked")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "baked/manifest.json").read_text())["refinery_sha256"] == live["labels"]["sha256"]
    # beside one of ours in an ensemble, and jittered
    ours = str(tmp_path / "live")
    assert main(["train", *BASE, *ext, "--refinery", ours, "--jitter", "--out", str(tmp_path / "ens")]) == 0
    ens = json.loads((tmp_path / "ens/meta.json").read_text())["labels"]
    assert [m["model"] for m in ens["members"]] == ["timm:test_resnet", "cnn-small"]


def _fails(argv: list[str], capsys, text: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(text, err), err


def test_bad_external_refineries_each_get_one_clear_error(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = [*BASE, "--out", str(tmp_path / "run")]
    _fails(["train", *run, "--refinery", "hf-hub:timm/resnet18.a1_in1k"], capsys,
           r"hf-hub:timm/resnet18.a1_in1k's pretrained weights could not be loaded: offline .*--refinery-weights FILE")
    _fails(["train", *run, "--refinery", "timm:no_such_net"], capsys, "timm has no model 'no_such_net'")
    _fails(["train", *run, "--refinery", "torchvision:no_such_net"], capsys, "torchvision has no model 'no_such_net'")
    _fails(["train", *run, "--refinery", str(tmp_path), "--refinery-weights", "x.pth"], capsys,
           "refinery.weights describes a library model as the refinery")
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": Options()}, pickled)  # an object, not tensors: never unpickled
    _fails(["train", *run, "--refinery", "timm:test_resnet", "--refinery-weights", str(pickled)], capsys,
           "not a weights file this can read safely")
    _fails(["train", *run, "--refinery", "timm:test_resnet", "--refinery-weights", str(weights / "sq.pth")], capsys,
           "does not fit this architecture")
    _fails(["train", *run, "--refinery", "timm:test_resnet,weights", "--refinery", "timm:test_resnet"], capsys,
           "options after the name are weights=FILE")
    assert not (tmp_path / "run").exists()  # refused before anything was written
