import json

import numpy as np
import pytest
import torch
from torch import nn

from label_refinery import UserError
from label_refinery.config import OptimConfig
from label_refinery.data import CropSampler, load_dataset
from label_refinery.labels import LiveRefinery
from label_refinery.labels import bake as bake_mod
from label_refinery.labels import store as store_mod
from label_refinery.labels.bake import BakeSpec, bake
from label_refinery.labels.store import StoredLabels, expand_topk, index_dtype
from label_refinery.models import create_model
from label_refinery.training.engine import lr_schedule, make_optimizer, train_one_epoch
from tests.harness import FailsAt, assert_same_arrays, crash, rerun

SAMPLER = CropSampler(seed=3, scale=(0.25, 1.0))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def refinery(digits):
    """A briefly trained refinery: peaked, realistic probabilities."""
    from label_refinery.labels import GroundTruth

    torch.manual_seed(0)
    model = create_model("cnn-small", 1, 10)
    cfg = OptimConfig(lr=0.05, epochs=3)
    opt = make_optimizer(model, cfg)
    lr_at = lr_schedule(cfg, digits.train.num_batches(64, drop_last=True))
    for epoch in range(3):
        batches = digits.train.iter_batches(64, epoch=epoch, crops=SAMPLER, order_seed=0, drop_last=True)
        train_one_epoch(model, GroundTruth(10), batches, opt, lr_at, first_step=epoch * 22)
    return model.eval()


def _bake(model, ds, out, log=lambda _: None, **kw):
    args = dict(num_classes=10, epochs=2, top_k=10, provenance={"dataset_fingerprint": ds.fingerprint(), "image_size": 8})
    args.update(kw)
    return bake(model, ds.train, out, BakeSpec(**args), sampler=SAMPLER, log=log)


def _open(path, ds, **kw):
    args = dict(split=ds.train, num_classes=10, dataset_fingerprint=ds.fingerprint(), image_size=8, sampler=SAMPLER, epochs=2)
    args.update(kw)
    return StoredLabels.open(path, **args)


def test_expansion_rule():
    idx = torch.tensor([[3, 1], [0, 2]])
    p = torch.tensor([[0.5, 0.3], [0.9, 0.2]])  # second row: rounding pushed the sum past 1
    q = expand_topk(idx, p, 5)
    assert torch.allclose(q.sum(1), torch.ones(2))
    assert torch.allclose(q[0], torch.tensor([0.2 / 3, 0.3, 0.2 / 3, 0.5, 0.2 / 3]))  # leftover 0.2 spread over 3
    assert torch.allclose(q[1], torch.tensor([0.9, 0.0, 0.2, 0.0, 0.0]) / 1.1)
    full = expand_topk(torch.tensor([[1, 0]]), torch.tensor([[0.6, 0.4]]), 2)
    assert torch.allclose(full, torch.tensor([[0.4, 0.6]]))


@pytest.mark.parametrize("dtype, delta", [("fp16", 2**-12), ("uint8", 1 / 510)])
def test_round_trip_within_quantization(tmp_path, digits, refinery, dtype, delta):
    manifest = _bake(refinery, digits, tmp_path / "s", prob_dtype=dtype)
    assert manifest["shape"] == [2, len(digits.train), 10] and (tmp_path / "s/manifest.json").is_file()
    stored = _open(tmp_path / "s", digits)
    live = LiveRefinery(refinery)
    for epoch in (0, 1):
        for batch in digits.train.iter_batches(200, epoch=epoch, crops=SAMPLER, order_seed=5):
            q_live, q_store = live(batch), stored(batch)
            # the documented bound: (K + 1) * delta, here K = C = 10
            assert (q_live - q_store).abs().max() <= 11 * delta


def test_top5_keeps_the_top_and_spreads_the_rest(tmp_path, digits, refinery):
    _bake(refinery, digits, tmp_path / "s", top_k=5)
    stored = _open(tmp_path / "s", digits)
    batch = next(digits.train.iter_batches(64, epoch=1, crops=SAMPLER, order_seed=0))
    q_live, q_store = LiveRefinery(refinery)(batch), stored(batch)
    assert torch.equal(q_live.argmax(1), q_store.argmax(1))
    top = q_live.topk(5, 1)
    assert torch.allclose(q_store.gather(1, top.indices), top.values, atol=2e-3)
    assert torch.allclose(q_store.sum(1), torch.ones(64), atol=1e-5)
    assert store_mod.bytes_per_crop(10, 5, "fp16") == 20


