#!/usr/bin/env python3
"""Tests tools/convert_dolg_pyth.py on a small randomly initialised model with
the official DOLG module structure (pycls ResNet names, SpatialAttention2d with
the multi-atrous block, BGR input), and writes the fixture that
tests/converters_dolg.rs checks delg-gpu's extractor against:

  tests/fixtures/convert_dolg/weights.safetensors  the converted checkpoint
  tests/fixtures/convert_dolg/image.png            a generated test image
  tests/fixtures/convert_dolg/descriptor.npy       the official-structure model's
                                                   512-d output for it, at scale 1

Run by hand: python3 tools/test_convert_dolg.py   (needs torch, safetensors, numpy, pillow)
"""
import pathlib
import subprocess
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "convert_dolg"
WIDTH, DEPTHS, DILATIONS, BRANCH, EMBED = 8, (1, 2, 1, 1), (2, 3, 6), 16, 24
MEAN_BGR, STD_BGR = (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-5)


class Transform(nn.Module):
    def __init__(self, cin, cout, stride, cb):
        super().__init__()
        self.a, self.a_bn = nn.Conv2d(cin, cb, 1, bias=False), bn(cb)
        self.b, self.b_bn = nn.Conv2d(cb, cb, 3, stride, 1, bias=False), bn(cb)
        self.c, self.c_bn = nn.Conv2d(cb, cout, 1, bias=False), bn(cout)

    def forward(self, x):
        x = F.relu(self.a_bn(self.a(x)))
        x = F.relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class Block(nn.Module):
    def __init__(self, cin, cout, stride, cb):
        super().__init__()
        self.has_proj = cin != cout or stride != 1
        if self.has_proj:
            self.proj, self.bn = nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout)
        self.f = Transform(cin, cout, stride, cb)

    def forward(self, x):
        short = self.bn(self.proj(x)) if self.has_proj else x
        return F.relu(short + self.f(x))


class Stage(nn.Module):
    def __init__(self, cin, cout, stride, depth, cb):
        super().__init__()
        for i in range(depth):
            self.add_module(f"b{i + 1}", Block(cin if i == 0 else cout, cout, stride if i == 0 else 1, cb))

    def forward(self, x):
        for b in self.children():
            x = b(x)
        return x


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, WIDTH, 7, 2, 3, bias=False), bn(WIDTH)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 3, 2, 1)


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Stem()
        w = WIDTH
        self.s1 = Stage(w, 4 * w, 1, DEPTHS[0], w)
        self.s2 = Stage(4 * w, 8 * w, 2, DEPTHS[1], 2 * w)
        self.s3 = Stage(8 * w, 16 * w, 2, DEPTHS[2], 4 * w)
        self.s4 = Stage(16 * w, 32 * w, 2, DEPTHS[3], 8 * w)

    def forward(self, x):
        x = self.s2(self.s1(self.stem(x)))
        x3 = self.s3(x)
        return x3, self.s4(x3)


class ASPP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.aspp = nn.ModuleList([nn.Conv2d(c, BRANCH, 1)] +
                                  [nn.Conv2d(c, BRANCH, 3, padding=d, dilation=d) for d in DILATIONS])
        self.im_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, BRANCH, 1), nn.ReLU())
        self.conv_after = nn.Sequential(nn.Conv2d(BRANCH * (len(DILATIONS) + 2), c, 1), nn.ReLU())

    def forward(self, x):
        outs = [F.interpolate(self.im_pool(x), size=x.shape[2:], mode="bilinear", align_corners=False)]
        outs += [conv(x) for conv in self.aspp]
        return self.conv_after(torch.cat(outs, 1))


class Local(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.aspp = ASPP(c)
        self.conv1, self.bn, self.conv2 = nn.Conv2d(c, c, 1), bn(c), nn.Conv2d(c, 1, 1)

    def forward(self, x):
        x = self.bn(self.conv1(self.aspp(x)))
        return F.softplus(self.conv2(F.relu(x))) * F.normalize(x, dim=1)


class GeM(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * 3)

    def forward(self, x):
        return F.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(self.p), 1).pow(1.0 / self.p)


