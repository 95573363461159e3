#!/usr/bin/env python3
"""The state after 20 SGD steps of the tiny DELG models of
tests/fixtures/delg_tiny, for tests/delg_reference.rs: the parameters and the
batch-norm running statistics (PyTorch momentum 0.1, unbiased variance), from
the committed weights and batch, with the training step of
tools/torch_delg_reference.py in float64. Tensors larger than MAX_ELEMENTS are
left out to keep the fixture small; the rest are written to
train_<layout>_sgd_final.safetensors.

Run by hand:  pip install torch numpy safetensors && python3 tools/train_parity_reference.py
"""
import pathlib
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_delg_reference as ref  # noqa: E402
from recipe_reference import read_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)
OUT = ref.OUT
MAX_ELEMENTS = 16384


def main():
    for layout in ["delg", "torchvision"]:
        net = ref.Net(layout, seed=0).build()
        tensors, _ = read_safetensors(OUT / f"weights_{layout}.safetensors")
        for name in net.order:
            net.p[name] = tensors[name].clone().requires_grad_(net.p[name].requires_grad)
        net.bn_momentum = 0.1
        batch = torch.from_numpy(np.load(OUT / f"train_{layout}_images.npy")).permute(0, 3, 1, 2).to(torch.float64)
        labels = torch.from_numpy(np.load(OUT / f"train_{layout}_labels.npy")).long()
        losses = ref.sgd_steps(net, batch, labels)
        # The committed losses came from the same run without the statistics,
        # which training-mode batch norm never reads.
        committed = np.load(OUT / f"train_{layout}_sgd_losses.npy")
        assert np.allclose(losses, committed, rtol=1e-9), (losses, committed)
        final = {n: net.p[n].detach().to(torch.float32).contiguous()
                 for n in net.order if net.p[n].numel() <= MAX_ELEMENTS}
        save_file(final, str(OUT / f"train_{layout}_sgd_final.safetensors"))
        kept = sum(t.numel() for t in final.values())
        total = sum(net.p[n].numel() for n in net.order)
        print(layout, f"{len(final)}/{len(net.order)} tensors, {kept}/{total} values")


if __name__ == "__main__":
    main()
