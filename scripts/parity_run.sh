#!/usr/bin/env bash
# Trains the same small model for the same 300 steps with the same data order
# on one device, for the CPU/GPU comparison in BENCHMARKS.md:
#
#   bash scripts/parity_run.sh cpu  OUT      # fp32 on the CPU
#   bash scripts/parity_run.sh cuda OUT      # bf16 matrix products on the GPU
#
# Prints the final validation bits per byte. Needs dict-gcide's text, or set
# CORPUS to any file. D_MODEL and N_LAYER change the model's width and depth
# (default 128 and 4; at D_MODEL 512 the GPU's in_proj and out_proj GEMMs
# run on bf16 copies of their operands).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:?cpu or cuda}
OUT=${2:?output directory}
CORPUS=${CORPUS:-/usr/share/dictd/gcide.dict.dz}
BIN=${BIN:-out/mambabyte}
[ -x "$BIN" ] || GOEXPERIMENT=simd go build -o "$BIN" ./cmd/mambabyte
"$BIN" train --data "$CORPUS" --out "$OUT" --device "$DEVICE" --precision bf16 \
  --preset small --d-model "${D_MODEL:-128}" --n-layer "${N_LAYER:-4}" --seq-len 256 --batch 16 \
  --steps 300 --lr 3e-3 --warmup 30 --seed 7 --val-every 100 --val-bytes 262144 --ckpt-every 0 --json |
  tail -1
