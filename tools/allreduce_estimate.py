#!/usr/bin/env python3
"""The scaling estimate of BENCHMARKS.md ("Bucketed, overlapped all-reduce
under MPI"): the step time of data-parallel R50 DELG training on N GPUs,
compute plus the all-reduce that the bucketed overlap does not hide, from a
GPU-class compute estimate and the link of a ring all-reduce. An estimate,
not a measurement: every assumption is an argument or a constant below.

    python3 tools/allreduce_estimate.py \\
        --buckets 25@0.37 25@0.43 25@0.54 25@0.98 9.7@1.0 --gflop 970.7

Buckets are MiB@share: the bucket's size and the share of the micro-batch's
FLOPs done when its sums are final, as `delg-gpu train` under mpirun prints
them on rank 0.
"""

import argparse

MIB = 1 << 20
PCIE4 = 25e9  # bytes/s, effective, one x16 link
GPUS = {
    "A100-class, 40 % of 19.5 TFLOP/s FP32": 19.5e12 * 0.40,
    "RTX 4090-class, 25 % of 82.6 TFLOP/s FP32": 82.6e12 * 0.25,
}
LINKS = [
    ("8 GPUs, 1 node, PCIe 4 (25 GB/s)", 8, PCIE4),
    ("4 nodes x 8 GPUs, 100 GbE (11 GB/s)", 32, 11e9),
    ("4 nodes x 8 GPUs, IB HDR (23 GB/s)", 32, 23e9),
]


def bucket(text):
    mib, share = text.split("@")
    return float(mib), float(share)


def step_times(buckets, compute, ranks, link):
    """(one all-reduce after the backward, bucketed, all-reduce, hidden share)
    in seconds for one GPU's step."""
    total = sum(b for b, _ in buckets) * MIB
    ring = 2 * (ranks - 1) / ranks * total / link
    # Host staging: every bucket is read back while the device waits, and
    # the reduced sums are uploaded after the backward pass.
    readback = upload = total / PCIE4
    one_shot = compute + readback + ring + upload
    end, read_so_far = 0.0, 0.0
    for mib, share in buckets:
        read_so_far += mib * MIB / PCIE4
        start = max(share * compute + read_so_far, end)
        end = start + ring * mib * MIB / total
    device_done = compute + readback
    exposed = max(0.0, end - device_done)
    return one_shot, device_done + exposed + upload, ring, 1 - exposed / ring


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--buckets", nargs="+", type=bucket, required=True)
    ap.add_argument("--gflop", type=float, required=True, help="micro-batch FLOPs")
    a = ap.parse_args()
    buckets = sorted(a.buckets, key=lambda b: b[1])
    for gpu, flops in GPUS.items():
        compute = a.gflop * 1e9 / flops
        print(f"{gpu}: step compute {compute * 1e3:.0f} ms")
        for name, ranks, link in LINKS:
            one, bucketed, ring, hidden = step_times(buckets, compute, ranks, link)
            print(
                f"  {name}: ring all-reduce {ring * 1e3:.1f} ms; "
                f"one all-reduce {one * 1e3:.0f} ms ({compute / one:.0%}), "
                f"bucketed {bucketed * 1e3:.0f} ms ({compute / bucketed:.0%}, "
                f"{hidden:.0%} of the all-reduce hidden)"
            )


if __name__ == "__main__":
    main()
