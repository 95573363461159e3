#!/usr/bin/env python3
"""Searches a FAISS index built by tools/faiss_index.py with the global
descriptors of a delg-gpu query folder and writes the shortlist in the format
`delg-gpu search` writes (ranking.csv: query,db,rank,global_score,inliers),
ready for `delg-gpu search --rerank --shortlist-file FILE`.

    python3 tools/faiss_search.py INDEX QUERIES shortlist.csv --k 100 [--nprobe 32]

Every query gets exactly k rows; an IVF index that finds fewer (too few lists
probed) is an error: raise --nprobe.
"""
import argparse
import json
import os
import sys

import numpy as np

HEADER = "query,db,rank,global_score,inliers\n"
QUERY_BATCH = 1024


def fail(message):
    sys.exit(f"faiss_search: {message}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index", help="index file from tools/faiss_index.py")
    ap.add_argument("queries", help="query feature folder (from delg-gpu extract)")
    ap.add_argument("out", help="shortlist file to write")
    ap.add_argument("--k", type=int, default=100, help="images per query")
    ap.add_argument("--nprobe", type=int, default=32, help="IVF lists searched per query")
    a = ap.parse_args()
    try:
        import faiss
    except ImportError:
        fail("the faiss module is missing: pip install faiss-cpu")

    try:
        with open(a.index + ".json") as f:
            meta = json.load(f)
        with open(a.index + ".ids.txt", encoding="utf-8") as f:
            db_ids = f.read().splitlines()
    except (OSError, ValueError) as e:
        fail(f"{e}: INDEX.json and INDEX.ids.txt are written by tools/faiss_index.py beside the index")
    index = faiss.read_index(a.index)
    if index.ntotal != len(db_ids):
        fail(f"{a.index} holds {index.ntotal} vectors but {a.index}.ids.txt names {len(db_ids)}")
    if not 1 <= a.k <= min(100000, index.ntotal):
        fail(f"--k {a.k}: between 1 and {min(100000, index.ntotal)} (the images indexed)")
    if hasattr(index, "nprobe"):
        index.nprobe = a.nprobe

    try:
        with open(os.path.join(a.queries, "ids.txt"), encoding="utf-8") as f:
            query_ids = f.read().splitlines()
        glob = np.load(os.path.join(a.queries, "global.npy"), mmap_mode="r")
    except (OSError, ValueError) as e:
        fail(f"{e}: QUERIES is a feature folder written by delg-gpu extract")
    if glob.ndim != 2 or glob.shape != (len(query_ids), index.d) or glob.dtype != np.float32:
        fail(f"{a.queries}/global.npy: {glob.dtype} {glob.shape}, the index needs [{len(query_ids)}, {index.d}] float32")
    try:
        with open(os.path.join(a.queries, "config.json")) as f:
            model = json.load(f).get("model_id", "")
    except (OSError, ValueError, AttributeError):
        model = ""
    if model and meta.get("model_id") and model != meta["model_id"]:
        fail(f"{a.queries} was extracted with model {model}, the index holds model {meta['model_id']}")
    if any("," in i for i in query_ids + db_ids):
        fail("an image id contains a comma, which the shortlist's CSV cannot hold")

    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(HEADER)
        for start in range(0, len(query_ids), QUERY_BATCH):
            rows = np.ascontiguousarray(glob[start : start + QUERY_BATCH], dtype=np.float32)
            scores, labels = index.search(rows, a.k)
            for qi, (s, l) in enumerate(zip(scores, labels)):
                qid = query_ids[start + qi]
                if (l < 0).any():
                    fail(f"query '{qid}' found {int((l >= 0).sum())} of {a.k} images: raise --nprobe")
                out.writelines(
                    # repr of the float32 value as float64 reads back as the same float32
                    f"{qid},{db_ids[d]},{r + 1},{float(v)!r},0\n"
                    for r, (d, v) in enumerate(zip(l, s))
                )
    os.replace(tmp, a.out)
    print(f"{len(query_ids)} queries x {a.k} images from {a.index} ({meta.get('kind')}) into {a.out}")


if __name__ == "__main__":
    main()
