"""The ``imagefolder:PATH`` dataset on real image files in ImageNet layout (tiny, CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import label_refinery
from label_refinery import UserError
from label_refinery.data import CropSampler, imagefolder, load_dataset
from tests.harness import top1

S = 16  # side of crops and evaluation views
# class -> [(file name, PIL mode, (width, height))]: mixed modes, sizes and extensions (.JPEG upper case)
TRAIN = {
    "bee": [("b0.png", "RGB", (20, 24)), ("b1.JPEG", "L", (32, 18))],
    "ant": [("a0.jpg", "RGB", (24, 24)), ("a1.png", "L", (17, 29)), ("a2.jpeg", "RGB", (40, 30))],
    "cat": [("c0.png", "RGB", (30, 22))],
}
VAL = {
    "cat": [("v2.JPEG", "L", (21, 33))],
    "ant": [("v0.png", "L", (18, 18))],
    "bee": [("v1.jpg", "RGB", (26, 20)), ("v3.png", "RGB", (19, 23))],
}
CLASSES = ["ant", "bee", "cat"]


def write_image(path: Path, mode: str, size: tuple[int, int], seed: int) -> None:
    w, h = size
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def write_split(folder: Path, spec: dict) -> None:
    for k, (cls, files) in enumerate(spec.items()):
        for j, (name, mode, size) in enumerate(files):
            write_image(folder / cls / name, mode, size, seed=100 * k + j)


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "folder"
    write_split(r / "train", TRAIN)
    write_split(r / "val", VAL)
    return r


@pytest.fixture
def ds(root):
    return load_dataset(f"imagefolder:{root}", image_size=S)


def unnormalize(images: torch.Tensor, split) -> torch.Tensor:
    mean = torch.tensor(split.mean).view(1, -1, 1, 1)
    std = torch.tensor(split.std).view(1, -1, 1, 1)
    return images * std + mean  # [B, 3, S, S] in [0, 1]


def collect(split, **kwargs) -> dict[str, torch.Tensor]:
    batches = list(split.iter_batches(4, **kwargs))
    out = {
        "images": torch.cat([b.images for b in batches]),
        "targets": torch.cat([b.targets for b in batches]),
        "indices": torch.cat([b.indices for b in batches]),
    }
    if batches[0].crops is not None:
        out["crops"] = torch.cat([b.crops for b in batches])
    out["batch_sizes"] = [len(b.images) for b in batches]
    out["crops_none"] = [b.crops is None for b in batches]
    return out


def pil_rgb(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def as_float(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, H, W]


def test_classes_and_counts(ds, root):
    assert ds.classes == CLASSES
    assert ds.num_classes == 3 and ds.in_chans == 3 and ds.image_size == S
    assert len(ds.train) == 6 and len(ds.test) == 4
    for split, spec in ((ds.train, TRAIN), (ds.test, VAL)):
        paths = sorted(str(Path(p).relative_to(split.root)) for p, _ in split.samples)
        assert paths == sorted(f"{c}/{name}" for c, files in spec.items() for name, _, _ in files)
        for (path, target), t in zip(split.samples, split.targets.tolist()):
            assert Path(path).parent.name == CLASSES[target] and t == target
    assert ds.train.targets.tolist() == [0, 0, 0, 1, 1, 2]


def test_training_crops_match_sampler_and_pil(ds):
    sampler = CropSampler(seed=3, scale=(0.25, 1.0), flip_p=0.5)
    got = collect(ds.train, epoch=2, crops=sampler, order_seed=5)
    assert got["images"].shape == (6, 3, S, S)
    assert got["batch_sizes"] == [4, 2]
    assert sorted(got["indices"].tolist()) == list(range(6))
    assert set(got["crops"][:, 4].tolist()) == {0, 1}  # both flipped and unflipped views are checked
    views = unnormalize(got["images"], ds.train)
    for k, idx in enumerate(got["indices"].tolist()):
        path, target = ds.train.samples[idx]
        assert got["targets"][k].item() == target == CLASSES.index(Path(path).parent.name)
        img = pil_rgb(path)
        W, H = img.size
        crop = sampler.sample(idx, 2, H, W)
        assert got["crops"][k].tolist() == [crop.y, crop.x, crop.h, crop.w, int(crop.flip)]
        assert 0 <= crop.y and crop.y + crop.h <= H and 0 <= crop.x and crop.x + crop.w <= W
        ref = img.resize((S, S), Image.BILINEAR, box=(crop.x, crop.y, crop.x + crop.w, crop.y + crop.h))
        if crop.flip:
            ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
        torch.testing.assert_close(views[k], as_float(ref), atol=1e-5, rtol=0)
    assert got["images"].dtype == torch.float32


def test_training_crops_are_deterministic_per_epoch(ds):
    sampler = CropSampler(seed=0)
    a = collect(ds.train, epoch=1, crops=sampler)
    b = collect(ds.train, epoch=1, crops=sampler)
    c = collect(ds.train, epoch=4, crops=sampler)
    assert a["indices"].tolist() == b["indices"].tolist() == c["indices"].tolist() == list(range(6))  # no order_seed
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["crops"], b["crops"])
    assert not torch.equal(a["crops"], c["crops"])
    assert not torch.equal(a["images"], c["images"])


def test_grayscale_gives_three_equal_channels(ds):
    gray = [i for i, (p, _) in enumerate(ds.train.samples) if Path(p).name in ("b1.JPEG", "a1.png")]
    rgb = [i for i, (p, _) in enumerate(ds.train.samples) if Path(p).name in ("b0.png", "c0.png")]
    assert len(gray) == 2 and len(rgb) == 2
    for kwargs in ({"crops": CropSampler(seed=1)}, {}):
        got = collect(ds.train, **kwargs)
        views = unnormalize(got["images"], ds.train)
        assert got["indices"].tolist() == list(range(6))
        for i in gray:
            torch.testing.assert_close(views[i, 0], views[i, 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(views[i, 0], views[i, 2], atol=1e-5, rtol=0)
        for i in rgb:  # random colours: channels differ
            assert (views[i, 0] - views[i, 1]).abs().max() > 0.1
        # the normalised tensor itself has unequal channels (ImageNet mean/std differ per channel)
        assert not torch.allclose(got["images"][gray[0], 0], got["images"][gray[0], 1])


def test_evaluation_views_are_deterministic_centre_crops(ds):
    a = collect(ds.test)
    b = collect(ds.test)
    assert a["images"].shape == (4, 3, S, S)
    assert all(a["crops_none"])
    assert a["indices"].tolist() == list(range(4))
    assert a["targets"].tolist() == ds.test.targets.tolist() == [0, 1, 1, 2]
    assert torch.equal(a["images"], b["images"])
    views = unnormalize(a["images"], ds.test)
    short = round(S / 0.875)  # ImageNet convention: resize the short side to size / 0.875, take the centre
    for i, (path, _) in enumerate(ds.test.samples):
        img = pil_rgb(path)
        W, H = img.size
        scale = short / min(W, H)
        img = img.resize((max(S, round(W * scale)), max(S, round(H * scale))), Image.BILINEAR)
        left, top = (img.size[0] - S) // 2, (img.size[1] - S) // 2
        ref = as_float(img.crop((left, top, left + S, top + S)))
        torch.testing.assert_close(views[i], ref, atol=1e-5, rtol=0)


def test_workers_give_the_same_batches(root):
    sampler = CropSampler(seed=7)
    single = load_dataset(f"imagefolder:{root}", image_size=S, workers=0)
    multi = load_dataset(f"imagefolder:{root}", image_size=S, workers=2)
    a = collect(single.train, epoch=1, crops=sampler, order_seed=0)
    b = collect(multi.train, epoch=1, crops=sampler, order_seed=0)
    for key in ("images", "targets", "indices", "crops"):
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(collect(single.test)["images"], collect(multi.test)["images"])


def test_train_generation_end_to_end(root, tmp_path):
    cfg = label_refinery.load_config(
        overrides={
            "data.dataset": f"imagefolder:{root}",
            "data.image_size": 16,
            "optim.epochs": 1,
            "optim.batch_size": 4,
            "model": "cnn-small",
        }
    )
    out = tmp_path / "gen1"
    meta = label_refinery.train_generation(cfg, out, log=lambda _: None)
    assert (out / "meta.json").is_file() and (out / "model.safetensors").is_file()
    saved = json.loads((out / "meta.json").read_text())
    assert saved["classes"] == meta["classes"] == CLASSES
    assert saved["in_chans"] == 3 and saved["image_size"] == 16
    ckpt = label_refinery.load_checkpoint(out)
    assert ckpt.build_model()(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    # the recorded test top-1 is the saved model's on the 4 validation images, computed here
    assert meta["metrics"]["test_top1"] == pytest.approx(top1(out, load_dataset(f"imagefolder:{root}", image_size=16).test), abs=1e-9)


# ---- errors: each a UserError whose message names the problem ----


def test_empty_class_folder(root):
    (root / "train" / "dog").mkdir()
    (root / "val" / "dog").mkdir()
    write_image(root / "val" / "dog" / "d.png", "RGB", (20, 20), seed=9)
    with pytest.raises(UserError, match="has no images") as err:
        load_dataset(f"imagefolder:{root}", image_size=S)
    assert "dog" in str(err.value)


def test_train_and_val_classes_differ(root):
    write_image(root / "val" / "dog" / "d.png", "RGB", (20, 20), seed=9)
    (root / "val" / "cat" / "v2.JPEG").unlink()
    (root / "val" / "cat").rmdir()
    with pytest.raises(UserError, match="different classes") as err:
        load_dataset(f"imagefolder:{root}", image_size=S)
    msg = str(err.value)
    assert "only in train: ['cat']" in msg and "only in val: ['dog']" in msg


def test_missing_root(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}", image_size=S)


def test_missing_val_folder(tmp_path):
    write_split(tmp_path / "r" / "train", TRAIN)
    with pytest.raises(UserError, match="is not a folder"):
        load_dataset(f"imagefolder:{tmp_path / 'r'}", image_size=S)


@pytest.mark.parametrize("crops", [None, CropSampler(seed=0)], ids=["eval", "train"])
def test_corrupt_image_names_the_file(root, crops):
    bad = root / "train" / "bee" / "x.png"
    bad.write_bytes(b"this is not a png at all" * 10)
    ds = load_dataset(f"imagefolder:{root}", image_size=S)  # scanning does not decode
    assert len(ds.train) == 7
    with pytest.raises(UserError, match="cannot decode image") as err:
        for _ in ds.train.iter_batches(4, crops=crops):
            pass
    assert str(bad) in str(err.value)


def test_corrupt_image_in_a_worker_names_the_file(root):
    bad = root / "train" / "bee" / "x.png"
    bad.write_bytes(b"\x89PNG garbage")
    ds = imagefolder.load(str(root), image_size=S, workers=2)
    with pytest.raises(UserError) as err:
        for _ in ds.train.iter_batches(4, crops=CropSampler(seed=0)):
            pass
    assert "x.png" in str(err.value)
    assert "Traceback" not in str(err.value) and len(str(err.value).splitlines()) == 1


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = (np.arange(20 * 20, dtype=np.uint16).reshape(20, 20) * 160)  # 0..63840
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(values).save(tmp_path / split / "a" / "deep.png")
    ds = load_dataset(f"imagefolder:{tmp_path}", image_size=20)
    assert Image.open(ds.test.samples[0][0]).mode == "I;16"
    (batch,) = list(ds.test.iter_batches(1))  # 20 -> 23 -> centre 20: nearly the whole image
    view = unnormalize(batch.images, ds.test)[0, 0]
    assert view.max() > 0.8 and view.min() < 0.1  # clipping would put nearly every pixel at 1.0
    assert view.mean() == pytest.approx(values.mean() / 65535, abs=0.05)


# ---- issue 16: the batch loader, several crops per decode, reduced JPEG decodes, the cached index ----


def test_several_crops_per_image_are_values_side_by_side(ds):
    sampler, k = CropSampler(seed=3, scale=(0.25, 1.0)), 3
    batches = list(ds.train.iter_batches(6, epoch=1, crops=sampler, order_seed=2, crops_per_image=k))
    assert [len(b.images) for b in batches] == [6, 6, 6]  # 2 images x 3 crops per batch
    assert ds.train.num_batches(6, crops_per_image=k) == 3
    for b in batches:
        ids = b.indices.tolist()
        assert ids[0::3] == ids[1::3] == ids[2::3] and b.crop_numbers.tolist() == [0, 1, 2, 0, 1, 2]
        views = unnormalize(b.images, ds.train)
        for r, (idx, j) in enumerate(zip(ids, b.crop_numbers.tolist())):
            img = pil_rgb(ds.train.samples[idx][0])
            W, H = img.size
            y, x, h, w, flip = sampler.sample_batch([idx], 1, H, W, crop=j)[0].tolist()
            assert b.crops[r].tolist() == [y, x, h, w, flip]
            ref = img.resize((S, S), Image.BILINEAR, box=(x, y, x + w, y + h))
            ref = ref.transpose(Image.FLIP_LEFT_RIGHT) if flip else ref
            torch.testing.assert_close(views[r], as_float(ref), atol=1e-5, rtol=0)
    # crop 0 of each image is its one crop of the epoch when K = 1
    one = {int(b.indices[i]): b.crops[i].tolist() for b in ds.train.iter_batches(4, epoch=1, crops=sampler) for i in range(len(b.indices))}
    assert all(b.crops[r].tolist() == one[int(b.indices[r])] for b in batches for r in range(0, 6, 3))
    with pytest.raises(UserError, match="multiple of data.crops_per_image"):
        next(ds.train.iter_batches(4, crops=sampler, crops_per_image=3))


def test_kept_loader_survives_an_abandoned_pass(root):
    sampler = CropSampler(seed=7)
    ds = load_dataset(f"imagefolder:{root}", image_size=S, workers=2)
    whole = collect(ds.train, epoch=1, crops=sampler, order_seed=0)
    loader = ds.train._loader
    it = ds.train.iter_batches(2, epoch=3, crops=sampler)
    next(it)  # a pass left half way (an exception, a break)
    again = collect(ds.train, epoch=1, crops=sampler, order_seed=0)
    assert ds.train._loader is loader  # the same loader and processes, not new ones per pass
    for key in ("images", "indices", "crops"):
        assert torch.equal(whole[key], again[key]), key
    # a pass inside a pass (nested) gets a loader of its own and both see every batch
    outer = [(b.indices.tolist(), len(list(ds.train.iter_batches(3)))) for b in ds.train.iter_batches(2)]
    assert [i for ids, _ in outer for i in ids] == list(range(6)) and all(n == 2 for _, n in outer)


def test_large_jpegs_decode_at_a_reduced_scale(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((256, 192), Image.BICUBIC)
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        smooth.save(tmp_path / split / "a" / "big.jpg", quality=95)
    ds = load_dataset(f"imagefolder:{tmp_path}", image_size=S)
    path = ds.train.samples[0][0]
    sampler = CropSampler(seed=1, scale=(0.9, 1.0))  # crops >= ~170 px a side: a 1/8 decode still has >= 16
    from PIL import JpegImagePlugin

    decoded, draft = [], JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        out = draft(self, mode, size)
        decoded.append(self.size)
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    (batch,) = list(ds.train.iter_batches(1, crops=sampler))
    assert decoded == [(32, 24)]  # 1/8 of 256 x 192: every crop side still >= 16 pixels
    y, x, h, w, flip = batch.crops[0].tolist()
    assert [y, x, h, w, flip] == sampler.sample_batch([0], 0, 192, 256)[0].tolist()  # in the file's pixels
    full = pil_rgb(path).resize((S, S), Image.BILINEAR, box=(x, y, x + w, y + h))
    full = as_float(full.transpose(Image.FLIP_LEFT_RIGHT) if flip else full)
    view = unnormalize(batch.images, ds.train)[0]
    assert (view - full).abs().mean() < 0.02  # the same crop; DCT scaling differs by rounding only
    (ev,) = list(ds.test.iter_batches(1))  # the evaluation view: short side 18 of 192 -> 1/8 too
    assert ev.images.shape == (1, 3, S, S) and decoded[-1] == (32, 24)


def test_folder_index_is_cached_and_checked_by_directory_times(root, monkeypatch):
    import os
    import time

    from label_refinery.data import folder_index

    old = time.time() - 60  # settled: changed more than SETTLE_NS before the scan
    for d, _, _ in os.walk(root):
        os.utime(d, (old, old))
    first = load_dataset(f"imagefolder:{root}", image_size=S)
    heights, widths = first.train.image_sizes()
    assert folder_index.cache_file(root / "train").is_file()
    folder_index._MEMORY.clear()  # as a new process: the cache file alone

    def no_scan(folder):
        raise AssertionError(f"{folder} scanned again")

    monkeypatch.setattr(folder_index, "scan", no_scan)
    again = load_dataset(f"imagefolder:{root}", image_size=S)
    assert again.fingerprint() == first.fingerprint() and again.train.samples == first.train.samples
    # read from the cache, not from the files' headers: the sizes the first load measured
    assert again.train.index.sizes is not None and again.train.index.sizes.tolist() == np.stack([heights, widths], 1).tolist()
    assert [a.tolist() for a in again.train.image_sizes()] == [heights.tolist(), widths.tolist()]
    monkeypatch.undo()
    write_image(root / "train" / "cat" / "c9.png", "RGB", (20, 20), seed=5)  # the class folder's time moves
    folder_index._MEMORY.clear()
    assert len(load_dataset(f"imagefolder:{root}", image_size=S).train) == 7
    # the fingerprint is the one earlier releases computed (relative path|class|bytes per file)
    import hashlib

    h = hashlib.sha256()
    for path, target in first.train.samples:
        h.update(f"{Path(path).relative_to(root / 'train')}|{target}|{Path(path).stat().st_size}\n".encode())
    assert first.train.fingerprint() == h.hexdigest()


def test_train_with_several_crops_per_image(root, tmp_path):
    overrides = {"data.dataset": f"imagefolder:{root}", "data.image_size": 16, "optim.epochs": 1, "optim.batch_size": 4,
                 "model": "cnn-small", "data.crops_per_image": 2}  # fmt: skip
    out = tmp_path / "gen1"
    label_refinery.train_generation(label_refinery.load_config(overrides=overrides), out, log=lambda _: None)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["images"] == 12  # 3 steps of 2 images x 2 crops
    for bad, match in (({"optim.batch_size": 5}, "multiple of data.crops_per_image"),
                       ({"labels.source": "store"}, "needs labels.source=live"),
                       ({"data.crops_per_image": 0}, "must be >= 1")):  # fmt: skip
        with pytest.raises(UserError, match=match):
            label_refinery.load_config(overrides={**overrides, **bad})
