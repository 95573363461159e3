#!/usr/bin/env python3
"""The extraction soak of issue 14: generates a folder of images of mixed
sizes and formats, runs `delg-gpu extract` on it and samples the process's
resident memory each time the journal reaches another hundred images.

    python3 tools/soak.py --bin target/release/delg-gpu --weights tiny.safetensors \
        --work /tmp/soak --images 2000

Prints a Markdown table (images, RSS MiB) and the growth after image 200.
Needs Pillow. `--generate-only` writes the images and stops (also used to
make a small folder for before/after output comparisons)."""
import argparse
import pathlib
import struct
import subprocess
import sys
import time

from PIL import Image

SIZES = [(64, 48), (96, 128), (160, 120), (200, 150), (240, 320), (300, 225), (320, 240), (384, 288)]
FORMATS = ["jpg", "png", "webp", "bmp", "gif", "tif"]
# Journal records: magic (u32), payload length (u64), checksum (u64), payload.
RECORD_HEADER = 20


def generate(folder: pathlib.Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        ext = FORMATS[(i // len(SIZES)) % len(FORMATS)]
        path = folder / f"{i // 500:02d}" / f"img{i:05d}.{ext}"
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        # A different region of the Mandelbrot set per image: textured, and
        # not two images alike.
        cx, cy = -0.75 + (i % 37) * 0.01, 0.1 + (i % 41) * 0.005
        extent = (cx - 1.2, cy - 0.9, cx + 1.2, cy + 0.9)
        gray = Image.effect_mandelbrot((w, h), extent, 40 + i % 60)
        img = Image.merge("RGB", (gray, gray.rotate(180), gray.transpose(Image.FLIP_LEFT_RIGHT)))
        if ext == "gif":
            img = img.convert("P")
        img.save(path)


def journal_records(path: pathlib.Path) -> int:
    """Complete records at the start of the journal (torn tail ignored)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    n, at = 0, 0
    while at + RECORD_HEADER <= len(data):
        (length,) = struct.unpack_from("<Q", data, at + 4)
        if at + RECORD_HEADER + length > len(data):
            break
        at += RECORD_HEADER + length
        n += 1
    return n


def rss_mib(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/delg-gpu")
    ap.add_argument("--weights", required=False)
    ap.add_argument("--work", type=pathlib.Path, required=True)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--generate-only", action="store_true")
    args = ap.parse_args()
    images = args.work / "images"
    generate(images, args.images)
    if args.generate_only:
        return
    out = args.work / "out"
    journal = out / "journal.bin"
    if journal.exists():
        sys.exit(f"{out} holds a previous run: delete it first")
    cmd = ["nice", "-n", "10", args.bin, "extract", str(images), "--weights", args.weights,
           "--out", str(out), "--quiet"]
    start = time.time()
    proc = subprocess.Popen(cmd)
    samples: list[tuple[int, float]] = []
    next_mark, peak_end = args.every, 0.0
    while proc.poll() is None:
        done = journal_records(journal)
        rss = rss_mib(proc.pid)
        if rss is not None and done >= next_mark:
            samples.append((next_mark, rss))
            print(f"{next_mark:5d} images  {rss:7.1f} MiB  {time.time() - start:7.0f} s", flush=True)
            next_mark += args.every
        if rss is not None and done >= args.images:
            peak_end = max(peak_end, rss)  # the final write
        time.sleep(0.5)
    print(f"exit code {proc.returncode}, {time.time() - start:.0f} s; final write peak {peak_end:.1f} MiB")
    print("\n| images | RSS MiB |\n| ---: | ---: |")
    for n, rss in samples:
        print(f"| {n} | {rss:.0f} |")
    base = [rss for n, rss in samples if n == 200]
    if base:
        worst = max(rss for n, rss in samples if n >= 200)
        print(f"\ngrowth after image 200: {100 * (worst / base[0] - 1):+.1f} % (max {worst:.0f} MiB vs {base[0]:.0f} MiB)")


if __name__ == "__main__":
    main()