def test_training_step_from_store_equals_live_step(tmp_path, digits, refinery):
    _bake(refinery, digits, tmp_path / "s")
    sources = {"live": LiveRefinery(refinery), "store": _open(tmp_path / "s", digits)}
    params = {}
    cfg = OptimConfig(lr=0.1, epochs=1)
    for name, labels in sources.items():
        torch.manual_seed(1)
        student = create_model("cnn-small", 1, 10)
        opt = make_optimizer(student, cfg)
        batches = digits.train.iter_batches(64, epoch=1, crops=SAMPLER, order_seed=1, drop_last=True)
        train_one_epoch(student, labels, [next(batches)], opt, lr_schedule(cfg, 1))
        params[name] = torch.cat([p.detach().flatten() for p in student.parameters()])
    assert torch.allclose(params["live"], params["store"], atol=1e-4)


def test_mismatched_stores_are_refused(tmp_path, digits, refinery):
    _bake(refinery, digits, tmp_path / "s")
    cases = [
        (dict(sampler=CropSampler(seed=4)), "another sampler"),
        (dict(sampler=CropSampler(seed=3, scale=(0.5, 1.0))), "another sampler"),
        (dict(epochs=3), "holds 2 epochs"),
        (dict(num_classes=5), "5"),
        (dict(dataset_fingerprint="0" * 64), "other data"),
        (dict(image_size=16), "image size"),
        (dict(refinery_sha256="f" * 64), "another refinery"),
        (dict(temperature=2.0), "temperature"),
    ]
    for kw, phrase in cases:
        with pytest.raises(UserError, match=phrase):
            _open(tmp_path / "s", digits, **kw)
    subset = load_dataset("digits", train_subset=100)
    with pytest.raises(UserError, match="not this run's training images"):
        _open(tmp_path / "s", subset, dataset_fingerprint=subset.fingerprint(), split=subset.train)


def test_incomplete_or_truncated_stores_are_refused(tmp_path, digits, refinery):
    _bake(refinery, digits, tmp_path / "s")
    data = (tmp_path / "s/probs.npy").read_bytes()
    (tmp_path / "s/probs.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        _open(tmp_path / "s", digits)
    (tmp_path / "s/manifest.json").unlink()
    with pytest.raises(UserError, match="did not finish"):
        _open(tmp_path / "s", digits)
    with pytest.raises(UserError, match="no manifest"):
        _open(tmp_path / "nothing", digits)


def baker(model, ds, **kw):
    """The run of the harness: bake ``model``'s labels of ``ds`` into a folder."""
    return lambda folder, log: _bake(model, ds, folder, log=log, **kw)


def test_interrupted_bake_resumes_to_identical_arrays(tmp_path, digits, refinery, monkeypatch):
    _bake(refinery, digits, tmp_path / "whole", top_k=3, batch_size=100)
    monkeypatch.setattr(bake_mod, "FLUSH_SECONDS", 0.0)  # flush after every batch
    # the 20th batch is in the middle of epoch 2 (15 batches per epoch)
    crash(baker(FailsAt(refinery, 20), digits, top_k=3, batch_size=100), tmp_path / "resumed")
    assert not (tmp_path / "resumed/manifest.json").exists()
    assert json.loads((tmp_path / "resumed/progress.json").read_text()) == {"epoch": 1, "batch": 4, "batch_size": 100}
    _, messages = rerun(baker(refinery, digits, top_k=3, batch_size=100), tmp_path / "resumed")
    assert any("resuming at epoch 2, batch 4" in m for m in messages)
    assert_same_arrays(tmp_path / "whole", tmp_path / "resumed", ("indices", "probs", "ids"))
    # a finished store is reused, and other settings are refused
    assert _bake(refinery, digits, tmp_path / "whole", top_k=3, batch_size=100)["top_k"] == 3
    with pytest.raises(UserError, match="other settings"):
        _bake(refinery, digits, tmp_path / "whole", top_k=4)


def test_more_than_65535_classes_keep_exact_indices(tmp_path):
    assert index_dtype(65535) == np.uint16 and index_dtype(65536) == np.int32
    ds = load_dataset("digits", train_subset=24)
    C = 70_000
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    with torch.no_grad():
        model[1].bias[65_536:] += 5.0  # the top classes all lie beyond uint16
    spec = BakeSpec(num_classes=C, epochs=1, top_k=3, channels_last=False,
                    provenance={"dataset_fingerprint": ds.fingerprint(), "image_size": 8})
    manifest = bake(model, ds.train, tmp_path / "big", spec, sampler=SAMPLER, log=lambda _: None)
    assert manifest["index_dtype"] == "int32"
    stored = np.load(tmp_path / "big/indices.npy")[0]
    batch = next(ds.train.iter_batches(24, epoch=0, crops=SAMPLER))
    with torch.no_grad():
        expected = model(batch.images).topk(3, 1).indices.numpy()
    assert stored.min() > 65_535 and np.array_equal(stored, expected)


def test_static_labels_are_identical_across_crops(tmp_path, digits, refinery):
    spec = BakeSpec(num_classes=10, epochs=1, top_k=10, provenance={"dataset_fingerprint": digits.fingerprint(), "image_size": 8})
    bake(refinery, digits.train, tmp_path / "static", spec, sampler=None, log=lambda _: None)
    stored = _open(tmp_path / "static", digits, sampler=CropSampler(seed=99), epochs=7)  # any crops, any epochs
    a = next(digits.train.iter_batches(32, epoch=0, crops=CropSampler(seed=99)))
    b = next(digits.train.iter_batches(32, epoch=5, crops=CropSampler(seed=99)))
    assert not torch.equal(a.crops, b.crops) and torch.equal(a.indices, b.indices)
    assert torch.equal(stored(a), stored(b))
    # and it is the refinery's label of the whole image
    whole = next(digits.train.iter_batches(32))
    with torch.no_grad():
        expected = torch.softmax(refinery(whole.images), 1)
    assert torch.allclose(stored(a), expected, atol=1e-3)


def test_expansion_never_ranks_a_top_k_class_below_the_rest():
    # uint8 rounded the 5th class to 0 while 0.1 of mass is left for 995 others
    idx = torch.tensor([[0, 1, 2, 3, 4]])
    p = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.0]])
    q = expand_topk(idx, p, 1000)
    assert q[0, 4] >= q[0, 5:].max() and torch.allclose(q.sum(1), torch.ones(1))
    zero = expand_topk(torch.tensor([[0, 1]]), torch.zeros(1, 2), 2)  # nothing survived rounding
    assert torch.allclose(zero, torch.full((1, 2), 0.5))


