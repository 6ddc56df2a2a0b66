"""Manifests, Hugging Face datasets and WebDataset shards (issue 26): made here from one image folder
of digits, each must give the folder's classes, sizes, crops and pixels, train the same chain, and
refuse bad input with one clear line."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from label_refinery import UserError
from label_refinery.cli import main
from label_refinery.data import CropSampler, load_dataset

datasets = pytest.importorskip("datasets")  # a dev dependency (pyproject): present in `make test`
pytest.importorskip("webdataset")
pytest.importorskip("wids")

S = 16
CLASSES = ["0", "1", "2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Digits 0-2 (scikit-learn's 8x8, upscaled) as PNG and JPEG files in ImageNet layout; one larger JPEG."""
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path_factory.mktemp("sources") / "folder"
    counts = {c: 0 for c in range(3)}
    for x, y in zip(d.images, d.target):
        if y > 2 or counts[y] >= 24:
            continue
        n = counts[y]
        counts[y] += 1
        split = "val" if n < 6 else "train"
        img = Image.fromarray((x * 255 / 16).astype(np.uint8)).resize((20, 20) if n % 3 else (40, 32), Image.BILINEAR)
        path = root / split / str(y) / f"{n:02d}.{'jpg' if n % 2 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        (img.convert("RGB") if n % 4 == 1 else img).save(path)
    return root


@pytest.fixture(scope="module")
def sources(folder) -> dict[str, str]:
    """The folder as a CSV and a Parquet manifest, shards (4 samples each) and a saved Hugging Face dataset."""
    base = folder.parent
    assert main(["index", f"imagefolder:{folder}", "--manifest", str(base / "m.csv")]) == 0
    assert main(["index", f"imagefolder:{folder}", "--manifest", str(base / "m.parquet")]) == 0
    assert main(["index", f"imagefolder:{folder}", "--shards", str(base / "shards"), "--shard-size", "4"]) == 0
    ds = load_dataset(f"imagefolder:{folder}", image_size=S)

    def table(split):
        rows = [{"bytes": Path(split.path(i)).read_bytes(), "path": None} for i in range(len(split))]
        feats = datasets.Features({"img": datasets.Image(), "digit": datasets.ClassLabel(names=ds.classes)})
        return datasets.Dataset.from_dict({"img": rows, "digit": split.targets.tolist()}, features=feats)

    datasets.DatasetDict(train=table(ds.train), validation=table(ds.test)).save_to_disk(str(base / "hf"))
    return {
        "manifest-csv": f"manifest:{base / 'm.csv'}",
        "manifest-parquet": f"manifest:{base / 'm.parquet'}",
        "wds": f"wds:{base / 'shards' / 'train.json'}",
        "hf": f"hf:{base / 'hf'}",
    }


def views(ds) -> list[torch.Tensor]:
    """Every tensor a run reads: training crops (2 per image, epoch 3) and evaluation views, both splits."""
    out = []
    for split in (ds.train, ds.test):
        sampler = CropSampler(seed=5, scale=(0.25, 1.0))
        for b in split.iter_batches(6, epoch=3, crops=sampler, order_seed=7, crops_per_image=2):
            out += [b.images, b.crops, b.indices, b.targets, b.crop_numbers]
        out += [t for b in split.iter_batches(8) for t in (b.images, b.indices, b.targets)]
    return out


@pytest.mark.parametrize(("kind", "workers"), [("manifest-csv", 0), ("manifest-parquet", 0), ("wds", 0), ("hf", 0),
                                               ("manifest-csv", 2), ("wds", 2), ("hf", 2)])  # fmt: skip
def test_every_source_gives_the_folders_crops_and_pixels(folder, sources, kind, workers):
    ref = load_dataset(f"imagefolder:{folder}", image_size=S)
    ds = load_dataset(sources[kind], image_size=S, workers=workers)
    assert ds.classes == ref.classes == CLASSES and (len(ds.train), len(ds.test)) == (54, 18)
    for a, b in zip(ds.train.image_sizes(), ref.train.image_sizes()):
        assert np.array_equal(a, b)
    got, want = views(ds), views(ref)
    assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))
    assert ds.fingerprint() == load_dataset(sources[kind], image_size=S).fingerprint()  # stable, nothing decoded


