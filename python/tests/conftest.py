"""Shared fixtures: a tiny random model, 20 generated PNG images, and the
command-line binary whose output the package must reproduce."""

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

import delg_gpu

REPO = Path(__file__).resolve().parents[2]
IMAGES = 20


def write_png(path: Path, rgb: np.ndarray) -> None:
    """A minimal RGB PNG writer, so the tests need neither Pillow nor the
    engine to make their inputs."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def generated_image(i: int) -> np.ndarray:
    """Image i: sizes vary (several plans), half smooth blobs, half noise."""
    rng = np.random.default_rng(1000 + i)
    h, w = 64 + 8 * (i % 5), 72 + 12 * (i % 4)
    if i % 2:
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float64)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 20)
        img += rng.uniform(0, 255, 3) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / r**2)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("delg")


@pytest.fixture(scope="session")
def weights(workdir) -> Path:
    path = workdir / "tiny.safetensors"
    delg_gpu.write_tiny_weights(path, seed=7)
    return path


@pytest.fixture(scope="session")
def images(workdir):
    """(folder, {file name: pixels}) of the 20 images."""
    folder = workdir / "images"
    folder.mkdir()
    pixels = {}
    for i in range(IMAGES):
        name = f"img{i:02d}.png"
        pixels[name] = generated_image(i)
        write_png(folder / name, pixels[name])
    return folder, pixels


@pytest.fixture(scope="session")
def extractor(weights):
    return delg_gpu.Extractor(weights)


@pytest.fixture(scope="session")
def cli() -> str:
    """The delg-gpu binary: $DELG_GPU_BIN, else this checkout's release build."""
    path = os.environ.get("DELG_GPU_BIN") or str(REPO / "target" / "release" / "delg-gpu")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        found = shutil.which("delg-gpu")
        assert found, (
            f"no delg-gpu binary at {path}: run `cargo build --release` at the "
            "repository root or set DELG_GPU_BIN"
        )
        path = found
    return path


@pytest.fixture(scope="session")
def cli_features(cli, weights, images, workdir):
    """The CLI's feature folder of the 20 images, and its seconds per image."""
    import time

    out = workdir / "cli_features"
    start = time.perf_counter()
    run = subprocess.run(
        [cli, "extract", str(images[0]), "--weights", str(weights), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    assert run.returncode == 0, f"delg-gpu extract failed: {run.stderr}"
    return out, seconds / IMAGES
