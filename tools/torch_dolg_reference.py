#!/usr/bin/env python3
"""Independent PyTorch re-statement of DOLG (docs/recipe.md §8),
written from the spec, not from delg-gpu's code. It regenerates the committed
golden fixtures in tests/fixtures/dolg_tiny/ for a tiny model (one bottleneck
per stage, width 8, torchvision layout), without and with the multi-atrous
block:

  weights_<variant>.safetensors  random weights, PyTorch layouts, delg-gpu names
  infer_<variant>_image.npy      a fixed network input (NHWC, already normalised)
  infer_<variant>_descriptor.npy the final descriptor (before L2 normalisation)
  train_<variant>_*.npy          one training step on a batch: the ArcFace loss
  train_<variant>_grads.safetensors  and every parameter gradient

The fusion is computed per location, as the spec states it (project every local
vector, then average), not in the pooled form delg-gpu uses, so the fixture also
checks that the two are the same.

Run by hand:  pip install torch safetensors numpy && python3 tools/torch_dolg_reference.py
CI needs no PyTorch: it only reads the committed files.
"""
import json
import math
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.use_deterministic_algorithms(True)
torch.set_default_dtype(torch.float64)

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dolg_tiny"
WIDTH, BLOCKS = 8, [1, 1, 1, 1]
FUSION, EMBED, BRANCH = WIDTH * 16, 32, 16
DILATIONS = [2, 3, 6]  # small rates so that a tiny map still sees every branch
CLASSES = 5
MARGIN, SCALE = 0.15, 30.0
EPS = 1e-5


