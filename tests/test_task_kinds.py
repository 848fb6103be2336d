"""The table of task kinds: one line registers a kind, nothing outside a kind's module tests its name,
and each kind's targets follow the stream's crop, resize and flip."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from sonofm.datasets.preprocess.geometry import Affine
from sonofm.datasets.stream.augment import AugmentConfig, augment_sample, eval_sample
from sonofm.errors import UnknownNameError
from sonofm.finetune.tasks import TASK_KINDS, TaskKind, get_task_kind, register_task
from sonofm.finetune.tasks.base import _ALIASES
from sonofm.finetune.tasks.detection import average_precision, box_iou, decode
from sonofm.models.heads import HEADS, HeadInputs, KeypointHead, soft_argmax

PACKAGE = Path(__file__).resolve().parents[1] / "sonofm"
#: Modules allowed to spell a kind's name in a comparison, and why.
ALLOWED = {
    # each kind's own module
    **{f"finetune/tasks/{m}.py": "the kind itself" for m in ("segmentation", "classification", "detection", "keypoints")},
    # the FM_UIA formats read and write the challenge's own task_name values (its CSV column, its file names)
    "datasets/sources/fmuia_root.py": "writes challenge roots",
    "evaluation/fmuia_predictions.py": "the challenge's prediction files",
    "evaluation/fmuia_score.py": "the challenge's scoring definitions",
    # the quickstart's own steps are 'probe' and the 'finetune seg' command, not task kinds
    "quickstart/__init__.py": "quickstart steps",
    "quickstart/report.py": "quickstart steps",
}


def kind_name_comparisons(root: Path, names: set[str]) -> list[str]:
    """``file:line: names`` of every comparison (``==``, ``!=``, ``in``) against a string in ``names``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Compare):
                continue
            consts = []
            for x in (node.left, *node.comparators):
                elts = x.elts if isinstance(x, (ast.Tuple, ast.List, ast.Set)) else [x]
                consts += [e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            hit = names & set(consts)
            if hit:
                found.append(f"{rel}:{node.lineno}: {sorted(hit)}")
    return found


def test_nothing_outside_a_kind_tests_its_name(tmp_path: Path) -> None:
    names = set(_ALIASES)
    assert {"seg", "cls", "det", "kp", "segmentation", "keypoints", "regression"} <= names
    assert kind_name_comparisons(PACKAGE, names) == []
    # the check can fail: a planted dispatch on a kind's name is found
    planted = tmp_path / "finetune"
    planted.mkdir()
    (planted / "loop.py").write_text("def f(spec):\n    if spec.task == 'det':\n        return 1\n")
    assert kind_name_comparisons(tmp_path, names) == ["finetune/loop.py:2: ['det']"]


def test_one_decorator_registers_a_kind_under_its_names() -> None:
    assert set(TASK_KINDS) == {"seg", "cls", "det", "kp"}
    assert set(HEADS) == set(TASK_KINDS)  # a head per kind, same token

    @register_task
    class Count(TaskKind):
        name, title, headline = "count", "counting", "mae"

        def make_head(self, spec, channels, num_features, dropout):
            return torch.nn.Linear(num_features, 1)

        def loss(self, out, batch, spec, settings):
            return out.sum()

        def evaluate(self, predict, batches, spec, **kw):
            return {"mae": 0.0}

        def predict(self, out, j, stored, spec):
            return out[j]

        def write(self, writer, row, prediction):
            pass

    try:
        assert get_task_kind("count") is TASK_KINDS["count"] and get_task_kind("counting").name == "count"
        with pytest.raises(ValueError, match="registered twice"):
            register_task(type("Again", (TaskKind,), {"name": "count", "title": "counting again"}))
    finally:
        TASK_KINDS.pop("count")
        for k in ("count", "counting"):
            _ALIASES.pop(k, None)
    with pytest.raises(UnknownNameError, match=r"unknown task kind 'segmentaton' \(did you mean 'segmentation'\?\)"):
        get_task_kind("segmentaton")


def test_kinds_are_found_by_the_challenge_names() -> None:
    for challenge, kind in (("segmentation", "seg"), ("classification", "cls"), ("detection", "det"),
                            ("keypoints", "kp"), ("regression", "kp")):
        assert get_task_kind(challenge).name == kind


def _dot_image(x: float, y: float, h: int = 90, w: int = 120) -> np.ndarray:
    img = np.zeros((h, w), np.uint8)
    img[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 255
    return img


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_augmentation_view_moves_points_with_the_pixels(hflip: float) -> None:
    """A bright dot at (x, y) lands, after the random crop / resize / flip, where the view maps (x, y)."""
    cfg = AugmentConfig(hflip=hflip, crop_scale=(0.6, 1.0), gamma=(1.0, 1.0), gain=(1.0, 1.0))
    for seed in range(10):
        x, y = 60.5, 44.5  # the centre of the 3x3 dot
        out = augment_sample(_dot_image(x, y), None, None, 64, np.random.default_rng(seed), cfg)
        view = Affine.from_list(out["view"])
        px, py = view.points([[x, y]])[0]
        img = out["image"][0].numpy()
        if not (2 <= px < 62 and 2 <= py < 62):
            continue  # the crop cut the dot away
        iy, ix = np.unravel_index(img.argmax(), img.shape)
        assert abs((ix + 0.5) - px) <= 1.5 and abs((iy + 0.5) - py) <= 1.5, (seed, ix, iy, px, py)
        assert view.flips == bool(hflip)


def test_letterbox_view_and_its_inverse() -> None:
    out = eval_sample(_dot_image(30.5, 70.5), None, None, 64, "letterbox")
    px, py = Affine.from_list(out["view"]).points([[30.5, 70.5]])[0]
    iy, ix = np.unravel_index(out["image"][0].numpy().argmax(), (64, 64))
    assert abs(ix + 0.5 - px) <= 1 and abs(iy + 0.5 - py) <= 1


def test_keypoints_never_flip_boxes_and_masks_do() -> None:
    aug = {"hflip": 0.5}
    assert get_task_kind("kp").augment(aug)["hflip"] == 0.0
    assert get_task_kind("det").augment(aug)["hflip"] == 0.5 and get_task_kind("seg").augment(aug)["hflip"] == 0.5


def _centernet_output(boxes: np.ndarray, size: int = 64, stride: int = 4) -> dict[str, torch.Tensor]:
    h = size // stride
    out = {"heatmap": torch.full((1, 1, h, h), -9.0), "size": torch.zeros(1, 2, h, h), "offset": torch.zeros(1, 2, h, h)}
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
        i, j = int(cy), int(cx)
        out["heatmap"][0, 0, i, j] = 9.0 - k
        out["size"][0, :, i, j] = torch.tensor([(x1 - x0) / stride, (y1 - y0) / stride]).log()
        out["offset"][0, :, i, j] = torch.tensor([cx - j, cy - i])
    return out


def test_detection_decodes_boxes_best_first_and_scores_map() -> None:
    boxes = np.array([[10.0, 12.0, 30.0, 40.0], [40.0, 5.0, 60.0, 20.0]])
    det = decode(_centernet_output(boxes), (64, 64))[0]
    np.testing.assert_allclose(det["boxes"][:2], boxes, atol=1e-4)
    assert det["scores"][0] > det["scores"][1] > det["scores"][2]
    assert box_iou(det["boxes"][:2], boxes).diagonal().min() > 0.9999
    # AP: every true box found first -> 1; a false positive ranked first: precision 1/2 then 2/3, and the
    # interpolated precision (the best at any higher recall) is 2/3 at both recalls
    assert average_precision(np.array([0.9, 0.8]), np.array([1.0, 1.0]), 2) == pytest.approx(1.0)
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([0.0, 1.0, 1.0]), 2) == pytest.approx(2 / 3)
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1.0, 0.0, 1.0]), 2) == pytest.approx(
        0.5 * 1.0 + 0.5 * (2 / 3))
    assert np.isnan(average_precision(np.array([]), np.array([]), 0))
    # an untrained head proposes boxes of the prior's size (8 cells of 4 px), not zero-width ones
    from sonofm.models.heads import CenterNetHead

    head = CenterNetHead(8)
    raw = head(HeadInputs((64, 64), torch.zeros(1, 16), lambda: torch.randn(1, 8, 16, 16) * 0.01))
    sides = np.diff(decode(raw, (64, 64))[0]["boxes"].reshape(-1, 2, 2), axis=1).reshape(-1, 2)
    np.testing.assert_allclose(sides, 32.0, rtol=0.1)


