#!/usr/bin/env python3
"""Diagnoses a slow attention loss: statistics of the attention head of a
`delg-gpu train` run folder on its UKBench images, computed with the PyTorch
reference model (tools/torch_delg_reference.py), and how fast the attention
classifier alone learns on the frozen pooled features at several learning
rates. Finds out whether the pooled features are separable (then the slowness
is the step size) or not (then the features are the problem).

  python3 tools/attention_probe.py RUN [gnd.json]
"""
import json, math, sys, pathlib
import numpy as np, torch, torch.nn.functional as F
from PIL import Image
from safetensors.numpy import load_file
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_delg_reference as ref

run = pathlib.Path(sys.argv[1])
cfg = json.load(open(run / "config.json"))
m = cfg["model"]
ref.WIDTH = m["backbone"]["width"]; ref.BLOCKS = m["backbone"]["blocks"]
ref.ATT, ref.LOC = m["attention_dim"], m["local_dim"]; ref.CLASSES = cfg["loss"]["num_classes"]
torch.set_default_dtype(torch.float32)
torch.use_deterministic_algorithms(False)
net = ref.Net(m["backbone"]["layout"], 0).build()
ck = load_file(str(run / "checkpoint.safetensors"))
for n in net.order:
    net.p[n] = torch.from_numpy(ck[n]).float().requires_grad_(net.p[n].requires_grad)

gnd_path = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/instance_retrieval_dev/ukbench/gnd.json")
gnd = json.load(open(gnd_path))
root = gnd_path.parent / gnd.get("image_dir", "jpg")
names = sorted(gnd["labels"])
classes = sorted({gnd["labels"][n][0] for n in names})
lab = torch.tensor([classes.index(gnd["labels"][n][0]) for n in names])
S = cfg["image_size"]
imgs = torch.stack([torch.from_numpy((np.asarray(Image.open(root / (n + gnd.get("image_ext", ".jpg"))).convert("RGB").resize((S, S), Image.BOX), np.float32) - 128) / 128).permute(2, 0, 1) for n in names])

feats, atts = [], []
with torch.no_grad():
    for i in range(0, len(names), 16):
        g, a, loc, sd = net.heads(imgs[i:i + 16], True)
        dec = net.conv(loc, "autoencoder.decoder", None, 1, 1, True, True)
        feats.append((F.normalize(dec, dim=1) * a).mean(dim=(2, 3))); atts.append(a.flatten(1))
f = torch.cat(feats); a = torch.cat(atts)
W, b = net.p["attention_classifier.weight"].detach(), net.p["attention_classifier.bias"].detach()
logits = f @ W.t() + b
print(f"attention map {a.shape[1]} cells; attention mean {a.mean():.3f} (min {a.min():.3f} max {a.max():.3f})")
print(f"pooled feature |f| mean {f.norm(dim=1).mean():.4f}; cosine of f to the mean f {F.cosine_similarity(f, f.mean(0, keepdim=True)).mean():.4f}")
within = sum(((f[lab == c] - f[lab == c].mean(0)) ** 2).sum() for c in range(len(classes))) / len(f)
between = ((f - f.mean(0)) ** 2).sum(1).mean() - within
print(f"per-image spread of f around its class mean {within.sqrt():.4f}, class means around the global mean {between.clamp(min=0).sqrt():.4f}")
print(f"attention classifier: |W| row norm {W.norm(dim=1).mean():.4f} (Glorot init expects {math.sqrt(W.shape[1]) * math.sqrt(6 / sum(W.shape)) / math.sqrt(3):.4f}); logit std across classes {logits.std(1).mean():.4f}")
print(f"attention loss of the trained head on these images {F.cross_entropy(logits, lab):.4f} (chance ln {len(classes)} = {math.log(len(classes)):.4f})")

def fit(lr, steps, mom=0.9, batch=16):
    w, bb = W.clone().requires_grad_(), b.clone().requires_grad_()
    vw, vb = torch.zeros_like(w), torch.zeros_like(bb)
    g = torch.Generator().manual_seed(0)
    for s in range(steps):
        idx = torch.randint(0, len(f), (batch,), generator=g)
        loss = F.cross_entropy(f[idx] @ w.t() + bb, lab[idx])
        gw, gb = torch.autograd.grad(loss, [w, bb])
        with torch.no_grad():
            l = lr * (1 - s / steps)
            vw.mul_(mom).add_(gw); vb.mul_(mom).add_(gb); w -= l * vw; bb -= l * vb
    with torch.no_grad():
        return F.cross_entropy(f @ w.t() + bb, lab).item()
for lr, steps in [(0.01, 500), (0.01, 5000), (1.0, 500), (10.0, 500)]:
    print(f"the classifier alone on these frozen features, SGD lr {lr} momentum 0.9 linear decay, {steps} steps of 16: loss {fit(lr, steps):.4f}")
