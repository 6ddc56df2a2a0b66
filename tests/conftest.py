from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True, scope="session")
def _folder_cache(tmp_path_factory):
    """Image-folder indexes (data/folder_index.py) go to a session folder, not the user's ~/.cache."""
    import os

    os.environ["LABEL_REFINERY_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    # One thread: on 2 busy cores (CI beside other work) two threads per test spin against each other;
    # the op-heavy tests ran 6x slower with 2 (xnor-resnet50 fitting a batch: 108 s vs 17 s).
    torch.set_num_threads(1)


@pytest.fixture
def three_class_folder(tmp_path) -> Path:
    """An image folder in ImageNet layout: classes a, b, c; two random 12x12 RGB images each per split."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b", "c"):
            for i in range(2):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root
