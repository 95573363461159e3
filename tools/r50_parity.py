#!/usr/bin/env python3
"""The whole-recipe parity at ResNet-50 depth, run by hand (too slow and too
large for CI): tools/recipe_reference.py's DELG extraction in float64 with a
depth-50 model against `delg-gpu extract` on fixture images of
tests/fixtures/recipe. τ and the feature cap are put in gaps of the
reference's scores, as recipe_reference.py does; nothing is written to the
repository.

    delg-gpu init-weights --depth 50 --layout delg --out r50.safetensors
    python3 tools/r50_parity.py delg r50.safetensors /tmp/r50 a.png b.png

Prints per image the global cosine, the keypoint counts, and the worst
keypoint offset, descriptor and attention errors. Needs torch, numpy, Pillow.
"""
import pathlib
import subprocess
import sys
import time

import numpy as np
import torch

TOOLS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import recipe_reference as rr  # noqa: E402
import torch_delg_reference as delg_ref  # noqa: E402

layout, weights, out_dir = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
images = sys.argv[4:]
s_stride32 = False
# ResNet-50: width 64, [3, 4, 6, 3] bottlenecks, DELG's 512-channel attention
# and 128-d descriptors.
delg_ref.WIDTH, delg_ref.BLOCKS, delg_ref.ATT, delg_ref.LOC = 64, [3, 4, 6, 3], 512, 128
net = delg_ref.Net(layout, seed=0).build()
tensors, _ = rr.read_safetensors(weights)
# The training-only heads are not needed to extract.
missing = [n for n in net.order if n not in tensors
           and not n.startswith(("arcface", "attention_classifier", "autoencoder.decoder"))]
assert not missing, missing
for n in net.order:
    if n in tensors:
        assert tuple(tensors[n].shape) == tuple(net.p[n].shape), (n, tensors[n].shape, net.p[n].shape)
        net.p[n] = tensors[n]
src = TOOLS.parent / "tests" / "fixtures" / "recipe"
probe = {}
for name in images:
    t = time.time()
    probe[name] = rr.delg_extract(net, s_stride32, src / name, None, -1.0, 10 ** 9)
    print(name, "reference", f"{time.time() - t:.0f} s", len(probe[name]["attention"]), "candidates", flush=True)
scores = np.concatenate([p["attention"] for p in probe.values()])
tau, gap = rr.gap_threshold(scores, 0.7, 0.9)
kept = [p["attention"][p["attention"] >= tau] for p in probe.values()]
longest = max(kept, key=len)
k = int(np.argmax(-np.diff(longest)[len(longest) // 2:])) + len(longest) // 2 + 1
print(f"tau {tau:.6g} gap {gap:.2e}, max_features {k}")
imgdir = out_dir / "images"
imgdir.mkdir(parents=True, exist_ok=True)
for name in images:
    (imgdir / name).write_bytes((src / name).read_bytes())
feat = out_dir / "features"
if (feat / "journal.bin").exists():
    sys.exit(f"{feat} holds a previous run: delete it first")
subprocess.run([str(TOOLS.parent / "target" / "release" / "delg-gpu"), "extract", str(imgdir), "--weights", str(weights),
                "--out", str(feat), "--score-threshold", repr(float(tau)), "--max-features", str(k), "--quiet"], check=True)
ids = (feat / "ids.txt").read_text().split()
G, off = np.load(feat / "global.npy"), np.load(feat / "local_offsets.npy")
D, L = np.load(feat / "local_descriptors.npy"), np.load(feat / "local_locations.npy")
S, A = np.load(feat / "local_scales.npy"), np.load(feat / "local_attention.npy")
for i, name in enumerate(ids):
    ref = probe[name]
    keep = ref["attention"] >= tau
    ra, rl, rs, rd = (ref[f][keep][:k] for f in ("attention", "locations", "scales", "descriptors"))
    a, b = off[i], off[i + 1]
    cos = float(np.dot(G[i].astype(np.float64), ref["global"].astype(np.float64)))
    worst_off, worst_desc, worst_att, unmatched = 0.0, 0.0, 0.0, 0
    for j in range(len(ra)):
        same = np.where(np.abs(S[a:b] - rs[j]) < 1e-6)[0]
        if len(same) == 0:
            unmatched += 1
            continue
        dist = np.abs(L[a:b][same] - rl[j]).max(axis=1)
        m = same[np.argmin(dist)]
        if dist.min() > 0.5:
            unmatched += 1
            continue
        worst_off = max(worst_off, float(dist.min()))
        worst_desc = max(worst_desc, float(np.abs(D[a + m] - rd[j]).max()))
        worst_att = max(worst_att, float(abs(A[a + m] - ra[j])))
    print(f"{layout} {name}: global cosine {cos:.14f}, keypoints ours {b - a} ref {len(ra)}, unmatched {unmatched}, "
          f"worst offset {worst_off:.3g} px, descriptor max-abs {worst_desc:.2e}, attention {worst_att:.2e}")
