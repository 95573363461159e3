#!/usr/bin/env python3
"""Test of tools/synthetic_shards.py, run by hand (needs numpy; a few seconds):

    python3 tools/test_synthetic_shards.py [--bin target/release/delg-gpu]

- every shard's arrays load with np.load and hold, image by image (by id and
  offsets), exactly what the one folder holds;
- the generator streams: on a set of 600 MB per copy its peak resident memory
  stays under 200 MB;
- with the delg-gpu binary (default target/release/delg-gpu, skipped with a
  message when absent): `merge` of the shards is byte-identical to the one
  folder, and `search --rerank` ranks the same over the shards in place as
  over the one folder.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATOR = os.path.join(HERE, "synthetic_shards.py")
FILES = [
    "global.npy",
    "local_offsets.npy",
    "local_descriptors.npy",
    "local_locations.npy",
    "local_scales.npy",
    "local_attention.npy",
    "ids.txt",
]


def generate(out, *args):
    text = subprocess.run(
        [sys.executable, GENERATOR, out, *map(str, args)], check=True, capture_output=True, text=True
    ).stdout
    return float(re.search(r"peak resident memory (\d+) MB", text).group(1))


def load(folder):
    arrays = {f[:-4]: np.load(os.path.join(folder, f)) for f in FILES if f.endswith(".npy")}
    with open(os.path.join(folder, "ids.txt")) as f:
        ids = f.read().split()
    return ids, arrays


def image(ids, arrays, i):
    a, b = arrays["local_offsets"][i : i + 2]
    return [arrays["global"][i]] + [arrays[k][a:b] for k in arrays if k.startswith("local_") and k != "local_offsets"]


def check_shards_hold_the_folder(out, shards):
    ids, one = load(f"{out}/single")
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    norms = np.linalg.norm(one["global"], axis=1)
    assert np.all(np.abs(norms - 1) < 1e-5), "global descriptors are unit length"
    row = {id_: i for i, id_ in enumerate(ids)}
    seen = 0
    for s in range(shards):
        sids, shard = load(f"{out}/shards/shard-{s}")
        seen += len(sids)
        for j, id_ in enumerate(sids):
            for mine, theirs in zip(image(sids, shard, j), image(ids, one, row[id_])):
                assert np.array_equal(mine, theirs), f"shard {s} image {id_} differs from the one folder"
    assert seen == len(ids), "every image is in exactly one shard"
    print(f"ok: {shards} shards hold the one folder's {len(ids)} images, image by image")


def check_with_binary(binary, out, work):
    merged = f"{work}/merged"
    shards = sorted(e.path for e in os.scandir(f"{out}/shards"))
    subprocess.run([binary, "merge", *shards, "--out", merged], check=True, capture_output=True)
    for f in FILES:
        with open(f"{merged}/{f}", "rb") as a, open(f"{out}/single/{f}", "rb") as b:
            assert a.read() == b.read(), f"merge's {f} differs from the one folder's"
    print("ok: delg-gpu merge of the shards is byte-identical to the one folder")
    for db in ["single", "shards"]:
        subprocess.run([binary, "search", "--queries", f"{out}/queries", "--db", f"{out}/{db}",
                        "--out", f"{work}/{db}", "--k", "20", "--rerank", "--shortlist", "10"],
                       check=True, capture_output=True)
    for f in ["ranking.csv", "ranks.npy", "scores.npy", "inliers.npy"]:
        with open(f"{work}/single/{f}", "rb") as a, open(f"{work}/shards/{f}", "rb") as b:
            assert a.read() == b.read(), f"search over the shards writes another {f}"
    ranks = np.load(f"{work}/shards/ranks.npy")
    assert np.array_equal(ranks[:, 0], np.arange(len(ranks))), "query j finds image j first"
    print("ok: search --rerank over the shards in place equals the one folder's")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "delg-gpu"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        out = f"{work}/set"
        generate(out, "--images", 3001, "--dim", 32, "--shards", 4, "--queries", 5, "--locals", 40)
        check_shards_hold_the_folder(out, 4)
        if os.access(a.bin, os.X_OK):
            check_with_binary(a.bin, out, work)
        else:
            print(f"skipped the delg-gpu checks: {a.bin} is not built (cargo build --release)")
    with tempfile.TemporaryDirectory() as work:
        # 75 000 x 2048 float32: 614 MB per copy, twice (shards and folder).
        peak = generate(f"{work}/set", "--images", 75000, "--dim", 2048, "--shards", 3, "--queries", 1)
        assert peak < 200, f"the generator's peak was {peak} MB: it holds the set instead of streaming it"
        print(f"ok: generating 2 x 614 MB peaked at {peak:.0f} MB")


if __name__ == "__main__":
    main()
