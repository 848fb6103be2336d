"""Downstream benchmark: BUSI linear/kNN probe and CCA UPerNet segmentation for several encoders.

BUSI: 3-class (benign / malignant / normal) probe on frozen features, 5-fold cross-validation by
group (BUSI has no patient ids, so a group is an image), balanced accuracy and one-vs-rest AUROC.
CCA: UPerNet finetuning of the whole encoder, k-fold by recording (default 3 folds over the 15
recordings), Dice / IoU / HD95 at the original image size of the held-out recordings.

    python benchmarks/downstream_eval.py --encoder random=random:convnextv2_atto \\
        --encoder cpu-pretrained=runs/pretrain_cpu --out runs/downstream_eval

Each ``--encoder`` is ``name=spec`` (or a bare spec) with any spec ``load_encoder`` accepts.
Writes ``summary.json`` and prints a table; per-encoder folders hold the probe and seg reports.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sonofm.datasets.build.splits import stratified_group_kfold
from sonofm.datasets.sources.adapters import get_adapter
from sonofm.evaluation.probe import run_probe, write_json
from sonofm.finetune.data import iterate_batches, load_samples
from sonofm.finetune.seg_train import run_seg_finetune
from sonofm.paths import shared_data_dir


def parse_encoders(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, spec = v.partition("=")
        out[name if sep else v] = spec if sep else v
    return out


def busi_probe(samples, spec: str, out: Path, args) -> dict:
    rep = run_probe(
        spec, iterate_batches(samples, args.img_size, 32), out, folds=args.folds, seed=args.seed,
        concat_prev_stage=args.concat_prev, data_id=f"busi:{len(samples)}:{args.img_size}", print_table=True,
    )
    return {m: {k: r["summary"][k] for k in ("balanced_accuracy", "auroc", "accuracy", "macro_f1")}
            for m, r in rep["methods"].items()}


def cca_seg(samples, spec: str, out: Path, args) -> dict:
    groups = [s.group for s in samples]
    folds = stratified_group_kfold(np.zeros(len(samples), int), groups, args.seg_folds, args.seed)
    per_fold = []
    for i, (tr, te) in enumerate(folds):
        rep = run_seg_finetune(
            spec, [samples[j] for j in tr], [samples[j] for j in te], out / f"fold{i}", img_size=args.img_size,
            steps=args.seg_steps, batch_size=args.seg_batch, lr=args.seg_lr, warmup_steps=args.seg_steps // 10,
            eval_every=0, decoder_channels=64, seed=args.seed + i, n_overlays=2,
            dice_per_image=args.dice == "image",
        )
        per_fold.append(rep["final"])
        print(f"  fold {i}: train {rep['n_train']} val {rep['n_val']} Dice {rep['final']['dice']:.4f} "
              f"HD95 {rep['final']['hd95']:.1f}px  loss {rep['first_loss']:.3f} -> {rep['last_loss']:.3f}")
    return {k: {"mean": float(np.mean([f[k] for f in per_fold])), "std": float(np.std([f[k] for f in per_fold]))}
            for k in ("dice", "iou", "hd95")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", action="append", default=[], help="name=spec (repeatable)")
    ap.add_argument("--data", default=str(shared_data_dir()))
    ap.add_argument("--out", default="runs/downstream_eval")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--busi-limit", type=int, default=0, help="images per class (0 = all)")
    ap.add_argument("--concat-prev", action="store_true")
    ap.add_argument("--seg-folds", type=int, default=3)
    ap.add_argument("--seg-steps", type=int, default=300)
    ap.add_argument("--seg-batch", type=int, default=8)
    ap.add_argument("--seg-lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-seg", action="store_true")
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--dice", choices=("image", "batch"), default="image",
                    help="soft Dice loss per image (default) or over the whole batch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    encoders = parse_encoders(args.encoder or ["random=random:convnextv2_atto"])
    out = Path(args.out)
    data = Path(args.data)

    t0 = time.time()
    busi_adapter = get_adapter("busi", data / "busi")
    items = busi_adapter.items()
    if args.busi_limit:
        items = [it for c in ("benign", "malignant", "normal") for it in
                 [i for i in items if i.meta["label"] == c][: args.busi_limit]]
    busi = load_samples(r for it in items for r in busi_adapter.load(it))
    cca_adapter = get_adapter("cca", data / "cca")
    cca = load_samples((r for r in cca_adapter), binary_mask=True) if not args.skip_seg else []
    print(f"data: BUSI {len(busi)} images, CCA {len(cca)} frames ({time.time() - t0:.0f}s)")

    summary = {"args": vars(args), "encoders": {}}
    for name, spec in encoders.items():
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        t = time.time()
        res: dict = {"spec": spec}
        if not args.skip_probe:
            res["busi_probe"] = busi_probe(busi, spec, out / safe / "busi_probe", args)
            res["busi_seconds"] = time.time() - t
        if not args.skip_seg:
            t = time.time()
            print(f"{name}: CCA segmentation, {args.seg_folds} folds by recording")
            res["cca_seg"] = cca_seg(cca, spec, out / safe / "cca_seg", args)
            res["cca_seconds"] = time.time() - t
        summary["encoders"][name] = res
        write_json(summary, out / "summary.json")

    print("\n| encoder | BUSI linear bal.acc | BUSI linear AUROC | BUSI kNN bal.acc | BUSI kNN AUROC | CCA Dice | CCA HD95 (px) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in summary["encoders"].items():
        b = r.get("busi_probe")

        def ms(d):
            return f"{d['mean']:.3f} ± {d['std']:.3f}"

        probe = (f"{ms(b['linear']['balanced_accuracy'])} | {ms(b['linear']['auroc'])} | "
                 f"{ms(b['knn']['balanced_accuracy'])} | {ms(b['knn']['auroc'])}") if b else "n/a | n/a | n/a | n/a"
        seg = r.get("cca_seg")
        print(f"| {name} | {probe} | "
              f"{ms(seg['dice']) if seg else 'n/a'} | {ms(seg['hd95']) if seg else 'n/a'} |")
    print(json.dumps({"out": str(out / "summary.json"), "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
