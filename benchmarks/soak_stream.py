"""Soak test of the training stream: many epochs through ``make_train_loader`` with persistent workers.

A pretraining run streams the same shards for days; memory that grows a little per shard or per
round, a file handle left open per tar, or a worker left behind when the loader goes away all end
the run eventually. This script streams ``--epochs`` epochs' worth of samples (an epoch = the
split's sample count) through one loader iterator and samples, every ``--every`` batches, the RSS
of the main process and of each DataLoader worker (psutil; plus the workers' USS, the memory that
is theirs alone, since forked workers share pages with the parent), and the open file
descriptors of each. After the loader is deleted it lists child processes that outlived it.

Shards: ``--shards DIR``, or built here into a temporary folder from ``--source synthetic``
(``--n`` generated images, default 500) or ``--source busi`` (``../shared/data/busi``), at
``--max-side`` pixels.

    python benchmarks/soak_stream.py --epochs 20 --workers 2            # synthetic, ~500 samples
    python benchmarks/soak_stream.py --source busi --epochs 20 --workers 2

Prints a table per epoch and a verdict: growth of main and worker memory from epoch 2 to the last
epoch (MB and %), fd growth, leaked processes. ``--json PATH`` saves every sample.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from sonofm.datasets.stream.loader import StreamSpec, corrupt_counts, discover_shards, make_train_loader

MB = 1024 * 1024


def build(source: str, n: int, max_side: int, out: Path) -> Path:
    """Shards of ``source`` (synthetic corpus of ``n`` images, or BUSI) with every sample in ``train``."""
    from sonofm.datasets.build.orchestrate import build_shards
    from sonofm.datasets.sources.specs import SourceSpec

    if source == "synthetic":
        from sonofm.datasets.synthetic import generate_corpus

        generate_corpus(out / "corpus", n=n, seed=0, size=max_side, progress=False)
        specs = [SourceSpec(adapter="synthetic", root=out / "corpus")]
    elif source == "busi":
        from sonofm.paths import shared_data_dir

        specs = [SourceSpec(adapter="busi", root=shared_data_dir() / "busi")]
    else:
        raise SystemExit(f"--source must be synthetic or busi, got {source!r}")
    build_shards(specs, out / "shards", max_side=max_side, samples_per_shard=100,
                 split_fractions={"train": 1.0, "val": 0.0, "test": 0.0}, workers=2, dedup=False, progress=False)
    return out / "shards"


def _proc_stats(p: psutil.Process, uss: bool) -> dict[str, float]:
    try:
        with p.oneshot():
            out = {"pid": p.pid, "rss_mb": p.memory_info().rss / MB, "fds": p.num_fds()}
            if uss:
                out["uss_mb"] = p.memory_full_info().uss / MB
        return out
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return {"pid": p.pid, "rss_mb": float("nan"), "fds": -1}


def snapshot(me: psutil.Process, workers: list[psutil.Process], uss: bool) -> dict[str, Any]:
    return {"main": _proc_stats(me, uss=False), "workers": [_proc_stats(w, uss) for w in workers]}


def _workers_of(iterator: Any, me: psutil.Process) -> list[psutil.Process]:
    """The DataLoader's worker processes (from its iterator; else every child process)."""
    pids = [w.pid for w in getattr(iterator, "_workers", [])]
    if pids:
        return [psutil.Process(pid) for pid in pids]
    return me.children(recursive=True)


def soak(shards: Path, epochs: int, workers: int, batch_size: int, img_size: int, every: int,
         shuffle_buffer: int) -> dict[str, Any]:
    me = psutil.Process(os.getpid())
    children_before = {p.pid for p in me.children(recursive=True)}
    fds_before = me.num_fds()
    per_epoch = sum(n for _, n in discover_shards(str(shards), "train"))
    batches_per_epoch = max(1, per_epoch // batch_size)
    total = batches_per_epoch * epochs
    loader = make_train_loader(StreamSpec([str(shards)]), batch_size=batch_size, img_size=img_size, seed=0,
                               num_workers=workers, shuffle_buffer=shuffle_buffer, persistent_workers=True)
    it = iter(loader)
    first = next(it)  # workers are up
    procs = _workers_of(it, me)
    samples: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    t0 = t_epoch = time.perf_counter()
    for b in range(1, total):
        batch = next(it)
        assert batch["image"].shape == first["image"].shape
        if b % every == 0:
            samples.append({"batch": b, **snapshot(me, procs, uss=False)})
        if (b + 1) % batches_per_epoch == 0:
            epoch = (b + 1) // batches_per_epoch
            snap = snapshot(me, procs, uss=True)
            now = time.perf_counter()
            rows.append({"epoch": epoch, "samples": (b + 1) * batch_size,
                         "img_per_s": batches_per_epoch * batch_size / (now - t_epoch), **snap})
            t_epoch = now
            print(_row(rows[-1]), flush=True)
    elapsed = time.perf_counter() - t0
    corrupt = corrupt_counts(loader)
    worker_pids = [p.pid for p in procs]
    del it, batch, first
    del loader
    gc.collect()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and _alive(p) for p in worker_pids):
        time.sleep(0.1)
    leaked = [p for p in me.children(recursive=True) if p.pid not in children_before and p.is_running()]
    fds_after = me.num_fds()
    # A second loader's life: fds kept once (e.g. multiprocessing's shared-memory arena) must not add up.
    again = make_train_loader(StreamSpec([str(shards)]), batch_size=batch_size, img_size=img_size, seed=1,
                              num_workers=workers, shuffle_buffer=shuffle_buffer, persistent_workers=True)
    it2 = iter(again)
    for _ in range(3):
        next(it2)
    del it2, again
    gc.collect()
    time.sleep(1.0)
    return {"rows": rows, "samples": samples, "elapsed_s": elapsed, "per_epoch": per_epoch,
            "batches": total, "corrupt": corrupt, "fds_before": fds_before, "fds_after": fds_after,
            "fds_after_second_loader": me.num_fds(),
            "leaked": [{"pid": p.pid, "cmdline": " ".join(p.cmdline()[:4])} for p in leaked],
            "workers_alive_after": [p for p in worker_pids if _alive(p)]}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _row(r: dict[str, Any]) -> str:
    w = r["workers"]
    rss = " ".join(f"{x['rss_mb']:7.1f}" for x in w)
    uss = " ".join(f"{x.get('uss_mb', float('nan')):7.1f}" for x in w)
    fds = " ".join(f"{x['fds']:3d}" for x in w)
    return (f"{r['epoch']:5d} {r['samples']:8d} {r['img_per_s']:7.0f} {r['main']['rss_mb']:9.1f} "
            f"{r['main']['fds']:4d} | {rss} | {uss} | {fds}")


