#!/usr/bin/env python3
"""The CPU baseline for `delg-gpu bench kernels`: numpy/OpenBLAS sgemm on one
thread for the same GEMM sizes, and the ResNet-50 conv4 3×3 convolution as an
im2col GEMM (the FLOPs a BLAS would do for it), reported per wall second and
per CPU-second like the bench. Run it in the same session as the bench:

    OPENBLAS_NUM_THREADS=1 python3 tools/blas_baseline.py
"""
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402


def bench(name, m, n, k, seconds=1.0):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    a @ b  # warm-up
    times, cpu0, t_end = [], time.process_time(), time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu0
    flops = 2.0 * m * n * k
    med = sorted(times)[len(times) // 2]
    return {"name": name, "variant": "numpy-openblas-1thread", "reps": len(times), "ms": med * 1e3,
            "gflops": flops / med / 1e9, "gflop_per_cpu_s": flops * len(times) / cpu / 1e9}


cases = [("gemm 1024x1024x1024", 1024, 1024, 1024), ("gemm 2048x2048x2048", 2048, 2048, 2048),
         # conv4 3x3, 256->256, 64x64, batch 1 as im2col: M = 64*64, N = 256, K = 9*256
         ("conv3x3 256->256 64x64 (im2col gemm)", 64 * 64, 256, 9 * 256)]
for name, m, n, k in cases:
    if len(sys.argv) > 1 and sys.argv[1] not in name:
        continue
    print(json.dumps(bench(name, m, n, k)))
