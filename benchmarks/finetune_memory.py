"""Finetuning memory: peak RSS of a segmentation finetune on N and 10 N labelled images.

The streaming path (``finetune_segmentation(cfg)``: training batches from the shard stream,
validation read exactly once at the stored size) must not grow with the labelled set; the
in-memory path (``samples_from_shards`` + ``finetune_segmentation(cfg, train, val)``, what
finetuning did before it streamed) is measured beside it as the reference that does grow.

Each run is a fresh subprocess (peak RSS = ``ru_maxrss`` of the process; the loader workers' RSS,
when ``--workers`` > 0, sampled every 0.2 s), with the same steps, batch and image size for N and 10 N, so the runs read
the same number of training batches; validation covers the whole ``val`` split (10 % of the
groups), which is 10 times larger at 10 N. Shards are built here from the synthetic corpus at
``--size`` pixels (``--n`` and ``--factor * --n`` images) and kept in ``--out`` for reruns.

    python benchmarks/finetune_memory.py --n 200 --factor 10 --steps 20 --workers 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MB = 1024.0  # ru_maxrss is in KiB on Linux


def build(n: int, size: int, out: Path) -> Path:
    """Shards of an ``n``-image synthetic corpus (90 % train / 10 % val by group), built once."""
    shards = out / f"shards-{n}"
    if (shards / ".done").is_file():
        return shards
    from sonofm.datasets.build.orchestrate import build_shards
    from sonofm.datasets.sources.specs import SourceSpec
    from sonofm.datasets.synthetic import generate_corpus

    generate_corpus(out / f"corpus-{n}", n=n, seed=0, size=size, progress=False)
    build_shards([SourceSpec(adapter="synthetic", root=out / f"corpus-{n}")], shards, max_side=size,
                 samples_per_shard=100, split_fractions={"train": 0.9, "val": 0.1, "test": 0.0}, workers=2,
                 dedup=False, progress=False)
    (shards / ".done").write_text("")
    return shards


class _ChildSampler:
    """Largest RSS of this process's live children (the loader workers), sampled every 0.2 s.

    ``RUSAGE_CHILDREN`` would not do: it also holds a short-lived subprocess the imports start
    (about 700 MB, before any data is read), larger than the workers."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.me, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psutil

        while not self.stop.wait(0.2):
            for c in self.me.children(recursive=True):
                try:
                    self.peak = max(self.peak, c.memory_info().rss)
                except psutil.Error:
                    pass

    def close(self) -> float:
        self.stop.set()
        self.thread.join()
        return self.peak / 2**20


def child(args: argparse.Namespace) -> None:
    import torch

    from sonofm.config import FinetuneConfig, load_config
    from sonofm.finetune.seg_train import finetune_segmentation

    torch.set_num_threads(1)
    cfg = load_config(FinetuneConfig, None, [
        "task=seg", f"data.shards=[{args.shards}]", f"out_dir={args.run}", f"steps={args.steps}", "eval_every=0",
        f"data.img_size={args.img_size}", f"data.batch_size={args.batch}", f"data.num_workers={args.workers}",
        "data.shuffle_buffer=200", "seg.decoder_channels=32", f"checkpoint.every={args.steps}"])
    sampler = _ChildSampler()
    t0 = time.perf_counter()
    if args.child == "stream":
        rep = finetune_segmentation(cfg)
    else:
        from sonofm.finetune.data import samples_from_shards

        train = [s for s in samples_from_shards(args.shards, "train", binary_mask=True) if s.mask is not None]
        val = [s for s in samples_from_shards(args.shards, "val", binary_mask=True) if s.mask is not None]
        rep = finetune_segmentation(cfg, train, val)
    print(json.dumps({
        "mode": args.child, "n_train": rep["n_train"], "n_val": rep["n_val"], "dice": rep["final"]["dice"],
        "seconds": round(time.perf_counter() - t0, 1),
        "main_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MB, 1),
        "workers_mb": round(sampler.close(), 1),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="images of the 1x set")
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--size", type=int, default=256, help="stored image side (shard build max_side)")
    ap.add_argument("--img-size", type=int, default=128, help="training size")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--modes", default="stream,memory")
    ap.add_argument("--out", type=Path, default=Path("/tmp/sonofm-finetune-memory"))
    ap.add_argument("--json", type=Path, default=None, help="save the rows here")
    ap.add_argument("--child", choices=["stream", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--shards", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (args.n, args.n * args.factor):
        t0 = time.perf_counter()
        shards = build(n, args.size, args.out)
        print(f"{n} images: shards {shards} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--child", mode, "--shards", str(shards),
                   "--run", str(args.out / f"run-{mode}-{n}"), "--steps", str(args.steps), "--batch", str(args.batch),
                   "--img-size", str(args.img_size), "--workers", str(args.workers)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"{mode} at {n} images failed:\n{proc.stderr[-3000:]}")
            row = {"images": n, **json.loads(proc.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{args.steps} steps of {args.batch} at {args.img_size} px, stored side {args.size} px, "
          f"{args.workers} loader workers\n")
    print("| path | images | train / val | peak RSS main (MB) | largest worker RSS (MB) | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['images']} | {r['n_train']} / {r['n_val']} | {r['main_mb']:.0f} | "
              f"{r['workers_mb']:.0f} | {r['seconds']:.0f} |")
    for mode in args.modes.split(","):
        a, b = (r for r in rows if r["mode"] == mode)
        print(f"{mode}: peak RSS x{b['main_mb'] / a['main_mb']:.2f} for x{args.factor} the data "
              f"({b['main_mb'] - a['main_mb']:+.0f} MB)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
