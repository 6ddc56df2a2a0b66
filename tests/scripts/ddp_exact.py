"""Run by tests/test_distributed.py, alone or under torchrun: one epoch of a BatchNorm-free model on
digits through the library's training and evaluation loops, sharded over the processes; rank 0 saves
the weights and metrics. Without BatchNorm, gradients averaged over equal shards equal the single
process's gradient of the same global batch, so the weights must agree to float rounding.

Under torchrun the same processes then check the per-process random streams and their resume
(tests/scripts/ddp_ranks.py), sharing one start-up.

    python tests/scripts/ddp_exact.py OUT.safetensors
    torchrun --standalone --nproc_per_node=2 tests/scripts/ddp_exact.py OUT.safetensors
"""

import json
import sys

import torch
from safetensors.torch import save_file
from torch import nn

from label_refinery import distributed
from label_refinery.config import OptimConfig
from label_refinery.data import CropSampler, load_dataset
from label_refinery.labels import GroundTruth
from label_refinery.training.engine import evaluate, lr_schedule, make_optimizer, train_one_epoch

distributed.setup()
torch.manual_seed(0)
ds = load_dataset("digits")
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, ds.num_classes))
cfg = OptimConfig(epochs=1, batch_size=64, lr=0.1, weight_decay=5e-4)
bs = distributed.per_process_batch(cfg.batch_size)
steps = ds.train.num_batches(bs, drop_last=True, shard=distributed.shard())
optimizer = make_optimizer(model, cfg)
batches = ds.train.iter_batches(bs, epoch=0, crops=CropSampler(0), order_seed=0, drop_last=True, shard=distributed.shard())
train = train_one_epoch(distributed.wrap(model, torch.device("cpu")), GroundTruth(ds.num_classes), batches, optimizer, lr_schedule(cfg, steps))
test = evaluate(model, ds.test.iter_batches(100, shard=distributed.shard()))
if distributed.is_main():
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[1])
    with open(sys.argv[1] + ".json", "w") as f:
        json.dump({"train": train, "test": test, "steps": steps, "world": distributed.world()}, f)
if distributed.world() > 1:
    from pathlib import Path

    sys.argv = [sys.argv[0], str(Path(sys.argv[1]).parent)]
    import ddp_ranks  # noqa: F401  (runs its checks, writes ranks.json, tears the group down)
else:
    distributed.teardown()
