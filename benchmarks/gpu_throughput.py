"""Images/s of the full pretraining step against a plain timm supervised step, on this machine's device.

One command, on whatever device is present (CUDA if available, else CPU), measures in one run:

- ``full``: sonofm's pretraining step as the loop runs it (:class:`sonofm.models.PretrainModel`:
  masking, masked ConvNeXt, decoder, hierarchical heads; backward; the non-finite check, the
  loop's one host sync per step; AdamW step), with the training core's fast path
  (:mod:`sonofm.train.fast`: channels_last weights and batches, fused AdamW on CUDA);
- ``plain``: a plain timm supervised step of the same encoder (``timm.create_model(name,
  num_classes=K)``: forward, cross-entropy on its linear head, backward, the same AdamW step);

for each model, precision (``bf16`` where the device supports it, ``fp32``), channels_last and
``torch.compile`` setting asked for, on one synthetic batch already on the device; the
**data-wait share** of the real stream (``make_train_loader`` over shards built in a temporary
directory from the synthetic source, ``full`` steps fed by it: time waiting for the next batch /
wall time); and the **peak memory** of each measurement (``torch.cuda.max_memory_allocated`` on
CUDA, the process's peak RSS on CPU, reset before each measurement through
``/proc/self/clear_refs`` where Linux allows it). It prints a table and writes JSON (``--out``).

    python benchmarks/gpu_throughput.py --out gpu_throughput.json            # atto + tiny at 224
    python benchmarks/gpu_throughput.py --tiny --out /tmp/tiny.json          # CPU smoke: atto, 64 px

The aims (issue 15): ``full`` >= 0.8 x ``plain`` images/s, data wait <= 5 % of the wall time.

``--study`` runs the baseline study instead (``benchmarks/baseline_study.py``: random, ImageNet and
sonofm-pretrained encoders on ``../shared/data``, probes and segmentation, a few minutes of GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_step import _batch, _tree  # noqa: E402  (a fan-shaped field, per-level targets)

from sonofm.config.schema import FastPathConfig  # noqa: E402
from sonofm.models import PretrainModel  # noqa: E402
from sonofm.train.fast import (  # noqa: E402
    compile_model,
    compile_unavailable,
    conv_weights_channels_last,
    plan_fast_path,
    to_device,
)
from sonofm.train.optim import adamw, param_groups  # noqa: E402

N_CLASSES = 12  # the plain step's linear head: as many classes as the tree's leaves


# ----------------------------------------------------------------------------------------------- memory


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "peak RSS (VmHWM)"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS since start (ru_maxrss)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ steps


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"  # CPU autocast runs bf16 everywhere (fast only with AVX-512 BF16 / AMX)


def _full_step(name: str, img_size: int, device: torch.device, precision: str, channels_last: bool,
               compiled: bool) -> Callable[[dict[str, Any], int], None]:
    """The pretraining step of the loop (engine.run_pretraining), on ``device``."""
    fast = plan_fast_path(FastPathConfig(channels_last=channels_last, compile=compiled), device)
    torch.manual_seed(0)
    model = PretrainModel(name, img_size=img_size, dec_dim=512, hier_weight=0.1, tree=_tree())
    conv_weights_channels_last(model, same_bytes_only=not fast.channels_last)
    model.to(device).train()
    opt = adamw(param_groups(model, 0.05), 1.5e-4, (0.9, 0.95), fused=fast.fused_adamw)
    if fast.compile:
        compile_model(model, fast.compile_mode)
    nonfinite = torch.zeros((), device=device)

    def step(batch: dict[str, Any], i: int) -> None:
        with _autocast(device, precision):
            out = model(batch["image"], batch["field"], batch["targets"], generator=torch.Generator().manual_seed(i))
        loss = out["loss"]
        nonfinite.add_((~torch.isfinite(loss.detach())).float())
        loss.backward()
        if float(nonfinite) > 0:  # the loop's one host sync per step (sonofm.train.guard)
            raise FloatingPointError("non-finite loss in the benchmark")
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _plain_step(name: str, device: torch.device, precision: str, channels_last: bool,
                compiled: bool) -> Callable[[dict[str, Any], int], None]:
    """A plain timm supervised step: the same encoder with its linear head, cross-entropy, AdamW."""
    fast = plan_fast_path(FastPathConfig(channels_last=channels_last, compile=compiled), device)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, in_chans=1, num_classes=N_CLASSES)
    conv_weights_channels_last(model, same_bytes_only=not fast.channels_last)
    model.to(device).train()
    opt = adamw(param_groups(model, 0.05), 1.5e-4, (0.9, 0.95), fused=fast.fused_adamw)
    if fast.compile:
        compile_model(model, fast.compile_mode)

    def step(batch: dict[str, Any], i: int) -> None:
        with _autocast(device, precision):
            logits = model((batch["image"] - 0.5) / 0.25)
            loss = F.cross_entropy(logits.float(), batch["label"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _synthetic_batch(batch: int, img_size: int, device: torch.device, channels_last: bool) -> dict[str, Any]:
    images, field, targets = _batch(batch, img_size, torch.Generator().manual_seed(0))
    label = torch.randint(0, N_CLASSES, (batch,), generator=torch.Generator().manual_seed(1))
    return to_device({"image": images, "field": field, "targets": targets, "label": label}, device, channels_last)


def _measure(step: Callable[[dict[str, Any], int], None], batch: dict[str, Any], device: torch.device,
             warmup: int, steps: int) -> dict[str, float]:
    """On CUDA the timed steps run back to back and the window is timed (a sync per step would stall
    the plain step's pipelining); on CPU, where nothing is asynchronous, each step is timed and the
    median taken (steadier on a shared machine)."""
    _reset_peak(device)
    t0 = time.perf_counter()
    for i in range(warmup):  # includes compilation when compiled
        step(batch, i)
    _sync(device)
    t1 = time.perf_counter()
    times = []
    for i in range(steps):
        ts = time.perf_counter()
        step(batch, warmup + i)
        times.append(time.perf_counter() - ts)
    _sync(device)
    t2 = time.perf_counter()
    per_step = (t2 - t1) / steps if device.type == "cuda" else statistics.median(times)
    n = batch["image"].shape[0]
    peak, what = _peak_mb(device)
    return {"images_per_s": n / per_step, "s_per_step": per_step, "timing": "window" if device.type == "cuda"
            else "median step", "warmup_s": t1 - t0, "peak_mem_mb": peak, "peak_mem_kind": what}


# ------------------------------------------------------------------------------------------ data stream


def _build_shards(root: Path, n: int, size: int) -> Path:
    from sonofm.datasets.build.orchestrate import build_shards
    from sonofm.datasets.synthetic import generate_corpus

    generate_corpus(root / "corpus", n=n, seed=1, size=size, progress=False)
    build_shards([f"synthetic:{root / 'corpus'}"], root / "shards", max_side=size, samples_per_shard=64,
                 split_fractions={"train": 1.0, "val": 0.0, "test": 0.0}, workers=1, dedup=False, progress=False)
    return root / "shards"


def _data_wait(shards: Path, name: str, img_size: int, batch: int, workers: int, device: torch.device,
               precision: str, warmup: int, steps: int) -> dict[str, float]:
    """``full`` steps fed by the real stream: the share of wall time spent waiting for the next batch."""
    from sonofm.datasets.stream.loader import StreamSpec, make_train_loader, shard_indexes
    from sonofm.datasets.taxonomy import Taxonomy

    fast = plan_fast_path(FastPathConfig(), device)
    taxonomy = Taxonomy.from_indexes(shard_indexes([str(shards)]), None)
    torch.manual_seed(0)
    model = PretrainModel(name, img_size=img_size, dec_dim=512, hier_weight=0.1, tree=taxonomy.tree())
    conv_weights_channels_last(model, same_bytes_only=not fast.channels_last)
    model.to(device).train()
    opt = adamw(param_groups(model, 0.05), 1.5e-4, (0.9, 0.95), fused=fast.fused_adamw)
    loader = make_train_loader(StreamSpec(paths=[str(shards)]), batch_size=batch, img_size=img_size, seed=0,
                               num_workers=workers, shuffle_buffer=256, target_fn=taxonomy.targets,
                               pin_memory=fast.pin_memory)
    it = iter(loader)
    nonfinite = torch.zeros((), device=device)
    wait = 0.0
    t_start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:  # steady state: workers started, first batches out
            _sync(device)
            wait, t_start = 0.0, time.perf_counter()
        t0 = time.perf_counter()
        b = to_device(next(it), device, channels_last=fast.channels_last)
        wait += time.perf_counter() - t0
        with _autocast(device, precision):
            out = model(b["image"], b.get("field"), b.get("targets"), generator=torch.Generator().manual_seed(i))
        nonfinite.add_((~torch.isfinite(out["loss"].detach())).float())
        out["loss"].backward()
        if float(nonfinite) > 0:
            raise FloatingPointError("non-finite loss in the benchmark")
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    wall = time.perf_counter() - t_start
    del it
    return {"data_wait_share": wait / wall, "images_per_s": batch * steps / wall, "workers": workers,
            "precision": precision}


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--study" in argv:  # the baseline study (random / ImageNet / sonofm-pretrained encoders): its own script
        from baseline_study import main as study

        return study([a for a in argv if a != "--study"])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", action="store_true", help="run benchmarks/baseline_study.py instead (its options follow)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke mode: atto, 64 px, batch 8, 5 steps, no compile")
    ap.add_argument("--models", nargs="+", default=None, help="default: convnextv2_atto convnextv2_tiny")
    ap.add_argument("--img-size", type=int, default=None, help="default 224 (tiny: 64)")
    ap.add_argument("--batch", type=int, default=None, help="per step; default 128 on CUDA, 32 on CPU (tiny: 8)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps; default 20 (tiny: 5)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first; default 3 (tiny: 2)")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    ap.add_argument("--channels-last", choices=["on", "off", "both"], default="on")
    ap.add_argument("--compile", choices=["off", "on", "both"], default=None, help="default both (tiny: off)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers for the data-wait run; default "
                    "min(8, cores - 1) (tiny: 1)")
    ap.add_argument("--data-steps", type=int, default=None, help="timed steps of the data-wait run; default 30 "
                    "(tiny: 6)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: on CPU, cores - workers "
                    "unless OMP_NUM_THREADS is set)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny
    models = args.models or (["convnextv2_atto"] if tiny else ["convnextv2_atto", "convnextv2_tiny"])
    img = args.img_size or (64 if tiny else 224)
    batch = args.batch or (8 if tiny else 128 if device.type == "cuda" else 32)
    steps = args.steps or (5 if tiny else 20)
    warmup = args.warmup if args.warmup is not None else (2 if tiny else 3)
    compile_opt = args.compile or ("off" if tiny else "both")
    workers = args.workers if args.workers is not None else (1 if tiny else max(1, min(8, (os.cpu_count() or 2) - 1)))
    data_steps = args.data_steps or (6 if tiny else 30)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif device.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        # the engine's rule (sonofm.train.accel.cpu_threads): a core per loader worker; oversubscribed
        # intra-op threads spin and make a step many times slower (and the figures noise)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    precisions = [p for p in args.precisions if p == "fp32" or _bf16_supported(device)]
    layouts = {"on": [True], "off": [False], "both": [True, False]}[args.channels_last]
    compiles = {"off": [False], "on": [True], "both": [False, True]}[compile_opt]
    skipped: list[str] = [f"bf16 ({device.type} does not support it)" for p in args.precisions if p not in precisions]
    reason = compile_unavailable(device)
    if reason and True in compiles:
        compiles = [False]
        skipped.append(f"torch.compile ({reason})")

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or "cpu")
    result: dict[str, Any] = {
        "device": device.type, "device_name": device_name, "torch": torch.__version__, "timm": timm.__version__,
        "cpu_threads": torch.get_num_threads(), "tiny": tiny, "img_size": img, "batch": batch, "steps": steps,
        "warmup": warmup, "skipped": skipped, "runs": [], "data_wait": [],
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else "main(" + repr(argv) + ")",
    }
    for name in models:
        for precision in precisions:
            for cl in layouts:
                for compiled in compiles:
                    data = _synthetic_batch(batch, img, device, cl)
                    row = {"model": name, "precision": precision, "channels_last": cl, "compile": compiled}
                    for kind in ("full", "plain"):
                        step = (_full_step(name, img, device, precision, cl, compiled) if kind == "full"
                                else _plain_step(name, device, precision, cl, compiled))
                        row[kind] = _measure(step, data, device, warmup, steps)
                        del step
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    row["full_vs_plain"] = row["full"]["images_per_s"] / row["plain"]["images_per_s"]
                    result["runs"].append(row)
                    print(_row_text(row), flush=True)
    with tempfile.TemporaryDirectory(prefix="sonofm-bench-") as tmp:
        shards = _build_shards(Path(tmp), n=48 if tiny else 512, size=max(96, img + img // 4))
        precision = "bf16" if "bf16" in precisions else "fp32"
        for name in models:
            row = {"model": name, **_data_wait(shards, name, img, batch, workers, device, precision,
                                               warmup=2 if tiny else 5, steps=data_steps)}
            result["data_wait"].append(row)
    _print_table(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


def _row_text(row: dict[str, Any]) -> str:
    return (f"{row['model']:<16} {row['precision']:<5} cl={'on ' if row['channels_last'] else 'off'} "
            f"compile={'on ' if row['compile'] else 'off'}  full {row['full']['images_per_s']:8.1f} img/s  "
            f"plain {row['plain']['images_per_s']:8.1f} img/s  ratio {row['full_vs_plain']:.2f}")


def _print_table(result: dict[str, Any]) -> None:
    kind = result["runs"][0]["full"]["peak_mem_kind"] if result["runs"] else ""
    print(f"\ndevice: {result['device']} ({result['device_name']}), torch {result['torch']}, img {result['img_size']}, "
          f"batch {result['batch']}, {result['steps']} timed steps after {result['warmup']}, {result['cpu_threads']} CPU "
          f"thread(s); peak memory: {kind}")
    if result["skipped"]:
        print("skipped: " + "; ".join(result["skipped"]))
    print("| model | precision | channels_last | compile | full img/s | plain img/s | full / plain | "
          "full peak MB | plain peak MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in result["runs"]:
        print(f"| {r['model']} | {r['precision']} | {'on' if r['channels_last'] else 'off'} | "
              f"{'on' if r['compile'] else 'off'} | {r['full']['images_per_s']:.1f} | {r['plain']['images_per_s']:.1f} | "
              f"{r['full_vs_plain']:.2f} | {r['full']['peak_mem_mb']:.0f} | {r['plain']['peak_mem_mb']:.0f} |")
    print("\n| model | stream: full steps img/s | data wait share | loader workers | precision |")
    print("| --- | --- | --- | --- | --- |")
    for r in result["data_wait"]:
        print(f"| {r['model']} | {r['images_per_s']:.1f} | {100 * r['data_wait_share']:.1f} % | {r['workers']} | "
              f"{r['precision']} |")
    if result["runs"]:
        worst = min(r["full_vs_plain"] for r in result["runs"])
        print(f"\naims: full / plain >= 0.8 (lowest here {worst:.2f}); data wait <= 5 % "
              f"(highest here {100 * max(r['data_wait_share'] for r in result['data_wait']):.1f} %)")


if __name__ == "__main__":
    main()