def test_chain_on_shards_trains_like_the_folder_and_audits(folder, sources, tmp_path, capsys):
    """A two-generation chain with a baked label store, a subset, a validation split and label
    overrides: the same metrics from the shards as from the folder; the audit names shard:key."""
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("index,label\n10,2\n")
    common = ["--image-size", str(S), "--model", "cnn-small", "--epochs", "2", "--batch-size", "8", "--generations", "2",
              "--train-subset", "30", "--val-split", "12", "--label-overrides", str(fixes), "--label-source", "store",
              "--no-progress"]  # fmt: skip
    for name, data in (("folder", f"imagefolder:{folder}"), ("wds", sources["wds"])):
        assert main(["chain", "--dataset", data, "--out", str(tmp_path / name), *common]) == 0
    for g in ("gen1", "gen2"):
        a, b = (json.loads((tmp_path / n / g / "meta.json").read_text())["metrics"] for n in ("folder", "wds"))
        assert set(a) == set(b) and {"test_top1", "val_top1"} <= set(a)
        for key in a:
            if not key.endswith(("seconds", "per_s", "img_s")):
                assert a[key] == pytest.approx(b[key], abs=1e-9), (g, key)
    assert main(["audit", str(tmp_path / "wds"), "--no-progress", "--crops", "2"]) == 0
    with open(tmp_path / "wds" / "audit" / "audit.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and all(r["path"].startswith("train-") and ".tar:" in r["path"] for r in rows)
    page = (tmp_path / "wds" / "audit" / "audit.html").read_text()
    assert page.count("data:image/png;base64") >= 30  # each row shows its image, read from the shards
    check_exports(tmp_path / "wds", sources["wds"])


def check_exports(run: Path, data: str) -> None:
    """Refined labels as a Hugging Face dataset, the label store as Parquet and as a dataset: what
    another team loads, with the crops replayable from the table's metadata."""
    import pyarrow.parquet as pq

    assert main(["export", str(run), "--format", "hf", "--out", str(run / "hf-labels"), "--no-progress"]) == 0
    refined = datasets.load_from_disk(str(run / "hf-labels"))
    assert len(refined) == 30 and refined.features["given"].names == CLASSES
    assert refined.features["class_1"].names == CLASSES and all(0.0 <= p <= 1.0 for p in refined["prob_1"])
    assert main(["export", str(run), "--format", "hf", "--out", str(run / "hf-labels"), "--no-progress"]) == 2  # exists
    assert main(["export", str(run / "gen2" / "labels"), "--out", str(run / "store.parquet")]) == 0
    table = pq.read_table(run / "store.parquet")
    meta = json.loads(table.schema.metadata[b"label_refinery"])
    rows = table.to_pydict()
    assert len(rows["epoch"]) == 2 * 30 and set(rows["epoch"]) == {0, 1} and meta["images"] == 30
    assert all(abs(sum(p) - 1) < 0.01 and len(c) == meta["top_k"] for c, p in zip(rows["classes"], rows["probs"]))
    ds = load_dataset(data, image_size=S, train_subset=30, val_split=12)
    sampler = CropSampler(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["sampler"].items()})
    h, w = ds.train.image_sizes()
    at = {int(i): n for n, i in enumerate(ds.train.ids.tolist())}
    batch = next(ds.train.iter_batches(8, epoch=1, crops=sampler, order_seed=0))
    for i, crop in zip(batch.indices.tolist(), batch.crops.tolist()):
        assert list(sampler.sample(i, 1, int(h[at[i]]), int(w[at[i]]))) == crop  # a row's crop, replayed
    assert main(["export", str(run / "gen2" / "labels"), "--format", "hf", "--out", str(run / "store-hf")]) == 0
    assert len(datasets.load_from_disk(str(run / "store-hf"))) == 60


