#!/usr/bin/env python3
"""Converts an official DOLG checkpoint (feymanpriv/DOLG, pycls `.pyth`: a
torch.save'd dict whose "model_state" is the state dict) into a delg-gpu
safetensors file (docs/weights.md, "DOLG").

What changes on the way:
  * pycls backbone names become torchvision's (globalmodel.stem.conv -> conv1,
    globalmodel.s3.b2.f.b_bn -> layer3.1.bn2, ...proj/bn -> downsample.0/.1);
  * the first convolution's input channels are reversed: the official code
    feeds BGR images normalised with the ImageNet statistics reversed, delg-gpu
    feeds RGB with them in order, so the converted model computes the same;
  * `pool_g.p` is added (3.0) when the checkpoint's GeM has a fixed p;
  * num_batches_tracked, optimiser state and anything unknown are dropped
    (unknown names are listed);
  * the configuration (depth, width, sizes, multi-atrous block) is read from
    the tensor shapes and stored in the metadata.

Usage: python3 tools/convert_dolg_pyth.py r101_dolg_512.pyth out.safetensors
           [--dilations 6,12,18] [--keep-classifier]
Needs torch, safetensors and numpy.
"""
import argparse
import json
import pathlib
import re
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import delg_weights as dw  # noqa: E402

STAGE_BLOCKS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}
BLOCK_PARTS = {"f.a": "conv1", "f.a_bn": "bn1", "f.b": "conv2", "f.b_bn": "bn2",
               "f.c": "conv3", "f.c_bn": "bn3", "proj": "downsample.0", "bn": "downsample.1"}
HEADS = ("pool_g.", "fc_t.", "localmodel.", "fc.", "desc_cls.")


def state_dict_of(checkpoint):
    for key in ("model_state", "state_dict", "model"):
        if isinstance(checkpoint, dict) and key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not all(torch.is_tensor(v) for v in checkpoint.values()):
        sys.exit("error: no state dict found (expected a pycls checkpoint with 'model_state')")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in checkpoint.items()}


def rename(name):
    """Our name for an official one, or None to drop it."""
    if name.endswith("num_batches_tracked"):
        return None
    m = re.fullmatch(r"globalmodel\.stem\.(conv|bn)\.(.+)", name)
    if m:
        return f"{'conv1' if m[1] == 'conv' else 'bn1'}.{m[2]}"
    m = re.fullmatch(r"globalmodel\.s(\d)\.b(\d+)\.(f\.a|f\.a_bn|f\.b|f\.b_bn|f\.c|f\.c_bn|proj|bn)\.(.+)", name)
    if m:
        return f"layer{m[1]}.{int(m[2]) - 1}.{BLOCK_PARTS[m[3]]}.{m[4]}"
    if name.startswith(HEADS):
        return name
    return None


def convert(state, dilations, keep_classifier):
    out, dropped = {}, []
    for name, t in state.items():
        new = rename(name)
        if new is None or (not keep_classifier and new.startswith("desc_cls.")):
            if not name.endswith("num_batches_tracked"):
                dropped.append(name)
            continue
        out[new] = t.detach().to(torch.float32).contiguous()
    missing = [n for n in ("conv1.weight", "fc_t.weight", "fc.weight", "localmodel.conv1.weight") if n not in out]
    if missing:
        sys.exit(f"error: not a DOLG checkpoint: missing {', '.join(missing)}")
    # BGR -> RGB input.
    out["conv1.weight"] = out["conv1.weight"].flip(1).contiguous()
    out.setdefault("pool_g.p", torch.tensor([3.0]))
    blocks = tuple(1 + max(int(n.split(".")[1]) for n in out if n.startswith(f"layer{s}."))
                   for s in range(1, 5))
    width = out["conv1.weight"].shape[0]
    ma = None
    if "localmodel.aspp.conv_after.0.weight" in out:
        branches = sum(1 for n in out if re.fullmatch(r"localmodel\.aspp\.aspp\.\d+\.weight", n))
        if branches - 1 != len(dilations):
            sys.exit(f"error: the checkpoint has {branches - 1} dilated branches; pass --dilations with that many rates")
        ma = {"dilations": dilations, "branch_dim": out["localmodel.aspp.aspp.0.weight"].shape[0]}
    cfg = {
        "backbone": {"layout": "torchvision", "blocks": list(blocks), "width": width, "s_stride32": False},
        "gem_eps": 1e-6,
        "fusion_dim": out["fc_t.weight"].shape[0],
        "output_dim": out["fc.weight"].shape[0],
        "multi_atrous": ma,
    }
    return out, cfg, dropped


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--dilations", default="6,12,18",
                    help="rates of the multi-atrous block, if the checkpoint has one (not stored in it)")
    ap.add_argument("--keep-classifier", action="store_true",
                    help="keep desc_cls.* (class weights and CurricularFace t) to continue training")
    a = ap.parse_args()
    state = state_dict_of(torch.load(a.checkpoint, map_location="cpu", weights_only=False))
    dilations = [int(d) for d in a.dilations.split(",")]
    tensors, cfg, dropped = convert(state, dilations, a.keep_classifier)
    # The shared writer: sorted header, so the same checkpoint always gives the same bytes.
    arrays = {n: t.numpy() for n, t in tensors.items()}
    out = pathlib.Path(a.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(dw.safetensors_bytes(arrays, {dw.META_ARCH: "dolg", dw.META_CONFIG: json.dumps(cfg)}))
    tmp.replace(out)
    depth = STAGE_BLOCKS.get(tuple(cfg["backbone"]["blocks"]), "custom")
    print(f"wrote {a.out}: DOLG R{depth}, {len(tensors)} tensors, width {cfg['backbone']['width']}, "
          f"multi-atrous {'on' if cfg['multi_atrous'] else 'off'}")
    if dropped:
        print(f"dropped {len(dropped)} tensors: {', '.join(dropped[:8])}{' ...' if len(dropped) > 8 else ''}")


if __name__ == "__main__":
    main()
