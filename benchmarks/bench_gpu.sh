#!/usr/bin/env bash
# GPU check and GPU cost of the paper's cells, in one run of a few minutes on a machine with a CUDA GPU:
#  1. the committed CPU-trained checkpoints evaluated on the GPU (the same test NLL as on the CPU: exactly with the
#     exact trace, within the standard error with Hutchinson's, whose probes come from another generator there);
#  2. seconds per training iteration of every model on DW4, LJ13 and QM9-positional (bench_baselines.py) and of
#     E-NF on QM9, with evaluation and sampling of the released model (bench_qm9.py);
#  3. the workflow's DW4 E-NF training (n = 10^3, compiled, direct back-propagation) for a few epochs, and one
#     epoch of flow matching on QM9-positional at the committed budget: seconds per epoch at the paper's settings.
# Every section has its own time limit, so a slow one cannot take the rest with it; everything goes to OUT.
# Measured on an NVIDIA H200: benchmarks/results/h200/ and docs/performance.md ("On a GPU").
#
# usage: benchmarks/bench_gpu.sh [DATA_ROOT [OUT]]   (DATA_ROOT: the workflow's results/data with dw4/, lj13/,
#        qm9/ and qm9_positional/; OUT: benchmarks/results/gpu; PYTHON picks the interpreter, default python)
set -u
data=${1:-results/data}
out=${2:-benchmarks/results/gpu}
py=${PYTHON:-python}
dev=${ENF_BENCH_DEVICE:-cuda}
work=$(mktemp -d)
mkdir -p "$out"
log="$out/log.txt"
: > "$log"
section() { echo "== $(date -u +%T) $1" | tee -a "$log"; }
run() {  # run LIMIT_SECONDS COMMAND...: the command's output to the log, its exit status noted
  local limit=$1; shift
  timeout "$limit" "$@" >> "$log" 2>&1
  echo "-- exit $? after $SECONDS s in all" | tee -a "$log"
}

section "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$py" -c "import torch, torchdiffeq; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'torchdiffeq', torchdiffeq.__version__)"; } >> "$log" 2>&1

section "committed checkpoints evaluated on $dev"
pp=reproduction/paper_protocol fm=reproduction/flow_matching_ema
run 60 "$py" -m enf evaluate --checkpoint $pp/dw4/enf/n1000/seed0/checkpoint.pt --data "$data/dw4/test.npz" \
  --out "$out/dw4_enf_n1000_seed0_test.json" --seed 0 --trace exact --device "$dev"
run 60 "$py" -m enf evaluate --checkpoint $pp/lj13/enf/n100/seed0/checkpoint.pt --data "$data/lj13/test.npz" \
  --out "$out/lj13_enf_n100_seed0_test.json" --seed 0 --device "$dev"
run 90 "$py" -m enf evaluate --checkpoint $fm/dw4/enf_fm/n1000/seed0/checkpoint.pt --data "$data/dw4/test.npz" \
  --out "$out/dw4_enf_fm_n1000_seed0_boltzmann.json" --seed 0 --trace exact --boltzmann 10000 --device "$dev"

section "seconds per training iteration, every model (fresh weights)"
run 150 "$py" benchmarks/bench_baselines.py --models enf,gnf,gnf_att,gnf_att_aug,simple_dynamics,kernel_dynamics \
  --datasets dw4,lj13,qm9_positional --iters 3 --device "$dev" --max-gb 100 --out "$out/iterations.csv"

section "QM9: evaluation of the released model on 128 test molecules, E-NF training iterations"
run 180 "$py" benchmarks/bench_qm9.py --data "$data/qm9" --device "$dev" --iterations 4 --grouped-only \
  --eval-n 128 --skip sample --out "$out/qm9.csv"

section "QM9: sampling 64 molecules from the released model"
run 120 "$py" benchmarks/bench_qm9.py --data "$data/qm9" --device "$dev" --skip eval train --sample-n 64 \
  --out "$out/qm9_sampling.csv"

section "workflow settings: DW4 E-NF n = 10^3, 4 epochs (compiled, direct back-propagation)"
run 120 "$py" -m enf train --dataset dw4 --model enf --data "$data/dw4" --seed 0 --no-progress --no-test \
  --n-train 1000 --epochs 4 --set=train.batch_size=100 --set=train.eval_every=2 --set=flow.compile=true \
  --set=flow.adjoint=false --device "$dev" --out "$work/dw4"

section "workflow settings: QM9-positional flow matching, 1 epoch with its validation"
run 150 "$py" -m enf train --dataset qm9_positional --model enf --data "$data/qm9_positional" --seed 1 \
  --no-progress --no-test --epochs 1 --set=train.batch_size=128 --set=train.eval_every=5 --set=train.n_valid=500 \
  --set=flow_matching.pairing=aligned --set=flow_matching.sigma=0.0 --set=train.lr=0.002 --set=train.ema=0.999 \
  --objective flow_matching --device "$dev" --out "$work/qm9pos"
rm -rf "$work"
section "done"