class Dolg(nn.Module):
    def __init__(self, classes=7):
        super().__init__()
        c3, c4 = 16 * WIDTH, 32 * WIDTH
        self.pool_g, self.fc_t, self.fc = GeM(), nn.Linear(c4, c3), nn.Linear(2 * c3, EMBED)
        self.globalmodel, self.localmodel = ResNet(), Local(c3)
        self.desc_cls = nn.Module()
        self.desc_cls.weight = nn.Parameter(torch.randn(classes, EMBED))
        self.desc_cls.register_buffer("t", torch.zeros(1))

    def forward(self, x):
        f3, f4 = self.globalmodel(x)
        fl = self.localmodel(f3)
        fg = self.fc_t(self.pool_g(f4).flatten(1))
        proj = torch.einsum("bc,bchw->bhw", fg, fl)[:, None] * fg[:, :, None, None] / (fg * fg).sum(1)[:, None, None, None]
        return self.fc(torch.cat([fg, (fl - proj).mean(dim=(2, 3))], 1))


def randomize(model, gen):
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith(("running_mean", ".bias")):
                t.copy_(torch.rand(t.shape, generator=gen) * 0.2 - 0.1)
            elif "bn" in name.split(".")[-2] and name.endswith("weight"):
                t.copy_(1 + torch.rand(t.shape, generator=gen) * 0.2 - 0.1)
        model.pool_g.p.fill_(2.8)


def main():
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(6)
    model = Dolg().eval()
    randomize(model, gen)
    # A generated image: smooth colour gradients and a few bright blocks.
    h, w = 97, 131
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 / w), (yy * 255 / h), ((xx + yy) % 64) * 4], -1)
    rgb[20:40, 30:60] = [250, 20, 40]
    rgb[60:90, 90:120] = [10, 200, 240]
    rgb = rgb.astype(np.uint8)
    OUT.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(OUT / "image.png")
    bgr = torch.from_numpy(rgb[:, :, ::-1].copy()).permute(2, 0, 1).double() / 255
    bgr = (bgr - torch.tensor(MEAN_BGR).double()[:, None, None]) / torch.tensor(STD_BGR).double()[:, None, None]
    with torch.no_grad():
        want = model.double()(bgr[None].float().double())[0]
    np.save(OUT / "descriptor.npy", want.float().numpy())

    # The source is kept as a fixture: tests/weights_import.rs imports it natively
    # and compares with this converter's output byte for byte.
    ckpt = OUT / "source.pyth"
    state = {"module." + k: v.float() for k, v in model.state_dict().items()}  # as saved from DDP
    torch.save({"epoch": 3, "model_state": state, "optimizer_state": {}}, ckpt)
    subprocess.run([sys.executable, str(ROOT / "tools" / "convert_dolg_pyth.py"), str(ckpt),
                    str(OUT / "weights.safetensors"), "--dilations", ",".join(map(str, DILATIONS))],
                   check=True)

    # The converted tensors are the source ones under the documented names.
    conv = load_file(str(OUT / "weights.safetensors"))
    src = model.state_dict()
    assert torch.equal(conv["conv1.weight"], src["globalmodel.stem.conv.weight"].float().flip(1))
    assert torch.equal(conv["layer2.1.bn2.running_var"], src["globalmodel.s2.b2.f.b_bn.running_var"].float())
    assert torch.equal(conv["layer3.0.downsample.0.weight"], src["globalmodel.s3.b1.proj.weight"].float())
    assert torch.equal(conv["localmodel.aspp.im_pool.1.bias"], src["localmodel.aspp.im_pool.1.bias"].float())
    assert "desc_cls.weight" not in conv and not any(k.endswith("num_batches_tracked") for k in conv)
    expected = sum(1 for k in src if not k.endswith("num_batches_tracked") and not k.startswith("desc_cls."))
    assert len(conv) == expected, (len(conv), expected)
    print("converter test passed; fixture in", OUT)


if __name__ == "__main__":
    main()
