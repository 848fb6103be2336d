"""Time a full pretraining step against a plain timm step of the same encoder, on one batch.

Three steps, interleaved round-robin in one process so machine load affects them alike:

- ``full``:  masking, masked encoder, decoder, hierarchical heads, backward, AdamW step;
- ``nohier``: the same with the hierarchical heads off (hier_weight 0);
- ``plain``: unmasked ``timm`` forward_features + backward + AdamW step with a trivial loss
  (mean of squared features) on an identical encoder.

All three run with the training core's default fast path (:mod:`sonofm.train.fast`: channels_last
convolution weights and batch; fused AdamW only on CUDA), as the training loops do; ``--no-fast``
runs them as stored by timm (NCHW weights, contiguous batch).

Prints the median (and minimum) time of each and the ratios to ``plain`` (the issue aims
full/plain <= 1.3). On a busy machine the minimum ratio is the steadier figure.

    python benchmarks/pretrain_step.py --model convnextv2_atto --img-size 128 --batch 32 --iters 10 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from sonofm.config.schema import FastPathConfig
from sonofm.models import PretrainModel, create_encoder
from sonofm.train.fast import conv_weights_channels_last, plan_fast_path
from sonofm.train.optim import adamw, param_groups


def _tree() -> dict:
    """A small taxonomy: 3 regions, 5 organs, 8 sources, 12 leaves."""
    organ_region = [0, 0, 1, 1, 2]
    source_organ = [0, 1, 2, 3, 3, 4, 4, 2]
    leaf_source = [0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 7, 7]
    return {
        "levels": ["region", "organ", "source", "leaf"],
        "sizes": {"region": 3, "organ": 5, "source": 8, "leaf": 12},
        "parents": {"organ": organ_region, "source": source_organ, "leaf": leaf_source},
    }


def _batch(batch: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict]:
    images = torch.rand(batch, 1, size, size, generator=gen)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    fan = ((yy > 0.05) & (xx.abs() < 0.2 + 0.8 * yy)).float()  # a convex-probe-like field
    field = fan.expand(batch, 1, size, size).contiguous()
    images = images * field
    leaf = torch.randint(0, 12, (batch,), generator=gen)
    leaf[::3] = -1  # some samples know only their source
    source = torch.tensor(_tree()["parents"]["leaf"])[leaf.clamp(min=0)]
    return images, field, {"leaf": leaf, "source": source}


def _timer(step: Callable[[], None]) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="convnextv2_atto")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--decoder", default="fcmae", choices=["fcmae", "spark"])
    ap.add_argument("--dec-dim", type=int, default=512)
    ap.add_argument("--dec-out-stride", type=int, default=4, help="SparK decoder output stride (4, 2, 1)")
    ap.add_argument("--no-fast", action="store_true", help="without the training core's fast path")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    images, field, targets = _batch(args.batch, args.img_size, gen)
    fast = plan_fast_path(FastPathConfig(channels_last=not args.no_fast, fused_adamw=not args.no_fast),
                          torch.device("cpu"))
    if fast.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
        field = field.contiguous(memory_format=torch.channels_last)

    def layout(model: torch.nn.Module) -> torch.nn.Module:
        return model if args.no_fast else conv_weights_channels_last(model, same_bytes_only=not fast.channels_last)

    def pretrain(hier_weight: float) -> Callable[[], None]:
        torch.manual_seed(0)
        model = PretrainModel(args.model, img_size=args.img_size, decoder=args.decoder, dec_dim=args.dec_dim,
                              dec_out_stride=args.dec_out_stride, hier_weight=hier_weight, tree=_tree()).train()
        layout(model)
        opt = adamw(param_groups(model, 0.05), 1e-4, (0.9, 0.95), fused=fast.fused_adamw)
        mask_gen = torch.Generator().manual_seed(1)

        def step() -> None:
            out = model(images, field, targets, generator=mask_gen)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()

        return step

    def plain() -> Callable[[], None]:
        torch.manual_seed(0)
        enc = layout(create_encoder(args.model, in_chans=1).train())
        opt = adamw(param_groups(enc, 0.05), 1e-4, (0.9, 0.95), fused=fast.fused_adamw)
        x = (images - 0.5) / 0.25

        def step() -> None:
            loss = enc.forward_features(x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    runs = {"full": _timer(pretrain(1.0)), "nohier": _timer(pretrain(0.0)), "plain": _timer(plain())}
    for _ in range(args.warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.iters):
        for k, run in runs.items():
            times[k].append(run())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model={args.model} img={args.img_size} batch={args.batch} decoder={args.decoder} "
          f"dec_dim={args.dec_dim} threads={torch.get_num_threads()} iters={args.iters} "
          f"fast path: {'off' if args.no_fast else fast.describe()} (median, s/step)")
    print(f"{'step':<8} {'median_s':>9} {'min_s':>8} {'img/s':>8} {'vs plain':>9} {'vs plain (min)':>15}")
    low = {k: min(v) for k, v in times.items()}
    for k in runs:
        print(f"{k:<8} {med[k]:>9.3f} {low[k]:>8.3f} {args.batch / med[k]:>8.1f} {med[k] / med['plain']:>9.2f} "
              f"{low[k] / low['plain']:>15.2f}")


if __name__ == "__main__":
    main()