def test_detection_loss_is_lowest_for_the_truth() -> None:
    kind = get_task_kind("det")
    boxes = [[10.0, 12.0, 30.0, 40.0]]
    batch = {"image": torch.zeros(1, 1, 64, 64), "view": torch.tensor([Affine().to_list()], dtype=torch.float64),
             "targets": {"boxes": [boxes]}}
    truth = _centernet_output(np.array(boxes))
    truth["heatmap"] = torch.where(truth["heatmap"] > 0, torch.tensor(9.0), torch.tensor(-9.0))
    noise = {k: v + torch.randn_like(v) for k, v in truth.items()}
    assert kind.loss(truth, batch, None, None) < 0.2 < kind.loss(noise, batch, None, None)


def test_soft_argmax_reads_cell_centres_and_the_keypoint_loss_masks_points_outside() -> None:
    maps = torch.full((1, 2, 16, 16), -50.0)
    maps[0, 0, 3, 5] = 50.0
    maps[0, 1, 10, 0] = 50.0
    np.testing.assert_allclose(soft_argmax(maps, (64, 64))[0].numpy(), [[22.0, 14.0], [2.0, 42.0]], atol=1e-3)
    head = KeypointHead(8, 2, 16, mode="regression")
    assert not head.uses_decoder and KeypointHead(8, 2, 16, mode="heatmap").uses_decoder
    pts = head(HeadInputs((64, 64), torch.zeros(1, 16), lambda: torch.zeros(1, 8, 16, 16)))["points"]
    assert pts.shape == (1, 2, 2) and (pts >= 0).all() and (pts <= 64).all()
    kind = get_task_kind("kp")
    batch = {"image": torch.zeros(1, 1, 64, 64), "view": torch.tensor([Affine().to_list()], dtype=torch.float64),
             "targets": {"points": [[[22.0, 14.0], [200.0, 42.0]]]}}  # the second point is outside the crop
    out = {"points": torch.tensor([[[22.0, 14.0], [2.0, 42.0]]])}
    assert kind.loss(out, batch, None, None) == 0.0


