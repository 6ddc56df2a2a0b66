"""Run by tests/test_distributed.py, alone or under torchrun: bake a label store of digits crops with a
fixed random cnn-small, every process labelling its share (flushing after every batch); with
``--kill-after N`` rank 1 SIGKILLs itself after N of its batches (torchrun then stops the group).

    python tests/scripts/ddp_bake.py OUT [--kill-after N]
    torchrun --standalone --nproc_per_node=2 tests/scripts/ddp_bake.py OUT [--kill-after N]
"""

import os
import signal
import sys

import torch

from label_refinery import distributed
from label_refinery.data import CropSampler, load_dataset
from label_refinery.labels import bake
from label_refinery.models import create_model

out = sys.argv[1]
kill_after = int(sys.argv[sys.argv.index("--kill-after") + 1]) if "--kill-after" in sys.argv else 0
distributed.setup("cpu")
bake.FLUSH_SECONDS = 0.0  # progress after every batch: a kill loses nothing flushed
if kill_after and distributed.rank() == 1:
    flush, count = bake._Bake.flush, [0]

    def flush_then_die(self, epoch, batch):
        flush(self, epoch, batch)
        count[0] += 1
        if count[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    bake._Bake.flush = flush_then_die
torch.manual_seed(0)
model = create_model("cnn-small", 1, 10)  # the same weights in every process
ds = load_dataset("digits")
bake.bake(model, ds.train, out, bake.BakeSpec(num_classes=10, epochs=3, batch_size=64), sampler=CropSampler(1, (0.25, 1.0)),
          shard=distributed.shard(), log=lambda _: None)  # fmt: skip
distributed.barrier()
distributed.teardown()
