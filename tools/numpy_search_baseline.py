#!/usr/bin/env python3
"""The numpy (BLAS) baseline for `delg-gpu bench search`: the same global
search (random unit descriptors, cosine = dot product, top-k per query) with
the database in memory, as a numpy user would run it. Threads follow
OPENBLAS_NUM_THREADS (unset: all cores).

    python3 tools/numpy_search_baseline.py --queries 1000 --db 1000000 --dim 2048
"""
import argparse
import time

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--queries", type=int, default=1000)
ap.add_argument("--db", type=int, default=1_000_000)
ap.add_argument("--dim", type=int, default=2048)
ap.add_argument("--k", type=int, default=100)
ap.add_argument("--chunk", type=int, default=65536)
a = ap.parse_args()

rng = np.random.default_rng(7)
def unit(n):
    x = rng.uniform(-1, 1, size=(n, a.dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)

t = time.perf_counter()
q = unit(a.queries)
db = np.empty((a.db, a.dim), dtype=np.float32)
for s in range(0, a.db, a.chunk):
    db[s:s + a.chunk] = unit(min(a.chunk, a.db - s))
gen = time.perf_counter() - t

t, c = time.perf_counter(), time.process_time()
best_s = np.full((a.queries, a.k), -np.inf, dtype=np.float32)
best_i = np.zeros((a.queries, a.k), dtype=np.int64)
for s in range(0, a.db, a.chunk):
    scores = q @ db[s:s + a.chunk].T
    idx = np.argpartition(-scores, min(a.k, scores.shape[1] - 1), axis=1)[:, :a.k]
    cand_s = np.concatenate([best_s, np.take_along_axis(scores, idx, 1)], axis=1)
    cand_i = np.concatenate([best_i, idx + s], axis=1)
    keep = np.argsort(-cand_s, axis=1)[:, :a.k]
    best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
wall, cpu = time.perf_counter() - t, time.process_time() - c
flops = 2.0 * a.queries * a.db * a.dim
print(f"numpy {np.__version__} search {a.queries} x {a.db} x {a.dim}, top {a.k}: {wall:.1f} s "
      f"({flops / wall / 1e9:.1f} GFLOP/s, CPU {cpu:.1f} s; generating took {gen:.1f} s); best score of query 0: {best_s[0, 0]:.4f}")
