#!/bin/sh
# Issue 24, step 1 (configs/table/tune.yaml) in two processes on 2 cores; re-run to resume.
# Process 1 trains the strong refinery and three of its arms; process 2 the ground-truth and
# self-refined trials, then (once the strong refinery exists) its two longer arms.
set -e
LR=${LR:-label-refinery}
F=configs/table/tune.yaml
mkdir -p runs/table
$LR experiment $F --arms strong strong-a strong-b strong-c --threads 1 --no-progress > runs/table/tune-1.log 2>&1 &
p1=$!
$LR experiment $F --arms gt-a gt-b gt-c gt-d gt-e self-a self-b self-c self-d self-e --threads 1 --no-progress > runs/table/tune-2.log 2>&1
until [ -f runs/table/tune/seed0/strong/gen1/meta.json ] || ! kill -0 $p1 2>/dev/null; do sleep 30; done
$LR experiment $F --arms strong-d strong-e --threads 1 --no-progress >> runs/table/tune-2.log 2>&1
wait $p1
$LR experiment $F --table
