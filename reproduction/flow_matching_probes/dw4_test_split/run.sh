#!/usr/bin/env bash
# DW4 test-split check (from the repository root): committed checkpoints on the test split and on fresh data.
# usage: run.sh DW4_DATA FRESH OUT   (DW4_DATA: the workflow's results/data/dw4; FRESH: enf data dw4 --seed 7 ...)
set -euo pipefail
data=$1 fresh=$2 out=$3
for c in flow_matching_ema/dw4/enf_fm/n100000/seed0 flow_matching_ema/dw4/enf_fm/n10000/seed0 paper_protocol/dw4/enf/n1000/seed0; do
  tag=$(echo "$c" | tr / _)
  for split in test:"$data"/test.npz fresh1e4:"$fresh"/train.npz; do
    enf evaluate --trace exact --checkpoint "reproduction/$c/checkpoint.pt" --data "${split#*:}" \
      --out "$out/${tag}_${split%%:*}.json" --per-sample "$out/${tag}_${split%%:*}.npz"
  done
done
c=flow_matching_ema/dw4/enf_fm/n100000/seed0; tag=$(echo "$c" | tr / _)
enf evaluate --trace exact --checkpoint "reproduction/$c/checkpoint.pt" --data "$data"/valid.npz \
  --out "$out/${tag}_valid.json" --per-sample "$out/${tag}_valid.npz"