def test_bake_resumes_with_another_batch_size_and_path_spelling(tmp_path, digits, refinery, monkeypatch):
    _bake(refinery, digits, tmp_path / "whole", top_k=3, batch_size=100)
    monkeypatch.setattr(bake_mod, "FLUSH_SECONDS", 0.0)
    crash(baker(FailsAt(refinery, 20), digits, top_k=3, batch_size=100, provenance={
        "dataset_fingerprint": digits.fingerprint(), "image_size": 8, "refinery_path": "runs/g1/model.safetensors"}), tmp_path / "resumed")
    rerun(baker(refinery, digits, top_k=3, batch_size=64, provenance={
        "dataset_fingerprint": digits.fingerprint(), "image_size": 8, "refinery_path": "/abs/runs/g1/model.safetensors"}), tmp_path / "resumed")
    assert_same_arrays(tmp_path / "whole", tmp_path / "resumed", ("indices", "probs"))


def test_bake_into_a_folder_that_is_not_a_store_and_removes_only_its_own_files(tmp_path, digits, refinery):
    """Issue 28: a folder of one's own is refused (--force writes into it), and a bake deletes only
    the progress files it wrote, not every ``progress*.json``."""
    mine = tmp_path / "mine"
    mine.mkdir()
    np.save(mine / "ids.npy", np.arange(3))  # the user's own array
    (mine / "progress-notes.json").write_text('{"mine": true}\n')
    spec = BakeSpec(num_classes=10, epochs=1, top_k=3, provenance={"dataset_fingerprint": digits.fingerprint(), "image_size": 8})
    with pytest.raises(UserError, match=r"is not empty and is not a label-refinery store folder \(it holds ids.npy, progress-notes.json\).*--force"):
        bake(refinery, digits.train, mine, spec, sampler=SAMPLER, log=lambda _: None)
    assert np.array_equal(np.load(mine / "ids.npy"), np.arange(3)) and not (mine / "bake.json").exists()
    bake(refinery, digits.train, mine, spec, sampler=SAMPLER, log=lambda _: None, force=True)
    assert (mine / "progress-notes.json").read_text() == '{"mine": true}\n'  # not a progress file of ours
    assert _open(mine, digits, epochs=1).probs.shape == (1, len(digits.train), 3)
    # an unfinished store of ours baked again from the start: its stale progress goes, the notes stay
    (mine / "manifest.json").unlink()
    (mine / "indices.npy").unlink()
    (mine / "progress.rank1of2.json").write_text('{"epoch": 1, "batch": 0}\n')  # of an earlier two-process bake
    bake(refinery, digits.train, mine, spec, sampler=SAMPLER, log=lambda _: None)
    assert not (mine / "progress.rank1of2.json").exists() and (mine / "progress-notes.json").is_file()
    assert (mine / "manifest.json").is_file()


def test_a_store_being_baked_refuses_a_second_bake(tmp_path, digits, refinery):
    from tests.harness import holding

    spec = BakeSpec(num_classes=10, epochs=1, top_k=3, provenance={"dataset_fingerprint": digits.fingerprint(), "image_size": 8})
    with holding(tmp_path / "s", "store") as other:
        with pytest.raises(UserError, match=rf"s is being written by another label-refinery command \(PID {other.pid}: "):
            bake(refinery, digits.train, tmp_path / "s", spec, sampler=SAMPLER, log=lambda _: None)
    assert bake(refinery, digits.train, tmp_path / "s", spec, sampler=SAMPLER, log=lambda _: None)["top_k"] == 3
