#!/usr/bin/env bash
# Training step on the CPU, Go vs PyTorch, side by side (BENCHMARKS.md).
#
# Times forward+backward of the ~10M-parameter benchmark model (D 512, L 6,
# N 16, K 4, expand 2, LayerNorm, tied head) on (B,T) batches of bytes:
#   go           BenchmarkTrainStep in internal/model (GOEXPERIMENT=simd)
#   torch-fused  scripts/bench_torch_cpu.py --scan fused (hand-written scan backward)
#   torch-loop   scripts/bench_torch_cpu.py --scan loop  (HF transformers' slow
#                path with the per-step slices taken by unbind(); --scan hf, the
#                exact HF indexing, has an O(T^2) backward and is not run here)
# The runs are interleaved in ROUNDS rounds (go, torch-fused, torch-loop, go,
# ...), so that load from other processes falls on all of them alike. Each
# round times ITERS steps after one warm-up step; the table gives the
# median over rounds of each round's bytes/s and the ratios.
#
# Environment: B (4 or 1), T (1024), ROUNDS (3), ITERS (3), THREADS (2),
# IMPLS ("go torch-fused torch-loop"), PYTHON (/usr/bin/python3: Debian's
# python3-torch), OMP_WAIT_POLICY (unset: OpenMP's default, PyTorch's
# fastest on an idle machine; PASSIVE cost it a third there. But with the
# default, whenever another process holds a core of the 2-core VM, PyTorch's
# 2 threads run several times slower than 1 thread: measure on an idle
# machine, or set PASSIVE and say so),
# TORCH_MALLOC (tcmalloc: PyTorch runs with LD_PRELOAD of Debian's
# libtcmalloc_minimal4, as PyTorch's CPU performance guide advises; its
# (T,B,E,N) temporaries are then reused instead of being mapped and faulted
# in afresh by glibc on every step: 1.4-1.7x faster here; glibc: without).
set -euo pipefail
cd "$(dirname "$0")/.."

B=${B:-4}
T=${T:-1024}
ROUNDS=${ROUNDS:-3}
ITERS=${ITERS:-3}
THREADS=${THREADS:-2}
IMPLS=${IMPLS:-"go torch-fused torch-loop"}
PYTHON=${PYTHON:-/usr/bin/python3}
TORCH_MALLOC=${TORCH_MALLOC:-tcmalloc}
torch_preload=""
case $TORCH_MALLOC in
tcmalloc)
	torch_preload=$(ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 2>/dev/null | head -1)
	[ -n "$torch_preload" ] || { echo "no libtcmalloc_minimal.so.4: apt-get install libtcmalloc-minimal4, or TORCH_MALLOC=glibc" >&2; exit 2; }
	;;
glibc) ;;
*) echo "TORCH_MALLOC must be tcmalloc or glibc" >&2; exit 2 ;;
esac

case "$B/$T" in
4/1024 | 1/1024) ;;
*) echo "BenchmarkTrainStep has shapes B4_T1024 and B1_T1024 only" >&2; exit 2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "# $(go version)"
echo "# commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (with uncommitted changes)')"
echo "# B=$B T=$T rounds=$ROUNDS iters/round=$ITERS threads=$THREADS"
echo "# PyTorch: OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(unset)} malloc=$TORCH_MALLOC ${torch_preload:+(LD_PRELOAD=$torch_preload)}"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"

if [[ " $IMPLS " == *" go "* ]]; then
	GOEXPERIMENT=simd go test -c -o "$tmp/model.test" ./internal/model
fi

# run_one IMPL: one round of IMPL; appends "bytes/s" to $tmp/IMPL.
run_one() {
	local impl=$1 line rate
	case $impl in
	go)
		line=$(GOMAXPROCS=$THREADS MAMBABYTE_THREADS=$THREADS "$tmp/model.test" -test.run=NONE \
			-test.bench="^BenchmarkTrainStep\$/^B${B}_T${T}\$" -test.benchtime="${ITERS}x" -test.count=1 |
			grep '^BenchmarkTrainStep')
		rate=$(awk '{for (i = 2; i <= NF; i++) if ($i == "bytes/s") print $(i-1)}' <<<"$line")
		;;
	torch-fused | torch-loop)
		line=$(LD_PRELOAD=$torch_preload OMP_NUM_THREADS=$THREADS "$PYTHON" scripts/bench_torch_cpu.py --scan "${impl#torch-}" \
			--batch "$B" --seq "$T" --iters "$ITERS" --warmup 1 --threads "$THREADS" --json)
		rate=$("$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])["bytes_per_s"])' "$line")
		if [ ! -s "$tmp/torch-info" ]; then
			"$PYTHON" -c 'import json,sys; r=json.loads(sys.argv[1]); print("# torch", r["torch"], "threads", r["threads"], "BLAS", r["blas"], "params", r["params"])' "$line" >"$tmp/torch-info"
			cat "$tmp/torch-info"
		fi
		;;
	*) echo "unknown implementation $impl" >&2; exit 2 ;;
	esac
	[ -n "$rate" ] || { echo "no bytes/s from $impl: $line" >&2; exit 1; }
	echo "$rate" >>"$tmp/$impl"
	printf '  round %d %-12s %10.1f bytes/s   (load %s)\n' "$r" "$impl" "$rate" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

for ((r = 1; r <= ROUNDS; r++)); do
	for impl in $IMPLS; do
		run_one "$impl"
	done
done

median() { sort -g "$1" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

echo
printf '%-12s %14s %14s %10s\n' impl "bytes/s" "s/step" "go/impl"
gorate=""
if [ -s "$tmp/go" ]; then gorate=$(median "$tmp/go"); fi
for impl in $IMPLS; do
	m=$(median "$tmp/$impl")
	ratio="-"
	if [ -n "$gorate" ]; then ratio=$(awk -v a="$gorate" -v b="$m" 'BEGIN {printf "%.2fx", a / b}'); fi
	awk -v i="$impl" -v m="$m" -v bt=$((B * T)) -v r="$ratio" 'BEGIN {printf "%-12s %14.1f %14.3f %10s\n", i, m, bt / m, r}'
done
