#!/usr/bin/env python3
"""Kernel times of the fused decode step (cuda/step.cuh), from PyTorch's
profiler (CUPTI sees every kernel in the process, including the ones of
libmambabyte_cuda.so, which this script drives through ctypes).

    python3 scripts/profile_step.py [--d 1024] [--streams 1,64] [--bf16]

Runs mb_step_block for one layer of the given width on random weights and
prints the mean time of each kernel per call. Needs the library built
(make -C cuda), PyTorch with CUDA, and a GPU.
"""
import argparse
import ctypes
import math
import os

import torch


class StepArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_void_p) for n in (
        "in_proj", "x_proj", "dt_proj", "out_proj", "dt_proj_f32",
        "norm_w", "norm_b", "conv_w", "conv_b", "dt_bias", "neg_a", "dskip",
        "h", "conv", "ssm", "xz", "xdbl", "u", "g", "xw")] + \
        [(n, ctypes.c_int64) for n in ("B", "D", "E", "N", "K", "R")] + \
        [("eps", ctypes.c_float), ("rms", ctypes.c_int32), ("wtype", ctypes.c_int32)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=os.path.join(os.path.dirname(__file__), "..", "cuda", "libmambabyte_cuda.so"))
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--streams", default="1,64")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args()
    lib = ctypes.CDLL(a.lib)
    lib.mb_last_error.restype = ctypes.c_char_p
    if lib.mb_init(0, 0) != 0:
        raise SystemExit(lib.mb_last_error().decode())
    D = a.d
    E, N, K, R = 2 * D, 16, 4, math.ceil(D / 16)
    wt = torch.bfloat16 if a.bf16 else torch.float32
    dev = "cuda"
    keep = []

    def t(*shape, dtype=torch.float32, scale=0.02):
        x = (torch.randn(*shape, device=dev) * scale).to(dtype)
        keep.append(x)
        return x.data_ptr()

    for B in [int(s) for s in a.streams.split(",")]:
        args = StepArgs(
            t(2 * E, D, dtype=wt), t(R + 2 * N, E, dtype=wt), t(E, R, dtype=wt), t(D, E, dtype=wt), t(E, R),
            t(D, scale=1), t(D), t(E, K), t(E), t(E), t(E, N, scale=-1), t(E),
            t(B, D, scale=1), t(B, K - 1, E), t(B, E, N), t(B, 2 * E), t(B, R + 2 * N), t(B, E), t(B, E),
            t(B * max(D, E), dtype=wt),
            B, D, E, N, K, R, 1e-5, 0, 1 if a.bf16 else 0)
        for _ in range(10):
            lib.mb_step_block(ctypes.byref(args))
        lib.mb_sync()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(a.reps):
                if lib.mb_step_block(ctypes.byref(args)) != 0:
                    raise SystemExit(lib.mb_last_error().decode())
            lib.mb_sync()
        rows = []
        for ev in prof.key_averages():
            us = ev.device_time_total / a.reps if hasattr(ev, "device_time_total") else ev.cuda_time_total / a.reps
            if us > 0:
                rows.append((us, ev.key[:90]))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        print(f"D {D} B {B} {'bf16' if a.bf16 else 'fp32'}: {total:.1f} us of kernels per block")
        for us, k in rows:
            print(f"  {us:8.2f} us  {k}")


if __name__ == "__main__":
    main()
