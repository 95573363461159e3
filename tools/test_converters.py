#!/usr/bin/env python3
"""Tests of tools/convert_torch.py and tools/convert_delg_tf2.py, run by hand.

For each converter a small randomly initialised model is built in its source
framework, saved the way that framework saves it, converted, and run in the
framework (in f64, on the f32 weights the file holds) on one fixed image. The
converted files and the reference outputs are the fixtures of
tests/converters.rs (tests/fixtures/convert/), which runs them through
delg-gpu's extraction graph:

  image.npy                       the input, NHWC, (u8 − 128)/128
  {torch,tf2}_weights.safetensors converted weights
  {torch,tf2}_{global,attention,local}.npy  the source framework's outputs

PyTorch model: torchvision's ResNet module structure (names), reduced width,
torchvision layout, with the DELG heads under delg-gpu's names, saved as a
DataParallel checkpoint dict with torchvision's `fc`.
TF2 model: the Keras classes of tensorflow/models research/delf restated with
the official attribute and layer names (resnet50.py, delf_model.py,
delg_model.py) at reduced width, saved as a training checkpoint (with SGD
momentum slots), with `save_weights`, and as a SavedModel.

    pip install torch safetensors numpy tensorflow-cpu tf-keras
    python3 tools/test_converters.py
"""
import argparse
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # the official code is Keras 2 (tf.keras before Keras 3)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from safetensors import safe_open  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import convert_delg_tf2  # noqa: E402
import convert_torch  # noqa: E402
import delg_weights as dw  # noqa: E402

OUT = HERE.parent / "tests" / "fixtures" / "convert"
WIDTH, ATT, LOC, GLOBAL = 4, 8, 8, 64


def fixed_u8(h, w):
    """A deterministic RGB image: smooth structure on top of noise, so maps are not flat."""
    rng = np.random.default_rng(2024)
    noise = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
    y, x = np.mgrid[0:h, 0:w]
    img = 0.5 * noise + 60 * np.sin(x / 9.0)[..., None] + 50 * np.cos(y / 7.0)[..., None] + 64
    return np.clip(img, 0, 255).round().astype(np.uint8)


def normalized(u8):
    """DELG's input, NHWC: (x − 128)/128."""
    return ((u8.astype(np.float32) - 128.0) / 128.0)[None]


def metadata(path):
    with safe_open(str(path), "np") as f:
        return f.metadata()


def save_outputs(prefix, g, a, l):
    for name, v in (("global", g), ("attention", a), ("local", l)):
        np.save(OUT / f"{prefix}_{name}.npy", np.asarray(v, dtype=np.float32))


def expect_error(fn, *needles):
    try:
        fn()
    except dw.ConversionError as e:
        msg = str(e)
        assert all(n in msg for n in needles), f"error lacks {needles}: {msg}"
        return
    raise AssertionError(f"no error, expected one naming {needles}")


