#!/usr/bin/env python3
"""The CPU baseline for DELG training step time: DELG-R50 (delg layout) with
its three losses, one SGD step per iteration, in PyTorch on this machine's CPU
(f32, all cores). Reuses the re-statement in torch_delg_reference.py.

    python3 tools/torch_bench_train.py --batch 8 --size 512 --steps 2
"""
import argparse
import importlib.util
import pathlib
import time

import torch

here = pathlib.Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("ref", here / "torch_delg_reference.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--size", type=int, default=512)
ap.add_argument("--steps", type=int, default=2)
ap.add_argument("--classes", type=int, default=75)
args = ap.parse_args()

torch.set_default_dtype(torch.float32)
ref.WIDTH, ref.BLOCKS, ref.ATT, ref.LOC, ref.CLASSES = 64, [3, 4, 6, 3], 512, 128, args.classes
net = ref.Net("delg", seed=0).build()
for n in net.order:
    net.p[n] = net.p[n].detach().float().requires_grad_(net.p[n].requires_grad)
trainable = [n for n in net.order if net.p[n].requires_grad]
vel = {n: torch.zeros_like(net.p[n]) for n in trainable}
images = torch.rand((args.batch, 3, args.size, args.size)) * 2 - 1
labels = torch.randint(0, args.classes, (args.batch,))


def step():
    total, *_ = net.losses(images, labels)
    grads = torch.autograd.grad(total, [net.p[n] for n in trainable], allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(net.p[n]) for n, g in zip(trainable, grads)]
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    clip = min(1.0, 10.0 / (norm.item() + 1e-6))
    with torch.no_grad():
        for n, g in zip(trainable, grads):
            vel[n].mul_(0.9).add_(g, alpha=clip)
            net.p[n] -= 0.01 * vel[n]
    return total.item()


step()  # warm-up
t, c = time.perf_counter(), time.process_time()
for _ in range(args.steps):
    step()
wall, cpu = (time.perf_counter() - t) / args.steps, (time.process_time() - c) / args.steps
print(f"pytorch {torch.__version__} CPU ({torch.get_num_threads()} threads) DELG-R50 train step, batch {args.batch}, "
      f"{args.size}x{args.size}: {wall * 1e3:.0f} ms/step wall, {cpu * 1e3:.0f} ms CPU")
