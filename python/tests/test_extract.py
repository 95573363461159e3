"""Extraction through the package: arrays, equality with the CLI, folders."""

import os
import signal
import threading
import time

import numpy as np
import pytest

import delg_gpu
from conftest import IMAGES, generated_image

KEYS = ["global", "descriptors", "locations", "scales", "attention"]
NPY = [
    "global.npy",
    "local_offsets.npy",
    "local_descriptors.npy",
    "local_locations.npy",
    "local_scales.npy",
    "local_attention.npy",
]


def check_features(f, local_dim):
    assert sorted(f) == sorted(KEYS)
    for key in KEYS:
        assert f[key].dtype == np.float32, key
        assert np.isfinite(f[key]).all(), f"{key} holds NaN or infinity"
    n = len(f["scales"])
    assert f["global"].ndim == 1 and f["global"].size > 0
    assert f["descriptors"].shape == (n, local_dim)
    assert f["locations"].shape == (n, 2)
    assert f["attention"].shape == (n,)
    assert abs(float(np.linalg.norm(f["global"])) - 1.0) < 1e-4


def test_array_gives_float32_arrays_of_consistent_shapes(extractor):
    assert (extractor.arch, extractor.local_dim) == ("delg", 16)
    f = extractor.extract(generated_image(0))
    check_features(f, extractor.local_dim)
    assert len(f["scales"]) > 0, "a blob image yields keypoints"


def test_path_and_array_give_the_same_features(extractor, images):
    folder, pixels = images
    for name in ["img00.png", "img03.png"]:
        from_file = extractor.extract(folder / name)
        from_array = extractor.extract(pixels[name])
        # str paths too, and non-contiguous arrays are copied, not refused.
        from_str = extractor.extract(str(folder / name))
        strided = np.ascontiguousarray(pixels[name][:, ::-1])[:, ::-1]
        assert not strided.flags["C_CONTIGUOUS"]
        from_view = extractor.extract(strided)
        for key in KEYS:
            assert np.array_equal(from_file[key], from_array[key]), key
            assert np.array_equal(from_file[key], from_str[key]), key
            assert np.array_equal(from_file[key], from_view[key]), key


def test_extract_equals_the_cli_on_20_images(extractor, images, cli_features):
    folder, _ = images
    out, cli_seconds = cli_features
    cli_set = delg_gpu.FeatureSet(out)
    assert cli_set.ids == sorted(f"img{i:02d}.png" for i in range(IMAGES))
    start = time.perf_counter()
    ours = [extractor.extract(folder / name) for name in cli_set.ids]
    py_seconds = (time.perf_counter() - start) / IMAGES
    for i, f in enumerate(ours):
        check_features(f, cli_set.local_dim)
        theirs = cli_set[i]
        for key in KEYS:
            assert np.array_equal(f[key], theirs[key]), f"{cli_set.ids[i]}: {key} differs"
    print(
        f"\ntime per image, 20 images, tiny model: Extractor.extract {py_seconds * 1e3:.1f} ms, "
        f"delg-gpu extract {cli_seconds * 1e3:.1f} ms (whole command, start-up included)"
    )


def test_extract_folder_writes_the_cli_folder(weights, images, cli_features, workdir):
    folder, _ = images
    cli_out, _ = cli_features
    out = workdir / "py_features"
    calls = []
    summary = delg_gpu.Extractor(weights).extract_folder(
        folder, out, progress=lambda done, pending: calls.append((done, pending))
    )
    assert summary["images"] == IMAGES and summary["extracted"] == IMAGES
    assert (summary["failed"], summary["resumed"]) == (0, 0)
    assert calls == [(i, IMAGES) for i in range(1, IMAGES + 1)]
    assert (out / "ids.txt").read_bytes() == (cli_out / "ids.txt").read_bytes()
    for name in NPY:
        assert (out / name).read_bytes() == (cli_out / name).read_bytes(), name
    # A second run resumes everything.
    again = delg_gpu.Extractor(weights).extract_folder(folder, out, progress=False)
    assert (again["extracted"], again["resumed"]) == (0, IMAGES)


def test_a_raising_progress_callback_stops_and_the_rerun_resumes(extractor, images, workdir):
    folder, _ = images
    out = workdir / "stopped"

    class Stop(Exception):
        pass

    def stop_after_five(done, pending):
        if done == 5:
            raise Stop()

    with pytest.raises(Stop):
        extractor.extract_folder(folder, out, progress=stop_after_five)
    summary = extractor.extract_folder(folder, out, progress=False)
    assert (summary["resumed"], summary["extracted"]) == (5, IMAGES - 5)


def test_bad_images_are_skipped_by_folders_and_raise_alone(extractor, images, workdir):
    folder = workdir / "with_bad"
    folder.mkdir()
    (folder / "good.png").write_bytes((images[0] / "img00.png").read_bytes())
    (folder / "broken.png").write_bytes(b"not a png at all")
    summary = extractor.extract_folder(folder, workdir / "with_bad_out", progress=False)
    assert (summary["extracted"], summary["failed"]) == (1, 1)
    errors = (workdir / "with_bad_out" / "errors.txt").read_text()
    assert errors.startswith("broken.png\t")
    with pytest.raises(delg_gpu.Error, match="broken.png"):
        extractor.extract(folder / "broken.png")


def test_the_gil_is_released_while_the_gpu_works(extractor):
    image = generated_image(2)
    big = np.tile(image, (4, 4, 1))  # 288 x 288: long enough to measure
    start = time.perf_counter()
    extractor.extract(big)
    alone = time.perf_counter() - start

    done = threading.Event()

    def work():
        try:
            extractor.extract(big)
        finally:
            done.set()

    worker = threading.Thread(target=work)
    longest_gap, last = 0.0, time.perf_counter()
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        longest_gap, last = max(longest_gap, now - last), now
    worker.join()
    # Holding the GIL would stall this loop for the whole extraction.
    assert longest_gap < 0.5 * alone, (longest_gap, alone)


def test_tiny_random_is_the_model_write_tiny_weights_writes(weights, extractor):
    image = generated_image(6)
    in_memory = delg_gpu.Extractor.tiny_random(seed=7).extract(image)
    from_file = extractor.extract(image)  # weights: write_tiny_weights(seed=7)
    for key in KEYS:
        assert np.array_equal(in_memory[key], from_file[key]), key
    other_seed = delg_gpu.Extractor.tiny_random(seed=8).extract(image)
    assert not np.array_equal(other_seed["global"], from_file["global"])


def test_an_unknown_adapter_is_an_error_listing_the_adapters(weights):
    with pytest.raises(delg_gpu.Error, match="no-such-adapter.*available adapters"):
        delg_gpu.Extractor(weights, adapter="no-such-adapter")


def test_a_signal_stops_a_folder_run_between_images(extractor, images, workdir):
    folder, _ = images
    out = workdir / "signalled"

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted()

    # SIGUSR1 rather than Ctrl-C's SIGINT: the same path (Python's handlers
    # run between images), without risking pytest's own handler.
    previous = signal.signal(signal.SIGUSR1, handler)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(Interrupted):
            extractor.extract_folder(folder, out, progress=False)
            time.sleep(5)  # a run that ignored the signal is caught below
    finally:
        timer.join()
        signal.signal(signal.SIGUSR1, previous)
    summary = extractor.extract_folder(folder, out, progress=False)
    assert summary["resumed"] + summary["extracted"] == IMAGES
    assert summary["extracted"] > 0, "the first run was not stopped before its end"