def test_detection_and_keypoint_evaluation_in_original_pixels_with_overlays(tmp_path: Path) -> None:
    """Evaluation maps predictions through the letterbox and the build's crop back to the original image:
    a model that outputs the truth (in tensor pixels) scores IoU 1 and MRE 0, and overlays are drawn."""
    from sonofm.finetune.data import _eval_collate, _eval_item

    rng = np.random.default_rng(0)
    image = (rng.random((40, 60)) * 255).astype(np.uint8)
    meta = {"crop": [10, 20, 90, 140], "size": [40, 60], "orig_size": [100, 160],  # a 2x downsized crop
            "boxes": [[5.0, 8.0, 25.0, 30.0]], "points": [[5.0, 8.0], [25.0, 30.0]], "pixel_spacing_mm": [0.2, 0.2]}
    batch = _eval_collate([_eval_item(image, None, None, meta, 64, 0, "k", -1)])
    view = Affine.from_list(batch["stored"][0]["view"])
    det_out = _centernet_output(view.boxes(meta["boxes"]))
    res = get_task_kind("det").evaluate(lambda x: det_out, [batch], None, device="cpu", overlay_dir=tmp_path / "det",
                                        n_overlays=1)
    assert res["mean_iou"] > 0.9999 and res["map50"] == pytest.approx(1.0) and res["n"] == 1
    kp_out = {"points": torch.from_numpy(view.points(meta["points"])).float()[None]}
    res = get_task_kind("kp").evaluate(lambda x: kp_out, [batch], None, device="cpu", overlay_dir=tmp_path / "kp",
                                       n_overlays=1)
    assert res["mre_px"] < 1e-3 and res["pck05"] == 1.0 and res["mre_mm"] < 1e-3
    kp_out["points"] += 2.0  # 2 tensor px: 2 / view scale stored px (60 -> 64 wide, 40 -> 43 high), twice that
    res = get_task_kind("kp").evaluate(lambda x: kp_out, [batch], None, device="cpu")  # in original px (2x resize)
    dx, dy = 2 / view.sx, 2 / view.sy
    assert (view.sx, view.sy) == (64 / 60, 43 / 40)
    assert res["mre_px"] == pytest.approx(2 * np.hypot(dx, dy), rel=1e-6)
    assert res["mre_mm"] == pytest.approx(0.2 * np.hypot(dx, dy), rel=1e-6)
    assert (tmp_path / "det" / "001.png").stat().st_size > 1000 and (tmp_path / "kp" / "001.png").is_file()


def _geometry_samples(n: int, seed: int) -> list:
    from sonofm.finetune.data import Sample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = (rng.random((48, 64)) * 80).astype(np.uint8)
        x0, y0 = rng.uniform(4, 30), rng.uniform(4, 20)
        image[int(y0) : int(y0) + 16, int(x0) : int(x0) + 20] = 220
        meta = {"source": "s", "organ": "breast", "path": f"{seed}-{i}.png", "group": f"{seed}-{i}",
                "boxes": [[x0, y0, x0 + 20, y0 + 16]], "points": [[x0, y0], [x0 + 20, y0 + 16]]}
        out.append(Sample(image, None, meta))
    return out


def test_universal_trains_boxes_and_points_and_keeps_a_model_without_validation(tmp_path: Path) -> None:
    """In-memory detection and keypoint datasets train in one model; with no validation split anywhere,
    best/ still holds the last evaluated weights (sonofm predict needs a model)."""
    from sonofm.finetune.predict import load_universal
    from sonofm.finetune.universal import TaskSpec, run_universal

    tasks = [TaskSpec("boxes", "detection", _geometry_samples(4, 0), [], "breast", "tumour", 1),
             TaskSpec("ends", "keypoints", _geometry_samples(4, 1), [], "breast", "tumour", 2)]
    rep = run_universal("random:convnextv2_atto", tasks, tmp_path / "uni", img_size=64, steps=4, batch_size=2,
                        warmup_steps=1, eval_every=2, decoder_channels=16, seed=0)
    assert set(rep["steps_per_dataset"]) == {"boxes", "ends"} and all(rep["steps_per_dataset"].values())
    assert all(np.isfinite(v).all() for v in rep["losses"].values())
    model, meta, specs = load_universal(tmp_path / "uni")
    assert meta["step"] == 4 and {s.kind.name for s in specs.values()} == {"det", "kp"}
    with pytest.raises(ValueError, match="cannot train keypoints"):
        TaskSpec("bad", "kp", [s for s in _geometry_samples(1, 2) if s.meta.pop("points")], [], "breast",
                 "tumour", 2)
