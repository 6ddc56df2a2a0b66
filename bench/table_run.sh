#!/bin/sh
# Issue 24's table: one (subset, seed) of configs/table/pairs-sSUBSET.yaml in two processes on 2 cores
# (about 80 minutes each here); re-run to resume. Process 1 trains the strong refinery, bakes its labels
# once and trains the six strong-refined students from them; process 2 trains the six ground-truth
# students, then the six self-refined ones.
#   sh bench/table_run.sh SUBSET SEED        then: python bench/table.py save ...
set -e
LR=${LR:-label-refinery}
F=configs/table/pairs-s$1.yaml
LOG=runs/table/pairs-s$1-seed$2
mkdir -p runs/table
$LR experiment $F --seeds $2 --arms refinery 'strong-*' --threads 1 --no-progress > $LOG-a.log 2>&1 &
p1=$!
$LR experiment $F --seeds $2 --arms 'gt-*' 'self-*' --threads 1 --no-progress > $LOG-b.log 2>&1
wait $p1
$LR experiment $F --table > /dev/null
