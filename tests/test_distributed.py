"""distributed.py's plan: which backend and which GPU each process of a launch gets.

The torchrun runs themselves (2 gloo processes on CPU) are in training/test_torchrun.py and
labels/test_store_torchrun.py.
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "device, cuda, local_rank, local_world, expected",
    [
        ("cpu", True, 1, 2, ("gloo", None)),  # --device cpu: no NCCL even where CUDA is visible
        ("auto", False, 1, 2, ("gloo", None)),
        ("auto", True, 1, 2, ("cpu:gloo,cuda:nccl", 1)),  # each process its LOCAL_RANK GPU
        ("cuda", True, 3, 4, ("cpu:gloo,cuda:nccl", 3)),
        ("cuda:2", True, 0, 1, ("cpu:gloo,cuda:nccl", 2)),  # an explicit GPU is honoured
    ],
)
def test_backend_and_gpu_follow_the_device_setting(device, cuda, local_rank, local_world, expected):
    from label_refinery.distributed import plan

    assert plan(device, cuda, local_rank, local_world) == expected


def test_one_gpu_for_several_local_processes_is_refused():
    from label_refinery.distributed import plan
    from label_refinery.errors import UserError

    with pytest.raises(UserError, match="puts all 2 processes of this machine on one GPU"):
        plan("cuda:1", True, 0, 2)
    with pytest.raises(UserError, match="CUDA is not available"):
        plan("cuda:0", False, 0, 1)
