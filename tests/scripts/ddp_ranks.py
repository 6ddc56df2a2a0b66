"""Run by tests/test_distributed.py under torchrun (2 CPU processes): each process has its own random
stream, a saved training state restores each process's own stream, and the epoch's wall seconds are
the slowest process's, not a sum over processes. Rank 0 writes what it saw as JSON.

    torchrun --standalone --nproc_per_node=2 tests/scripts/ddp_ranks.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from label_refinery import distributed
from label_refinery.training import state
from label_refinery.training.engine import Meters

out = Path(sys.argv[1])
distributed.setup("cpu")
r = distributed.rank()
report = {"world": distributed.world(), "backend": str(dist.get_backend())}

torch.manual_seed(3)
model = nn.Linear(4, 2)  # the same initialisation in every process
distributed.seed_rank(3)
draws = distributed.all_gather(torch.rand(4).tolist())
report["streams_differ"] = draws[0] != draws[1]
report["same_init"] = len({json.dumps(w) for w in distributed.all_gather(model.weight.tolist())}) == 1

optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
meters = Meters(images=10 * (r + 1), loss_sum=1.0, correct=r, agree=0, seconds=5.0 + r)  # rank 1 is slower
combined = meters.over_processes()
state.save(out, model, optimizer, None, state.Position(0, 3, combined), None, "fingerprint")
expected = torch.rand(3).tolist()  # what this process draws next after the checkpoint
torch.rand(100)  # the run goes on, then dies
distributed.barrier()  # rank 0 has written the state (in a real run, the resume is a new process)
pos = state.resume(out, model, optimizer, None, None, "fingerprint")
resumed = torch.rand(3).tolist()
report["own_stream_restored"] = all(distributed.all_gather(resumed == expected))
if distributed.is_main():
    report["meters"] = pos.meters.as_list()
    (out / "ranks.json").write_text(json.dumps(report))
distributed.barrier()  # leave together, as cli.commands.main does: a peer's early teardown aborts gloo
distributed.teardown()
