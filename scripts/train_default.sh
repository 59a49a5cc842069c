#!/usr/bin/env bash
# Trains the default model embedded in the mambabyte binary, on the CPU, from
# Debian's dict-gcide dictionary text (apt-get install dict-gcide), and
# compares it with xz -9 and zstd -19 on exactly the validation bytes.
#
#   bash scripts/train_default.sh [OUT]      (OUT defaults to out/default)
#
# Needs about an hour on a 2-core AVX-512 machine; at the end the final
# checkpoint is copied into internal/defaultmodel/model/, the built-in model.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/default}
CORPUS=/usr/share/dictd/gcide.dict.dz
[ -f "$CORPUS" ] || { echo "missing $CORPUS: apt-get install dict-gcide" >&2; exit 1; }
GOEXPERIMENT=simd go build -o out/mambabyte ./cmd/mambabyte
SETTINGS=(--data "$CORPUS" --preset small --d-model 192 --n-layer 4
  --seq-len 512 --batch 16 --steps 2000 --lr 2e-3 --warmup 100 --seed 1)
out/mambabyte train "${SETTINGS[@]}" --out "$OUT" --val-every 200 --val-bytes 262144 --ckpt-every 100
# The same split, to compare against general-purpose compressors.
out/mambabyte data --data "$CORPUS" --seq-len 512 --seed 1 --write-validation "$OUT/validation.bin"
n=$(stat -c %s "$OUT/validation.bin")
echo "validation bytes: $n"
echo "model: $(out/mambabyte eval --model "$OUT" --data "$OUT/validation.bin" --json)"
echo "xz -9: $(xz -9 -c "$OUT/validation.bin" | wc -c | awk -v n="$n" '{printf "%.4f bits/byte", 8*$1/n}')"
echo "zstd -19: $(zstd -19 -q -c "$OUT/validation.bin" | wc -c | awk -v n="$n" '{printf "%.4f bits/byte", 8*$1/n}')"
# The final checkpoint becomes the model built into the binary.
final=$(cat "$OUT/latest")
cp "$OUT/$final/config.json" "$OUT/$final/model.safetensors" internal/defaultmodel/model/
echo "copied $OUT/$final into internal/defaultmodel/model/"