def verdict(res: dict[str, Any]) -> list[str]:
    rows = res["rows"]
    if len(rows) < 3:
        return ["too few epochs for a verdict (need 3 or more)"]
    a, z = rows[1], rows[-1]  # epoch 2 (after warm-up) vs last

    def growth(x: float, y: float) -> str:
        return f"{y - x:+.1f} MB ({100 * (y - x) / x:+.1f} %)"

    lines = [f"main RSS, epoch {a['epoch']} -> {z['epoch']}: {a['main']['rss_mb']:.1f} -> "
             f"{z['main']['rss_mb']:.1f} MB, {growth(a['main']['rss_mb'], z['main']['rss_mb'])}"]
    for i, (wa, wz) in enumerate(zip(a["workers"], z["workers"])):
        lines.append(f"worker {i} RSS: {wa['rss_mb']:.1f} -> {wz['rss_mb']:.1f} MB, "
                     f"{growth(wa['rss_mb'], wz['rss_mb'])}; USS {wa['uss_mb']:.1f} -> {wz['uss_mb']:.1f} MB, "
                     f"{growth(wa['uss_mb'], wz['uss_mb'])}")
    h = rows[len(rows) // 2 - 1]  # second half only: a leak keeps growing there, a warm-up does not
    lines.append(f"second half, epoch {h['epoch']} -> {z['epoch']}: main "
                 f"{growth(h['main']['rss_mb'], z['main']['rss_mb'])}; workers RSS "
                 + ", ".join(growth(wh["rss_mb"], wz["rss_mb"]) for wh, wz in zip(h["workers"], z["workers"]))
                 + "; USS " + ", ".join(growth(wh["uss_mb"], wz["uss_mb"]) for wh, wz in zip(h["workers"], z["workers"])))
    fd_main = z["main"]["fds"] - a["main"]["fds"]
    fd_workers = [wz["fds"] - wa["fds"] for wa, wz in zip(a["workers"], z["workers"])]
    lines.append(f"open fds, epoch {a['epoch']} -> {z['epoch']}: main {fd_main:+d}, workers {fd_workers}; "
                 f"main before the loader {res['fds_before']}, after deleting it {res['fds_after']}, "
                 f"after a second loader's life {res['fds_after_second_loader']}")
    lines.append(f"processes left after deleting the loader: {len(res['leaked'])} "
                 f"{res['leaked'] if res['leaked'] else ''}(workers still alive: {res['workers_alive_after']})")
    lines.append(f"corrupt samples skipped: {res['corrupt']['total']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=Path, help="shard folder (train split); built here when absent")
    ap.add_argument("--source", default="synthetic", help="synthetic | busi (when --shards is not given)")
    ap.add_argument("--n", type=int, default=500, help="synthetic images to generate")
    ap.add_argument("--max-side", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--shuffle-buffer", type=int, default=1000)
    ap.add_argument("--every", type=int, default=10, help="sample memory every N batches")
    ap.add_argument("--json", type=Path, help="save all samples here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="sonofm-soak-") as tmp:
        shards = args.shards
        if shards is None:
            t = time.perf_counter()
            shards = build(args.source, args.n, args.max_side, Path(tmp))
            print(f"built {args.source} shards in {time.perf_counter() - t:.1f} s: {shards}")
        print(f"soak: {shards}, {args.epochs} epochs, {args.workers} workers, batch {args.batch_size}, "
              f"img {args.img_size}, python {sys.version.split()[0]}, torch {torch.__version__}")
        w = " ".join(f"{'w' + str(i):>7}" for i in range(args.workers))
        print(f"epoch  samples   img/s  RSS main  fds | RSS {w} | USS {w} | fds workers")
        res = soak(shards, args.epochs, args.workers, args.batch_size, args.img_size, args.every,
                   args.shuffle_buffer)
    print(f"{res['batches']} batches ({res['per_epoch']} samples per epoch) in {res['elapsed_s']:.1f} s")
    for line in verdict(res):
        print("verdict:", line)
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in res.items()}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
