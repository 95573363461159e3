#!/usr/bin/env python3
"""The official DELG TF2 model (tensorflow/models research/delf, Keras) → a
delg-gpu DELG weight file in the `delg` layout (docs/weights.md).

The source is any TensorFlow object-based checkpoint of the Keras `Delg`
model: a training checkpoint prefix (`ckpt-N`, or its directory: the latest
one is read), the `delf-weights` prefix that train.py writes with
`model.save_weights`, or an exported SavedModel directory (its
`variables/variables`). Variables are found by their object paths
(`backbone/l4f/conv2b/kernel`, ...) under whatever root the file has
(`model/`, `_model/`, none); optimizer slots, `save_counter` and the fixed
ArcFace `scale_factor` are skipped.

Mapping (conv kernels HWIO → OIHW, dense kernels [in, out] → [out, in]):
  backbone/conv1, backbone/bn_conv1         → conv1, bn1
  backbone/l{S}{x}/conv2a|conv2b|conv2c     → layer{S-1}.{x-'a'}.conv1|conv2|conv3
  backbone/l{S}{x}/bn2a|bn2b|bn2c           → layer{S-1}.{x-'a'}.bn1|bn2|bn3
  backbone/l{S}{x}/conv_shortcut|bn_shortcut → layer{S-1}.{x-'a'}.downsample.0|downsample.1
  backbone/embedding_layer                  → whiten
  attention/conv1|bn_conv1|conv2            → attention.conv1|bn|conv2
  autoencoder/conv1|conv2                   → autoencoder.encoder|decoder
  cosine_weights [G, classes]               → arcface.weight [classes, G]
  attn_classification (att_fc)              → attention_classifier
  kernel|bias, gamma|beta|moving_mean|moving_variance → weight|bias, weight|bias|running_mean|running_var

The released models were trained with block3_strides=True (the default of
train.py and of the export scripts), which is what the delg layout computes; a
checkpoint trained with block3_strides=False has the same variables but a
different network, and cannot be told apart from its weights.

    pip install tensorflow-cpu safetensors numpy
    python3 tools/convert_delg_tf2.py r50delg_gldv2clean/ r50delg.safetensors --score-threshold 454.6
"""
import argparse
import pathlib
import re
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import delg_weights as dw  # noqa: E402

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
VARIABLE = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
            "moving_mean": "running_mean", "moving_variance": "running_var"}
BLOCK_LAYER = {"conv2a": "conv1", "conv2b": "conv2", "conv2c": "conv3", "conv_shortcut": "downsample.0",
               "bn2a": "bn1", "bn2b": "bn2", "bn2c": "bn3", "bn_shortcut": "downsample.1"}
LAYER = {"backbone/conv1": "conv1", "backbone/bn_conv1": "bn1", "backbone/embedding_layer": "whiten",
         "attention/conv1": "attention.conv1", "attention/bn_conv1": "attention.bn",
         "attention/conv2": "attention.conv2", "autoencoder/conv1": "autoencoder.encoder",
         "autoencoder/conv2": "autoencoder.decoder", "attn_classification": "attention_classifier"}
# Variables of a training checkpoint that are not weights of the network.
SKIPPED = re.compile(r"^(optimizer/|save_counter$|scale_factor$|step$|global_step$)")
ALIAS = re.compile(r"^(\d+|variables|trainable_variables|non_trainable_variables|keras_api|layer-\d+"
                   r"|layer_with_weights-\d+)$")
GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
BLOCK = re.compile(r"^backbone/l(\d)([a-z])/(\w+)/(\w+)$")


def checkpoint_prefix(path):
    """The checkpoint prefix a path names (prefix, its directory, a file of it, or a SavedModel)."""
    import tensorflow as tf

    p = pathlib.Path(path)
    if p.is_dir():
        if (p / "saved_model.pb").exists():
            return str(p / "variables" / "variables")
        latest = tf.train.latest_checkpoint(str(p))
        if latest is None:
            raise dw.ConversionError(f"{p}: a directory with neither saved_model.pb nor a 'checkpoint' file")
        return latest
    m = re.match(r"^(.*)\.(index|data-\d+-of-\d+)$", str(p))
    prefix = m.group(1) if m else str(p)
    if not pathlib.Path(prefix + ".index").exists():
        raise dw.ConversionError(f"{path}: no checkpoint there (expected a prefix with a .index file beside it, "
                                 "a checkpoint directory or a SavedModel directory)")
    return prefix


