#!/usr/bin/env python3
"""Independent reference of the whole extraction recipe (docs/recipe.md §4 for
DELG, §8.7 for DOLG), written from the recipe, not from delg-gpu's code. It
regenerates tests/fixtures/recipe/: generated textured images of odd sizes and,
for every case (a tiny model of tests/fixtures/{delg,dolg}_tiny), the features
`delg-gpu extract` must produce for them.

The networks are the PyTorch re-statements of tools/torch_delg_reference.py and
tools/torch_dolg_reference.py, run in float64 from the float32 weights. What
this file adds is everything around them: PIL decoding, query crops, the
initial PIL resize, the pyramid, levels too small for the network, global
aggregation, attention selection and receptive-field keypoints.

Run by hand:  pip install torch numpy pillow && python3 tools/recipe_reference.py
CI needs no PyTorch: it only reads the committed files.
"""
import json
import math
import pathlib
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_delg_reference as delg_ref  # noqa: E402
import torch_dolg_reference as dolg_ref  # noqa: E402

torch.set_default_dtype(torch.float64)

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
OUT = ROOT / "recipe"

# (file, width, height): non-square, odd, one taller than the 1024 cap, one
# whose smallest DELG pyramid level is too small for the network, and a
# landscape photo size whose longest side is exactly the cap (not resized).
IMAGES = [("a.png", 333, 517), ("b.png", 97, 1500), ("c.png", 17, 40), ("d.png", 1024, 683)]
# Query boxes [x1, y1, x2, y2]: halves that Python's round takes to even, a
# box leaving the image (PIL pads it black), a crop larger than the scaled cap.
QUERIES = {"a.png": [-20.5, 100.5, 200.4, 330.6], "b.png": [5.5, 200.5, 90.2, 1400.7]}

DELG_SCALES = np.array([0.25, 0.35355338, 0.5, 0.70710677, 1.0, 1.4142135, 2.0], dtype=np.float32)
DELG_GLOBAL = [3, 4, 5]
DOLG_SCALES = [0.3535, 0.5, 0.7071, 1.0, 1.4142]
RF, PADDING = 291.0, 145.0