def test_a_folder_saved_by_datasets_own_imagefolder_loader_trains(folder, tmp_path):
    """The documented conversion for Hugging Face users: datasets' imagefolder builder (offline)."""
    saved = tmp_path / "hf-own"
    cache = str(tmp_path / "hf-cache")  # not the user's ~/.cache/huggingface
    train = datasets.load_dataset("imagefolder", data_dir=str(folder / "train"), split="train", cache_dir=cache)
    test = datasets.load_dataset("imagefolder", data_dir=str(folder / "val"), split="train", cache_dir=cache)
    datasets.DatasetDict(train=train, test=test).save_to_disk(str(saved))
    ds = load_dataset(f"hf:{saved}", image_size=S)
    assert ds.classes == CLASSES and len(ds.train) == 54 and ds.val is None
    batch = next(ds.train.iter_batches(8, crops=CropSampler(seed=0)))
    assert batch.images.shape == (8, 3, S, S) and torch.isfinite(batch.images).all()


# ---- bad input: one UserError each, naming the problem ----


def _copy_shards(sources, tmp_path) -> Path:
    import shutil

    src = Path(sources["wds"][4:]).parent
    out = tmp_path / "shards"
    shutil.copytree(src, out)
    return out


def test_shards_missing_sidecar_missing_shard_and_changed_shard(sources, tmp_path):
    out = _copy_shards(sources, tmp_path)
    (out / "val.sizes.npz").unlink()
    with pytest.raises(UserError, match=r"no sizes sidecar .*label-refinery index wds:"):
        load_dataset(f"wds:{out / 'train.json'}")
    assert main(["index", f"wds:{out / 'train.json'}", "--no-progress"]) == 0
    load_dataset(f"wds:{out / 'train.json'}")
    with open(out / "train-000001.tar", "ab") as f:
        f.write(b"\0" * 10240)
    with pytest.raises(UserError, match=r"train-000001.tar changed since it was indexed"):
        load_dataset(f"wds:{out / 'train.json'}")
    (out / "train-000001.tar").unlink()
    with pytest.raises(UserError, match=r"shard .*train-000001.tar is missing"):
        load_dataset(f"wds:{out / 'train.json'}")


def _rewrite_member(tar_path: Path, edit) -> None:
    """Rewrite a shard with ``edit(member name, bytes) -> (name, bytes)`` applied to every file."""
    with tarfile.open(tar_path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]
    with tarfile.open(tar_path, "w") as t:
        for m, data in members:
            name, data = edit(m.name, data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def test_shards_key_not_in_shard_and_undecodable_image(sources, tmp_path, capsys):
    out = _copy_shards(sources, tmp_path)
    side = dict(np.load(out / "train.sizes.npz"))
    side["keys"] = side["keys"].astype("S16")
    side["keys"][0] = b"elsewhere"  # the index names a sample the shard does not hold there
    np.savez(out / "train.sizes.npz", **side)
    ds = load_dataset(f"wds:{out / 'train.json'}", image_size=S)
    with pytest.raises(UserError, match=r"train-000000.tar holds no elsewhere.\w+, which its index names \(sample 0\)"):
        list(ds.train.iter_batches(4))
    first = out / "train-000000.tar"
    _rewrite_member(first, lambda n, d: (n, b"not an image" if n.endswith(("png", "jpg")) else d))
    from label_refinery.data.shards import build_sidecar

    with pytest.raises(UserError, match=r"cannot read the size of image train-000000.tar:\w+"):
        build_sidecar(out / "train.json")


def test_manifest_errors(folder, sources, tmp_path):
    m = Path(sources["manifest-csv"][9:])
    header, *rows = m.read_text().splitlines()
    rows = [header] + [f"{m.parent}/{r}" for r in rows]  # absolute paths: the copies live elsewhere
    bad = tmp_path / "cols.csv"
    bad.write_text("file,label\nx.png,0\n")
    with pytest.raises(UserError, match=r"lacks the column\(s\) path"):
        load_dataset(f"manifest:{bad}")
    missing = tmp_path / "missing.csv"
    missing.write_text("\n".join(rows[:3] + ["/nowhere/x.png,1,20,20,train"] + rows[3:]) + "\n")
    with pytest.raises(UserError, match=r"row 3: image '/nowhere/x.png' does not exist"):
        load_dataset(f"manifest:{missing}")
    (tmp_path / "classes.txt").write_text("0\n1\n")
    outside = tmp_path / "outside.csv"
    outside.write_text("\n".join(rows).replace("/2/", "/2/").replace(",2,", ",seven,") + "\n")
    with pytest.raises(UserError, match=r"label 'seven' is not one of the 2 classes"):
        load_dataset(f"manifest:{outside}")
    nosplit = tmp_path / "images.csv"
    nosplit.write_text("path,label\n" + str(folder / "train/0/06.png") + ",0\n")
    with pytest.raises(UserError, match="must name the training split"):
        load_dataset(f"manifest:{nosplit}")


def test_manifest_without_split_column_finds_its_test_file(folder, tmp_path):
    files = sorted((folder / "train").rglob("*.*")), sorted((folder / "val").rglob("*.*"))
    for name, paths in zip(("train.csv", "test.csv"), files):
        (tmp_path / name).write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in paths))
    ds = load_dataset(f"manifest:{tmp_path / 'train.csv'}", image_size=S)
    assert (len(ds.train), len(ds.test), ds.classes) == (54, 18, CLASSES)
    h, w = ds.train.image_sizes()  # read from the headers (no size columns), cached
    assert set(zip(h.tolist(), w.tolist())) == {(20, 20), (32, 40)}


