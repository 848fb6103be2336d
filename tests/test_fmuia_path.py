"""FM_UIA 2026 end to end on a challenge-layout root made in the test (BUSI, CCA, POCUS from ../shared/data,
and synthetic screens whose field crop shrinks the image):

- the whole path as the README writes it: shards build, universal finetuning over all four kinds,
  predict on val/, score;
- ground truth fed through the full write path (the build's preprocessing, the stored geometry, the
  evaluation letterbox, each kind's prediction back to original pixels, the writers) scores Dice 1,
  IoU 1 and MRE below 1 pixel: a broken coordinate map anywhere fails it. Boxes and points go through
  a real downscale (the build's max_side) and the letterbox; a class map cannot survive a resize
  exactly, so masks are checked through the crop and a scale-1 letterbox (the stored size kept).
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sonofm.datasets.preprocess.pipeline import preprocess
from sonofm.datasets.sources.fmuia_root import make_fmuia_root
from sonofm.datasets.sources.specs import make_adapter, parse_source_arg
from sonofm.datasets.stream.augment import eval_sample
from sonofm.evaluation.fmuia_predictions import PredictionWriter
from sonofm.evaluation.fmuia_score import score_folder
from sonofm.finetune.predict import HeadSpec
from sonofm.finetune.tasks import TASK_KINDS, get_task_kind

SIZE = 64
REPO = Path(__file__).resolve().parents[1]


def _close(a: list[dict], b: list[dict]) -> bool:
    """Same entries, numbers equal to 1e-4 (batching may change the last float bits)."""
    key = lambda e: (e["task_id"], e["image_path"])  # noqa: E731
    for x, y in zip(sorted(a, key=key), sorted(b, key=key), strict=True):
        assert key(x) == key(y)
        for k, v in x.items():
            if isinstance(v, list):
                np.testing.assert_allclose(v, y[k], atol=1e-4)
            else:
                assert v == y[k]
    return True


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sonofm.paths import shared_data_dir

    if not (shared_data_dir() / "busi").is_dir():  # classification subtasks come from BUSI and POCUS
        pytest.skip(f"real data not found at {shared_data_dir()} (set SONOFM_SHARED_DATA)")
    out = tmp_path_factory.mktemp("fmuia")
    summary = make_fmuia_root(out, n=4, n_val=3, shared=shared_data_dir())
    kinds = {t["kind"] for t in summary["tasks"].values()}
    assert kinds == {"segmentation", "classification", "detection", "keypoints"}
    assert sum(t["screens"] for t in summary["tasks"].values()) > 0  # screens the crop shrinks
    return out


def _run(*args: str, cwd: Path) -> str:
    env = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    import os

    proc = subprocess.run([sys.executable, "-m", "sonofm", *args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_the_whole_path_runs_as_written(root: Path, tmp_path: Path) -> None:
    _run("shards", "build", "--source", f"fmuia:{root}/train", "--out", "S", cwd=tmp_path)
    out = _run("finetune", "universal", "--config", "configs/finetune/fmuia.yaml", "encoder=random:convnextv2_atto",
               "datasets=[S]", "out_dir=R", "steps=3", "eval_every=0", f"data.img_size={SIZE}", "data.batch_size=2",
               "data.num_workers=0", "checkpoint.every=3", cwd=tmp_path)
    assert "R/best/" in out
    meta = json.loads((tmp_path / "R" / "best" / "meta.json").read_text())
    assert {t["task"] for t in meta["tasks"]} == set(TASK_KINDS)  # one head per task_id, all four kinds
    assert all(t["build"]["max_side"] for t in meta["tasks"])  # prediction will preprocess like the build
    out = _run("predict", "R", "--source", f"fmuia:{root}/val", "--out", "P", cwd=tmp_path)
    for name in ("classification_predictions.json", "detection_predictions.json", "regression_predictions.json"):
        assert f"P/{name}" in out and (tmp_path / "P" / name).is_file()
    out = _run("score", "P", "--root", f"{root}/val", cwd=tmp_path)
    scores = json.loads((tmp_path / "P" / "scores.json").read_text())
    assert "seg Dice" in out and "reg MRE (px)" in out
    assert set(scores["averages"]) == {"seg_dice", "seg_hd", "cls_accuracy", "cls_auc", "cls_f1_macro",
                                       "cls_f1_weighted", "cls_mcc", "det_iou", "reg_mre"}
    # the challenge container's model.py writes the same files as the command
    container = runpy.run_path(str(REPO / "experiments" / "fmuia_container" / "model.py"))
    container["Model"](str(tmp_path / "R")).predict(str(root / "val"), str(tmp_path / "P2"), 3)
    for name in ("classification_predictions.json", "detection_predictions.json", "regression_predictions.json"):
        a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("P", "P2"))
        assert a and _close(a, b)


def _truth_as_output(kind_name: str, processed, view, num_classes: int, size: int) -> object:
    """What a perfect model would output for one letterboxed sample, in the head's own format."""
    kind = get_task_kind(kind_name)
    meta = processed.meta
    if kind.name == "seg":
        t = eval_sample(processed.image, None, processed.mask, size, "letterbox")
        onehot = torch.nn.functional.one_hot(t["mask"], num_classes).permute(2, 0, 1).float() * 20
        return onehot[None]
    if kind.name == "cls":
        logits = torch.full((1, num_classes), -20.0)
        logits[0, int(meta["label"])] = 20.0
        return logits
    if kind.name == "det":
        stride = 4
        h = SIZE // stride
        (x0, y0, x1, y1), = view.boxes(meta["boxes"])
        cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
        out = {"heatmap": torch.full((1, 1, h, h), -20.0), "size": torch.zeros(1, 2, h, h),
               "offset": torch.zeros(1, 2, h, h)}
        i, j = int(cy), int(cx)
        out["heatmap"][0, 0, i, j] = 20.0
        out["size"][0, :, i, j] = torch.tensor([(x1 - x0) / stride, (y1 - y0) / stride]).log()
        out["offset"][0, :, i, j] = torch.tensor([cx - j, cy - i])
        return out
    return {"points": torch.from_numpy(view.points(meta["points"])).float()[None]}