def texture(w, h, seed):
    """Smooth colour waves plus blocky noise: varied attention, small PNGs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(4):
            fx, fy, ph = rng.uniform(0.01, 0.2), rng.uniform(0.01, 0.2), rng.uniform(0, 6.3)
            img[..., c] += np.sin(fx * x + fy * y + ph)
    blocks = rng.integers(-1, 2, size=(h // 8 + 1, w // 8 + 1, 3))
    img += 0.8 * np.kron(blocks, np.ones((8, 8, 1)))[:h, :w]
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return Image.fromarray(np.round(img / 8).astype(np.uint8) * 8, "RGB")


def read_safetensors(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        assert t["dtype"] == "F32", name
        a, b = t["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(t["shape"])
        tensors[name] = torch.from_numpy(arr.astype(np.float64))
    return tensors, meta


def load_into(net, path):
    tensors, meta = read_safetensors(path)
    for name in net.order:
        net.p[name] = tensors[name]
    return meta


def pil_round(v):
    return int(round(v))  # Python 3 round: half to even, as the official code


def load_image(path, box):
    """The decoded RGB image, the query crop and the scale factor it applies
    to the size cap (official extract_features.py: PIL crop of the rounded box)."""
    im = Image.open(path).convert("RGB")
    if box is None:
        return im, 1.0
    original = max(im.size)
    im = im.crop([pil_round(b) for b in box])  # PIL fills outside with black
    return im, max(im.size) / original


def resize_capped(im, cap):
    """utils.ResizeImage: largest side to `cap` (never up), PIL bilinear;
    returns the image and the per-axis factors (y, x) new/original."""
    w, h = im.size
    if cap is not None and max(w, h) > cap:
        s = cap / max(w, h)
        nw, nh = pil_round(w * s), pil_round(h * s)
        # Width first, then height: the order of the Pillow the official code
        # ran on. Pillow 13 picks the vertical pass first for some shapes
        # (97×1500 → 66×1024 among them), which moves pixels by 1.
        if nw != w:
            im = im.resize((nw, h), Image.BILINEAR)
        if nh != h:
            im = im.resize((nw, nh), Image.BILINEAR)
    return im, (im.size[1] / h, im.size[0] / w)


def to_nchw(arr):
    return torch.from_numpy(arr).permute(2, 0, 1)[None].to(torch.float64)


def pyramid_level(x, scale):
    """tf.image.resize (bilinear, half-pixel centres, no antialias) to
    round(side·scale) computed in float32 as TF does."""
    h, w = x.shape[2], x.shape[3]
    size = [int(np.round(np.float32(v) * np.float32(scale))) for v in (h, w)]
    if min(size) < 1:
        return None
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def delg_extract(net, s_stride32, path, box, tau, max_features):
    im, factor = load_image(path, box)
    im, (fy, fx) = resize_capped(im, 1024 * factor)
    pixels = (np.asarray(im, dtype=np.float32) - 128.0) / 128.0
    x = to_nchw(pixels)
    stride = 32.0 if (net.delg or s_stride32) else 16.0
    globals_, cands = [], []
    with torch.no_grad():
        for level, scale in enumerate(DELG_SCALES):
            xs = pyramid_level(x, scale)
            try:
                g, att, loc, _ = net.heads(xs, False)
            except RuntimeError:
                continue  # too small for the network: the level is dropped
            if not net.delg and s_stride32:
                # S subsampled to stride 32 for the local branch only.
                s, _ = net.backbone(xs, False)
                s = s[:, :, ::2, ::2]
                hid = net.conv(s, "attention.conv1", "attention.bn", 1, 1, False, True)
                att = F.softplus(net.conv(hid, "attention.conv2", None, 1, 1, False, False))
                loc = net.conv(s, "autoencoder.encoder", None, 1, 1, False, False)
            if level in DELG_GLOBAL:
                globals_.append(F.normalize(g[0], dim=0))
            a = att[0, 0].numpy()
            d = loc[0].permute(1, 2, 0).numpy()
            for i in range(a.shape[0]):
                for j in range(a.shape[1]):
                    if a[i, j] >= tau:
                        # Receptive box of cell (i, j), its centre, back through
                        # the level scale and the initial resize.
                        y0, x0 = stride * i - PADDING, stride * j - PADDING
                        cy, cx = (2 * y0 + RF - 1) / 2, (2 * x0 + RF - 1) / 2
                        cands.append((a[i, j], level, cy / float(scale) / fy, cx / float(scale) / fx,
                                      1.0 / float(scale), d[i, j]))
    glob = F.normalize(sum(globals_), dim=0).numpy()
    cands.sort(key=lambda c: -c[0])  # stable: ties keep pyramid order
    cands = cands[:max_features]
    dim = net.p["autoencoder.encoder.weight"].shape[0]
    desc = np.array([c[5] / np.linalg.norm(c[5]) for c in cands]).reshape(len(cands), dim)
    return {
        "global": glob.astype(np.float32),
        "attention": np.array([c[0] for c in cands], dtype=np.float32),
        "locations": np.array([[c[2], c[3]] for c in cands], dtype=np.float32).reshape(-1, 2),
        "scales": np.array([c[4] for c in cands], dtype=np.float32),
        "descriptors": desc.astype(np.float32),
        # Sign bits, dimension 0 in the high bit of byte 0 (np.packbits).
        "bits": np.packbits(desc > 0, axis=1).reshape(len(cands), dim // 8),
    }


def dolg_extract(net, path, box):
    im = Image.open(path).convert("RGB")
    arr = np.asarray(im)
    if box is not None:
        b = [int(v) for v in box]  # official infer: int() then a slice
        arr = arr[max(b[1], 0):b[3], max(b[0], 0):b[2]]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = to_nchw(((arr / 255.0 - mean) / std).astype(np.float32))
    outs = []
    with torch.no_grad():
        for scale in DOLG_SCALES:
            h, w = x.shape[2], x.shape[3]
            xs = F.interpolate(x, size=[pil_round(h * scale), pil_round(w * scale)], mode="bilinear",
                               align_corners=False)
            outs.append(F.normalize(net.descriptor(xs, False)[0], dim=0))
    return {"global": F.normalize(sum(outs), dim=0).numpy().astype(np.float32)}


def gap_threshold(scores, lo, hi):
    """A value between two neighbouring sorted scores with the widest gap in
    the [lo, hi] quantile range, so that f32 rounding cannot move a feature
    across it."""
    s = np.sort(np.asarray(scores))
    a, b = int(lo * len(s)), max(int(hi * len(s)), int(lo * len(s)) + 1)
    k = a + int(np.argmax(np.diff(s[a:b + 1])))
    return (s[k] + s[k + 1]) / 2, s[k + 1] - s[k]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for k, (name, w, h) in enumerate(IMAGES):
        texture(w, h, seed=k).save(OUT / name, optimize=True)
    cases = [
        ("delg", "delg_tiny/weights_delg.safetensors", "delg", False),
        ("torchvision", "delg_tiny/weights_torchvision.safetensors", "delg", False),
        ("torchvision_s32", "delg_tiny/weights_torchvision.safetensors", "delg", True),
        ("dolg_plain", "dolg_tiny/weights_plain.safetensors", "dolg", False),
        ("dolg_ma", "dolg_tiny/weights_ma.safetensors", "dolg", False),
    ]
    manifest = {"images": [n for n, _, _ in IMAGES], "queries": QUERIES, "cases": []}
    for case, weights, arch, s_stride32 in cases:
        if arch == "delg":
            layout = "delg" if case == "delg" else "torchvision"
            net = delg_ref.Net(layout, seed=0).build()
            load_into(net, ROOT / weights)
            # Every score first, then τ and the cap in gaps of them.
            probe = [delg_extract(net, s_stride32, OUT / n, None, -1.0, 10 ** 9) for n, _, _ in IMAGES]
            scores = np.concatenate([p["attention"] for p in probe])
            tau, tau_gap = gap_threshold(scores, 0.7, 0.9)
            kept = [np.sort(p["attention"][p["attention"] >= tau])[::-1] for p in probe]
            longest = max(kept, key=len)
            k = int(np.argmax(-np.diff(longest)[len(longest) // 2:])) + len(longest) // 2 + 1
            entry = {"name": case, "weights": weights, "arch": arch, "s_stride32": s_stride32,
                     "score_threshold": float(tau), "max_features": k}
            run = lambda n, box: delg_extract(net, s_stride32, OUT / n, box, tau, k)  # noqa: E731
            print(case, f"tau {tau:.6f} (gap {tau_gap:.2e}), max_features {k} "
                        f"(gap {longest[k - 1] - longest[k]:.2e})")
        else:
            net = dolg_ref.Dolg(case == "dolg_ma", seed=0).build()
            load_into(net, ROOT / weights)
            entry = {"name": case, "weights": weights, "arch": arch, "s_stride32": False}
            run = lambda n, box: dolg_extract(net, OUT / n, box)  # noqa: E731
        for query in (False, True):
            for name, _, _ in IMAGES:
                if query and name not in QUERIES:
                    continue
                feats = run(name, QUERIES[name] if query else None)
                stem = f"{case}_{'query_' if query else ''}{name[:-4]}"
                for field, arr in feats.items():
                    np.save(OUT / f"{stem}_{field}.npy", arr)
                print(" ", stem, {f: a.shape for f, a in feats.items()})
        manifest["cases"].append(entry)
    (OUT / "cases.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
