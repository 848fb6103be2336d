"""Data throughput: decode-only limit vs the sonofm stream vs a per-file folder loader, and stream RSS.

One run, the same images for all three readers:

(a) decode-only: read the shard tars and decode every PNG (image, mask, field), no transform,
    one process: the ceiling of what a worker can deliver;
(b) the sonofm training stream (``make_train_loader``) with augmentation and ``--num-workers``;
(c) a plain folder loader reading the original files one by one (image + its mask files) and
    applying the same augmentation per sample, as UniUSNet-style code does, same workers.

Then peak RSS of the stream reading N and 10 N samples (each in a fresh subprocess; resampled
shards, so 10 N reads about ten times as many shards): it must not grow with the data read.

Shards come from ``--shards DIR`` or are built from ``--originals`` (BUSI by default) with
``sonofm.datasets.build.orchestrate.build_shards`` (or a minimal writer of this script when that is missing).

    python benchmarks/data_throughput.py --num-workers 2 --samples 1000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from sonofm.datasets.stream.augment import AugmentConfig, augment_sample
from sonofm.datasets.stream.loader import StreamSpec, discover_shards, make_train_loader
from sonofm.paths import shared_data_dir

MASK_RE = re.compile(r"_mask(_\d+)?$")


def originals_of(root: Path) -> list[tuple[Path, list[Path]]]:
    """(image, mask files) of a folder of PNGs; masks are ``<name>_mask*.png`` next to the image (BUSI)."""
    images = sorted(p for p in root.rglob("*.png") if not MASK_RE.search(p.stem))
    return [(p, sorted(p.parent.glob(f"{glob_escape(p.stem)}_mask*.png"))) for p in images]


def glob_escape(s: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", s)


def minimal_shards(pairs: list[tuple[Path, list[Path]]], out: Path, per_shard: int) -> None:
    """Fallback writer: original PNG bytes (as grayscale), merged mask, JSON; all in split ``train``."""
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, len(pairs), per_shard):
        name = f"bench-train-{s // per_shard:06d}.tar"
        with tarfile.open(out / f".{name}.tmp", "w") as tar:
            for i, (img, masks) in enumerate(pairs[s : s + per_shard]):
                key = f"bench-{s + i:06d}"
                gray = np.asarray(Image.open(img).convert("L"))
                files = {"png": gray}
                if masks:
                    files["mask.png"] = np.maximum.reduce(
                        [(np.asarray(Image.open(m).convert("L")) > 127).astype(np.uint8) for m in masks])
                for suffix, arr in files.items():
                    buf = io.BytesIO()
                    Image.fromarray(arr).save(buf, format="PNG")
                    add(tar, f"{key}.{suffix}", buf.getvalue())
                add(tar, f"{key}.json", json.dumps({"source": "bench", "path": str(img)}).encode())
        os.replace(out / f".{name}.tmp", out / name)
        shards.append({"file": name, "split": "train", "count": len(pairs[s : s + per_shard])})
    (out / "bench.index.json").write_text(json.dumps({"source": "bench", "shards": shards}))


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build(originals: Path, out: Path, per_shard: int, own_writer: bool) -> str:
    if not own_writer:
        try:
            from sonofm.datasets.build.orchestrate import build_shards
        except ImportError:
            own_writer = True
    if own_writer:
        minimal_shards(originals_of(originals), out, per_shard)
        return "minimal writer of this benchmark (original pixels, split 'train' = all)"
    build_shards([f"busi:{originals}"], out, samples_per_shard=per_shard, workers=2, progress=False)
    return "sonofm.datasets.build.orchestrate.build_shards (field crop, max_side 512, group splits)"


def decode_only(shards: list[tuple[str, int]], limit: int) -> tuple[int, float, tuple[float, float]]:
    """Read and decode every PNG member, no transform; returns (images, seconds, mean H x W)."""
    n, sizes, t0 = 0, [], time.perf_counter()
    while n < limit:
        for url, _ in shards:
            with tarfile.open(url, "r|") as tar:
                for m in tar:
                    if not m.isreg() or not m.name.endswith(".png"):
                        continue
                    arr = np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())))
                    if m.name.count(".") == 1:  # the image itself (not mask.png / field.png)
                        n += 1
                        sizes.append(arr.shape[:2])
                    tar.members = []
            if n >= limit:
                break
    return n, time.perf_counter() - t0, tuple(np.mean(sizes, axis=0))


class FolderDataset(Dataset):
    """What per-file loaders do: open the original image and masks, then transform, every time."""

    def __init__(self, pairs: list[tuple[Path, list[Path]]], img_size: int, aug: AugmentConfig) -> None:
        self.pairs, self.img_size, self.aug = pairs, img_size, aug

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img, masks = self.pairs[i]
        image = np.asarray(Image.open(img).convert("L"))
        mask = (np.maximum.reduce([(np.asarray(Image.open(m).convert("L")) > 127).astype(np.uint8) for m in masks])
                if masks else np.zeros_like(image))
        out = augment_sample(image, None, mask, self.img_size, np.random.default_rng(), self.aug)
        return {"image": out["image"], "field": out["field"], "mask": out["mask"]}


def timed(batches, n_samples: int) -> tuple[int, float, float]:
    """(samples, seconds after the first batch, seconds to the first batch)."""
    t0 = time.perf_counter()
    it = iter(batches)
    first = next(it)
    t1 = time.perf_counter()
    n = len(first["image"])
    for batch in it:
        n += len(batch["image"])
        if n >= n_samples:
            break
    return n - len(first["image"]), time.perf_counter() - t1, t1 - t0


def stream_loader(shards_dir: str, args: argparse.Namespace, persistent: bool = True) -> DataLoader:
    return make_train_loader(StreamSpec([shards_dir], split=args.split), batch_size=args.batch_size,
                             img_size=args.img_size, seed=0, num_workers=args.num_workers,
                             shuffle_buffer=args.shuffle_buffer, persistent_workers=persistent)


def rss_child(args: argparse.Namespace) -> None:
    """Run the stream over ``--samples`` samples; print peak RSS of this process and of its workers."""
    torch.set_num_threads(1)
    loader = stream_loader(args.shards, args, persistent=False)
    import psutil

    me, n, trajectory = psutil.Process(), 0, []
    n_batches = -(-args.samples // args.batch_size)
    it = iter(loader)
    for i, batch in enumerate(islice(it, n_batches)):
        n += len(batch["image"])
        if (i + 1) % max(n_batches // 10, 1) == 0:  # RSS (MB) of the largest process, every tenth of the run
            trajectory.append(max([me.memory_info().rss] + [c.memory_info().rss for c in me.children()]) >> 20)
    del it  # shuts the workers down, so RUSAGE_CHILDREN covers them
    print(json.dumps({
        "samples": n,
        "rss_trajectory_mb": trajectory,
        "main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", help="shard directory (default: build one from --originals in a temp dir)")
    ap.add_argument("--originals", type=Path, default=shared_data_dir() / "busi" / "Dataset_BUSI_with_GT",
                    help="folder of the original PNGs for loader (c) and for building shards")
    ap.add_argument("--split", default="train")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--shuffle-buffer", type=int, default=500)
    ap.add_argument("--samples", type=int, default=1000, help="samples timed per loader; N for the RSS check")
    ap.add_argument("--rss-samples", type=int, default=1000, help="N of the RSS check (N and 10 N samples)")
    ap.add_argument("--per-shard", type=int, default=50, help="samples per shard when building")
    ap.add_argument("--own-writer", action="store_true", help="build with this script's minimal writer")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args)
        return
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="sonofm-bench-")
    if args.shards is None:
        args.shards = str(Path(tmp.name) / "shards")
        t0 = time.perf_counter()
        how = build(args.originals, Path(args.shards), args.per_shard, args.own_writer)
        print(f"built shards from {args.originals} in {time.perf_counter() - t0:.1f}s with {how}")
    shards = discover_shards(args.shards, args.split)
    total = sum(c for _, c in shards)
    mean_count = total / len(shards)
    print(f"shards: {args.shards} split {args.split!r}: {len(shards)} shards, {total} samples; "
          f"img_size {args.img_size}, batch {args.batch_size}, num_workers {args.num_workers}, "
          f"{os.cpu_count()} CPUs")

    pairs = originals_of(args.originals) if args.originals.is_dir() else []
    if not pairs:  # no originals: the folder loader reads PNGs written from the shards
        folder = Path(tmp.name) / "folder"
        folder.mkdir()
        for url, _ in shards:
            with tarfile.open(url, "r|") as tar:
                for m in tar:
                    if m.isreg() and m.name.endswith(".png"):
                        stem, _, suffix = Path(m.name).name.partition(".")
                        out = f"{stem}_mask.png" if suffix == "mask.png" else f"{stem}.png"
                        if suffix in ("png", "mask.png"):
                            (folder / out).write_bytes(tar.extractfile(m).read())
        pairs = originals_of(folder)
    print(f"folder loader (c) reads {len(pairs)} original images (+ masks) from {pairs[0][0].parent.parent}")

    n_a, s_a, hw = decode_only(shards, args.samples)
    rate_a = n_a / s_a
    print(f"(a) decode-only, 1 process:          {rate_a:8.1f} images/s  ({n_a} images, mean size "
          f"{hw[0]:.0f}x{hw[1]:.0f})")

    n_b, s_b, first_b = timed(stream_loader(args.shards, args), args.samples)
    rate_b = n_b / s_b
    print(f"(b) sonofm stream + augmentation:    {rate_b:8.1f} images/s  ({n_b} images after the first "
          f"batch; first batch after {first_b:.1f}s)")

    folder_loader = DataLoader(FolderDataset(pairs, args.img_size, AugmentConfig()), batch_size=args.batch_size,
                               shuffle=True, num_workers=args.num_workers, drop_last=True,
                               persistent_workers=args.num_workers > 0)

    def epochs():
        while True:
            yield from folder_loader

    n_c, s_c, first_c = timed(epochs(), args.samples)
    rate_c = n_c / s_c
    print(f"(c) folder loader, per-file + same augmentation: {rate_c:8.1f} images/s  ({n_c} images; first "
          f"batch after {first_c:.1f}s)")
    print(f"ratios: stream / decode-only = {rate_b / rate_a:.2f}   stream / folder = {rate_b / rate_c:.2f}   "
          f"folder / decode-only = {rate_c / rate_a:.2f}")

    if not args.skip_rss:
        # In-process (0 workers) isolates the stream's own memory; with workers the figure also holds
        # the batches in flight through shared memory, which levels off after about one round.
        for workers in sorted({0, args.num_workers}):
            rows = []
            for n in (args.rss_samples, 10 * args.rss_samples):
                cmd = [sys.executable, __file__, "--rss-child", "--shards", args.shards, "--split", args.split,
                       "--samples", str(n), "--img-size", str(args.img_size), "--batch-size",
                       str(args.batch_size), "--num-workers", str(workers), "--shuffle-buffer",
                       str(args.shuffle_buffer)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
                rows.append(json.loads(out.splitlines()[-1]))
                r = rows[-1]
                worker = f", largest worker {r['worker_mb']:.0f} MB" if workers else ""
                print(f"peak RSS, {workers} workers, {r['samples']:6d} samples (~{r['samples'] / mean_count:.0f} "
                      f"shard reads): main {r['main_mb']:.0f} MB{worker}")
            print(f"  RSS of the largest process at each tenth of the 10x run (MB): {rows[1]['rss_trajectory_mb']}")
            peaks = [max(r["main_mb"], r["worker_mb"] if workers else 0.0) for r in rows]
            print(f"peak RSS 10x / 1x with {workers} workers: {peaks[1] / peaks[0]:.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
