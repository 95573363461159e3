#!/usr/bin/env python3
"""Converts an official revisitop ground-truth pickle (gnd_roxford5k.pkl,
gnd_rparis6k.pkl: a dict with `imlist`, `qimlist` and `gnd`, a list of
{bbx, easy, hard, junk} with 0-based indices into imlist) into the
project's gnd.json form (instance_retrieval_dev/README.md), read by
io::groundtruth.

    tools/gnd_pkl_to_json.py gnd_roxford5k.pkl roxford5k/gnd.json
    tools/gnd_pkl_to_json.py --self-test

Queries become `official_<query image>` with protocol "official", `bbox`
the pickle's bbx (pixels of the original images: no resizing is done here)
and `group` the landmark, i.e. the query image name without its trailing
_<digits>. `labels` gives every easy or hard image the landmark(s) of the
queries it is positive for. Standard library only (numpy arrays inside the
pickle need numpy installed to be unpickled).

--self-test writes a tiny pickle to tests/fixtures/revisitop/gnd_tiny.pkl,
converts it to gnd_tiny.json beside it (read by tests/metrics.rs) and
checks the result.
"""
import argparse
import json
import pathlib
import pickle
import re
import sys


def landmark_of(name):
    return re.sub(r"_\d+$", "", name)


def convert(cfg, name, source, image_dir="jpg", image_ext=".jpg"):
    imlist = [str(n) for n in cfg["imlist"]]
    qimlist = [str(n) for n in cfg["qimlist"]]
    gnd = cfg["gnd"]
    if len(gnd) != len(qimlist):
        raise ValueError(f"{len(gnd)} gnd entries for {len(qimlist)} query images")
    db = set(imlist)
    if len(db) != len(imlist):
        raise ValueError("imlist has repeated names")
    labels = {}
    queries = []
    for i, (qname, g) in enumerate(zip(qimlist, gnd)):
        group = landmark_of(qname)
        lists = {}
        for key in ("easy", "hard", "junk"):
            idx = [int(x) for x in g.get(key, [])]
            bad = [x for x in idx if not 0 <= x < len(imlist)]
            if bad:
                raise ValueError(f"query {i} ({qname}): {key} index {bad[0]} outside imlist")
            lists[key] = [imlist[x] for x in idx]
        for n in lists["easy"] + lists["hard"]:
            labels.setdefault(n, set()).add(group)
        bbx = g.get("bbx")
        queries.append(
            {
                "id": f"official_{qname}",
                "image": qname,
                "bbox": None if bbx is None else [float(v) for v in bbx],
                "easy": lists["easy"],
                "hard": lists["hard"],
                "junk": lists["junk"],
                "protocol": "official",
                "group": group,
                "revisitop_query_index": i,
            }
        )
    outside = list(dict.fromkeys(q for q in qimlist if q not in db))
    return {
        "name": name,
        "source": source,
        "image_dir": image_dir,
        "image_ext": image_ext,
        "db": imlist,
        "query_images_not_in_db": outside,
        "queries": queries,
        "labels": {n: sorted(v) for n, v in sorted(labels.items())},
    }


def convert_file(src, dst, image_dir, image_ext):
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    with open(src, "rb") as f:
        # The official pickles were written by Python 2.
        cfg = pickle.load(f, encoding="latin1")
    name = re.sub(r"^gnd_", "", src.stem)
    out = convert(cfg, name, f"revisitop {src.name}", image_dir, image_ext)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(out, indent=1) + "\n")
    return out


def self_test():
    folder = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "revisitop"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "imlist": ["all_souls_000001", "oxford_000002", "radcliffe_000003", "oxford_000004", "oxford_000005"],
        "qimlist": ["all_souls_000013", "radcliffe_camera_000519"],
        "gnd": [
            {"bbx": [10.5, 20.0, 300.0, 400.25], "easy": [0, 1], "hard": [3], "junk": [4]},
            {"bbx": [0, 0, 50, 60], "easy": [], "hard": [2, 1], "junk": []},
        ],
    }
    pkl = folder / "gnd_tiny.pkl"
    with open(pkl, "wb") as f:
        pickle.dump(cfg, f, protocol=2)
    out = convert_file(pkl, folder / "gnd_tiny.json", "jpg", ".jpg")
    assert out["name"] == "tiny", out["name"]
    assert out["db"] == cfg["imlist"]
    assert out["query_images_not_in_db"] == cfg["qimlist"]
    q0, q1 = out["queries"]
    assert q0["id"] == "official_all_souls_000013" and q0["group"] == "all_souls"
    assert q0["bbox"] == [10.5, 20.0, 300.0, 400.25]
    assert q0["easy"] == ["all_souls_000001", "oxford_000002"]
    assert q0["hard"] == ["oxford_000004"] and q0["junk"] == ["oxford_000005"]
    assert q1["easy"] == [] and q1["hard"] == ["radcliffe_000003", "oxford_000002"]
    assert q1["group"] == "radcliffe_camera" and q1["revisitop_query_index"] == 1
    assert out["labels"]["oxford_000002"] == ["all_souls", "radcliffe_camera"]
    assert "oxford_000005" not in out["labels"]
    try:
        convert({**cfg, "gnd": [{"easy": [9]}, cfg["gnd"][1]]}, "x", "x")
    except ValueError as e:
        assert "outside imlist" in str(e)
    else:
        raise AssertionError("an index outside imlist must be rejected")
    print("self-test passed; wrote", pkl.name, "and gnd_tiny.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pkl", nargs="?")
    ap.add_argument("json", nargs="?")
    ap.add_argument("--image-dir", default="jpg")
    ap.add_argument("--image-ext", default=".jpg")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return
    if not (args.pkl and args.json):
        ap.error("give the input .pkl and the output .json, or --self-test")
    out = convert_file(args.pkl, args.json, args.image_dir, args.image_ext)
    print(f"{args.json}: {len(out['db'])} database images, {len(out['queries'])} queries")


if __name__ == "__main__":
    sys.exit(main())
