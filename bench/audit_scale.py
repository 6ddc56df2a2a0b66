"""Issue 17: the audit's ranking at ImageNet scale, in memory and time.

A memory-mapped ``[N, C]`` float32 probability file (what ``audit`` writes as ``probs.npy``) of
random Dirichlet-like rows, then the audit's ranking pass (``audit._table``: self-confidence,
normalized margin, confident joint and flags, top-3, entropy) and its summary, reporting wall time
and the peak anonymous memory of the process during that pass (``RssAnon``, sampled every 0.1 s:
the memory-mapped file's pages are page cache, reclaimable, and not counted). 5 % of the labels are
flipped after the rows are drawn, so confident learning has something to find. The model forward passes are not part of this: they stream
in batches (``probe.refined``) whatever N is.

    python bench/audit_scale.py --images 1000000 --classes 1000 --dir /tmp   # 4 GB on disk
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from label_refinery.tools import audit, quality


def anon_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dir", default="/tmp")
    args = ap.parse_args()
    n, c = args.images, args.classes
    path = Path(args.dir) / f"audit-scale-{n}x{c}.npy"
    rng = np.random.default_rng(0)
    y = rng.integers(0, c, n)
    t0 = time.time()
    p = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, c))
    for s in quality.row_chunks(n):  # peaked rows: the given class usually wins
        block = rng.random((s.stop - s.start, c), dtype=np.float32) ** 8
        block[np.arange(len(block)), y[s]] += 2.0
        p[s] = block / block.sum(1, keepdims=True)
    p.flush()
    del p
    made = time.time() - t0
    flip = rng.random(n) < 0.05
    y[flip] = (y[flip] + rng.integers(1, c, int(flip.sum()))) % c
    before, peak, done = anon_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anon_mib())
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    p = np.load(path, mmap_mode="r")
    t1 = time.time()
    table = audit._table(p, y, np.zeros(n, dtype=np.float32), c)
    summary = audit._summary(table, y, [str(i) for i in range(c)], 5, 1, 1, 1, "self_confidence")  # folds, fold gens, seeds, gens
    ranked = np.argsort(table["self_confidence"], kind="stable")
    took = time.time() - t1
    done.set()
    print(f"python bench/audit_scale.py --images {n} --classes {c}")
    print(f"probs.npy: {path.stat().st_size / 2**30:.2f} GiB, written in {made:.0f} s")
    print(f"ranking + confident joint + summary: {took:.0f} s; peak anonymous memory {peak[0]:.0f} MiB (before: {before:.0f} MiB)")
    hit = flip[ranked[: int(flip.sum())]].mean()
    print(f"flagged by confident learning: {summary['confident_learning_issues']} (flipped: {int(flip.sum())}); "
          f"precision@k of self-confidence: {hit:.3f}")
    path.unlink()


if __name__ == "__main__":
    main()
