"""Per-image vs batch soft Dice for UPerNet finetuning, pretrained vs random encoder, several seeds.

Runs on the output folder of a full ``sonofm quickstart`` (its shards and pretraining run), with the
quickstart's own segmentation settings (128 px, 150 steps of batch 8, lr 1e-3, 64 decoder channels),
and reports test Dice, HD95 (px) and the share of test lesions missed entirely (empty prediction,
which costs the image diagonal in HD95). This is the measurement behind the default ``dice_per_image=True``.

    python benchmarks/seg_dice_loss.py --quickstart-out runs/quickstart --seeds 0 1 --out runs/seg_dice_loss
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sonofm.evaluation.probe import write_json
from sonofm.finetune.seg_train import run_seg_finetune
from sonofm.quickstart.plan import FULL, RANDOM_SPEC
from sonofm.quickstart.stages import _split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quickstart-out", required=True, help="folder of a finished full `sonofm quickstart`")
    ap.add_argument("--out", default="runs/seg_dice_loss")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=FULL.seg_steps)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    qs, out = Path(args.quickstart_out), Path(args.out)
    shards = qs / "shards"
    train = [s for s in _split(shards, "train", binary_mask=True) if s.mask is not None]
    test = [s for s in _split(shards, "test", binary_mask=True) if s.mask is not None and s.mask.any()]
    if not train or not test:
        raise SystemExit(f"{shards}: no train masks or no test images with a lesion (run the full quickstart first)")
    encoders = {"pretrained": str(qs / "pretrain"), "random": RANDOM_SPEC}
    rows = []
    for per_image in (True, False):
        for enc, spec in encoders.items():
            for seed in args.seeds:
                t0 = time.perf_counter()
                rep = run_seg_finetune(
                    spec, train, test,
                    out / f"{'per_image' if per_image else 'batch'}_{enc}_{seed}", img_size=FULL.eval_size,
                    steps=args.steps, batch_size=FULL.seg_batch, lr=FULL.seg_lr, warmup_steps=max(1, args.steps // 10),
                    eval_every=0, decoder_channels=FULL.seg_channels, seed=seed, n_overlays=0,
                    dice_per_image=per_image,
                )
                row = {"dice_loss": "per image" if per_image else "batch", "encoder": enc, "seed": seed,
                       "dice": rep["final"]["dice"], "hd95_px": rep["final"]["hd95_px"],
                       "missed": rep["final"]["missed"], "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    write_json({"args": vars(args), "n_train": len(train), "n_test": len(test), "rows": rows}, out / "summary.json")
    print(f"\n{len(train)} train images, {len(test)} test images with a lesion, {args.steps} steps, "
          f"seeds {args.seeds} (mean ± std over seeds)\n")
    print("| Dice loss | encoder | Dice | HD95 (px) | lesions missed |")
    print("|---|---|---|---|---|")
    for mode in ("per image", "batch"):
        for enc in encoders:
            sel = [r for r in rows if r["dice_loss"] == mode and r["encoder"] == enc]
            d, h = np.array([r["dice"] for r in sel]), np.array([r["hd95_px"] for r in sel])
            m = np.array([r["missed"] for r in sel])
            print(f"| {mode} | {enc} | {d.mean():.3f} ± {d.std():.3f} | {h.mean():.1f} ± {h.std():.1f} | "
                  f"{100 * m.mean():.0f} % |")


if __name__ == "__main__":
    main()
