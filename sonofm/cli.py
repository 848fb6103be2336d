"""The ``sonofm`` command line: one sub-command per pipeline stage.

Each handler imports its stage lazily so that ``sonofm --help`` stays fast and a stage that is
not installed yet cannot break the others. Its config is loaded and checked (ranges included)
before the stage is imported, so a bad value fails in a fraction of a second, without torch.

Errors: every failure the user can fix (a :class:`~sonofm.errors.UserError`, a missing file, a
full disk; see :func:`sonofm.errors.is_user_error`) becomes one line on stderr,
``sonofm <command>: error: ...``, and exit status 2; anything else is a bug and keeps its
traceback. ``--debug`` (or ``SONOFM_DEBUG=1``) prints the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from sonofm import __version__
from sonofm.errors import UserError, is_user_error, one_line

EPILOG = "Run 'sonofm <command> --help' for the options of one stage. --debug (or SONOFM_DEBUG=1) shows tracebacks."
DEBUG_ENV = "SONOFM_DEBUG"


class CLIError(UserError, RuntimeError):
    """A user-facing error: printed without a traceback, exit code 2."""


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (a bad one is a usage error, not a traceback)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value

    return parse


#: Per command: override examples it accepts (tests/test_cli_help.py checks each against the command's schema).
OVERRIDE_EXAMPLES: dict[str, str] = {
    "shards build": "samples_per_shard=500 workers=4 max_side=512",
    "pretrain": "steps=2000 data.batch_size=64 optim.base_lr=1.5e-4",
    "probe": "encoder=runs/pretrain data.shards=[shards/busi] folds=5",
    "finetune seg": "encoder=runs/pretrain data.shards=[shards/busi] steps=200",
    "finetune universal": "encoder=runs/pretrain datasets=[shards/busi,shards/cca] steps=500",
}


#: ``sonofm finetune <task>``: (task, one-line help, description).
FINETUNE_TASKS: tuple[tuple[str, str, str], ...] = (
    ("seg", "UPerNet segmentation on one shard set",
     "Finetune an encoder with a UPerNet decoder on the masks of data.shards (train split), keeping the best "
     "checkpoint by validation Dice."),
    ("universal", "one prompt-conditioned model over several datasets",
     "Finetune one prompt-conditioned model over several shard sets, one head per dataset, every task kind "
     "(segmentation, classification, detection, keypoints; the kind read from each set's index or its data), "
     "drawing each step's dataset by weight or size."),
)


def _add_config_args(p: argparse.ArgumentParser, default: str | None, command: str) -> None:
    p.add_argument("--config", default=default, help=f"YAML recipe (default: {default or 'the built-in defaults'})")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help=f"config overrides, e.g. {OVERRIDE_EXAMPLES[command]}")


def _need(values: Sequence[str], key: str, example: str) -> None:
    """Refuse an empty list of inputs before the stage (and torch) is imported."""
    if not values:
        raise CLIError(f"{key} is empty: nothing to read; give it on the command line, e.g. {example}, or in the --config")


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from sonofm.datasets.synthetic import generate_corpus

    manifest = generate_corpus(args.out, n=args.n, seed=args.seed, size=args.size, workers=args.workers)
    print(f"wrote {args.n} synthetic images; manifest: {manifest}")
    return 0


def _cmd_shards_build(args: argparse.Namespace) -> int:
    from sonofm.config import ShardsConfig, load_config

    cfg = load_config(ShardsConfig, args.config, args.overrides)
    from sonofm.datasets.build.orchestrate import build_shards, parse_source_arg

    sources = [*cfg.sources, *(args.source or [])]
    if not sources:
        raise CLIError("no sources: pass --source ADAPTER:PATH (e.g. --source busi:../shared/data/busi) or a --config")
    specs = []
    for source in sources:
        try:  # parsing only reads the user's text (or source-list file): a ValueError is about that input
            specs.append(parse_source_arg(source))
        except ValueError as exc:
            message = one_line(exc)
            raise CLIError(message if str(source) in message else f"--source {source}: {message}") from exc
    out = args.out or cfg.out
    report = build_shards(
        specs,
        out,
        max_side=cfg.max_side,
        samples_per_shard=cfg.samples_per_shard,
        split_fractions={"train": cfg.train, "val": cfg.val, "test": cfg.test},
        workers=args.workers or cfg.workers,
        dedup=cfg.dedup,
        taxonomy=args.taxonomy or cfg.taxonomy,
        colour_limit=cfg.colour_limit,
        text=cfg.text,
    )
    print(f"shards written to {out}")
    return 0 if report is not None else 1


def _cmd_shards_inspect(args: argparse.Namespace) -> int:
    from sonofm.datasets.shards.inspect import inspect_shards

    print(inspect_shards(args.dir, contact_sheet_dir=args.sheets))
    return 0


def _cmd_shards_audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sonofm.atomic_io import write_json
    from sonofm.datasets.shards.audit import audit_shards

    sheet = args.sheet or f"{Path(args.dir).expanduser().resolve().name}.audit.png"
    report = audit_shards(args.dir, sample=args.sample, recall_images=args.recall_images, sheet=sheet)
    print(report.summary())
    if args.json:
        write_json(args.json, report.to_dict())
        print(f"  report: {args.json}")
    return 0 if report.passed else 1


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from sonofm.config import PretrainConfig, load_config

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    _need(cfg.data.shards, "data.shards", "data.shards=[shards/shared]")
    if cfg.logging.tensorboard:  # known before torch, the shards or a wandb run are touched
        from sonofm.train.loggers import check_tensorboard

        check_tensorboard()
    from sonofm.pretrain.engine import run_pretraining

    run_pretraining(cfg, resume=args.resume)
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from sonofm.config import ProbeConfig, load_config

    cfg = load_config(ProbeConfig, args.config, args.overrides)
    _need(cfg.data.shards, "data.shards", "data.shards=[shards/shared]")
    from sonofm.evaluation.cli_entry import probe_from_config

    probe_from_config(cfg)
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from sonofm.config import FinetuneConfig, load_config

    overrides = [f"task={args.finetune_command}", *args.overrides]
    cfg = load_config(FinetuneConfig, args.config, overrides)
    if cfg.task == "universal":
        _need(cfg.datasets, "datasets", "datasets=[shards/busi,shards/cca]  (one shard folder per dataset)")
    else:
        _need(cfg.data.shards, "data.shards", "data.shards=[shards/shared]")
    from sonofm.finetune.cli_entry import finetune_from_config

    finetune_from_config(cfg, resume=args.resume)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from sonofm.export import export_backbone

    export_backbone(
        args.run_dir,
        args.out_dir,
        use_ema=args.ema,
        results=args.results,
        push_to_hub=args.push_to_hub,
        dry_run=args.dry_run,
    )
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from sonofm.evaluation.fmuia_score import score_to_files

    score_to_files(args.pred_dir, args.root, out=args.out)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from sonofm.finetune.predict import predict_source

    rep = predict_source(args.run, args.source, args.out, batch_size=args.batch_size, device=args.device)
    per = ", ".join(f"{k} {v}" for k, v in sorted(rep["per_task"].items()))
    print(f"predicted {rep['images']} images ({per}) in {rep['seconds']:.1f} s "
          f"({rep['images_per_second']:.1f} images/s on {rep['device']})")
    if rep["skipped"]:
        print(f"left out: {', '.join(f'{n} {k}' for k, n in sorted(rep['skipped'].items()))}")
        for line in rep["skipped_rows"][:10]:
            print(f"  {line}")
    print("wrote:")
    for f in rep["files"]:
        print(f"  {f}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from sonofm.quickstart import run_quickstart

    run_quickstart(data=args.data, out=args.out, small=args.small, seeds=args.seeds, baselines=args.baselines)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonofm",
        description="Build ultrasound foundation models: shards -> masked ConvNeXt pretraining -> "
        "probes and finetuning -> timm export.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"sonofm {__version__}")
    parser.add_argument("--debug", action="store_true", default=False,
                        help=f"show the traceback of every error (also: {DEBUG_ENV}=1)")
    common = argparse.ArgumentParser(add_help=False)  # lets --debug also follow the sub-command
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = sub.add_parser("demo-data", parents=[common], help="generate the built-in synthetic B-mode corpus",
                       description="Generate a synthetic B-mode ultrasound corpus (speckle, fan or linear field, "
                       "lesions with masks and labels) as image + mask folders and a CSV manifest.")
    p.add_argument("out", help="output folder")
    p.add_argument("--n", type=_count(1), default=2000, help="number of images (default 2000)")
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument("--size", type=_count(32), default=256, help="image side in pixels (default 256)")
    p.add_argument("--workers", type=_count(1), default=1, help="processes (default 1)")
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("shards", parents=[common], help="build or inspect WebDataset shards",
                       description="Turn ultrasound collections into sharded WebDataset tar files.")
    shards = p.add_subparsers(dest="shards_command", metavar="<action>", required=True)
    b = shards.add_parser("build", parents=[common], help="build shards from sources",
                          description="Read sources through their adapters, preprocess (grayscale, field crop, "
                          "resize, dedup), split by group and write {source}-{split}-NNNNNN.tar + index.")
    b.add_argument("--source", action="append", metavar="ADAPTER:PATH",
                   help="repeatable; e.g. dicom:DIR, folder:DIR?labels=null, csv:manifest.csv, "
                   "busi:../shared/data/busi, cca:PATH, pocus:PATH. The source is named by ?source=NAME or "
                   "after the folder / CSV; ?organ=NAME and ?region=NAME place it in the taxonomy (optional)")
    b.add_argument("--taxonomy", default=None, metavar="FILE",
                   help="a taxonomy YAML extending the built-in one (new regions, organs, sources, labels)")
    b.add_argument("--out", help="output folder (default from config: shards)")
    b.add_argument("--workers", type=_count(1), default=None, help="processes")
    _add_config_args(b, None, "shards build")
    b.set_defaults(func=_cmd_shards_build)
    i = shards.add_parser("inspect", parents=[common], help="print a shard folder's index and save contact sheets")
    i.add_argument("dir", help="shard folder")
    i.add_argument("--out", "--sheets", dest="sheets", default=None, metavar="DIR",
                   help="folder for one contact sheet PNG per source (default: the working directory; "
                   "never the shard folder)")
    i.set_defaults(func=_cmd_shards_inspect)
    a = shards.add_parser("audit", parents=[common], help="read the stored images with OCR: identifier-like text?",
                          description="Read every stored image (or --sample of them) with OCR and report those "
                          "holding dates, times or runs of 5+ digits (and, apart, other text), with the OCR's "
                          "recall measured on the same images and a contact sheet of the flagged ones. Exit "
                          "status 1 when identifier-like text is found, so a pipeline can gate on it. Needs "
                          "the 'ocr' extra and the tesseract binary.")
    a.add_argument("dir", help="shard folder")
    a.add_argument("--sample", type=_positive_int, default=None, metavar="N",
                   help="read N images spread evenly over the folder (default: every image)")
    a.add_argument("--recall-images", type=_positive_int, default=16, metavar="N",
                   help="images with a planted identifier for the recall measurement (default 16)")
    a.add_argument("--sheet", default=None, metavar="PNG",
                   help="contact sheet of the flagged images (default: ./<folder>.audit.png, never in the shards)")
    a.add_argument("--json", default=None, metavar="FILE", help="write the full report as JSON")
    a.set_defaults(func=_cmd_shards_audit)

    p = sub.add_parser("pretrain", parents=[common], help="masked-image-modelling pretraining of a ConvNeXt encoder",
                       description="Pretrain a ConvNeXt encoder with masked image modelling plus a hierarchical "
                       "classifier under Accelerate. Launch on several GPUs with 'accelerate launch -m sonofm pretrain ...'.")
    _add_config_args(p, "configs/pretrain/quickstart.yaml", "pretrain")
    p.add_argument("--resume", default=None, help="'auto' (continue the last checkpoint of run_dir) or a checkpoint dir")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("probe", parents=[common], help="linear probe and kNN on frozen features",
                       description="Evaluate a frozen encoder with a linear probe and kNN under group-aware k-fold CV.")
    _add_config_args(p, "configs/finetune/probe.yaml", "probe")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("finetune", parents=[common], help="UPerNet segmentation or universal prompt finetuning",
                       description="Finetune an encoder: 'seg' (UPerNet) or 'universal' (prompt-conditioned, several datasets).")
    tasks = p.add_subparsers(dest="finetune_command", metavar="<task>", required=True)
    for task, short, long in FINETUNE_TASKS:
        f = tasks.add_parser(task, parents=[common], help=short, description=long)
        _add_config_args(f, f"configs/finetune/{task}.yaml", f"finetune {task}")
        f.add_argument("--resume", default=None,
                       help="'auto' (continue the last checkpoint of out_dir) or a checkpoint dir")
        f.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("export", parents=[common], help="export a pretrained backbone in timm's format",
                       description="Write config.json + model.safetensors + README.md loadable with "
                       "timm.create_model('local-dir:OUT_DIR', pretrained=True).")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.add_argument("--results", default=None, help="downstream results JSON to put into the model card")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    p.add_argument("--dry-run", action="store_true", help="with --push-to-hub: print what would be uploaded")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", parents=[common], help="run a finetuned universal model over new images",
                       description="Predict with the best model of a 'sonofm finetune universal' run over a source "
                       "(e.g. fmuia:ROOT, a challenge train/ or val/ folder, labelled or not): the build's "
                       "preprocessing, every output mapped back to the original image, and the FM_UIA 2026 "
                       "prediction files written into --out.")
    p.add_argument("run", metavar="RUN", help="finetuning run folder (holds best/)")
    p.add_argument("--source", required=True, help="what to predict, as for 'shards build' (e.g. fmuia:ROOT/val)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the prediction files")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("score", parents=[common], help="score FM_UIA 2026 prediction files against a labelled root",
                       description="Score a prediction folder (the challenge's JSON files and mask PNGs) against a "
                       "labelled FM_UIA data root: per-subtask table, the nine averages, PRED_DIR/scores.json. "
                       "A labelled image without a prediction is an error that names it (exit status 2).")
    p.add_argument("pred_dir", metavar="PRED_DIR", help="prediction folder (e.g. what 'sonofm predict' wrote)")
    p.add_argument("--root", required=True, metavar="ROOT", help="labelled challenge root holding csv_files/")
    p.add_argument("--out", default=None, metavar="FILE", help="scores JSON (default: PRED_DIR/scores.json)")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("quickstart", parents=[common], help="the whole pipeline on built-in synthetic data (or --data)",
                       description="Generate data, build shards, pretrain, probe, segment, export, and print a "
                       "table comparing the pretrained encoder with a random one.")
    p.add_argument("--data", default=None, help="folder of real datasets in known layouts (e.g. ../shared/data)")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--small", action="store_true", help="a reduced run (a minute or two) for tests")
    p.add_argument("--baselines", nargs="+", default=None, metavar="SPEC",
                   help="encoder specs compared with the pretrained one, a row each (random is always a row); "
                   "default: the ImageNet row timm:convnextv2_atto.fcmae_ft_in1k when its weights are in the "
                   "local Hugging Face cache")
    p.add_argument("--seeds", type=_positive_int, default=1, metavar="N",
                   help="pretrain and evaluate with seeds 0..N-1, report mean ± sd over seeds and which "
                   "pretrained-vs-random gaps exceed that spread (each seed takes about as long as one run; "
                   "seed 0's folders are the ones a single run writes)")
    p.set_defaults(func=_cmd_quickstart)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, "shards_command", None) or getattr(args, "finetune_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def _debug(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "").strip().lower() not in (
        "", "0", "false", "no", "off")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``sonofm`` command; returns the exit status (0 done, 2 a user error, 3 a missing stage)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    name = _command_name(args)
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("sonofm."):
            print(f"sonofm {name}: this stage is not available in this version ({exc.name} missing)",
                  file=sys.stderr)
            return 3
        raise
    except Exception as exc:
        if not is_user_error(exc):
            raise  # a bug: the traceback is what a report needs
        if _debug(args):
            traceback.print_exc()
        print(f"sonofm {name}: error: {one_line(exc)}", file=sys.stderr)
        return 2


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
