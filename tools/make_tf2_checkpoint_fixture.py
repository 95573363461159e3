#!/usr/bin/env python3
"""The TF2 sources of tests/fixtures/convert/tf2_weights.safetensors, kept as
fixtures of `delg-gpu weights import` (tests/weights_import.rs), which reads
them without TensorFlow and must write the same bytes.

The model is test_converters.py's (the official Keras DELG classes at reduced
width, blocks [2, 1, 3, 1], seed 13), written by TensorFlow itself as

  tests/fixtures/convert_tf2/ckpt/          a training checkpoint with SGD
                                            momentum slots (checkpoint,
                                            ckpt-1.index, ckpt-1.data-00000-of-00001)
  tests/fixtures/convert_tf2/exported/variables/
                                            the variables of a SavedModel exported
                                            as the official export script does
                                            (saved_model.pb is not kept)

Each is converted with tools/convert_delg_tf2.py and checked to give the
committed tf2_weights.safetensors byte for byte, so all three stand for one model.

    pip install tensorflow-cpu tf-keras torch safetensors numpy
    python3 tools/make_tf2_checkpoint_fixture.py
"""
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import convert_delg_tf2  # noqa: E402
import test_converters as tc  # noqa: E402

FIXTURES = HERE.parent / "tests" / "fixtures"
OUT = FIXTURES / "convert_tf2"
REFERENCE = FIXTURES / "convert" / "tf2_weights.safetensors"


def main():
    tc.require_tf_keras()
    import tensorflow as tf

    image = tc.normalized(tc.fixed_u8(64, 96))
    blocks = [2, 1, 3, 1]
    model = tc.keras_delg(blocks, tc.WIDTH)
    model(tf.constant(image))
    tc.randomize_keras(model, 13)
    opt = tf.keras.optimizers.SGD(0.01, momentum=0.9)
    opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    if OUT.exists():
        shutil.rmtree(OUT)
    tf.train.Checkpoint(optimizer=opt, model=model).save(str(OUT / "ckpt" / "ckpt"))

    with tempfile.TemporaryDirectory() as t:
        t = pathlib.Path(t)
        model.save_weights(str(t / "w" / "delf-weights"))
        unbuilt = tc.keras_delg(blocks, tc.WIDTH)
        unbuilt.load_weights(str(t / "w" / "delf-weights"))
        tf.saved_model.save(tc.export_module(unbuilt), str(t / "exported"))
        shutil.copytree(t / "exported" / "variables", OUT / "exported" / "variables")
        for src in (OUT / "ckpt", t / "exported"):
            convert_delg_tf2.main([str(src), str(t / "o.safetensors")])
            same = (t / "o.safetensors").read_bytes() == REFERENCE.read_bytes()
            assert same, f"{src} converts to other bytes than {REFERENCE}"
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"fixtures in {OUT}: {total / 1024:.0f} KiB, each converting to {REFERENCE.name}")


if __name__ == "__main__":
    main()
