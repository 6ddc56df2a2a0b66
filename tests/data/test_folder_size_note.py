"""An image folder of small images read at the default 224 px says so, and names the flag."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from label_refinery.data.imagefolder import load


def _folder(root, side):
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((side, side), 40 * i, dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_small_images_at_224_warn_and_name_the_flag(tmp_path):
    small = _folder(tmp_path / "small", 28)
    with pytest.warns(UserWarning, match="about 28 px, read at 224 px; pass --image-size 28"):
        assert load(str(small)).image_size == 224
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(str(small), image_size=28).image_size == 28  # told: no note
        assert load(str(_folder(tmp_path / "large", 160))).image_size == 224  # near 224: no note
