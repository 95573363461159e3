#!/usr/bin/env python3
"""Regenerates tests/fixtures/pil_resize: a random RGB image and its PIL
BILINEAR resizes (shrinking and enlarging, odd sizes), the independent
reference for io::images::resize_pil_bilinear. Needs numpy and Pillow."""
import pathlib

import numpy as np
from PIL import Image

out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pil_resize"
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(2020)
src = rng.integers(0, 256, size=(47, 61, 3), dtype=np.uint8)
# Smooth half of it so both sharp edges and gradients are exercised.
src[:, 30:] = (np.linspace(0, 255, 31)[None, :, None] * np.ones((47, 1, 3))).astype(np.uint8)
np.save(out / "src.npy", src)
for w, h in [(23, 17), (97, 71), (61, 20), (8, 47), (1, 1)]:
    img = Image.fromarray(src).resize((w, h), resample=Image.BILINEAR)
    np.save(out / f"out_{w}x{h}.npy", np.asarray(img))
print("wrote", sorted(p.name for p in out.iterdir()))
