#!/usr/bin/env python3
"""Sums Nsight Compute's per-kernel durations by kernel name.

    ncu --cache-control none --clock-control none --metrics gpu__time_duration.sum \
        --csv --page raw mambabyte bench --device cuda ... --reps 1 > ncu.csv
    python3 scripts/kernel_times.py ncu.csv [steps] [top]

Prints, largest first, each kernel's total time divided by steps (default 1:
a bench with --reps 1 runs 2 training steps, so pass 2 for a step's share),
its launch count and its mean time per launch.
"""
import collections
import csv
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    steps = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    rows = list(csv.reader(open(path, newline="")))
    start = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if start is None:
        sys.exit(f"{path}: no 'Kernel Name' column (run ncu with --csv --page raw)")
    hdr = rows[start]
    ki, ti = hdr.index("Kernel Name"), hdr.index("gpu__time_duration.sum")
    unit = rows[start + 1][ti] if start + 1 < len(rows) else "?"
    total, count = collections.Counter(), collections.Counter()
    for r in rows[start + 2:]:
        if len(r) <= max(ki, ti):
            continue
        try:
            v = float(r[ti].replace(",", ""))
        except ValueError:
            continue
        name = r[ki].split("(")[0].strip()
        total[name] += v
        count[name] += 1
    scale = {"ns": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0, "nsecond": 1e-6}.get(unit, None)
    if scale is None:
        sys.exit(f"{path}: unknown time unit {unit!r}")
    all_ms = sum(total.values()) * scale / steps
    print(f"{sum(count.values())} launches, {all_ms:.2f} ms of kernels per step")
    for name, v in total.most_common(top):
        ms = v * scale / steps
        print(f"{ms:8.2f} ms {count[name] / steps:7.1f}x {v * scale * 1000 / count[name]:9.2f} us  {name[:80]}")


if __name__ == "__main__":
    main()
