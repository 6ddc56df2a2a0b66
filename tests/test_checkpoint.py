import json
import os

import pytest
import torch

from label_refinery import UserError
from label_refinery.checkpoint import (
    atomic_write,
    load_checkpoint,
    load_tensors,
    optimizer_tensors,
    restore_optimizer,
    save_final,
    save_tensors,
)
from label_refinery.models import create_model


def _meta():
    return {"model": "cnn-small", "in_chans": 1, "classes": [str(i) for i in range(10)], "generation": 1}


def test_round_trip(tmp_path):
    model = create_model("cnn-small", 1, 10).eval()
    meta = save_final(tmp_path, model, _meta())
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "meta.json").is_file()
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.sha256 == meta["sha256"] == json.loads((tmp_path / "meta.json").read_text())["sha256"]
    rebuilt = ckpt.build_model().eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), rebuilt(x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k])
    assert load_checkpoint(tmp_path / "model.safetensors").meta["generation"] == 1


def test_tampered_weights_are_refused(tmp_path):
    save_final(tmp_path, create_model("cnn-small", 1, 10), _meta())
    other = create_model("cnn-small", 1, 10)
    save_tensors(tmp_path / "model.safetensors", other.state_dict(), _meta())
    with pytest.raises(UserError, match="SHA-256"):
        load_checkpoint(tmp_path)


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="corrupt"):
        load_tensors(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(UserError, match="not a label-refinery checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(UserError, match="never loaded"):
        load_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")

    def boom(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(UserError, match="is the disk full.*the previous f.bin is intact"):
        atomic_write(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


def test_optimizer_state_round_trip(tmp_path):
    model = create_model("cnn-small", 1, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    opt.step()
    tensors, info = optimizer_tensors(opt)
    save_tensors(tmp_path / "s.safetensors", tensors, {"optimizer": info})
    loaded, meta, _ = load_tensors(tmp_path / "s.safetensors")
    opt2 = torch.optim.SGD(model.parameters(), lr=0.5)
    restore_optimizer(opt2, loaded, meta["optimizer"])
    assert opt2.param_groups[0]["nesterov"] and opt2.param_groups[0]["lr"] == 0.1
    for p in model.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[p]["momentum_buffer"])


def test_weights_check_themselves_without_meta_json(tmp_path):
    """Issue 28: the header's digest covers the metadata and every tensor byte, so a damaged
    model.safetensors copied without its meta.json is refused (a flipped weight byte loaded silently)."""
    save_final(tmp_path, create_model("cnn-small", 1, 10), _meta())
    (tmp_path / "meta.json").unlink()
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for offset in (header + 5, len(data) - 3):  # a weight byte near the start and at the end
        damaged = bytearray(data)
        damaged[offset] ^= 0x10
        weights.write_bytes(bytes(damaged))
        with pytest.raises(UserError, match="do not match the digest in its own header"):
            load_checkpoint(weights)
    # an edited number in the header's metadata (still valid JSON) is caught the same way
    text = bytes(data[:header]).replace(b'\\"generation\\": 1', b'\\"generation\\": 7')
    assert text != bytes(data[:header]) and len(text) == header
    weights.write_bytes(text + bytes(data[header:]))
    with pytest.raises(UserError, match="do not match the digest in its own header"):
        load_checkpoint(weights)
    weights.write_bytes(bytes(data))
    assert load_checkpoint(weights).meta["generation"] == 1


def test_read_meta_refuses_an_edited_or_damaged_meta_json(tmp_path):
    from label_refinery.checkpoint import read_meta

    save_final(tmp_path, create_model("cnn-small", 1, 10), {**_meta(), "metrics": {"test_top1": 53.48}})
    assert read_meta(tmp_path)["metrics"]["test_top1"] == 53.48
    path = tmp_path / "meta.json"
    good = path.read_text()
    path.write_text(good.replace("53.48", "99.9"))  # the number a summary would print
    with pytest.raises(UserError, match="does not match .*model.safetensors"):
        read_meta(tmp_path)
    path.write_bytes(good.encode()[:-40])  # truncated
    with pytest.raises(UserError, match="corrupt or truncated"):
        read_meta(tmp_path)
    path.write_bytes(good.encode().replace(b'"model"', b'"m\xe9del"'))  # not UTF-8
    with pytest.raises(UserError, match="corrupt or truncated"):
        read_meta(tmp_path)