def test_hf_errors(sources, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"no label column 'nope'"):
        load_dataset(sources["hf"] + ",label=nope")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"hf: cannot load 'no-such-org/no-such-set'"):
        load_dataset("hf:no-such-org/no-such-set")
    one = tmp_path / "one"
    datasets.Dataset.from_dict({"x": [1]}).save_to_disk(str(one))
    with pytest.raises(UserError, match="holds one split"):
        load_dataset(f"hf:{one}")


def test_two_processes_bake_the_one_process_store_from_shards(sources, tmp_path):
    """Under torchrun each process reads its share of the shards' batches; the baked arrays are the
    bytes one process writes."""
    from tests.harness import assert_same_arrays, run

    data = ["--dataset", sources["wds"], "--image-size", str(S), "--device", "cpu", "--no-progress"]
    run("train", *data, "--model", "cnn-small", "--epochs", "1", "--batch-size", "8", "--out", tmp_path / "g1")
    bake = ["bake", *data, "--refinery", tmp_path / "g1", "--epochs", "2", "--batch-size", "8", "--top-k", "3"]
    run(*bake, "--out", tmp_path / "one")
    run(*bake, "--out", tmp_path / "two", nproc=2)
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2
    assert_same_arrays(tmp_path / "one", tmp_path / "two", ["ids", "indices", "probs"], byte_for_byte=True)


def test_a_changed_manifest_is_other_data_for_a_label_store(folder, sources, tmp_path, capsys):
    """The cheap fingerprint (rows, not pixels) is what the label store checks: one label changed in
    the manifest and the store baked on it is refused."""
    m = Path(sources["manifest-csv"][9:])
    mine = m.parent / "changed.csv"
    header, first, *rest = m.read_text().splitlines()
    path, label, *more = first.split(",")
    mine.write_text("\n".join([header, ",".join([path, str((int(label) + 1) % 3), *more]), *rest]) + "\n")
    data = ["--image-size", str(S), "--device", "cpu", "--no-progress", "--batch-size", "8"]
    assert main(["train", "--dataset", sources["manifest-csv"], *data, "--epochs", "1", "--out", str(tmp_path / "g1")]) == 0
    bake = ["bake", "--dataset", sources["manifest-csv"], *data, "--refinery", str(tmp_path / "g1"), "--epochs", "1"]
    assert main([*bake, "--out", str(tmp_path / "store")]) == 0
    capsys.readouterr()
    train = ["train", *data, "--epochs", "1", "--refinery", str(tmp_path / "g1"), "--labels", str(tmp_path / "store")]
    assert main([*train, "--dataset", f"manifest:{mine}", "--out", str(tmp_path / "g2")]) == 2
    said = capsys.readouterr()
    assert "was trained on other data" in said.out  # the refinery's provenance: another fingerprint
    assert "label store with other settings" in said.err or "baked for other data" in said.err  # the store refused
    assert main([*train, "--dataset", sources["manifest-csv"], "--out", str(tmp_path / "g2-same")]) == 0
    mine.unlink()
