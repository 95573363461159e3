#!/usr/bin/env python3
"""The CPU baseline for `delg-gpu bench extract`: the same R50 model (random
weights) and the same recipe in PyTorch on this machine's CPU, f32, all
cores. DELG (delg layout): 7-scale pyramid, bilinear level resize, global
descriptor from scales 3-5, attention and local descriptors at every scale.
DOLG (--arch dolg): the five global scales of docs/recipe.md §8.7. Reuses the
independent re-statements in torch_delg_reference.py and torch_dolg_reference.py.

    pip install torch safetensors numpy
    python3 tools/torch_bench_extract.py --width 1024 --height 768 --images 2 [--arch dolg]
"""
import argparse
import importlib.util
import pathlib
import time

import torch
import torch.nn.functional as F

here = pathlib.Path(__file__).resolve().parent

ap = argparse.ArgumentParser()
ap.add_argument("--width", type=int, default=1024)
ap.add_argument("--height", type=int, default=768)
ap.add_argument("--images", type=int, default=2)
ap.add_argument("--arch", choices=["delg", "dolg"], default="delg")
args = ap.parse_args()

spec = importlib.util.spec_from_file_location("ref", here / f"torch_{args.arch}_reference.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
torch.set_default_dtype(torch.float32)
ref.WIDTH, ref.BLOCKS = 64, [3, 4, 6, 3]
if args.arch == "delg":
    ref.ATT, ref.LOC = 512, 128
    net = ref.Net("delg", seed=0).build()
    scales = [0.25, 0.35355338, 0.5, 0.70710677, 1.0, 1.4142135, 2.0]
    global_levels = {3, 4, 5}
else:
    ref.FUSION, ref.EMBED = 1024, 512
    net = ref.Dolg(False, seed=0).build()
    scales = [0.3535, 0.5, 0.7071, 1.0, 1.4142]
    global_levels = set(range(len(scales)))
for n in net.order:
    net.p[n] = net.p[n].detach().float()


def extract(img):
    glob = []
    with torch.no_grad():
        for i, s in enumerate(scales):
            size = (round(args.height * s), round(args.width * s))
            level = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
            if args.arch == "delg":
                g, a, loc, _ = net.heads(level, False)
            else:
                g = net.descriptor(level, False)
            if i in global_levels:
                glob.append(F.normalize(g, dim=1))
    return F.normalize(sum(glob), dim=1)


img = torch.rand((1, 3, args.height, args.width)) * 2 - 1
extract(img)  # warm-up
t, c = time.perf_counter(), time.process_time()
for _ in range(args.images):
    extract(img)
wall, cpu = time.perf_counter() - t, time.process_time() - c
print(f"pytorch {torch.__version__} CPU ({torch.get_num_threads()} threads) extract {args.width}x{args.height} "
      f"{args.arch.upper()}-R50: {args.images / wall:.3f} images/s ({wall / args.images:.2f} s/image), CPU {cpu / args.images:.2f} s/image")
