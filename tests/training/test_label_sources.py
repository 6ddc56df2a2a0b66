"""A generation trained from each label source: an oracle live refinery, the refinery's own temperature,
label stores baked by a chain or named by the config (training/generation.py, training/build.py)."""

import json

import pytest
import torch
import torch.nn.functional as F

from label_refinery import load_config, run_chain
from label_refinery.data import CropSampler, load_dataset
from label_refinery.labels import LiveRefinery
from label_refinery.labels.bake import BakeSpec, bake
from tests.harness import assert_same_weights


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_oracle_refinery_reproduces_generation_1_exactly(tmp_path, monkeypatch):
    """Issue 15: a refinery whose softmax is the one-hot ground truth, through the live path of a
    refined generation (a real refinery forward per step, its checkpoint, provenance and loss), trains
    the same weights as generation 1 with the same seed, bit for bit: the refined path adds nothing
    but its labels."""
    import label_refinery.training.setup as setup
    from label_refinery import load_config, train_generation

    class Oracle(LiveRefinery):
        def __call__(self, batch):
            super().__call__(batch)  # the real refinery forward, whose output the oracle replaces
            return F.softmax(200.0 * F.one_hot(batch.targets, self.num_classes).float(), dim=1)  # exactly one-hot

    ds = load_dataset("digits")
    base = {"data.dataset": "digits", "optim.epochs": 2, "optim.batch_size": 64, "device": "cpu", "seed": 3}
    train_generation(load_config(overrides={**base, "seed": 9}), tmp_path / "refinery", dataset=ds, log=lambda _: None)
    train_generation(load_config(overrides=base), tmp_path / "gen1", dataset=ds, log=lambda _: None)
    real = setup.build_label_source

    def oracle_source(*args, **kwargs):
        live = real(*args, **kwargs)
        return Oracle(live.model, provenance=live.provenance)

    monkeypatch.setattr(setup, "build_label_source", oracle_source)
    meta = train_generation(load_config(overrides={**base, "refinery": str(tmp_path / "refinery")}), tmp_path / "oracle",
                            dataset=ds, log=lambda _: None)
    assert meta["labels"]["kind"] == "live-refinery"
    assert_same_weights(tmp_path / "gen1", tmp_path / "oracle")


def test_refinery_temperature_sharpens_the_refinerys_softmax_alone(tmp_path):
    """labels.refinery_temperature applies to the refinery's softmax only (the loss keeps labels.temperature)."""
    from label_refinery import load_config, train_generation
    from label_refinery.training.build import build_label_source, build_step

    ds = load_dataset("digits")
    base = {"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64, "device": "cpu"}
    train_generation(load_config(overrides=base), tmp_path / "g1", dataset=ds, log=lambda _: None)
    cfg = load_config(overrides={**base, "refinery": str(tmp_path / "g1"), "labels.refinery_temperature": 0.5})
    labels = build_label_source(cfg, ds, folder=tmp_path / "g2", sampler=CropSampler(1), device="cpu",
                                fingerprint=ds.fingerprint(), log=lambda _: None)
    batch = next(ds.train.iter_batches(16, crops=CropSampler(1), order_seed=1))
    with torch.no_grad():
        logits = labels.model(batch.images)
    assert torch.allclose(labels(batch), F.softmax(logits / 0.5, 1), atol=1e-6)  # sharper than T = 1
    z = torch.randn(16, 10)
    q = labels(batch)
    assert torch.allclose(build_step(cfg, ds, labels).loss(z, q, batch.targets), -(q * F.log_softmax(z, 1)).sum(1).mean())


def test_chain_from_store_records_provenance(tmp_path):
    cfg = load_config(overrides={"data.dataset": "digits", "optim.epochs": 1, "chain.generations": 2, "labels.source": "store"})
    rows = run_chain(cfg, tmp_path / "c", log=lambda _: None)
    m1 = json.loads((tmp_path / "c/gen1/meta.json").read_text())
    m2 = json.loads((tmp_path / "c/gen2/meta.json").read_text())
    assert m1["labels"]["kind"] == "ground-truth" and m2["labels"]["kind"] == "stored"
    assert m2["labels"]["sha256"] == m1["sha256"] and rows[1]["refinery"] == "gen1 (cnn-small)"
    manifest = json.loads((tmp_path / "c/gen2/labels/manifest.json").read_text())
    assert manifest["sampler"]["seed"] == 1 and manifest["epochs"] == 1 and manifest["top_k"] == 5


def test_train_from_a_named_store_reruns_as_a_skip(tmp_path, digits):
    from label_refinery import train_generation

    fast = {"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64}
    train_generation(load_config(overrides=fast), tmp_path / "g1", dataset=digits, log=lambda _: None)
    from label_refinery.checkpoint import load_checkpoint
    from label_refinery.training.build import store_provenance

    live = LiveRefinery.from_checkpoint(tmp_path / "g1")
    spec = BakeSpec(num_classes=10, epochs=1, provenance=store_provenance(live, digits.fingerprint(), 8))
    bake(live.model, digits.train, tmp_path / "store", spec, sampler=CropSampler(1, (0.25, 1.0)), log=lambda _: None)
    cfg = load_config(overrides={**fast, "seed": 1, "labels.store": str(tmp_path / "store"), "labels.source": "store"})
    first = train_generation(cfg, tmp_path / "g2", dataset=digits, log=lambda _: None)
    assert first["labels"]["sha256"] == load_checkpoint(tmp_path / "g1").sha256
    messages = []
    again = train_generation(cfg, tmp_path / "g2", dataset=digits, log=messages.append)
    assert again == first and any("skipping" in m for m in messages)
