#!/usr/bin/env python3
"""Synthetic feature folders for timing `delg-gpu search` at scale: random
unit global descriptors (and, with --locals L, L random local features per
image) as SHARDS shard folders under OUT/shards, the same images as one folder
OUT/single, and QUERIES query images in OUT/queries, all stamped as one model
and one collection.

    python3 tools/synthetic_shards.py OUT --images 200000 --dim 2048 --shards 8
    delg-gpu search --queries OUT/queries --db OUT/shards --out R   # in place
    delg-gpu search --queries OUT/queries --db OUT/single --out R   # one folder
    delg-gpu merge OUT/shards/shard-* --out M     # M equals OUT/single
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


LOCAL_DIM = 128


def local_features(i, count):
    """Image i's local features, the same wherever the image is stored."""
    rng = np.random.default_rng(1_000_003 + i)
    d = rng.standard_normal((count, LOCAL_DIM), dtype=np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    loc = rng.uniform(0, 512, (count, 2)).astype("<f4")
    scales = rng.choice(np.array([0.5, 1.0, 2.0], dtype="<f4"), count)
    attention = rng.uniform(0, 1, count).astype("<f4")
    return d, loc, scales, attention


def write_locals(path, images, count):
    """The local feature files of `images` (collection indices), written
    through memory maps an image at a time."""
    n, m = len(images), len(images) * count
    np.save(os.path.join(path, "local_offsets.npy"), np.arange(n + 1, dtype="<i8") * count)
    files = [
        np.lib.format.open_memmap(os.path.join(path, name), mode="w+", dtype="<f4", shape=shape)
        for name, shape in [
            ("local_descriptors.npy", (m, LOCAL_DIM)),
            ("local_locations.npy", (m, 2)),
            ("local_scales.npy", (m,)),
            ("local_attention.npy", (m,)),
        ]
    ]
    for j, i in enumerate(images):
        for f, values in zip(files, local_features(i, count)):
            f[j * count : (j + 1) * count] = values
    for f in files:
        f.flush()


def write_folder(path, ids, rows, dim, shard, images, local_count, chunk=50000):
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
    write_locals(path, images, local_count)
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
    ap.add_argument("--locals", type=int, default=0, help="local features per image")
    a = ap.parse_args()
    seed_rows = np.random.default_rng(7).standard_normal((a.images, a.dim), dtype=np.float32)
    seed_rows /= np.linalg.norm(seed_rows, axis=1, keepdims=True)
    ids = [f"img{i:08d}" for i in range(a.images)]

    def in_order(positions):
        return lambda j: seed_rows[positions[j]]

    everything = list(range(a.images))
    write_folder(
        f"{a.out}/single", ids, in_order(everything), a.dim, None, everything, a.locals
    )
    for s in range(a.shards):
        mine = everything[s :: a.shards]
        write_folder(
            f"{a.out}/shards/shard-{s}",
            [ids[i] for i in mine],
            in_order(mine),
            a.dim,
            f"{s}/{a.shards}",
            mine,
            a.locals,
        )
    q = seed_rows[: a.queries] + 0.01
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    qids = [f"q{i:05d}" for i in range(a.queries)]
    # A query has the local features of the image its global is near.
    write_folder(
        f"{a.out}/queries", qids, lambda j: q[j], a.dim, None, list(range(a.queries)), a.locals
    )


if __name__ == "__main__":
    main()
