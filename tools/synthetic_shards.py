#!/usr/bin/env python3
"""Synthetic feature folders for timing `delg-gpu search` at scale: random
unit global descriptors (and, with --locals L, L random local features per
image) as SHARDS shard folders under OUT/shards, the same images as one folder
OUT/single (unless --no-single), and QUERIES query images in OUT/queries, all
stamped as one model and one collection.

Everything is streamed: rows are generated a block at a time and appended to
every folder's .npy files (header first, then the rows), so the generator's
memory stays a few blocks whatever the set's size; its peak is printed.

    python3 tools/synthetic_shards.py OUT --images 1000000 --dim 2048 --shards 16
    delg-gpu search --queries OUT/queries --db OUT/shards --out R   # in place
    delg-gpu search --queries OUT/queries --db OUT/single --out R   # one folder
    delg-gpu merge OUT/shards/shard-* --out M     # M equals OUT/single
"""
import argparse
import json
import os
import resource

import numpy as np

LOCAL_DIM = 128
# Global rows are generated in blocks of this many, each block from its own
# seed, so row i is the same whatever the set's size or sharding.
BLOCK = 4096


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


class NpyAppender:
    """A little-endian float32/int64 .npy file written as a header, then rows
    appended in order; close() checks that the shape was filled."""

    def __init__(self, path, dtype, shape):
        self.path, self.dtype = path, np.dtype(dtype)
        self.remaining = int(np.prod(shape))
        self.file = open(path, "wb")
        np.lib.format.write_array_header_1_0(
            self.file, {"descr": self.dtype.str, "fortran_order": False, "shape": tuple(shape)}
        )

    def append(self, values):
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self.remaining -= values.size
        if self.remaining < 0:
            raise ValueError(f"{self.path}: more values than its shape holds")
        self.file.write(values.tobytes())

    def close(self):
        self.file.close()
        if self.remaining != 0:
            raise ValueError(f"{self.path}: {self.remaining} values short of its shape")


def global_block(b, dim):
    """Rows b*BLOCK .. (b+1)*BLOCK of the collection, unit length."""
    rows = np.random.default_rng([7, b]).standard_normal((BLOCK, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def global_rows(start, end, dim):
    """Rows start..end of the collection."""
    if end <= start:
        return np.empty((0, dim), dtype=np.float32)
    blocks = [global_block(b, dim) for b in range(start // BLOCK, (end - 1) // BLOCK + 1)]
    first = (start // BLOCK) * BLOCK
    return np.concatenate(blocks)[start - first : end - first]


def local_features(i, count):
    """Image i's local features, the same wherever the image is stored."""
    rng = np.random.default_rng(1_000_003 + i)
    d = rng.standard_normal((count, LOCAL_DIM), dtype=np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    loc = rng.uniform(0, 512, (count, 2)).astype("<f4")
    scales = rng.choice(np.array([0.5, 1.0, 2.0], dtype="<f4"), count)
    attention = rng.uniform(0, 1, count).astype("<f4")
    return d, loc, scales, attention


class FolderWriter:
    """One feature folder (the format `delg-gpu extract` writes) of `ids`,
    each image with `local_count` local features, filled in id order."""

    def __init__(self, path, ids, dim, local_count, shard):
        os.makedirs(path, exist_ok=True)
        self.path, self.ids, self.shard = path, ids, shard
        n, m = len(ids), len(ids) * local_count
        np.save(os.path.join(path, "local_offsets.npy"), np.arange(n + 1, dtype="<i8") * local_count)
        self.glob = NpyAppender(os.path.join(path, "global.npy"), "<f4", (n, dim))
        self.locals = [
            NpyAppender(os.path.join(path, name), "<f4", shape)
            for name, shape in [
                ("local_descriptors.npy", (m, LOCAL_DIM)),
                ("local_locations.npy", (m, 2)),
                ("local_scales.npy", (m,)),
                ("local_attention.npy", (m,)),
            ]
        ]

    def add_locals(self, features):
        for f, values in zip(self.locals, features):
            f.append(values)

    def close(self):
        for f in [self.glob, *self.locals]:
            f.close()
        # ids.txt last: the engine takes a folder without it as unfinished.
        with open(os.path.join(self.path, "config.json"), "w") as f:
            json.dump(record(self.shard), f)
        with open(os.path.join(self.path, "ids.txt"), "w") as f:
            f.writelines(f"{i}\n" for i in self.ids)


def write_collection(out, images, dim, shards, local_count, single):
    """Image i goes to shard i % shards (and to the one folder); its id is
    img{i:08d}, so id order is collection order in every folder."""
    ids = [f"img{i:08d}" for i in range(images)]
    folders = [
        FolderWriter(f"{out}/shards/shard-{s}", ids[s::shards], dim, local_count, f"{s}/{shards}")
        for s in range(shards)
    ]
    one = FolderWriter(f"{out}/single", ids, dim, local_count, None) if single else None
    for start in range(0, images, BLOCK):
        end = min(images, start + BLOCK)
        rows = global_rows(start, end, dim)
        if one:
            one.glob.append(rows)
        for s, folder in enumerate(folders):
            # The first image of this block that belongs to shard s.
            folder.glob.append(rows[(s - start) % shards :: shards])
        if local_count:
            for i in range(start, end):
                features = local_features(i, local_count)
                folders[i % shards].add_locals(features)
                if one:
                    one.add_locals(features)
    for folder in folders + ([one] if one else []):
        folder.close()


def write_queries(out, queries, dim, local_count):
    """Query j is image j's global descriptor nudged, with image j's local
    features, so each query has a true match in the collection."""
    q = global_rows(0, queries, dim) + 0.01
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    folder = FolderWriter(f"{out}/queries", [f"q{j:05d}" for j in range(queries)], dim, local_count, None)
    folder.glob.append(q)
    if local_count:
        for j in range(queries):
            folder.add_locals(local_features(j, local_count))
    folder.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--images", type=int, default=200000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--locals", type=int, default=0, help="local features per image")
    ap.add_argument("--no-single", action="store_true", help="write the shards only, not OUT/single")
    a = ap.parse_args()
    if a.queries > a.images:
        ap.error("--queries must not exceed --images (query j is near image j)")
    write_collection(a.out, a.images, a.dim, a.shards, a.locals, not a.no_single)
    write_queries(a.out, a.queries, a.dim, a.locals)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wrote {a.images} images ({a.shards} shards) and {a.queries} queries to {a.out}; "
          f"generator peak resident memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
