#!/usr/bin/env python3
"""Builds a FAISS index of the global descriptors of a delg-gpu feature set:
one feature folder, or a folder of shard folders (from `extract --shard`),
added shard by shard and a chunk of rows at a time from memory-mapped
global.npy files, so the set is never loaded whole.

    pip install faiss-cpu
    python3 tools/faiss_index.py DB INDEX                          # exact (flat)
    python3 tools/faiss_index.py DB INDEX --ivfpq --nlist 4096 --pq 64
    python3 tools/faiss_search.py INDEX QUERIES shortlist.csv --k 100
    delg-gpu search --queries QUERIES --db DB --out R --rerank --shortlist-file shortlist.csv

Writes INDEX (the FAISS index, inner product on the L2-normalised
descriptors: the cosine similarity `delg-gpu search` ranks by), INDEX.ids.txt
(the id map: FAISS label i is the image on line i, the images of every shard
in id order, as delg-gpu numbers them) and INDEX.json (what was indexed).
IVF-PQ is trained on a random sample of rows (--train, default 100 000)
drawn across all shards.
"""
import argparse
import json
import os
import sys

import numpy as np

CHUNK_ROWS = 65536


def fail(message):
    sys.exit(f"faiss_index: {message}")


def read_record(folder):
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}: not a config.json written by delg-gpu extract")
    if not isinstance(record, dict):
        fail(f"{path}: not a JSON object: not a config.json written by delg-gpu extract")
    return record


def feature_folders(db):
    """The feature folders of DB: DB itself, or its shard folders, checked to
    be every shard of one extraction, each finished."""
    if os.path.isfile(os.path.join(db, "ids.txt")):
        return [db], read_record(db) or {}
    shards = []
    for name in sorted(os.listdir(db)):
        folder = os.path.join(db, name)
        record = read_record(folder) if os.path.isdir(folder) else None
        if record and record.get("shard"):
            shards.append((folder, record))
    if not shards:
        fail(f"{db}: holds neither features (ids.txt) nor shard folders (from delg-gpu extract --shard)")
    first_folder, first = shards[0]
    count = None
    owner = {}
    for folder, record in shards:
        for key in ("model_id", "collection", "extract"):
            if record.get(key) != first.get(key):
                fail(f"{folder}: its {key} differs from {first_folder}'s: shards must come from one extract command")
        try:
            index, n = (int(x) for x in str(record["shard"]).split("/"))
        except ValueError:
            fail(f"{folder}: config.json shard {record['shard']!r} is not i/N")
        if count is None:
            count = n
        if n != count or not 0 <= index < n:
            fail(f"{folder}: is shard {index}/{n} but {first_folder} is one of {count}")
        if index in owner:
            fail(f"{folder}: is shard {index}/{n}, as is {owner[index]}")
        owner[index] = folder
        if not os.path.isfile(os.path.join(folder, "ids.txt")):
            fail(f"{folder}: has no ids.txt: its extraction has not finished; rerun its task")
    missing = [f"{i}/{count}" for i in range(count) if i not in owner]
    if missing:
        fail(f"{db}: shard(s) {', '.join(missing)} missing")
    return [owner[i] for i in range(count)], first


def open_folder(folder):
    with open(os.path.join(folder, "ids.txt"), encoding="utf-8") as f:
        ids = f.read().splitlines()
    path = os.path.join(folder, "global.npy")
    glob = np.load(path, mmap_mode="r")
    if glob.ndim != 2 or glob.dtype != np.float32 or glob.shape[0] != len(ids):
        fail(f"{path}: {glob.dtype} {glob.shape} is not [{len(ids)}, D] float32 (one row per line of ids.txt)")
    return ids, glob


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db", help="feature folder or folder of shard folders")
    ap.add_argument("index", help="output index file")
    ap.add_argument("--ivfpq", action="store_true", help="IVF-PQ instead of exact flat search")
    ap.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    ap.add_argument("--pq", type=int, default=64, help="PQ sub-quantisers (divides the dimension)")
    ap.add_argument("--bits", type=int, default=8, help="bits per PQ code")
    ap.add_argument("--train", type=int, default=100000, help="rows sampled to train IVF-PQ")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    try:
        import faiss
    except ImportError:
        fail("the faiss module is missing: pip install faiss-cpu")

    folders, record = feature_folders(a.db)
    opened = [open_folder(f) for f in folders]
    dims = {g.shape[1] for _, g in opened}
    if len(dims) != 1:
        fail(f"{a.db}: shards hold global descriptors of sizes {sorted(dims)}")
    dim = dims.pop()
    # delg-gpu numbers the images of a shard set in id order (as merge does):
    # label = position in the sorted ids, so rankings name the same indices.
    all_ids = sorted(i for ids, _ in opened for i in ids)
    for x, y in zip(all_ids, all_ids[1:]):
        if x == y:
            fail(f"{a.db}: image '{x}' appears in two shards")
    label_of = {image: n for n, image in enumerate(all_ids)}
    total = len(all_ids)
    if total == 0:
        fail(f"{a.db}: holds no images")

    if a.ivfpq:
        if dim % a.pq:
            fail(f"--pq {a.pq} does not divide the {dim}-d descriptors")
        index = faiss.index_factory(dim, f"IVF{a.nlist},PQ{a.pq}x{a.bits}", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(a.seed)
        take = min(a.train, total)
        # A uniform sample over all rows, read shard by shard in row order.
        picks = np.sort(rng.choice(total, size=take, replace=False))
        sample, start = [], 0
        for _, glob in opened:
            end = start + glob.shape[0]
            rows = picks[(picks >= start) & (picks < end)] - start
            if len(rows):
                sample.append(np.ascontiguousarray(glob[rows], dtype=np.float32))
            start = end
        sample = np.concatenate(sample)
        if len(sample) < a.nlist:
            fail(f"{len(sample)} training rows for {a.nlist} lists: lower --nlist or raise --train")
        index.train(sample)
        del sample
    else:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))

    for folder, (ids, glob) in zip(folders, opened):
        labels = np.fromiter((label_of[i] for i in ids), dtype=np.int64, count=len(ids))
        for start in range(0, len(ids), CHUNK_ROWS):
            rows = np.ascontiguousarray(glob[start : start + CHUNK_ROWS], dtype=np.float32)
            if not np.isfinite(rows).all():
                fail(f"{folder}/global.npy: rows {start}.. hold NaN or infinity")
            index.add_with_ids(rows, labels[start : start + CHUNK_ROWS])

    faiss.write_index(index, a.index)
    with open(a.index + ".ids.txt", "w", encoding="utf-8") as f:
        f.writelines(f"{i}\n" for i in all_ids)
    with open(a.index + ".json", "w") as f:
        json.dump(
            {
                "kind": f"IVF{a.nlist},PQ{a.pq}x{a.bits}" if a.ivfpq else "Flat",
                "metric": "inner_product",
                "images": total,
                "dim": dim,
                "model_id": record.get("model_id", ""),
                "db": os.path.abspath(a.db),
            },
            f,
            indent=2,
        )
    print(f"indexed {total} images ({dim}-d) from {len(folders)} folder(s) into {a.index}")


if __name__ == "__main__":
    main()