class Dolg:
    def __init__(self, multi_atrous, seed):
        self.ma = multi_atrous
        self.g = torch.Generator().manual_seed(seed)
        self.p, self.order = {}, []
        self.bn_momentum = None

    def add(self, name, t, grad=True):
        self.p[name] = t.requires_grad_(grad)
        self.order.append(name)

    def rand(self, name, shape, kind):
        g = self.g
        if kind == "conv":
            fan_out = shape[0] * shape[2] * shape[3]
            self.add(name, torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_out))
        elif kind == "linear":
            lim = math.sqrt(6.0 / (shape[0] + shape[1]))
            self.add(name, (torch.rand(shape, generator=g) * 2 - 1) * lim)
        elif kind == "small":
            self.add(name, torch.rand(shape, generator=g) * 0.2 - 0.1)
        elif kind == "gamma":
            self.add(name, 1.0 + torch.rand(shape, generator=g) * 0.2 - 0.1)
        elif kind == "mean":
            self.add(name, torch.rand(shape, generator=g) * 0.2 - 0.1, grad=False)
        elif kind == "var":
            self.add(name, 0.5 + torch.rand(shape, generator=g), grad=False)

    def conv_bn(self, conv, bn, cin, cout, k, bias):
        self.rand(f"{conv}.weight", (cout, cin, k, k), "conv")
        if bias:
            self.rand(f"{conv}.bias", (cout,), "small")
        if bn:
            self.rand(f"{bn}.weight", (cout,), "gamma")
            self.rand(f"{bn}.bias", (cout,), "small")
            self.rand(f"{bn}.running_mean", (cout,), "mean")
            self.rand(f"{bn}.running_var", (cout,), "var")

    def build(self):
        self.conv_bn("conv1", "bn1", 3, WIDTH, 7, False)
        cin = WIDTH
        for stage in range(4):
            planes = WIDTH << stage
            for b in range(BLOCKS[stage]):
                n = f"layer{stage + 1}.{b}"
                if b == 0:
                    self.conv_bn(f"{n}.downsample.0", f"{n}.downsample.1", cin, planes * 4, 1, False)
                self.conv_bn(f"{n}.conv1", f"{n}.bn1", cin, planes, 1, False)
                self.conv_bn(f"{n}.conv2", f"{n}.bn2", planes, planes, 3, False)
                self.conv_bn(f"{n}.conv3", f"{n}.bn3", planes, planes * 4, 1, False)
                cin = planes * 4
        cs, cd = WIDTH * 16, WIDTH * 32
        # GeM's p starts away from 3 so that its gradient is checked at a generic point.
        self.add("pool_g.p", torch.tensor([2.7]))
        self.rand("fc_t.weight", (FUSION, cd), "linear")
        self.rand("fc_t.bias", (FUSION,), "small")
        if self.ma:
            self.conv_bn("localmodel.aspp.aspp.0", None, cs, BRANCH, 1, True)
            for i, _ in enumerate(DILATIONS):
                self.conv_bn(f"localmodel.aspp.aspp.{i + 1}", None, cs, BRANCH, 3, True)
            self.conv_bn("localmodel.aspp.im_pool.1", None, cs, BRANCH, 1, True)
            self.conv_bn("localmodel.aspp.conv_after.0", None, BRANCH * (len(DILATIONS) + 2), cs, 1, True)
        self.conv_bn("localmodel.conv1", "localmodel.bn", cs, FUSION, 1, True)
        self.conv_bn("localmodel.conv2", None, FUSION, 1, 1, True)
        self.rand("fc.weight", (EMBED, 2 * FUSION), "linear")
        self.rand("fc.bias", (EMBED,), "small")
        self.rand("desc_cls.weight", (CLASSES, EMBED), "linear")
        return self

    def conv(self, x, conv, bn, stride=1, padding=0, dilation=1, train=False, relu=False, residual=None):
        p = self.p
        y = F.conv2d(x, p[f"{conv}.weight"], p.get(f"{conv}.bias"), stride=stride, padding=padding, dilation=dilation)
        if bn:
            # Running statistics update in place (unbiased variance) only
            # when bn_momentum is set; otherwise copies absorb the update.
            mean, var = p[f"{bn}.running_mean"], p[f"{bn}.running_var"]
            if not (train and self.bn_momentum is not None):
                mean, var = mean.detach().clone(), var.detach().clone()
            y = F.batch_norm(y, mean, var, p[f"{bn}.weight"], p[f"{bn}.bias"], training=train,
                             momentum=self.bn_momentum or 0.1, eps=EPS)
        if residual is not None:
            y = y + residual
        return F.relu(y) if relu else y

    def backbone(self, x, train):
        # torchvision ResNet: stride on the 3×3, max-pool padding 1, strides unmodified.
        x = self.conv(x, "conv1", "bn1", stride=2, padding=3, train=train, relu=True)
        x = F.max_pool2d(x, 3, 2, padding=1)
        f3 = None
        for stage in range(4):
            for b in range(BLOCKS[stage]):
                n = f"layer{stage + 1}.{b}"
                st = (1 if stage == 0 else 2) if b == 0 else 1
                short = self.conv(x, f"{n}.downsample.0", f"{n}.downsample.1", stride=st, train=train) if b == 0 else x
                t = self.conv(x, f"{n}.conv1", f"{n}.bn1", train=train, relu=True)
                t = self.conv(t, f"{n}.conv2", f"{n}.bn2", stride=st, padding=1, train=train, relu=True)
                x = self.conv(t, f"{n}.conv3", f"{n}.bn3", train=train, relu=True, residual=short)
            if stage == 2:
                f3 = x
        return f3, x

    def aspp(self, x):
        h, w = x.shape[2], x.shape[3]
        pooled = self.conv(x.mean(dim=(2, 3), keepdim=True), "localmodel.aspp.im_pool.1", None, relu=True)
        outs = [F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False),
                self.conv(x, "localmodel.aspp.aspp.0", None)]
        for i, d in enumerate(DILATIONS):
            outs.append(self.conv(x, f"localmodel.aspp.aspp.{i + 1}", None, padding=d, dilation=d))
        return self.conv(torch.cat(outs, 1), "localmodel.aspp.conv_after.0", None, relu=True)

    def descriptor(self, img, train):
        p = self.p
        f3, f4 = self.backbone(img, train)
        gem = f4.clamp(min=1e-6).pow(p["pool_g.p"]).mean(dim=(2, 3)).pow(1.0 / p["pool_g.p"])
        fg = F.linear(gem, p["fc_t.weight"], p["fc_t.bias"])
        x = self.aspp(f3) if self.ma else f3
        x = self.conv(x, "localmodel.conv1", "localmodel.bn", train=train)
        f_norm = F.normalize(x, p=2, dim=1)
        att = F.softplus(self.conv(F.relu(x), "localmodel.conv2", None), beta=1, threshold=20)
        fl = att * f_norm
        # Per-location projection onto f_g, removed, then averaged.
        dots = torch.einsum("bc,bchw->bhw", fg, fl)
        proj = (dots / (fg * fg).sum(1)[:, None, None])[:, None] * fg[:, :, None, None]
        fo = (fl - proj).mean(dim=(2, 3))
        return F.linear(torch.cat([fg, fo], 1), p["fc.weight"], p["fc.bias"])

    def loss(self, img, labels, curricular_t=None):
        """ArcFace (m, s of docs/recipe.md §8.5, fixed penalty past π − m). With
        curricular_t, the official head's re-weighting: t is first moved 1%
        towards the batch's mean target cosine, then every non-target cosine
        above cos(θ_y + m) becomes c·(t + c). Returns the loss and the new t."""
        d = self.descriptor(img, True)
        cos = F.normalize(d, dim=1) @ F.normalize(self.p["desc_cls.weight"], dim=1).t()
        c = cos.clamp(-1.0, 1.0)
        onehot = F.one_hot(labels, CLASSES).bool()
        cy = c[onehot]
        cos_ym = cy * math.cos(MARGIN) - torch.sqrt(1 - cy * cy) * math.sin(MARGIN)
        target = torch.where(cy >= -math.cos(MARGIN), cos_ym, cy - MARGIN * math.sin(MARGIN))
        others = cos
        t = None
        if curricular_t is not None:
            t = 0.01 * cy.detach().mean() + 0.99 * curricular_t
            others = torch.where(cos > cos_ym[:, None].detach(), cos * (t + cos), cos)
        logits = SCALE * torch.where(onehot, target[:, None].expand_as(cos), others)
        return F.cross_entropy(logits, labels), t


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(321)
    for variant, ma in [("plain", False), ("ma", True)]:
        net = Dolg(ma, seed=11 if ma else 12).build()
        cfg = {
            "backbone": {"layout": "torchvision", "blocks": BLOCKS, "width": WIDTH, "s_stride32": False},
            "gem_eps": 1e-6, "fusion_dim": FUSION, "output_dim": EMBED,
            "multi_atrous": {"dilations": DILATIONS, "branch_dim": BRANCH} if ma else None,
        }
        tensors = {n: net.p[n].detach().to(torch.float32).contiguous() for n in net.order}
        save_file(tensors, str(OUT / f"weights_{variant}.safetensors"),
                  metadata={"delg_gpu.arch": "dolg", "delg_gpu.config": json.dumps(cfg)})
        for n in net.order:
            with torch.no_grad():
                net.p[n].copy_(tensors[n].to(torch.float64))

        img = (torch.rand((1, 3, 150, 118), generator=gen) * 2 - 1).to(torch.float32).to(torch.float64)
        with torch.no_grad():
            d = net.descriptor(img, False)
        np.save(OUT / f"infer_{variant}_image.npy", nhwc(img))
        np.save(OUT / f"infer_{variant}_descriptor.npy", d.numpy().astype(np.float32))

        batch = (torch.rand((2, 3, 96, 96), generator=gen) * 2 - 1).to(torch.float32).to(torch.float64)
        labels = torch.tensor([4, 1])
        np.save(OUT / f"train_{variant}_images.npy", nhwc(batch))
        np.save(OUT / f"train_{variant}_labels.npy", labels.numpy().astype(np.float32))
        trainable = [n for n in net.order if net.p[n].requires_grad]
        # The multi-atrous model checks plain ArcFace; the plain one also the
        # CurricularFace option, from t = 0.3 (t_0 is stored with the loss).
        heads = [("", None)] + ([("_curricular", 0.3)] if not ma else [])
        for suffix, t0 in heads:
            loss, t = net.loss(batch, labels, curricular_t=t0)
            grads = torch.autograd.grad(loss, [net.p[n] for n in trainable], allow_unused=True)
            record = [loss.item()] + ([t0, t.item()] if t0 is not None else [])
            np.save(OUT / f"train_{variant}{suffix}_loss.npy", np.array(record, dtype=np.float64))
            save_file({n: (gr if gr is not None else torch.zeros_like(net.p[n])).to(torch.float32).contiguous()
                       for n, gr in zip(trainable, grads)},
                      str(OUT / f"train_{variant}{suffix}_grads.safetensors"))
            print(variant + suffix, "loss", round(loss.item(), 6), "descriptor norm", round(d.norm().item(), 6))


if __name__ == "__main__":
    main()