def test_ground_truth_through_the_write_path_scores_perfectly(root: Path, tmp_path: Path) -> None:
    from sonofm.datasets.preprocess.geometry import Affine

    adapter = make_adapter(parse_source_arg(f"fmuia:{root}/val"))
    writer = PredictionWriter(tmp_path / "P")
    shrunk = 0
    for item in adapter.list_items():
        kind = get_task_kind(item.kind)  # the CSV's kind, through the table's aliases
        kind_name = kind.name
        for record in adapter.load(item):
            # boxes, points: stored smaller than the original (a real resize); masks: cropped, not resized
            processed = preprocess(record, max_side=4096 if kind.needs_mask else 48)
            meta = processed.meta
            h, w = meta["orig_size"]
            t, left, b, r = meta["crop"]
            shrunk += int((b - t, r - left) != (h, w))
            size = max(processed.image.shape) if kind.needs_mask else SIZE
            t_eval = eval_sample(processed.image, processed.field_mask, None, size, "letterbox")
            num_classes = int(getattr(item, "num_classes", 2))
            spec = HeadSpec(meta["source"], kind_name, num_classes)
            row = {"image": t_eval["image"], "view": t_eval["view"], "input_size": size,
                   "stored_image": processed.image, "meta": meta}
            out = _truth_as_output(kind_name, processed, Affine.from_list(t_eval["view"]), num_classes, size)
            kind.write(writer, meta, kind.predict(out, 0, row, spec))
    writer.close()
    assert shrunk > 0  # some screens were cropped: the map back is not the identity
    scores = score_folder(tmp_path / "P", root / "val")
    avg = scores["averages"]
    assert avg["seg_dice"] == pytest.approx(1.0)
    assert avg["det_iou"] > 0.999
    assert avg["reg_mre"] < 1.0
    assert avg["cls_accuracy"] == 1.0
    np.testing.assert_allclose(avg["seg_hd"], 0.0, atol=1e-9)