# ---- array digests (issue 28) ----


def _edit(path, epoch, value):
    """One stored entry of ``epoch`` (row 5, column 0) set to ``value`` in place, as an editor would."""
    a = np.load(path, mmap_mode="r+")
    a[epoch, 5, 0] = value
    a.flush()


def _batch(ds, epoch):
    return next(ds.train.iter_batches(64, epoch=epoch, crops=SAMPLER))


def test_edited_labels_never_train_under_the_default_check(tmp_path, digits, refinery):
    """The default check: each epoch's digests before its first lookup; the full check: every epoch."""
    manifest = _bake(refinery, digits, tmp_path / "s", epochs=3)
    assert [len(manifest["array_digests"][k]) for k in ("indices", "probs")] == [3, 3]
    _edit(tmp_path / "s/probs.npy", 2, 0.5)  # epoch 2: a run of 2 epochs never reads it
    store = _open(tmp_path / "s", digits)
    assert store(_batch(digits, 0)).shape == (64, 10) and store(_batch(digits, 1)).shape == (64, 10)
    with pytest.raises(UserError, match=f"label store array {tmp_path / 's/probs.npy'}, epoch 2, does not match its digest"):
        store(_batch(digits, 2))
    with pytest.raises(UserError, match="probs.npy, epoch 2, does not match its digest"):
        _open(tmp_path / "s", digits).verify()
    _edit(tmp_path / "s/indices.npy", 0, 3)  # epoch 0: the first batch is refused, before any label of it is used
    store = _open(tmp_path / "s", digits)
    with pytest.raises(UserError, match="indices.npy, epoch 0, does not match its digest in manifest.json"):
        store(_batch(digits, 0))
    ids = np.load(tmp_path / "s/ids.npy", mmap_mode="r+")
    ids[0] = ids[1]
    ids.flush()
    with pytest.raises(UserError, match="ids.npy does not match its digest"):
        _open(tmp_path / "s", digits)


def test_stores_from_before_the_digests_open_with_their_checks(tmp_path, digits, refinery):
    _bake(refinery, digits, tmp_path / "new")
    _bake(refinery, digits, tmp_path / "old")
    manifest = json.loads((tmp_path / "old/manifest.json").read_text())
    del manifest["array_digests"]  # as bake wrote it before the digests
    (tmp_path / "old/manifest.json").write_text(json.dumps(manifest))
    batch = _batch(digits, 1)
    assert torch.equal(_open(tmp_path / "old", digits)(batch), _open(tmp_path / "new", digits)(batch))
    assert _open(tmp_path / "old", digits).verify().digests is None
    _edit(tmp_path / "old/indices.npy", 1, 99)  # a class index that does not exist
    row, image = 5, int(np.load(tmp_path / "old/ids.npy")[5])
    with pytest.raises(UserError, match=f"indices.npy, epoch 1, row {row} \\(image {image}\\): class index 99 is out of range"):
        _open(tmp_path / "old", digits)(batch)
    _bake(refinery, digits, tmp_path / "fp16", prob_dtype="fp16")
    manifest = json.loads((tmp_path / "fp16/manifest.json").read_text())
    del manifest["array_digests"]
    (tmp_path / "fp16/manifest.json").write_text(json.dumps(manifest))
    _edit(tmp_path / "fp16/probs.npy", 0, np.nan)
    with pytest.raises(UserError, match="probs.npy, epoch 0, row 5 .*probability nan is out of range"):
        _open(tmp_path / "fp16", digits).verify()


def test_a_truncated_manifest_or_a_missing_epoch_is_one_clear_line(tmp_path, digits, refinery):
    _bake(refinery, digits, tmp_path / "s")
    store = _open(tmp_path / "s", digits)
    with pytest.raises(UserError, match="holds epochs 0..1, asked for epoch 5"):
        store(_batch(digits, 5))
    text = (tmp_path / "s/manifest.json").read_text()
    (tmp_path / "s/manifest.json").write_text(text[:40])
    with pytest.raises(UserError, match="label store manifest .*manifest.json is not valid JSON \\(truncated\\?\\).*bake the store again"):
        _open(tmp_path / "s", digits)
    (tmp_path / "s/manifest.json").write_bytes(text.encode().replace(b'"', b'\xb3', 1))  # bytes flipped (bench/faults.py)
    for reader in (lambda: _open(tmp_path / "s", digits), lambda: _bake(refinery, digits, tmp_path / "s")):
        with pytest.raises(UserError, match="manifest.json is not UTF-8 text \\(byte 0xb3 on line 2\\)"):
            reader()  # opening it, and a bake that would reuse it
