#!/usr/bin/env python3
"""Counts the local-feature locations of a feature folder that fall outside
their images: every (y, x) must lie within [0, height] x [0, width] of the
image as decoded (EXIF orientation applied).

    python3 tools/keypoints_inside.py FEATURES IMAGE_ROOT

Prints the images, keypoints, the count outside, and the largest location
relative to the image size; exits 1 if any keypoint is outside.
"""
import os
import sys

import numpy as np
from PIL import Image, ImageOps


def main(features, root):
    ids = [line.rstrip("\n") for line in open(os.path.join(features, "ids.txt"))]
    locations = np.load(os.path.join(features, "local_locations.npy"))
    offsets = np.load(os.path.join(features, "local_offsets.npy"))
    assert len(offsets) == len(ids) + 1, "local_offsets.npy must have one row per image plus one"
    outside, largest = 0, 0.0
    for i, name in enumerate(ids):
        path = name if os.path.isabs(name) else os.path.join(root, name)
        width, height = ImageOps.exif_transpose(Image.open(path)).size
        yx = locations[offsets[i] : offsets[i + 1]]
        if len(yx) == 0:
            continue
        y, x = yx[:, 0], yx[:, 1]
        outside += int(((y < 0) | (y > height) | (x < 0) | (x > width)).sum())
        largest = max(largest, float((y / height).max()), float((x / width).max()))
    print(f"{len(ids)} images, {len(locations)} keypoints, {outside} outside; "
          f"largest location {largest:.4f} of the image size")
    return 1 if outside else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
