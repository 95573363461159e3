#!/usr/bin/env python3
"""PyTorch ResNet / DELG weights → a delg-gpu DELG weight file (docs/weights.md).

The source is a `.pth`/`.pt` file (torch.save of a state_dict, or of a
checkpoint dict holding it under `state_dict`, `model`, `model_state` or
`model_state_dict`) or a `.safetensors` state dict. `module.` prefixes
(DataParallel / DistributedDataParallel) are stripped, torchvision's `fc.*`
classifier and `num_batches_tracked` counters are dropped.

Heads:
  init   the source is a backbone (e.g. torchvision's ImageNet ResNet-50); the
         DELG heads are initialised as the official code does (docs/recipe.md §3, Keras
         defaults): Glorot-uniform kernels, zero biases, identity batch norm.
         The classifiers are left to `delg-gpu train`, which knows the classes.
  model  the source is a whole DELG model in delg-gpu's names (backbone in
         torchvision names, heads as in docs/weights.md); sizes come from it.
  auto   model if the source has a `whiten.weight`, else init (default).

    pip install torch safetensors numpy
    python3 tools/convert_torch.py resnet50-0676ba61.pth r50-imagenet.safetensors
    python3 tools/convert_torch.py delg.pth delg.safetensors --heads model --score-threshold 454.6
"""
import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import delg_weights as dw  # noqa: E402

CHECKPOINT_KEYS = ("state_dict", "model", "model_state", "model_state_dict")


def load_state_dict(path):
    """name → numpy array from a .pth/.pt/.safetensors file."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds here
            raise dw.ConversionError(
                f"{path}: cannot be read as a weights-only torch file ({e}); if it pickles a whole model, "
                f"save its state_dict instead: torch.save(model.state_dict(), 'weights.pth')"
            ) from e
    while isinstance(obj, dict):
        inner = next((k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = obj[inner]
    if not isinstance(obj, dict) or not obj:
        raise dw.ConversionError(f"{path}: holds no state dict (a dict of tensors, possibly under one of {CHECKPOINT_KEYS})")
    out = {}
    for name, value in obj.items():
        if not torch.is_tensor(value):
            raise dw.ConversionError(f"{path}: '{name}' is a {type(value).__name__}, not a tensor")
        if name.startswith("module."):
            name = name[len("module."):]
        out[name] = value.detach().to(torch.float64).cpu().numpy()
    return out


def convert(src, layout="auto", depth="auto", heads="auto", seed=0, global_dim=None, attention_dim=512,
            local_dim=128, s_stride32=None, gem_p=3.0, source="the source"):
    """(tensors, config, dropped names) of a delg-gpu file from a state dict
    (`source` names it in errors)."""
    dropped = sorted(n for n in src if n.startswith("fc.") or n.endswith("num_batches_tracked"))
    tensors = {n: t for n, t in src.items() if n not in dropped}
    shapes = {n: t.shape for n, t in tensors.items()}
    blocks, width = dw.infer_backbone(tensors, shapes)
    dw.check_depth(depth, blocks)
    if layout == "auto":
        layout = "delg" if "conv1.bias" in tensors else "torchvision"
    if heads == "auto":
        heads = "model" if "whiten.weight" in tensors else "init"
    if heads == "model":
        hint = ": for a backbone use --heads init"
        cfg = dw.model_config(layout, blocks, width, shapes, source, {"whiten.weight": hint}, s_stride32, gem_p)
    else:
        head_names = [n for n in tensors if n.split(".")[0] in ("whiten", "attention", "autoencoder", "arcface",
                                                               "attention_classifier")]
        if head_names:
            raise dw.ConversionError(f"--heads init, but the source already has head tensors {head_names[:4]}: "
                                     "use --heads model to keep them")
        cfg = dw.config(layout, blocks, width, global_dim or width * 32, attention_dim, local_dim, s_stride32, gem_p)
        tensors.update(dw.glorot_heads(cfg, seed))
    dw.validate(tensors, cfg, source)
    return tensors, cfg, dropped


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dw.add_common_args(ap, ".pth/.pt/.safetensors state dict or checkpoint")
    ap.add_argument("--layout", choices=["auto", "torchvision", "delg"], default="auto",
                    help="backbone layout; auto: delg when the convolutions have biases")
    ap.add_argument("--heads", choices=["auto", "init", "model"], default="auto")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initialised heads")
    ap.add_argument("--global-dim", type=int, help="whitening output size for --heads init (default C_D)")
    ap.add_argument("--attention-dim", type=int, default=512, help="attention width for --heads init")
    ap.add_argument("--local-dim", type=int, default=128, help="descriptor size for --heads init")
    ap.add_argument("--s-stride32", action="store_true",
                    help="torchvision layout: subsample S (conv4) to stride 32 like the delg layout")
    a = ap.parse_args(argv)

    def produce():
        tensors, cfg, dropped = convert(load_state_dict(a.src), a.layout, a.depth, a.heads, a.seed, a.global_dim,
                                        a.attention_dim, a.local_dim, a.s_stride32 or None, a.gem_p, a.src)
        more = " ..." if len(dropped) > 6 else ""
        note = f"dropped {len(dropped)} tensors delg-gpu does not use: {', '.join(dropped[:6])}{more}"
        return tensors, cfg, note if dropped else None

    dw.run(produce, a.out, a.score_threshold)

if __name__ == "__main__":
    main()
