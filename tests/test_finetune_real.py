"""Finetuning on small real subsets: UPerNet on CCA, label fractions by group, universal BUSI + CCA."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sonofm.finetune.data import iterate_batches, load_samples
from sonofm.finetune.label_efficiency import select_groups

pytestmark = pytest.mark.realdata
SIZE = 64


def _cca(shared_data, per_group: dict[int, int]):
    """``{recording index: frames}`` from the CCA adapter, as in-memory samples."""
    from sonofm.datasets.sources.adapters import get_adapter

    adapter = get_adapter("cca", shared_data / "cca")
    items = adapter.items()
    groups = sorted({it.meta["group"] for it in items})
    chosen = []
    for gi, n in per_group.items():
        chosen += [it for it in items if it.meta["group"] == groups[gi]][:n]
    return load_samples((r for it in chosen for r in adapter.load(it)), binary_mask=True)


def test_upernet_overfits_cca_and_evaluates_at_full_size(shared_data):
    from sonofm.finetune.seg_train import evaluate_segmentation, train_segmentation
    from sonofm.models.loading import load_encoder
    from sonofm.models.upernet import SegModel

    torch.manual_seed(0)
    samples = _cca(shared_data, {0: 2, 1: 2})
    batch = next(iterate_batches(samples, SIZE, 4))
    enc, _ = load_encoder("random:convnextv2_atto")
    model = SegModel(enc, num_classes=2, channels=32, dropout=0.0)
    hist = train_segmentation(model, itertools.repeat(batch), steps=10, lr=1e-2, layer_decay=1.0, clip_grad=None)
    losses = hist["losses"]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    model.eval()
    res = evaluate_segmentation(model, samples, SIZE, num_classes=2)
    assert res["n"] == 4 and 0.0 <= res["dice"] <= 1.0 and res["hd95"] >= 0.0
    for s, p in zip(samples, res["per_sample"]):
        assert tuple(p["hw"]) == s.image.shape == s.mask.shape  # metrics at the original size
        assert s.image.shape[0] > SIZE


def test_run_seg_finetune_writes_best_checkpoint(shared_data, tmp_path):
    from sonofm.finetune.seg_train import run_seg_finetune
    from sonofm.models.loading import load_encoder
    from sonofm.models.upernet import SegModel

    train = _cca(shared_data, {0: 3, 1: 3})
    val = _cca(shared_data, {2: 2})
    rep = run_seg_finetune(
        "random:convnextv2_atto", train, val, tmp_path / "seg", img_size=SIZE, steps=4, batch_size=4,
        warmup_steps=1, eval_every=2, decoder_channels=32, n_overlays=2,
    )
    assert rep["n_train"] == 6 and rep["n_val"] == 2 and len(rep["evals"]) == 2
    assert 0.0 <= rep["final"]["dice"] <= 1.0 and rep["best"]["step"] in (2, 4)
    assert rep["final"]["dice"] == rep["evals"][-1]["score"]  # the report's final metrics are the last evaluation
    state = load_file(str(tmp_path / "seg" / "best" / "model.safetensors"))
    enc, _ = load_encoder("random:convnextv2_atto")
    SegModel(enc, 2, 32).load_state_dict(state, strict=True)
    assert sorted(p.name for p in (tmp_path / "seg" / "overlays").iterdir()) == ["001.png", "002.png"]
    assert (tmp_path / "seg" / "metrics.jsonl").read_text().count("\n") >= 4 + 2


def test_label_fractions_select_whole_cca_recordings(shared_data):
    from sonofm.datasets.sources.adapters import get_adapter

    items = get_adapter("cca", shared_data / "cca").items()
    groups = [it.meta["group"] for it in items]
    n_groups = len(set(groups))
    assert n_groups == 15
    picked = {}
    for frac in (0.01, 0.1, 1.0):
        idx = select_groups(groups, frac, seed=3)
        chosen = {groups[i] for i in idx}
        # whole groups: every frame of a chosen recording, none of the others
        assert idx == [i for i, g in enumerate(groups) if g in chosen]
        picked[frac] = chosen
    assert len(picked[0.01]) == 1 and len(picked[0.1]) == 2 and len(picked[1.0]) == 15
    assert picked[0.01] <= picked[0.1] <= picked[1.0]  # nested subsets
    assert select_groups(groups, 0.1, seed=3) == select_groups(groups, 0.1, seed=3)
    with pytest.raises(ValueError, match="fraction"):
        select_groups(groups, 0.0)


def _busi(shared_data, per_class: int):
    from sonofm.datasets.sources.adapters import get_adapter
    from sonofm.finetune.data import encode_labels

    adapter = get_adapter("busi", shared_data / "busi")
    items = adapter.items()
    chosen = [it for c in ("benign", "malignant", "normal") for it in [i for i in items if i.meta["label"] == c][:per_class]]
    samples = load_samples((r for it in chosen for r in adapter.load(it)), binary_mask=True)
    classes = encode_labels(samples)
    return samples, classes


@pytest.mark.parametrize("use_prompts", [True, False])
def test_prompt_model_trains_on_busi_cls_and_cca_seg(shared_data, tmp_path, use_prompts):
    from sonofm.finetune.universal import TaskSpec, run_universal

    busi, classes = _busi(shared_data, 4)
    cca_train, cca_val = _cca(shared_data, {0: 3, 1: 3}), _cca(shared_data, {2: 2})
    tasks = [
        TaskSpec("busi", "cls", busi[::2] + busi[1::4], busi[1::2], "breast", "tumour", len(classes), classes),
        TaskSpec("cca", "seg", cca_train, cca_val, "carotid", "organ", 2),
    ]
    rep = run_universal(
        "random:convnextv2_atto", tasks, tmp_path / "uni", img_size=SIZE, steps=6, batch_size=4, lr=2e-3,
        warmup_steps=1, eval_every=3, decoder_channels=32, use_prompts=use_prompts, seed=1,
    )
    assert set(rep["steps_per_dataset"]) == {"busi", "cca"} and all(rep["steps_per_dataset"].values())
    final = rep["final"]["datasets"]
    assert {"accuracy", "balanced_accuracy", "macro_f1", "auroc"} <= set(final["busi"])
    assert {"dice", "iou", "hd95"} <= set(final["cca"])
    assert rep["final"]["mean_score"] == pytest.approx((final["busi"]["score"] + final["cca"]["score"]) / 2)
    assert all(np.isfinite(v).all() for v in rep["losses"].values())
    if use_prompts:
        assert max(rep["gates"]) > 0  # the zero-initialised gates learnt something
    else:
        assert rep["gates"] is None
    assert (tmp_path / "uni" / "best" / "model.safetensors").is_file()


def test_label_efficiency_curve_on_cca(shared_data, tmp_path):
    import json

    from sonofm.finetune.label_efficiency import run_label_efficiency
    from sonofm.finetune.seg_train import run_seg_finetune

    train, val = _cca(shared_data, {0: 2, 1: 2, 3: 2}), _cca(shared_data, {2: 2})
    n_train = {}

    def train_fn(spec, frac, run_dir):
        rep = run_seg_finetune(spec, train, val, run_dir, img_size=SIZE, steps=2, batch_size=2, warmup_steps=0,
                               eval_every=0, decoder_channels=16, label_fraction=frac, n_overlays=0)
        n_train[(spec, frac)] = rep["n_train"]
        return rep["final"]["dice"]

    encoders = {"ConvNeXt-V2 atto (random)": "random:convnextv2_atto", "ConvNeXt atto (random)": "random:convnext_atto"}
    res = run_label_efficiency(encoders, train_fn, tmp_path / "le", fractions=(0.34, 1.0), metric="Dice")
    assert set(res) == set(encoders) and all(set(v) == {0.34, 1.0} for v in res.values())
    # 0.34 of 3 recordings = 2 whole recordings (2 frames each); 1.0 = all 3
    assert {n_train[(s, 0.34)] for s in encoders.values()} == {4}
    assert {n_train[(s, 1.0)] for s in encoders.values()} == {6}
    assert (tmp_path / "le" / "label_efficiency.png").stat().st_size > 2000
    saved = json.loads((tmp_path / "le" / "results.json").read_text())
    assert saved["metric"] == "Dice" and len(saved["results"]) == 2


def test_samples_from_shards_follow_the_shard_layout(tmp_path):
    import io
    import json
    import tarfile

    from PIL import Image

    from sonofm.finetune.data import samples_from_shards

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    img = (np.arange(48 * 40) % 251).astype(np.uint8).reshape(48, 40)
    mask = np.zeros((48, 40), np.uint8)
    mask[10:20, 5:15] = 255
    with tarfile.open(tmp_path / "cca-val-000000.tar", "w") as tar:
        for name, data in (("cca-a.png", png(img)), ("cca-a.mask.png", png(mask)),
                           ("cca-a.json", json.dumps({"source": "cca", "group": "r1", "path": "a.png"}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (s,) = samples_from_shards(tmp_path, "val", binary_mask=True)
    assert np.array_equal(s.image, img) and s.mask.max() == 1 and s.mask.sum() == 100
    assert s.group == "r1" and s.meta["key"] == "cca-a"


def test_infer_task_specs_from_metadata(shared_data):
    from sonofm.finetune.universal import infer_task_spec

    busi, _ = _busi(shared_data, 2)
    cca = _cca(shared_data, {0: 2})
    for s in busi:
        s.meta["organ"] = "breast"
    for s in cca:
        s.meta["organ"] = "carotid"
    b = infer_task_spec("busi", busi[:4], busi[4:])
    assert (b.task, b.nature, b.organ) == ("cls", "tumour", "breast")
    assert b.classes == ["normal", "benign", "malignant"]  # the taxonomy's order fixes the class ids
    assert [s.label for s in busi] == [1, 1, 2, 2, 0, 0]
    c = infer_task_spec("cca", cca, cca)
    assert (c.task, c.nature, c.organ, c.num_classes) == ("seg", "organ", "carotid", 2)
    with pytest.raises(ValueError, match="one organ"):
        infer_task_spec("mixed", busi + cca, [])


@pytest.mark.parametrize("hw", [(90, 60), (50, 130), (64, 64)])
def test_letterbox_round_trip_restores_the_original_mask(hw):
    from sonofm.datasets.stream.augment import eval_sample
    from sonofm.evaluation.metrics import dice_score
    from sonofm.finetune.data import letterbox_window, logits_to_original

    h, w = hw
    mask = np.zeros(hw, np.uint8)
    mask[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = 1
    lb = eval_sample(np.zeros(hw, np.uint8), None, mask, SIZE)["mask"]
    oy, ox, nh, nw = letterbox_window(h, w, SIZE)
    assert lb[:oy].sum() == 0 and lb[oy + nh :].sum() == 0 and lb[:, :ox].sum() == 0  # padding outside
    logits = torch.nn.functional.one_hot(lb, 2).permute(2, 0, 1).float()
    back = logits_to_original(logits, hw).argmax(0).numpy()
    assert back.shape == hw and dice_score(back, mask) > 0.95


def _write_tiny_shards(folder, source="tiny", organ="breast"):
    """Hand-made shards in the documented layout: 8 train + 4 val + 8 test samples, masks and labels."""
    import io
    import json
    import tarfile

    from PIL import Image

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split, n in (("train", 8), ("val", 4), ("test", 8)):
        with tarfile.open(folder / f"{source}-{split}-000000.tar", "w") as tar:
            for i in range(n):
                label = ["benign", "malignant"][i % 2]
                img = (rng.random((40, 48)) * 120).astype(np.uint8)
                mask = np.zeros((40, 48), np.uint8)
                mask[10:20 + 5 * (i % 2), 12:30] = 1
                img[mask > 0] += 100
                meta = {"source": source, "organ": organ, "label": label, "group": f"{split}{i // 2}",
                        "split": split, "path": f"{split}{i}.png"}
                for name, data in ((f"{source}-{split}{i}.png", png(img)), (f"{source}-{split}{i}.mask.png", png(mask)),
                                   (f"{source}-{split}{i}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def test_config_entry_points_run_on_shards(tmp_path):
    from sonofm.config import FinetuneConfig, ProbeConfig, load_config
    from sonofm.evaluation.cli_entry import probe_from_config
    from sonofm.finetune.cli_entry import finetune_from_config

    shards = str(_write_tiny_shards(tmp_path / "shards"))
    cfg = load_config(ProbeConfig, None, [f"data.shards=[{shards}]", "data.split=test", "data.img_size=32",
                                          "data.num_workers=0", f"out_dir={tmp_path / 'probe'}", "folds=2", "knn_k=3"])
    rep = probe_from_config(cfg)
    assert rep["n_samples"] == 8 and rep["classes"] == ["benign", "malignant"] and rep["n_groups"] == 4
    common = ["steps=2", "eval_every=0", "data.img_size=32", "data.batch_size=4", "optim.warmup_steps=1",
              "seg.decoder_channels=16"]
    cfg = load_config(FinetuneConfig, None, ["task=seg", f"data.shards=[{shards}]", f"out_dir={tmp_path / 'seg'}",
                                             *common])
    rep = finetune_from_config(cfg)
    assert rep["n_train"] == 8 and rep["n_val"] == 4 and "dice" in rep["final"]
    cfg = load_config(FinetuneConfig, None, ["task=universal", f"datasets=[{shards}]", f"out_dir={tmp_path / 'uni'}",
                                             *common])
    rep = finetune_from_config(cfg)
    assert set(rep["final"]["datasets"]) == {"tiny"} and "balanced_accuracy" in rep["final"]["datasets"]["tiny"]
