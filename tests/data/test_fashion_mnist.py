import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from label_refinery import UserError
from label_refinery.data import fashion_mnist, load_dataset


def _present():
    try:
        fashion_mnist.locate(download=False)
        return True
    except UserError:
        return False


needs_data = pytest.mark.skipif(not _present(), reason="Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")


@needs_data
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist")
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert torch.equal(torch.bincount(ds.train.targets), torch.full((10,), 6000))
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    mean = ds.train.images.float().div(255).mean().item()
    assert abs(mean - fashion_mnist.MEAN[0]) < 1e-3


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_data_dir_comes_first_and_subset(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for part, n in (("train", 50), ("t10k", 20)):
        _write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path), train_subset=30)
    assert len(ds.train) == 30 and len(ds.test) == 20
    assert ds.train.ids.tolist() == sorted(ds.train.ids.tolist()) and ds.train.ids.max() < 50
    # the subset keeps the images' original indices (crops and labels are keyed by them)
    full = load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert torch.equal(ds.train.images, full.train.images[ds.train.ids])
    monkeypatch.setenv("LABEL_REFINERY_DATA", str(tmp_path))
    assert fashion_mnist.locate(download=False)["train_images"].parent == tmp_path


def test_truncated_idx_file(tmp_path):
    _write_idx(tmp_path / "x.gz", np.zeros((4, 28, 28)))
    data = gzip.decompress((tmp_path / "x.gz").read_bytes())[:-100]
    (tmp_path / "y.gz").write_bytes(gzip.compress(data))
    with pytest.raises(UserError, match="truncated"):
        fashion_mnist.read_idx(tmp_path / "y.gz")