def object_paths(graph):
    """node id → its path from the root over attribute edges (breadth first,
    so the shortest). Aliases (SavedModel's `variables/N`, Keras' `layer-N`,
    `keras_api`, ...) are not followed: a variable's path is then the one
    its layers' attribute names give, whichever format holds it."""
    paths, queue = {0: ""}, [0]
    while queue:
        node = queue.pop(0)
        for child in graph.nodes[node].children:
            if child.node_id not in paths and not ALIAS.match(child.local_name):
                paths[child.node_id] = f"{paths[node]}/{child.local_name}".lstrip("/")
                queue.append(child.node_id)
    return paths


def read_checkpoint(path):
    """Object path → numpy array of every variable in the checkpoint."""
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    prefix = checkpoint_prefix(path)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # noqa: BLE001 - TF raises several kinds for a bad file
        raise dw.ConversionError(f"{prefix}: not a readable TensorFlow checkpoint ({e})") from e
    keys = reader.get_variable_to_shape_map()
    if GRAPH_KEY not in keys:
        raise dw.ConversionError(f"{prefix}: a name-based (TF1) checkpoint; this converter reads the TF2 "
                                 "object-based checkpoints of the Keras DELG model")
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(GRAPH_KEY))
    paths = object_paths(graph)
    out = {}
    for node_id, node in enumerate(graph.nodes):
        for attr in node.attributes:
            key = attr.checkpoint_key
            if attr.name == "VARIABLE_VALUE" and ".OPTIMIZER_SLOT" not in key:
                out[paths.get(node_id, key.removesuffix(SUFFIX))] = reader.get_tensor(key)
    return out


def our_name(path):
    """(delg-gpu name, how to lay the array out) of a model-relative object path, or None."""
    m = BLOCK.match(path)
    if m:
        stage, letter, layer, var = m.groups()
        if layer not in BLOCK_LAYER or var not in VARIABLE or not 2 <= int(stage) <= 5:
            return None
        return f"layer{int(stage) - 1}.{ord(letter) - ord('a')}.{BLOCK_LAYER[layer]}.{VARIABLE[var]}", var
    if path == "cosine_weights":
        return "arcface.weight", "dense"
    layer, _, var = path.rpartition("/")
    if layer not in LAYER or var not in VARIABLE:
        return None
    dense = layer in ("backbone/embedding_layer", "attn_classification")
    return f"{LAYER[layer]}.{VARIABLE[var]}", ("dense" if dense and var == "kernel" else var)


def convert(variables, depth="auto", gem_p=3.0, source="the checkpoint"):
    """(tensors, config, skipped paths) of a delg-gpu file from checkpoint
    variables (`source` names them in errors)."""
    anchors = [k for k in variables if k == "backbone/conv1/kernel" or k.endswith("/backbone/conv1/kernel")]
    if len(anchors) != 1:
        sample = ", ".join(sorted(variables)[:8])
        raise dw.ConversionError(f"expected one 'backbone/conv1/kernel' (a Keras DELG model), found {len(anchors)}; "
                                 f"the checkpoint holds: {sample} ...")
    root = anchors[0][: -len("backbone/conv1/kernel")]
    tensors, skipped, unmapped = {}, [], []
    for path, value in sorted(variables.items()):
        if not path.startswith(root):
            skipped.append(path)
            continue
        rel = path[len(root):]
        if SKIPPED.match(rel):
            skipped.append(path)
            continue
        mapped = our_name(rel)
        if mapped is None:
            unmapped.append(f"{path} {list(value.shape)}")
            continue
        name, layout = mapped
        value = np.asarray(value, dtype=np.float64)
        if layout == "kernel" and value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif layout == "dense":
            value = value.T
        if name in tensors:
            raise dw.ConversionError(f"two variables map to '{name}' (the second is {path})")
        tensors[name] = value
    if unmapped:
        raise dw.ConversionError("variables with no delg-gpu name (not the official Keras DELG model?):\n  "
                                 + "\n  ".join(unmapped[:30]))
    shapes = {n: t.shape for n, t in tensors.items()}
    blocks, width = dw.infer_backbone(tensors, shapes)
    dw.check_depth(depth, blocks)
    hints = {"whiten.weight": ": no embedding layer, a DELF rather than DELG model?",
             "autoencoder.encoder.weight": ": no autoencoder, trained with use_autoencoder=False?"}
    cfg = dw.model_config("delg", blocks, width, shapes, source, hints, gem_p=gem_p)
    dw.validate(tensors, cfg, source)
    return tensors, cfg, skipped


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dw.add_common_args(ap, "checkpoint prefix, checkpoint directory or SavedModel directory")
    a = ap.parse_args(argv)

    def produce():
        tensors, cfg, skipped = convert(read_checkpoint(a.src), a.depth, a.gem_p, a.src)
        note = f"skipped {len(skipped)} variables that are not network weights (optimizer state, counters, ArcFace scale)"
        return tensors, cfg, note if skipped else None

    dw.run(produce, a.out, a.score_threshold)

if __name__ == "__main__":
    main()
