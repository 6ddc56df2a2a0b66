#!/bin/sh
# Issue 24's other refineries for cnn-small on one (subset, seed) of configs/table/pairs-sSUBSET.yaml, one
# process (~45 min on one core here): `mid-cnn` (refined by gt-vgg, a cheaper refinery), then the three
# fold models and `xfit-cnn` (refined by them, cross-fitted); re-run to resume. Then save its rows:
#   sh bench/table_more.sh SUBSET SEED && python bench/table.py save configs/table/pairs-sSUBSET.yaml configs/table/pairs-sSUBSET.results.json
set -e
LR=${LR:-label-refinery}
mkdir -p runs/table
$LR experiment configs/table/pairs-s$1.yaml --seeds $2 --arms gt-vgg mid-cnn 'fold-*' xfit-cnn --threads 1 --no-progress \
  > runs/table/more-s$1-seed$2.log 2>&1
