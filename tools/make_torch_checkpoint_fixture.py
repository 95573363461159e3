#!/usr/bin/env python3
"""Writes tests/fixtures/torch_checkpoint/tiny.pth: a small torch.save
checkpoint with what the native reader (src/io/torch_checkpoint.rs) must
handle besides plain float tensors: a transposed (strided) view, a view at a
storage offset, a half tensor, an int64 scalar, a Parameter, nested dicts
with numbers, strings, lists, None and booleans. tests/weights_import.rs
checks the values it reads and mutates it in its property test.

Run by hand: python3 tools/make_torch_checkpoint_fixture.py   (needs torch)
"""
import collections
import pathlib

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torch_checkpoint"

base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
state = collections.OrderedDict([
    ("transposed", base.t()),  # size [4, 3], stride [1, 4]
    ("offset_row", base[1]),  # storage offset 4
    ("half", torch.tensor([0.5, -2.0, 65504.0], dtype=torch.float16)),
    ("count", torch.tensor(7)),
    ("param", torch.nn.Parameter(torch.tensor([[1.5, -0.25]]))),
])
checkpoint = {"epoch": 3, "lr": 0.01, "name": "tiny", "flags": [True, False, None],
              "big": 2 ** 40, "neg": -5, "model_state": state}
OUT.mkdir(parents=True, exist_ok=True)
torch.save(checkpoint, OUT / "tiny.pth")
print("wrote", OUT / "tiny.pth", (OUT / "tiny.pth").stat().st_size, "bytes")
