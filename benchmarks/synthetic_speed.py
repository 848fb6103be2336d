"""Throughput of the synthetic corpus generator (images/s on one core, files written included).

    python benchmarks/synthetic_speed.py [--n 300] [--size 256] [--workers 1]

Prints wall-clock images/s and CPU images/s (process CPU time of this single process, the figure
that does not depend on what else runs on a shared machine); the target is about 100 images/s
on one core at 256 px.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from sonofm.datasets.synthetic import generate_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sonofm-synth-bench-"))
    try:
        generate_corpus(tmp / "warm", n=12, seed=args.seed + 1, size=args.size, progress=False)  # caches, imports
        w0, c0 = time.perf_counter(), time.process_time()
        generate_corpus(tmp / "corpus", n=args.n, seed=args.seed, size=args.size, workers=args.workers, progress=False)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        mb = sum(f.stat().st_size for f in (tmp / "corpus").rglob("*.png")) / 2**20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"n={args.n} size={args.size} workers={args.workers}: {args.n / wall:.1f} images/s wall, "
          f"{wall:.2f} s; {mb / args.n * 1024:.0f} KiB per image+mask")
    if args.workers == 1:
        print(f"CPU time of the process: {cpu:.2f} s -> {args.n / cpu:.1f} images/s per core")


if __name__ == "__main__":
    main()
