#!/usr/bin/env python3
"""Independent PyTorch re-statement of DELG (docs/recipe.md §1-§2),
written from the spec, not from delg-gpu's code. It regenerates the committed
golden fixtures in tests/fixtures/delg_tiny/ for a tiny model (one bottleneck
per stage, width 8) in both backbone layouts:

  weights_<layout>.safetensors   random weights, PyTorch layouts, delg-gpu names
  infer_<layout>_*.npy           extraction outputs for a fixed input (NHWC)
  train_<layout>_*.npy           one training step: the three losses and every
                                 parameter gradient, plus 20 SGD steps' losses

Run by hand:  pip install torch safetensors numpy && python3 tools/torch_delg_reference.py
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
torch.set_default_dtype(torch.float64)  # the golden values carry no f32 rounding

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "delg_tiny"
WIDTH, BLOCKS = 8, [1, 1, 1, 1]
ATT, LOC = 16, 16
CLASSES = 5


def tf_same_pad(x, k, s):
    """TensorFlow 'same' padding: output ceil(in/s), odd pixel at bottom/right."""
    h, w = x.shape[2], x.shape[3]
    def total(n):
        return max((math.ceil(n / s) - 1) * s + k - n, 0)
    th, tw = total(h), total(w)
    return F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2))


class Net:
    def __init__(self, layout, seed):
        self.layout = layout
        self.delg = layout == "delg"
        self.eps = 1e-3 if self.delg else 1e-5
        self.g = torch.Generator().manual_seed(seed)
        self.p = {}
        self.order = []
        self.bn_momentum = None

    def rand(self, name, shape, kind):
        if kind == "conv":
            fan_out = shape[0] * shape[2] * shape[3]
            t = torch.randn(shape, generator=self.g) * math.sqrt(2.0 / fan_out)
        elif kind == "linear":
            lim = math.sqrt(6.0 / (shape[0] + shape[1]))
            t = (torch.rand(shape, generator=self.g) * 2 - 1) * lim
        elif kind == "small":
            t = torch.rand(shape, generator=self.g) * 0.2 - 0.1
        elif kind == "gamma":
            t = 1.0 + torch.rand(shape, generator=self.g) * 0.2 - 0.1
        elif kind == "var":
            t = 0.5 + torch.rand(shape, generator=self.g)
        self.p[name] = t.requires_grad_(kind not in ("var",) and not name.endswith("running_mean"))
        self.order.append(name)

    def declare_conv(self, conv, bn, cin, cout, k, bias):
        self.rand(f"{conv}.weight", (cout, cin, k, k), "conv")
        if bias:
            self.rand(f"{conv}.bias", (cout,), "small")
        if bn:
            self.rand(f"{bn}.weight", (cout,), "gamma")
            self.rand(f"{bn}.bias", (cout,), "small")
            self.rand(f"{bn}.running_mean", (cout,), "small")
            self.rand(f"{bn}.running_var", (cout,), "var")

    def build(self):
        d = self.delg
        self.declare_conv("conv1", "bn1", 3, WIDTH, 7, d)
        cin = WIDTH
        self.blocks = []
        for stage in range(4):
            planes = WIDTH << stage
            for b in range(BLOCKS[stage]):
                name = f"layer{stage + 1}.{b}"
                if b == 0:
                    self.declare_conv(f"{name}.downsample.0", f"{name}.downsample.1", cin, planes * 4, 1, d)
                self.declare_conv(f"{name}.conv1", f"{name}.bn1", cin, planes, 1, d)
                self.declare_conv(f"{name}.conv2", f"{name}.bn2", planes, planes, 3, d)
                self.declare_conv(f"{name}.conv3", f"{name}.bn3", planes, planes * 4, 1, d)
                cin = planes * 4
        cs, cd = WIDTH * 16, WIDTH * 32
        self.cs, self.cd = cs, cd
        self.rand("whiten.weight", (cd, cd), "linear")
        self.rand("whiten.bias", (cd,), "small")
        self.declare_conv("attention.conv1", "attention.bn", cs, ATT, 1, True)
        self.declare_conv("attention.conv2", None, ATT, 1, 1, True)
        self.declare_conv("autoencoder.encoder", None, cs, LOC, 1, True)
        self.declare_conv("autoencoder.decoder", None, LOC, cs, 1, True)
        self.rand("arcface.weight", (CLASSES, cd), "linear")
        self.rand("attention_classifier.weight", (CLASSES, cs), "linear")
        self.rand("attention_classifier.bias", (CLASSES,), "small")
        return self

    # --- forward -----------------------------------------------------------
    def conv(self, x, conv, bn, k, stride, train, relu, residual=None):
        p = self.p
        w, b = p[f"{conv}.weight"], p.get(f"{conv}.bias")
        if self.delg:
            x = tf_same_pad(x, k, stride)
            y = F.conv2d(x, w, b, stride=stride)
        else:
            y = F.conv2d(x, w, b, stride=stride, padding=k // 2)
        if bn:
            # Running statistics update in place (unbiased variance) only
            # when bn_momentum is set; otherwise copies absorb the update.
            track = train and self.bn_momentum is not None
            mean, var = p[f"{bn}.running_mean"], p[f"{bn}.running_var"]
            if not track:
                mean, var = mean.detach().clone(), var.detach().clone()
            y = F.batch_norm(y, mean, var, p[f"{bn}.weight"], p[f"{bn}.bias"], training=train,
                             momentum=self.bn_momentum or 0.1, eps=self.eps)
        if residual is not None:
            y = y + residual
        return F.relu(y) if relu else y

    def backbone(self, x, train):
        d = self.delg
        x = self.conv(x, "conv1", "bn1", 7, 2, train, True)
        x = F.max_pool2d(x, 3, 2, padding=0 if d else 1)
        s = None
        for stage in range(4):
            stride = 1 if stage == 0 else 2
            if d and stage == 3:
                stride = 1
            for b in range(BLOCKS[stage]):
                n = f"layer{stage + 1}.{b}"
                st = stride if b == 0 else 1
                short = self.conv(x, f"{n}.downsample.0", f"{n}.downsample.1", 1, st, train, False) if b == 0 else x
                s1, s2 = (st, 1) if d else (1, st)
                t = self.conv(x, f"{n}.conv1", f"{n}.bn1", 1, s1, train, True)
                t = self.conv(t, f"{n}.conv2", f"{n}.bn2", 3, s2, train, True)
                x = self.conv(t, f"{n}.conv3", f"{n}.bn3", 1, 1, train, True, residual=short)
            if stage == 2:
                if d:
                    x = x[:, :, ::2, ::2]
                s = x
        return s, x

    def heads(self, img, train):
        p = self.p
        s, d = self.backbone(img, train)
        gem = d.clamp(min=1e-6).pow(3.0).mean(dim=(2, 3)).pow(1.0 / 3.0)
        g = F.linear(gem, p["whiten.weight"], p["whiten.bias"])
        sd = s.detach()
        hid = self.conv(sd, "attention.conv1", "attention.bn", 1, 1, train, True)
        a = F.softplus(self.conv(hid, "attention.conv2", None, 1, 1, train, False))
        loc = self.conv(sd, "autoencoder.encoder", None, 1, 1, train, False)
        return g, a, loc, sd

    def losses(self, img, labels):
        p = self.p
        g, a, loc, sd = self.heads(img, True)
        emb = F.normalize(g, dim=1)
        w = F.normalize(p["arcface.weight"], dim=1)
        cos = emb @ w.t()
        m, gamma = 0.1, math.sqrt(self.cd)
        theta = torch.acos(cos.clamp(-1.0, 1.0))
        target = torch.where(theta + m <= math.pi, torch.cos(theta + m), cos)
        onehot = F.one_hot(labels, CLASSES).bool()
        logits = gamma * torch.where(onehot, target, cos)
        lg = F.cross_entropy(logits, labels)
        dec = self.conv(loc, "autoencoder.decoder", None, 1, 1, True, True)
        lr = ((dec - sd) ** 2).mean()
        pooled = (F.normalize(dec, dim=1) * a).mean(dim=(2, 3))
        alog = F.linear(pooled, p["attention_classifier.weight"], p["attention_classifier.bias"])
        la = F.cross_entropy(alog, labels)
        return lg + 1.0 * la + 10.0 * lr, lg, la, lr


def sgd_steps(params, loss_fn, steps=20, nesterov=False, weight_decay=0.0, clip_norm=1.0):
    """SGD as PyTorch's (lr 0.01, momentum 0.9) on the tensors of `params`
    that require a gradient, minimising loss_fn(); gradients clipped by
    global norm `clip_norm` before the weight decay is added, which is active
    at every step. With DELG's clip of 10 the run passes the clip boundary
    mid-way, where f32 rounding is amplified: PyTorch's own f32 run then
    drifts 1e-2 from this f64 one. Here it stays < 1e-5. Returns the losses."""
    trainable = [n for n, t in params.items() if t.requires_grad]
    vel = {n: torch.zeros_like(params[n]) for n in trainable}
    seq = []
    for _ in range(steps):
        total = loss_fn()
        seq.append(total.item())
        grads = torch.autograd.grad(total, [params[n] for n in trainable], allow_unused=True)
        grads = [gr if gr is not None else torch.zeros_like(params[n]) for n, gr in zip(trainable, grads)]
        norm = torch.sqrt(sum((gr ** 2).sum() for gr in grads))
        clip = min(1.0, clip_norm / (norm.item() + 1e-6))
        with torch.no_grad():
            for n, gr in zip(trainable, grads):
                g = clip * gr + weight_decay * params[n]
                vel[n] = 0.9 * vel[n] + g
                params[n] -= 0.01 * (g + 0.9 * vel[n] if nesterov else vel[n])
    return seq


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(123)
    for layout in ["delg", "torchvision"]:
        net = Net(layout, seed=7 if layout == "delg" else 8).build()
        cfg = {
            "backbone": {"layout": layout, "blocks": BLOCKS, "width": WIDTH, "s_stride32": layout == "delg"},
            "gem_p": 3.0, "gem_eps": 1e-6, "global_dim": WIDTH * 32, "attention_dim": ATT, "local_dim": LOC,
        }
        tensors = {n: net.p[n].detach().to(torch.float32).contiguous() for n in net.order}
        save_file(tensors, str(OUT / f"weights_{layout}.safetensors"),
                  metadata={"delg_gpu.arch": "delg", "delg_gpu.config": json.dumps(cfg), "delg_gpu.score_threshold": "0"})
        # Use the f32-rounded weights from here on, as delg-gpu reads them.
        for n in net.order:
            with torch.no_grad():
                net.p[n].copy_(tensors[n].to(torch.float64))

        img = torch.rand((1, 3, 67, 53), generator=gen) * 2 - 1
        img = img.to(torch.float32).to(torch.float64)
        with torch.no_grad():
            g, a, loc, _ = net.heads(img, False)
        np.save(OUT / f"infer_{layout}_image.npy", nhwc(img))
        np.save(OUT / f"infer_{layout}_global.npy", g.numpy().astype(np.float32))
        np.save(OUT / f"infer_{layout}_attention.npy", nhwc(a))
        np.save(OUT / f"infer_{layout}_local.npy", nhwc(loc))

        batch = (torch.rand((2, 3, 64, 64), generator=gen) * 2 - 1).to(torch.float32).to(torch.float64)
        labels = torch.tensor([1, 3])
        np.save(OUT / f"train_{layout}_images.npy", nhwc(batch))
        np.save(OUT / f"train_{layout}_labels.npy", labels.numpy().astype(np.float32))
        total, lg, la, lr = net.losses(batch, labels)
        trainable = [n for n in net.order if net.p[n].requires_grad]
        grads = torch.autograd.grad(total, [net.p[n] for n in trainable], allow_unused=True)
        np.save(OUT / f"train_{layout}_losses.npy", np.array([total.item(), lg.item(), la.item(), lr.item()], dtype=np.float64))
        gdict = {n: (gr if gr is not None else torch.zeros_like(net.p[n])).to(torch.float32).contiguous()
                 for n, gr in zip(trainable, grads)}
        save_file(gdict, str(OUT / f"train_{layout}_grads.safetensors"))

        seq = sgd_steps(net.p, lambda: net.losses(batch, labels)[0])
        np.save(OUT / f"train_{layout}_sgd_losses.npy", np.array(seq, dtype=np.float64))
        print(layout, "losses", [round(v, 6) for v in (seq[0], seq[-1])])


if __name__ == "__main__":
    main()
