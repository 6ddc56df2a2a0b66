import json
import os

import pytest
import torch

from label_refinery import UserError
from label_refinery.checkpoint import (
    META_KEY,
    atomic_write,
    load_checkpoint,
    load_tensors,
    optimizer_tensors,
    read_header,
    read_meta,
    restore_optimizer,
    save_final,
    save_tensors,
    tensors_sha256,
)
from label_refinery.models import create_model
from tests.harness import REPO


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


# ---- digests inside the artefacts (issue 28) ----


def _flip_tensor_byte(path) -> None:
    """One byte in the middle of the tensors (after the header) changed, as a bad disk or copy would."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + (len(data) - start) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_the_header_carries_the_tensors_digest(tmp_path):
    model = create_model("cnn-small", 1, 10)
    save_final(tmp_path, model, _meta())
    meta, digests = read_header(tmp_path / "model.safetensors")
    assert meta["generation"] == 1 and digests["tensors"] == tensors_sha256(model.state_dict())
    assert tensors_sha256({"a": torch.zeros(2), "b": torch.ones(1)}) != tensors_sha256({"a": torch.ones(1), "b": torch.zeros(2)})


def test_corrupt_weights_without_their_meta_json_are_refused(tmp_path):
    """A model.safetensors copied alone, one byte flipped: once loaded silently (issue 28), now refused."""
    save_final(tmp_path / "gen1", create_model("cnn-small", 1, 10), _meta())
    (tmp_path / "alone").mkdir()
    lone = tmp_path / "alone" / "model.safetensors"
    lone.write_bytes((tmp_path / "gen1/model.safetensors").read_bytes())
    load_checkpoint(lone)  # intact: loads without meta.json
    _flip_tensor_byte(lone)
    with pytest.raises(UserError, match=f"{lone} is corrupt: its tensors do not match the SHA-256 in its header"):
        load_checkpoint(tmp_path / "alone")
    state = tmp_path / "state.safetensors"  # the training state has the same check
    save_tensors(state, {"w": torch.arange(100.0)}, {"next": {"epoch": 1}})
    _flip_tensor_byte(state)
    with pytest.raises(UserError, match="its tensors do not match"):
        load_tensors(state)


def test_an_edited_header_is_refused(tmp_path):
    save_final(tmp_path, create_model("cnn-small", 1, 10), _meta())
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    assert data.count(b'generation\\": 1') == 1
    weights.write_bytes(data.replace(b'generation\\": 1', b'generation\\": 7'))  # same length, same tensors
    with pytest.raises(UserError, match="its metadata does not match the SHA-256 in its header"):
        load_checkpoint(weights)
    with pytest.raises(UserError, match="its metadata does not match"):
        read_meta(tmp_path)


def test_checkpoints_from_before_the_digests_still_load(tmp_path):
    from safetensors.torch import save as st_save

    model = create_model("cnn-small", 1, 10)
    old = {k: v.contiguous() for k, v in model.state_dict().items()}
    (tmp_path / "model.safetensors").write_bytes(st_save(old, metadata={META_KEY: json.dumps({"format": "label-refinery-checkpoint/1", **_meta()})}))
    assert read_header(tmp_path / "model.safetensors")[1] is None
    assert load_checkpoint(tmp_path).meta["generation"] == 1  # no digest, no sidecar: nothing to check against
    fixture = REPO / "tests/fixtures/run-v0.1/gen1"  # a run of version 0.1: checked by meta.json's SHA-256
    assert load_checkpoint(fixture).meta["model"] == read_meta(fixture)["model"] == "cnn-small:width=0.25"
    assert read_meta(fixture)["metrics"]["test_top1"] == pytest.approx(59.33, abs=0.01)


def test_meta_json_is_read_once_and_checked(tmp_path):
    """read_meta, the one reader of meta.json: truncated, edited or orphaned files are one clear line."""
    save_final(tmp_path, create_model("cnn-small", 1, 10), {**_meta(), "metrics": {"test_top1": 53.48}})
    sidecar = tmp_path / "meta.json"
    good = sidecar.read_text()
    assert read_meta(tmp_path)["metrics"]["test_top1"] == 53.48 == read_meta(sidecar)["metrics"]["test_top1"]
    sidecar.write_text(good[: len(good) // 2])
    with pytest.raises(UserError, match=f"generation metadata {sidecar} is not valid JSON \\(truncated\\?\\)"):
        read_meta(tmp_path)
    with pytest.raises(UserError, match="is not valid JSON"):
        load_checkpoint(tmp_path)
    sidecar.write_text(good.replace("53.48", "99.9"))  # a better number, typed in
    for read in (read_meta, load_checkpoint):
        with pytest.raises(UserError, match=f"{sidecar} does not match the metadata in the header of .*\\['metrics'\\]"):
            read(tmp_path)
    sidecar.write_text(good)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has no model.safetensors beside it"):
        read_meta(tmp_path)


def test_checkpoints_of_the_first_digest_format_still_check_themselves(tmp_path):
    """The first digest format (one SHA-256 of the metadata text, a NUL and the tensor bytes) loads, checked."""
    from safetensors.torch import save as st_save

    from label_refinery.checkpoint import DIGEST_KEY
    from label_refinery.files import sha256_bytes

    tensors = {k: v.contiguous() for k, v in create_model("cnn-small", 1, 10).state_dict().items()}
    text = json.dumps({"format": "label-refinery-checkpoint/1", **_meta()}, sort_keys=True)
    plain = st_save(tensors, metadata={META_KEY: text})
    body = plain[8 + int.from_bytes(plain[:8], "little") :]
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(st_save(tensors, metadata={META_KEY: text, DIGEST_KEY: sha256_bytes(text.encode() + b"\0" + body)}))
    assert load_checkpoint(weights).meta["generation"] == 1
    _flip_tensor_byte(weights)
    with pytest.raises(UserError, match="its tensors do not match the SHA-256 in its header"):
        load_checkpoint(weights)
