"""What the converters in tools/ share: the tensor names and shapes a delg-gpu
DELG weight file holds (docs/weights.md), the model configuration stored in its
metadata, one validation that names every problem at once, Keras-default head
initialisation, and the atomic safetensors writer.

Needs numpy only; the framework each converter reads is
imported by that converter.
"""
import json
import os
import pathlib
import sys

import numpy as np

META_ARCH = "delg_gpu.arch"
META_CONFIG = "delg_gpu.config"
META_SCORE_THRESHOLD = "delg_gpu.score_threshold"

DEPTHS = {"50": [3, 4, 6, 3], "101": [3, 4, 23, 3]}
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")
# Written when the source has them, never required: extraction does not read
# them and a training run initialises whatever is missing.
TRAINING_ONLY = ("autoencoder.decoder.", "arcface.", "attention_classifier.")


class ConversionError(Exception):
    """A source that cannot become a delg-gpu file; the message says why."""


def config(layout, blocks, width, global_dim, attention_dim, local_dim, s_stride32=None, gem_p=3.0):
    """The `DelgConfig` JSON object of src/model/delg.rs."""
    if s_stride32 is None:
        s_stride32 = layout == "delg"
    if layout == "delg" and not s_stride32:
        raise ConversionError("the delg layout always takes S at stride 32")
    return {
        "backbone": {"layout": layout, "blocks": list(blocks), "width": width, "s_stride32": s_stride32},
        "gem_p": float(gem_p),
        "gem_eps": 1e-6,
        "global_dim": global_dim,
        "attention_dim": attention_dim,
        "local_dim": local_dim,
    }


def _conv(out, name, c_out, c_in, k, bias, bn):
    out[f"{name}.weight"] = (c_out, c_in, k, k)
    if bias:
        out[f"{name}.bias"] = (c_out,)
    if bn:
        for s in BN_SUFFIXES:
            out[f"{bn}.{s}"] = (c_out,)


def backbone_shapes(layout, blocks, width):
    """name → shape of every backbone tensor, torchvision names."""
    bias = layout == "delg"
    out = {}
    _conv(out, "conv1", width, 3, 7, bias, "bn1")
    c_in = width
    for stage, n in enumerate(blocks):
        planes = width << stage
        for b in range(n):
            p = f"layer{stage + 1}.{b}"
            if b == 0:
                _conv(out, f"{p}.downsample.0", planes * 4, c_in, 1, bias, f"{p}.downsample.1")
            _conv(out, f"{p}.conv1", planes, c_in, 1, bias, f"{p}.bn1")
            _conv(out, f"{p}.conv2", planes, planes, 3, bias, f"{p}.bn2")
            _conv(out, f"{p}.conv3", planes * 4, planes, 1, bias, f"{p}.bn3")
            c_in = planes * 4
    return out


def head_shapes(cfg, num_classes=None):
    """name → shape of the DELG heads; the classifiers only for a known class count."""
    w = cfg["backbone"]["width"]
    c_s, c_d = w * 16, w * 32
    g, a, l = cfg["global_dim"], cfg["attention_dim"], cfg["local_dim"]
    out = {"whiten.weight": (g, c_d), "whiten.bias": (g,)}
    _conv(out, "attention.conv1", a, c_s, 1, True, "attention.bn")
    _conv(out, "attention.conv2", 1, a, 1, True, None)
    _conv(out, "autoencoder.encoder", l, c_s, 1, True, None)
    _conv(out, "autoencoder.decoder", c_s, l, 1, True, None)
    if num_classes is not None:
        out["arcface.weight"] = (num_classes, g)
        out["attention_classifier.weight"] = (num_classes, c_s)
        out["attention_classifier.bias"] = (num_classes,)
    return out


def infer_backbone(names, shapes):
    """(blocks per stage, stem width) from the torchvision names present."""
    if "conv1.weight" not in shapes:
        raise ConversionError("no 'conv1.weight': not a ResNet backbone in torchvision names")
    blocks = []
    for stage in range(1, 5):
        idx = {int(n.split(".")[1]) for n in names if n.startswith(f"layer{stage}.") and n.split(".")[1].isdigit()}
        if not idx:
            raise ConversionError(f"no 'layer{stage}.*' tensors: not a four-stage ResNet")
        blocks.append(max(idx) + 1)
    return blocks, shapes["conv1.weight"][0]


def check_depth(depth, blocks):
    if depth != "auto" and DEPTHS[depth] != blocks:
        raise ConversionError(f"--depth {depth} means blocks {DEPTHS[depth]}, the source has {blocks}")


