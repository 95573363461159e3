#!/usr/bin/env python3
"""Synthetic feature folders for timing `delg-gpu search` at scale: random
unit global descriptors (no local features) as SHARDS shard folders under
OUT/shards, the same images as one folder OUT/single, and QUERIES query
images in OUT/queries, all stamped as one model and one collection.

    python3 tools/synthetic_shards.py OUT --images 200000 --dim 2048 --shards 8
    delg-gpu search --queries OUT/queries --db OUT/shards --out R   # in place
    delg-gpu search --queries OUT/queries --db OUT/single --out R   # one folder
"""
import argparse
import json
import os

import numpy as np


def record(shard):
    return {
        "weights": "synthetic",
        "weights_bytes": 0,
        "model_id": "synthetic0000000",
        "tau": 0.0,
        "shard": shard,
        "extract": {},
        "collection": {"images": 0, "fingerprint": "synthetic"},
    }


def write_folder(path, ids, rows, dim, shard, chunk=50000):
    os.makedirs(path, exist_ok=True)
    n = len(ids)
    glob = np.lib.format.open_memmap(
        os.path.join(path, "global.npy"), mode="w+", dtype="<f4", shape=(n, dim)
    )
    for start in range(0, n, chunk):
        # Row i of the collection is the same wherever it is stored.
        block = np.stack([rows(i) for i in range(start, min(n, start + chunk))])
        glob[start : start + len(block)] = block
    glob.flush()
    del glob
    np.save(os.path.join(path, "local_offsets.npy"), np.zeros(n + 1, dtype="<i8"))
    np.save(os.path.join(path, "local_descriptors.npy"), np.zeros((0, 128), dtype="<f4"))
    np.save(os.path.join(path, "local_locations.npy"), np.zeros((0, 2), dtype="<f4"))
    np.save(os.path.join(path, "local_scales.npy"), np.zeros(0, dtype="<f4"))
    np.save(os.path.join(path, "local_attention.npy"), np.zeros(0, dtype="<f4"))
    with open(os.path.join(path, "ids.txt"), "w") as f:
        f.writelines(f"{i}\n" for i in ids)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(record(shard), f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--images", type=int, default=200000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--queries", type=int, default=100)
    a = ap.parse_args()
    seed_rows = np.random.default_rng(7).standard_normal((a.images, a.dim), dtype=np.float32)
    seed_rows /= np.linalg.norm(seed_rows, axis=1, keepdims=True)
    ids = [f"img{i:08d}" for i in range(a.images)]

    def in_order(positions):
        return lambda j: seed_rows[positions[j]]

    everything = list(range(a.images))
    write_folder(f"{a.out}/single", ids, in_order(everything), a.dim, None)
    for s in range(a.shards):
        mine = everything[s :: a.shards]
        write_folder(
            f"{a.out}/shards/shard-{s}",
            [ids[i] for i in mine],
            in_order(mine),
            a.dim,
            f"{s}/{a.shards}",
        )
    q = seed_rows[: a.queries] + 0.01
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    qids = [f"q{i:05d}" for i in range(a.queries)]
    write_folder(f"{a.out}/queries", qids, lambda j: q[j], a.dim, None)


if __name__ == "__main__":
    main()
