import numpy as np
import pytest
import torch
import torch.nn.functional as F

from label_refinery.data.crops import Crop, CropSampler, apply_crops


def test_same_key_same_crop_and_keys_differ():
    s = CropSampler(seed=3)
    a = s.sample_batch(np.arange(500), 2, 28, 28)
    assert np.array_equal(a, s.sample_batch(np.arange(500), 2, 28, 28))
    assert not np.array_equal(a, s.sample_batch(np.arange(500), 3, 28, 28))  # another epoch
    assert not np.array_equal(a, CropSampler(seed=4).sample_batch(np.arange(500), 2, 28, 28))  # another seed
    # one index alone gives the same crop as inside a batch: crops never depend on the batch
    assert s.sample(17, 2, 28, 28) == Crop(*[int(v) for v in a[17][:4]], bool(a[17][4]))


@pytest.mark.parametrize("size", [(28, 28), (8, 8), (375, 500), (500, 120)])
def test_crops_within_bounds_and_scale(size):
    H, W = size
    s = CropSampler(seed=0, scale=(0.25, 1.0))
    c = s.sample_batch(np.arange(2000), 0, H, W)
    y, x, h, w, flip = c.T
    assert (y >= 0).all() and (x >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (y + h <= H).all() and (x + w <= W).all()
    assert set(np.unique(flip)) <= {0, 1}
    if H * W >= 28 * 28:
        area = h * w / (H * W)
        assert 0.2 < area.min() and area.max() <= 1.0
        assert 0.4 < flip.mean() < 0.6


def test_no_flip_when_disabled():
    c = CropSampler(seed=0, flip_p=0.0).sample_batch(np.arange(300), 0, 28, 28)
    assert (c[:, 4] == 0).all()


def test_flipped_crop_equals_flip_of_crop():
    img = torch.rand(6, 3, 20, 24)
    crops = torch.tensor([[2, 3, 10, 12, 0], [0, 0, 20, 24, 0], [5, 1, 7, 9, 0], [1, 2, 17, 5, 0], [0, 4, 20, 20, 0], [3, 3, 3, 3, 0]])
    flipped = crops.clone()
    flipped[:, 4] = 1
    a = apply_crops(img, crops, 16)
    b = apply_crops(img, flipped, 16)
    assert torch.equal(b, a.flip(-1))


def test_full_crop_is_identity_and_integer_crop_is_a_slice():
    img = torch.rand(2, 1, 28, 28)
    full = torch.tensor([[0, 0, 28, 28, 0]] * 2)
    assert torch.allclose(apply_crops(img, full, 28), img, atol=1e-5)
    # a 14x14 crop resized to 14x14 samples exactly at pixel centres: a plain slice
    part = torch.tensor([[3, 5, 14, 14, 0], [10, 0, 14, 14, 1]])
    out = apply_crops(img, part, 14)
    assert torch.allclose(out[0], img[0, :, 3:17, 5:19], atol=1e-5)
    assert torch.allclose(out[1], img[1, :, 10:24, 0:14].flip(-1), atol=1e-5)


def test_each_sample_gets_its_own_crop():
    img = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    crops = torch.tensor([[0, 0, 4, 4, 0], [4, 4, 4, 4, 0]])
    out = apply_crops(img, crops, 4)
    assert torch.allclose(out[0, 0], img[0, 0, :4, :4], atol=1e-4)
    assert torch.allclose(out[1, 0], img[1, 0, 4:, 4:], atol=1e-4)


def test_shrinking_crops_are_antialiased_like_the_evaluation_view():
    """Issue 13: a crop that shrinks its image is supersampled and averaged, as the evaluation view is.
    A 1-pixel checkerboard halved is flat grey (plain bilinear sampling would alias it), and the
    full-image training crop is the evaluation view itself."""
    from label_refinery.data.crops import resize_images

    board = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2).float().view(1, 1, 32, 32)
    full = torch.tensor([[0, 0, 32, 32, 0]])
    crop = apply_crops(board, full, 16)
    assert torch.allclose(crop, torch.full_like(crop, 0.5), atol=1e-6)
    assert torch.equal(crop, resize_images(board, 16))
    # on a smooth image it agrees with torch's antialiased bilinear resize up to the filters' shapes
    smooth = F.avg_pool2d(torch.rand(4, 3, 48 + 7, 48 + 7), 8, stride=1)  # [4, 3, 48, 48], low-pass
    ours = resize_images(smooth, 32)
    torch_aa = F.interpolate(smooth, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert (ours - torch_aa).abs().max() < 0.02
    # crops that do not shrink keep plain bilinear sampling (the Fashion-MNIST path is unchanged)
    part = torch.tensor([[8, 8, 16, 16, 0]])
    assert torch.allclose(apply_crops(board, part, 16), board[..., 8:24, 8:24], atol=1e-6)