def model_config(layout, blocks, width, shapes, source, hints=None, s_stride32=None, gem_p=3.0):
    """The configuration of a whole DELG model, head sizes read from its
    heads; `hints` says per head tensor what its absence may mean."""
    hints = hints or {}
    for name in ("whiten.weight", "attention.conv1.weight", "autoencoder.encoder.weight"):
        if name not in shapes:
            raise ConversionError(f"{source} has no '{name}' (docs/weights.md){hints.get(name, '')}")
    return config(layout, blocks, width, shapes["whiten.weight"][0], shapes["attention.conv1.weight"][0],
                  shapes["autoencoder.encoder.weight"][0], s_stride32, gem_p)


def run(produce, out, score_threshold):
    """Writes what `produce()` converts — (tensors, config, a note for the
    user or None) — or ends the program with the ConversionError's message."""
    try:
        tensors, cfg, note = produce()
    except ConversionError as e:
        sys.exit(f"error: {e}")
    if note:
        print(note)
    write(out, tensors, cfg, score_threshold)


def add_common_args(ap, src_help):
    """The arguments both converters take."""
    ap.add_argument("src", help=src_help)
    ap.add_argument("out", help="the delg-gpu .safetensors to write")
    ap.add_argument("--depth", choices=["auto", "50", "101"], default="auto",
                    help="check the block counts of a ResNet-50/101 (auto: any)")
    ap.add_argument("--gem-p", type=float, default=3.0, help="GeM power the model uses (DELG: 3)")
    ap.add_argument("--score-threshold", type=float,
                    help="attention threshold τ stored in the file (extract needs it or --score-threshold)")


def num_classes(shapes):
    """The class count of the training heads present, or None."""
    for name, axis in (("arcface.weight", 0), ("attention_classifier.bias", 0)):
        if name in shapes:
            return shapes[name][axis]
    return None


def validate(tensors, cfg, source):
    """Every missing, unexpected and mis-shaped tensor, in one error."""
    bb = cfg["backbone"]
    want = backbone_shapes(bb["layout"], bb["blocks"], bb["width"])
    want.update(head_shapes(cfg, num_classes({n: t.shape for n, t in tensors.items()})))
    problems = []
    for name, shape in want.items():
        if name not in tensors:
            if not name.startswith(TRAINING_ONLY):
                problems.append(f"missing '{name}' {list(shape)}")
        elif tuple(tensors[name].shape) != tuple(shape):
            problems.append(f"'{name}' is {list(tensors[name].shape)}, expected {list(shape)}")
    problems += [f"unexpected '{n}' {list(t.shape)}" for n, t in tensors.items() if n not in want]
    if problems:
        hint = ""
        if any(p.startswith("missing") and ".bias'" in p for p in problems) and bb["layout"] == "delg":
            hint = " (convolutions without biases: a torchvision-layout model? use --layout torchvision)"
        elif any(p.startswith("unexpected") and ".bias'" in p for p in problems) and bb["layout"] == "torchvision":
            hint = " (convolutions with biases: a delg-layout model? use --layout delg)"
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise ConversionError(f"{source} does not fit a {bb['layout']} DELG model{hint}:\n  {shown}{more}")


def glorot_heads(cfg, seed):
    """The extraction heads and the decoder as Keras initialises them (docs/recipe.md §3):
    Glorot-uniform kernels, zero biases, identity batch norm."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in head_shapes(cfg).items():
        if name.endswith("running_var") or (name.startswith("attention.bn") and name.endswith(".weight")):
            out[name] = np.ones(shape, np.float32)
        elif name.endswith(".weight") and not name.startswith("attention.bn"):
            receptive = int(np.prod(shape[2:])) if len(shape) == 4 else 1
            fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            out[name] = rng.uniform(-limit, limit, shape).astype(np.float32)
        else:
            out[name] = np.zeros(shape, np.float32)
    return out


def safetensors_bytes(arrays, metadata):
    """A safetensors file with its header in sorted order, so that the same
    tensors always give the same bytes (the library orders metadata by hash)."""
    header, offset = {"__metadata__": dict(sorted(metadata.items()))}, 0
    for name, a in sorted(arrays.items()):
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    data = b"".join(a.astype("<f4").tobytes() for _, a in sorted(arrays.items()))
    return len(text).to_bytes(8, "little") + text + data


def write(path, tensors, cfg, score_threshold=None):
    """f32 safetensors with the delg-gpu metadata, written atomically."""
    path = pathlib.Path(path)
    meta = {META_ARCH: "delg", META_CONFIG: json.dumps(cfg)}
    if score_threshold is not None:
        meta[META_SCORE_THRESHOLD] = repr(float(score_threshold))
    arrays = {n: np.ascontiguousarray(t, dtype=np.float32) for n, t in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(safetensors_bytes(arrays, meta))
    os.replace(tmp, path)
    n = sum(a.size for a in arrays.values())
    print(f"wrote {path} ({len(arrays)} tensors, {n / 1e6:.2f} M parameters, {cfg['backbone']['layout']} layout, "
          f"blocks {cfg['backbone']['blocks']}, width {cfg['backbone']['width']})")
