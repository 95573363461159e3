#!/usr/bin/env python3
"""Sums a `DELG_DEBUG=2` log (stderr of any delg-gpu job) per node kind.

Each `run:` block lists one graph run's nodes with their device times. A
training step runs two graphs (the micro-batch's forward and backward, then
the update), so `--last 2` picks the last step. Node names become kinds by
dropping their shapes ("conv2d 3x3/2 256->256" counts as "conv2d 3x3/2");
`--coarse` keeps only the op name.

    DELG_DEBUG=2 delg-gpu train ... --steps 2 2> profile.log
    python3 tools/profile_by_kind.py profile.log --last 2
"""
import argparse
import collections
import re
import sys

NODE = re.compile(r"^\s+\d+\s+(.+?)\s+([\d.]+) ms\s+([\d.]+) GFLOP/s")


def runs(lines):
    current = None
    for line in lines:
        if line.startswith("run:"):
            if current is not None:
                yield current
            current = []
        elif current is not None:
            m = NODE.match(line)
            if m:
                current.append((m.group(1), float(m.group(2)), float(m.group(3))))
            elif line.strip() and not line.startswith(" "):
                yield current
                current = None
    if current is not None:
        yield current


def kind(name, coarse):
    if coarse:
        return name.split()[0]
    return re.sub(r"\s+\d+->\d+$", "", name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--last", type=int, default=2, help="runs to sum, from the end (default 2: one training step)")
    ap.add_argument("--coarse", action="store_true", help="group by op name only")
    args = ap.parse_args()
    with open(args.log, encoding="utf-8", errors="replace") as f:
        all_runs = list(runs(f))
    if len(all_runs) < args.last:
        sys.exit(f"{args.log}: {len(all_runs)} profiled runs, fewer than --last {args.last}; was DELG_DEBUG=2 set?")
    totals = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for run in all_runs[-args.last:]:
        for name, ms, gflops in run:
            t = totals[kind(name, args.coarse)]
            t[0] += 1
            t[1] += ms / 1e3
            t[2] += gflops * ms / 1e3
    total = sum(t[1] for t in totals.values())
    print("| op kind | nodes | s | share | GFLOP |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k, (n, s, gflop) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        print(f"| {k} | {n} | {s:.2f} | {100 * s / total:.1f} % | {gflop:.1f} |")
    print(f"| **total** | {sum(t[0] for t in totals.values())} | **{total:.2f}** | | {sum(t[2] for t in totals.values()):.1f} |")


if __name__ == "__main__":
    main()
