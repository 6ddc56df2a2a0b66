#!/bin/sh
# Issue 24's second task (configs/table/curve.yaml): each seed in two processes on 2 cores, about evenly
# (~65 min per seed here), its finished runs saved into configs/table/curve.results.json after each seed;
# re-run to resume (the experiment runner skips finished runs).
#   sh bench/curve_run.sh 1 2 3
set -e
LR=${LR:-label-refinery}
PY=${PY:-python}
F=configs/table/curve.yaml
mkdir -p runs/table
for s in "$@"; do
  LOG=runs/table/curve-seed$s
  $LR experiment $F --seeds $s --arms '*-1000' refinery-10000 strong-10000 --threads 1 --no-progress > $LOG-a.log 2>&1 &
  p1=$!
  $LR experiment $F --seeds $s --arms '*-3000' gt-10000 self-10000 --threads 1 --no-progress > $LOG-b.log 2>&1 || true
  wait $p1 || true
  $PY bench/table.py save $F ${RESULTS:-configs/table/curve.results.json}
done