# --- PyTorch -----------------------------------------------------------------
class Bottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck's modules and names (stride on the 3×3)."""

    def __init__(self, c_in, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        t = self.relu(self.bn1(self.conv1(x)))
        t = self.relu(self.bn2(self.conv2(t)))
        t = self.bn3(self.conv3(t))
        return self.relu(t + (x if self.downsample is None else self.downsample(x)))


class TorchDelg(nn.Module):
    """torchvision's ResNet (conv1 … layer4, fc) plus DELG heads named as docs/weights.md."""

    def __init__(self, blocks, width, heads=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = width
        for stage, n in enumerate(blocks):
            planes = width << stage
            layer = []
            for b in range(n):
                layer.append(Bottleneck(c_in, planes, (1 if stage == 0 else 2) if b == 0 else 1))
                c_in = planes * 4
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(c_in, 10)
        if heads:
            c_s = width * 16
            self.whiten = nn.Linear(c_in, GLOBAL)
            self.attention = nn.Module()
            self.attention.conv1 = nn.Conv2d(c_s, ATT, 1)
            self.attention.bn = nn.BatchNorm2d(ATT)
            self.attention.conv2 = nn.Conv2d(ATT, 1, 1)
            self.autoencoder = nn.Module()
            self.autoencoder.encoder = nn.Conv2d(c_s, LOC, 1)
            self.autoencoder.decoder = nn.Conv2d(LOC, c_s, 1)

    def randomize(self, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_out))
                if isinstance(m, nn.Linear):
                    limit = math.sqrt(6.0 / (m.in_features + m.out_features))
                    m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * limit)
                if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
                if isinstance(m, nn.BatchNorm2d):
                    c = m.num_features
                    m.weight.copy_(0.9 + 0.2 * torch.rand(c, generator=g))
                    m.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
                    m.running_mean.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
                    m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                    m.num_batches_tracked.fill_(7)
        return self

    def delg(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        s = self.layer3(x)
        d = self.layer4(s)
        gem = d.clamp(min=1e-6).pow(3.0).mean(dim=(2, 3)).pow(1.0 / 3.0)
        a = self.attention
        att = F.softplus(a.conv2(F.relu(a.bn(a.conv1(s)))))
        return self.whiten(gem), att, self.autoencoder.encoder(s)


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def test_torch(tmp, image):
    blocks = [2, 1, 2, 1]
    net = TorchDelg(blocks, WIDTH).randomize(11).eval()
    ckpt = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    # Kept as a fixture: tests/weights_import.rs imports it natively and
    # compares with this converter's output byte for byte.
    src = OUT / "torch_source.pth"
    torch.save(ckpt, src)
    out = OUT / "torch_weights.safetensors"
    convert_torch.main([str(src), str(out), "--depth", "auto"])
    conv = load_file(str(out))
    sd = net.state_dict()
    assert set(conv) == {k for k in sd if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    for k, v in conv.items():
        assert np.array_equal(v, sd[k].numpy()), k
    cfg = json.loads(metadata(out)[dw.META_CONFIG])
    assert cfg == dw.config("torchvision", blocks, WIDTH, GLOBAL, ATT, LOC), cfg
    with torch.no_grad():
        g, a, l = net.double().delg(torch.from_numpy(image).permute(0, 3, 1, 2).double())
    save_outputs("torch", g.numpy(), nhwc(a), nhwc(l))

    # A torchvision ImageNet backbone: fc dropped, heads initialised as Keras does.
    backbone = TorchDelg(blocks, WIDTH, heads=False).randomize(12)
    torch.save(backbone.state_dict(), tmp / "r.pth")
    convert_torch.main([str(tmp / "r.pth"), str(tmp / "r.safetensors"), "--attention-dim", "8", "--local-dim", "8"])
    init = load_file(str(tmp / "r.safetensors"))
    cfg = json.loads(metadata(tmp / "r.safetensors")[dw.META_CONFIG])
    assert cfg == dw.config("torchvision", blocks, WIDTH, WIDTH * 32, 8, 8), cfg
    assert not any(k.startswith("fc.") for k in init)
    w = init["attention.conv1.weight"]
    limit = math.sqrt(6.0 / (WIDTH * 16 + 8))
    assert w.shape == (8, WIDTH * 16, 1, 1) and np.abs(w).max() <= limit and np.abs(w).max() > 0.8 * limit
    assert not init["whiten.bias"].any() and (init["attention.bn.running_var"] == 1).all()
    assert "arcface.weight" not in init

    # A delg-layout file round-trips (biases detected), config equal to the reference fixture's.
    ref = HERE.parent / "tests" / "fixtures" / "delg_tiny" / "weights_delg.safetensors"
    from safetensors.torch import load_file as torch_load

    torch.save({"model": torch_load(str(ref))}, tmp / "d.pth")
    convert_torch.main([str(tmp / "d.pth"), str(tmp / "d.safetensors")])
    a, b = load_file(str(ref)), load_file(str(tmp / "d.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads(metadata(ref)[dw.META_CONFIG]) == json.loads(metadata(tmp / "d.safetensors")[dw.META_CONFIG])

    # Clear errors.
    sd = {k: v.double().numpy() for k, v in net.state_dict().items()}
    expect_error(lambda: convert_torch.convert(sd, layout="delg"), "missing 'conv1.bias'", "--layout torchvision")
    expect_error(lambda: convert_torch.convert(sd, depth="50"), "--depth 50")
    bad = dict(sd, **{"layer3.1.conv2.weight": np.zeros((16, 16, 1, 1))})
    expect_error(lambda: convert_torch.convert(bad), "'layer3.1.conv2.weight' is [16, 16, 1, 1], expected [16, 16, 3, 3]")
    extra = dict(sd, **{"attention.extra": np.zeros(3)})
    expect_error(lambda: convert_torch.convert(extra), "unexpected 'attention.extra'")
    expect_error(lambda: convert_torch.convert(sd, heads="init"), "--heads model")
    print("torch: ok")


# --- TensorFlow 2 / Keras ------------------------------------------------------
def keras_delg(blocks, width, global_dim=GLOBAL, att=ATT, loc=LOC):
    """The official Keras DELG classes, restated at reduced width: the same
    attribute names (object paths in checkpoints) and layer names."""
    import tensorflow as tf

    layers = tf.keras.layers

    class Block(tf.keras.Model):
        def __init__(self, filters, stage, block, strides, shortcut):
            super().__init__(name="")
            f1, f2, f3 = filters
            conv, bn = f"res{stage}{block}_branch", f"bn{stage}{block}_branch"
            self.conv2a = layers.Conv2D(f1, (1, 1), strides=strides, name=conv + "2a")
            self.bn2a = layers.BatchNormalization(axis=3, name=bn + "2a")
            self.conv2b = layers.Conv2D(f2, 3, padding="same", name=conv + "2b")
            self.bn2b = layers.BatchNormalization(axis=3, name=bn + "2b")
            self.conv2c = layers.Conv2D(f3, (1, 1), name=conv + "2c")
            self.bn2c = layers.BatchNormalization(axis=3, name=bn + "2c")
            self.shortcut = shortcut
            if shortcut:
                self.conv_shortcut = layers.Conv2D(f3, (1, 1), strides=strides, name=conv + "1")
                self.bn_shortcut = layers.BatchNormalization(axis=3, name=bn + "1")

        def call(self, x, training=False):
            t = tf.nn.relu(self.bn2a(self.conv2a(x), training=training))
            t = tf.nn.relu(self.bn2b(self.conv2b(t), training=training))
            t = self.bn2c(self.conv2c(t), training=training)
            s = self.bn_shortcut(self.conv_shortcut(x), training=training) if self.shortcut else x
            return tf.nn.relu(t + s)

    class Backbone(tf.keras.Model):
        def __init__(self):
            super().__init__(name="backbone")
            self.conv1 = layers.Conv2D(width, (7, 7), strides=(2, 2), padding="same", name="conv1")
            self.bn_conv1 = layers.BatchNormalization(axis=3, name="bn_conv1")
            self.max_pool = layers.MaxPooling2D((3, 3), strides=(2, 2))
            self.names = []
            for i, n in enumerate(blocks):
                stage, f = i + 2, width << i
                for b in range(n):
                    letter = chr(ord("a") + b)
                    # block3_strides: the stride of conv5 moves to a subsample after conv4.
                    strides = (1, 1) if b > 0 or stage in (2, 5) else (2, 2)
                    setattr(self, f"l{stage}{letter}", Block([f, f, 4 * f], stage, letter, strides, b == 0))
                    self.names.append((stage, f"l{stage}{letter}"))
            self.subsampling_layer = layers.MaxPooling2D((1, 1), strides=(2, 2))
            self.embedding_layer = layers.Dense(global_dim, name="embedding_layer")

        def call(self, x, training=False):
            x = tf.nn.relu(self.bn_conv1(self.conv1(x), training=training))
            x = self.max_pool(x)
            block3 = None
            for stage, name in self.names:
                if stage == 5 and block3 is None:
                    x = block3 = self.subsampling_layer(x)
                x = getattr(self, name)(x, training=training)
            gem = tf.pow(tf.reduce_mean(tf.pow(tf.maximum(x, 1e-6), 3.0), [1, 2]), 1.0 / 3.0)
            return self.embedding_layer(gem), block3

    class Attention(tf.keras.Model):
        def __init__(self):
            super().__init__(name="attention")
            self.conv1 = layers.Conv2D(att, 1, padding="same", name="attn_conv1")
            self.bn_conv1 = layers.BatchNormalization(axis=3, name="bn_conv1")
            self.conv2 = layers.Conv2D(1, 1, padding="same", name="attn_conv2")
            self.activation_layer = layers.Activation("softplus")

        def call(self, x, training=False):
            return self.activation_layer(self.conv2(tf.nn.relu(self.bn_conv1(self.conv1(x), training=training))))

    class Autoencoder(tf.keras.Model):
        def __init__(self, c_s):
            super().__init__(name="autoencoder")
            self.conv1 = layers.Conv2D(loc, 1, padding="same", name="autoenc_conv1")
            self.conv2 = layers.Conv2D(c_s, 1, activation="relu", padding="same", name="autoenc_conv2")

        def call(self, x):
            reduced = self.conv1(x)
            return self.conv2(reduced), reduced

    class Delg(tf.keras.Model):
        def __init__(self, classes=5):
            super().__init__(name="DELG")
            self.backbone = Backbone()
            self.attention = Attention()
            self.autoencoder = Autoencoder(width * 16)
            self.cosine_weights = tf.Variable(tf.keras.initializers.GlorotUniform()([global_dim, classes]),
                                              name="cosine_weights")
            self.scale_factor = tf.Variable(math.sqrt(global_dim), name="scale_factor", trainable=False)
            self.attn_classification = layers.Dense(classes, name="att_fc")

        def call(self, x, training=False):
            g, s = self.backbone(x, training=training)
            expanded, reduced = self.autoencoder(s)
            att = self.attention(s, training=training)
            pooled = tf.reduce_mean(tf.nn.l2_normalize(expanded, axis=-1) * att, [1, 2])
            return g, att, reduced, self.attn_classification(pooled)

    return Delg()


def require_tf_keras():
    # tf.keras must be Keras 2, as in the official code.
    if importlib.util.find_spec("tf_keras") is None:
        sys.exit("the TF2 tests restate Keras 2 code: pip install tf-keras (same version as tensorflow)")


def randomize_keras(model, seed):
    """He-normal convolutions, Glorot-uniform dense kernels, small biases,
    batch norms away from identity."""
    rng = np.random.default_rng(seed)
    for v in model.variables:
        shape, name = v.shape.as_list(), v.name
        if "kernel" in name and len(shape) == 4:
            val = rng.normal(0, math.sqrt(2.0 / (shape[0] * shape[1] * shape[3])), shape)
        elif "kernel" in name or "cosine_weights" in name:
            val = rng.uniform(-1, 1, shape) * math.sqrt(6.0 / sum(shape))
        elif "gamma" in name:
            val = rng.uniform(0.9, 1.1, shape)
        elif "moving_variance" in name:
            val = rng.uniform(0.5, 1.5, shape)
        elif any(k in name for k in ("bias", "beta", "moving_mean")):
            val = rng.uniform(-0.1, 0.1, shape)
        else:
            continue
        v.assign(val.astype(np.float32))


def export_module(model):
    """export_local_and_global_model.py's module: the model under `_model`."""
    import tensorflow as tf

    class Export(tf.Module):
        def __init__(self, model):
            super().__init__()
            self._model = model

        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
        def extract(self, x):
            return self._model(x)[:3]

    return Export(model)


def test_tf2(tmp, image):
    require_tf_keras()
    import tensorflow as tf

    blocks = [2, 1, 3, 1]
    model = keras_delg(blocks, WIDTH)
    model(tf.constant(image))
    randomize_keras(model, 13)
    opt = tf.keras.optimizers.SGD(0.01, momentum=0.9)
    # Zero gradients create the momentum slots without moving a weight.
    opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    tf.train.Checkpoint(optimizer=opt, model=model).save(str(tmp / "ckpt" / "ckpt"))
    model.save_weights(str(tmp / "w" / "delf-weights"))

    tf.saved_model.save(export_module(model), str(tmp / "saved"))
    # As the official export does it: an unbuilt model restored with
    # load_weights, so Keras saves it without its own variable lists.
    unbuilt = keras_delg(blocks, WIDTH)
    unbuilt.load_weights(str(tmp / "w" / "delf-weights"))
    tf.saved_model.save(export_module(unbuilt), str(tmp / "exported"))

    out = OUT / "tf2_weights.safetensors"
    convert_delg_tf2.main([str(tmp / "ckpt"), str(out), "--depth", "auto"])
    conv = load_file(str(out))
    cfg = json.loads(metadata(out)[dw.META_CONFIG])
    assert cfg == dw.config("delg", blocks, WIDTH, GLOBAL, ATT, LOC), cfg
    for other in (tmp / "w" / "delf-weights", tmp / "saved", tmp / "exported"):
        convert_delg_tf2.main([str(other), str(tmp / "o.safetensors")])
        o = load_file(str(tmp / "o.safetensors"))
        assert o.keys() == conv.keys() and all(np.array_equal(o[k], conv[k]) for k in o), other
    # Spot checks of the mapping and the layouts.
    by_path = {v.name: v.numpy() for v in model.variables}
    kernel = model.backbone.l4c.conv2b.kernel.numpy()
    assert np.array_equal(conv["layer3.2.conv2.weight"], kernel.transpose(3, 2, 0, 1))
    assert np.array_equal(conv["layer1.0.downsample.1.running_var"], model.backbone.l2a.bn_shortcut.moving_variance.numpy())
    assert np.array_equal(conv["whiten.weight"], model.backbone.embedding_layer.kernel.numpy().T)
    assert np.array_equal(conv["arcface.weight"], model.cosine_weights.numpy().T)
    assert np.array_equal(conv["attention.bn.running_mean"], model.attention.bn_conv1.moving_mean.numpy())
    assert np.array_equal(conv["autoencoder.decoder.bias"], model.autoencoder.conv2.bias.numpy())
    n_source = sum(1 for name in by_path if "scale_factor" not in name)
    assert len(conv) == n_source, (len(conv), n_source)

    # The reference: the same weights in f64.
    tf.keras.backend.set_floatx("float64")
    ref = keras_delg(blocks, WIDTH)
    ref(tf.constant(image, tf.float64))
    ref.set_weights(model.get_weights())
    tf.keras.backend.set_floatx("float32")
    g, a, l, _ = ref(tf.constant(image, tf.float64))
    save_outputs("tf2", g.numpy(), a.numpy(), l.numpy())

    variables = convert_delg_tf2.read_checkpoint(tmp / "ckpt")
    broken = {k: v for k, v in variables.items() if "embedding_layer" not in k}
    expect_error(lambda: convert_delg_tf2.convert(broken), "no embedding layer")
    odd = dict(variables, **{"model/backbone/l4c/conv9/kernel": np.zeros((1, 1, 2, 2))})
    expect_error(lambda: convert_delg_tf2.convert(odd), "model/backbone/l4c/conv9/kernel")
    print("tf2: ok")


def check_r50(tmp):
    """Full size, not a fixture: the official ResNet-50 DELG (random weights)
    converted and run by `delg-gpu extract` at scale 1 against Keras."""
    require_tf_keras()
    import tensorflow as tf
    from PIL import Image

    u8 = fixed_u8(224, 320)
    (tmp / "img").mkdir()
    Image.fromarray(u8).save(tmp / "img" / "a.png")
    image = normalized(u8)
    model = keras_delg([3, 4, 6, 3], 64, 2048, 512, 128)
    model(tf.constant(image))
    randomize_keras(model, 5)
    tf.train.Checkpoint(model=model).save(str(tmp / "ckpt" / "ckpt"))
    start = time.perf_counter()
    convert_delg_tf2.main([str(tmp / "ckpt"), str(tmp / "r50.safetensors"), "--depth", "50"])
    print(f"conversion: {time.perf_counter() - start:.1f} s")
    g, a, l, _ = (t.numpy()[0] for t in model(tf.constant(image)))
    a = a[..., 0]
    tau = float(np.quantile(a, 0.5))
    out = tmp / "out"
    subprocess.run(["cargo", "run", "--release", "-q", "--", "extract", str(tmp / "img"), "--weights",
                    str(tmp / "r50.safetensors"), "--out", str(out), "--scales", "1", "--global-scales", "0",
                    "--max-image-size", "0", "--score-threshold", repr(tau), "--quiet"],
                   cwd=HERE.parent, check=True)
    cos = float(np.load(out / "global.npy")[0] @ (g / np.linalg.norm(g)))
    cell = np.round(np.load(out / "local_locations.npy") / 32).astype(int)  # scale 1: centres at 32·(i, j)
    att = np.load(out / "local_attention.npy")
    err = float(np.abs(att - a[cell[:, 0], cell[:, 1]]).max() / np.abs(a).max())
    want = l[cell[:, 0], cell[:, 1]]
    desc = float((np.load(out / "local_descriptors.npy") * want / np.linalg.norm(want, axis=1, keepdims=True))
                 .sum(1).min())
    print(f"R50 {a.shape[0]}x{a.shape[1]} map: global cosine {cos:.8f}; {len(att)} features (Keras: "
          f"{int((a >= tau).sum())} ≥ τ); attention error {err:.1e}; descriptor cosine ≥ {desc:.8f}")
    assert cos >= 0.99999 and err <= 1e-4 and desc >= 0.9999


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--r50", action="store_true",
                    help="instead: a full-size ResNet-50 DELG through the TF2 converter and `delg-gpu extract`")
    ap.add_argument("--torch-only", action="store_true",
                    help="only the PyTorch fixtures (when TensorFlow is not installed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        if args.r50:
            check_r50(pathlib.Path(t))
            return
        OUT.mkdir(parents=True, exist_ok=True)
        image = normalized(fixed_u8(64, 96))
        np.save(OUT / "image.npy", image)
        test_torch(pathlib.Path(t), image)
        if not args.torch_only:
            test_tf2(pathlib.Path(t), image)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"fixtures in {OUT}: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
