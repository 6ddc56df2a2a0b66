"""torchrun / DistributedDataParallel plumbing: rank, world size, sums over processes, rank-0 checks.

A single process is the same code with world size 1: every helper is then a no-op. Launch::

    torchrun --nproc_per_node=2 -m label_refinery chain --dataset fashion-mnist --out runs/ddp        # one machine
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv-backend=c10d \\
        --rdzv-endpoint=HOST:29500 -m label_refinery chain --config configs/imagenet/resnet50.yaml ...  # per machine

How the work is split (see :func:`label_refinery.data.base.batch_slices`): each global batch of
``optim.batch_size`` crops is cut into ``world`` equal parts, and a crop stays keyed by (seed, epoch,
image index), so every crop and refined label is the one a single process would use. Only the student
is wrapped in DDP; each process runs its own frozen refinery (or reads the label store) on its part.
Training and evaluation counts are summed over processes. Only rank 0 writes files, logs and shows
progress bars; several machines need a shared filesystem for the run folder (later generations
read the earlier ones' checkpoints).

Backends: NCCL when the device is CUDA, gloo on CPU (see :func:`plan`). Each process draws its own random
stream (``seed + rank``, :func:`seed_rank`), saved and restored per process on resume.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError, brief


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "auto") -> None:
    """Join the process group torchrun describes (environment variables). A no-op without torchrun.

    ``device`` is the run's ``device`` setting (see :func:`plan`): CUDA devices get both backends
    (``cpu:gloo,cuda:nccl``: NCCL for the student's gradients and buffers, gloo for the few small CPU
    sums and messages); ``--device cpu`` gets gloo alone, even where CUDA is visible.
    """
    if not launched() or dist.is_initialized():
        return
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    backend, gpu = plan(device, torch.cuda.is_available(), local_rank, local_world)
    if gpu is not None:
        torch.cuda.set_device(gpu)
    # The timeout bounds a collective waiting for a crashed or stuck peer (torchrun also stops the group
    # when one process fails). LABEL_REFINERY_DIST_TIMEOUT_MIN raises it for very slow steps.
    minutes = float(os.environ.get("LABEL_REFINERY_DIST_TIMEOUT_MIN", "30"))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes))


def plan(device: str, cuda_available: bool, local_rank: int, local_world: int) -> tuple[str, int | None]:
    """``(backend, GPU index or None)`` of one torchrun process asking for ``device``.

    ``auto`` and ``cuda``: the process's own GPU (``LOCAL_RANK``) when CUDA is available, else CPU;
    ``cuda:N``: GPU ``N`` exactly (one process per machine: NCCL cannot share a GPU between
    processes); ``cpu``: gloo only.
    """
    if device.startswith("cuda") and not cuda_available:
        raise UserError(f"device {brief(device)} requested but CUDA is not available; use --device cpu")
    if device == "cpu" or (device == "auto" and not cuda_available) or not device.startswith(("cuda", "auto")):
        return "gloo", None
    if device in ("auto", "cuda"):
        return "cpu:gloo,cuda:nccl", local_rank
    if local_world > 1:
        raise UserError(
            f"--device {device} puts all {local_world} processes of this machine on one GPU, which NCCL refuses; use "
            "--device cuda (each process takes its own GPU, LOCAL_RANK), or one process per machine"
        )
    return "cpu:gloo,cuda:nccl", int(device.split(":", 1)[1])


def seed_rank(seed: int) -> None:
    """Give each process its own random stream for dropout and the like: ``seed + rank``, after the
    model's initialisation (the same in every process). Rank 0 keeps the single-process stream."""
    if rank():
        torch.manual_seed(seed + rank())


def local_device(name: str) -> torch.device | None:
    """This process's GPU when several processes share a machine and ``name`` asks for CUDA."""
    if world() > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return None


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        # Free what still holds gloo work (a DDP reducer in a reference cycle) while the interpreter is
        # alive: freed at interpreter exit instead, its tensors abort the process ("terminate called
        # without an active exception"), seen under busy cores.
        import gc

        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def sum_over_processes(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all processes (float64 on CPU, so counts stay exact)."""
    if world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def wait_for(path, poll_s: float = 2.0) -> None:
    """Other processes wait until rank 0 has written ``path`` (e.g. a label store's manifest). A file
    rather than a barrier, so a bake may take longer than the collective timeout; if rank 0 fails,
    torchrun stops the whole group."""
    from pathlib import Path

    while world() > 1 and not is_main() and not Path(path).exists():
        time.sleep(poll_s)


def max_over_processes(value: float) -> float:
    """The largest ``value`` over all processes (e.g. wall seconds, which are not additive)."""
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_gather(obj: Any) -> list:
    """Every process's ``obj`` (any picklable object made by our own code), in rank order, on every process."""
    if world() == 1:
        return [obj]
    out: list = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (any picklable object made by our own code)."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process, so evaluation and the
    saved weights are the same everywhere (DDP keeps each process's last local update otherwise)."""
    if world() == 1:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The student wrapped in DDP when several processes run; the model itself otherwise."""
    if world() == 1:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (what is saved and evaluated)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard() -> tuple[int, int]:
    """``(rank, world)``: this process's part of every global batch."""
    return rank(), world()


def per_process_batch(global_batch: int) -> int:
    """``optim.batch_size`` is the global batch; each process takes an equal part of it."""
    w = world()
    if global_batch % w:
        raise UserError(
            f"optim.batch_size {global_batch} does not split evenly over {w} processes; use a multiple of {w}"
        )
    return global_batch // w
