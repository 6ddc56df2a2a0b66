"""load_dataset's held-out validation split (data.val_split)."""

from __future__ import annotations

import pytest
import torch

from label_refinery import UserError
from label_refinery.data import load_dataset


def test_val_split_is_held_out_seeded_and_disjoint():
    full = load_dataset("digits")
    ds = load_dataset("digits", val_split=300, train_subset=500)
    again = load_dataset("digits", val_split=300, train_subset=500)
    assert len(ds.val) == 300 and len(ds.train) == 500
    train_ids, val_ids = set(ds.train.ids.tolist()), set(ds.val.ids.tolist())
    assert not train_ids & val_ids  # no validation image is ever trained on
    assert torch.equal(ds.val.ids, again.val.ids) and torch.equal(ds.train.ids, again.train.ids)
    assert torch.equal(ds.val.targets, full.train.targets[ds.val.ids])  # ids still index the full split
    assert ds.fingerprint() != load_dataset("digits", train_subset=500).fingerprint()
    assert load_dataset("digits").val is None
    with pytest.raises(UserError, match="val_split must be in"):
        load_dataset("digits", val_split=len(full.train))
