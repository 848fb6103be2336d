"""``sonofm export``: timm-format round trip, strict key checks, EMA, model card, Hub dry run.

Runs are real: a ``PretrainModel`` (atto, 64 px) with perturbed weights saved through the
pretraining checkpoint code, a resolved ``config.yaml`` and hand-written shard indexes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from sonofm.checkpoints import save_checkpoint
from sonofm.config import PretrainConfig, save_config
from sonofm.config.schema import DataConfig, DecoderConfig, HierarchyConfig, ModelConfig
from sonofm.export import EXPORT_FILES, ExportError, export_backbone, input_normalisation
from sonofm.model_card import load_results, results_table
from sonofm.models.encoder import masked_forward_features
from sonofm.models.loading import IncompatibleCheckpointError
from sonofm.models.pretrain_model import PretrainModel

SIZE = 64
ARCH = "convnextv2_atto"
#: region(2) -> organ(3) -> source(4) -> leaf(6), built by hand.
TREE = {
    "levels": ["region", "organ", "source", "leaf"],
    "sizes": {"region": 2, "organ": 3, "source": 4, "leaf": 6},
    "parents": {"organ": [0, 0, 1], "source": [0, 1, 2, 2], "leaf": [0, 0, 1, 2, 3, 3]},
}
INDEXES = {
    "busi": {"split": {"train": 620, "val": 81, "test": 79}, "organ": {"breast": 780},
             "label": {"benign": 437, "malignant": 210, "normal": 133}},
    "pocus": {"split": {"train": 1500, "val": 210, "test": 190}, "organ": {"lung": 1900},
              "label": {"covid": 700, "pneumonia": 500, "regular": 600, "viral": 100}},
}


def _write_index(shard_dir: Path, source: str, counts: dict) -> None:
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = [{"file": f"{source}-{s}-000000.tar", "split": s, "count": n} for s, n in counts["split"].items()]
    index = {"source": source, "shards": shards, "counts": counts, "report": {}}
    if source == "busi":  # indexes store their source's taxonomy entry (pocus's here is an older one without)
        index["taxonomy"] = {"source": {"name": "busi", "organ": "breast", "region": "thorax", "declared": True}}
    (shard_dir / f"{source}.index.json").write_text(json.dumps(index))


def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Move every parameter away from its initial value (GRN gamma/beta start at 0 in ConvNeXt-V2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def make_run(root: Path, *, hier: bool = True, ema: bool = False, ckpt_arch: str = ARCH,
             sources: tuple[str, ...] = ("busi", "pocus"), extra_shards: tuple[str, ...] = ()) -> tuple[Path, PretrainModel]:
    """A pretraining run dir as the engine leaves it: config.yaml + checkpoints/step-N + last."""
    torch.manual_seed(0)
    run = root / "run"
    shard_dir = root / "shards"
    for s in sources:
        _write_index(shard_dir, s, INDEXES.get(s, {"split": {"train": 10}, "organ": {"phantom": 10}, "label": {}}))
    model = PretrainModel(encoder=ckpt_arch, in_chans=1, img_size=SIZE, dec_dim=32,
                          hier_weight=0.1 if hier else 0.0, tree=TREE if hier else None)
    _perturb(model, seed=1)
    ema_state = None
    if ema:
        ema_model = PretrainModel(encoder=ckpt_arch, in_chans=1, img_size=SIZE, dec_dim=32,
                                  hier_weight=0.1 if hier else 0.0, tree=TREE if hier else None)
        ema_model.load_state_dict(model.state_dict())
        _perturb(ema_model, seed=2)
        ema_state = ema_model.state_dict()
    cfg = PretrainConfig(
        run_dir=str(run), steps=7, ema=0.99 if ema else 0.0,
        data=DataConfig(shards=[str(shard_dir), *extra_shards], img_size=SIZE, batch_size=4),
        model=ModelConfig(name=ARCH, in_chans=1),
        decoder=DecoderConfig(kind="fcmae", dim=32),
        hierarchy=HierarchyConfig(weight=0.1 if hier else 0.0),
    )
    save_config(cfg, run)
    state = {"samples_per_rank": 28, "world_size": 1, "images_seen": 28, "model": ckpt_arch, "in_chans": 1,
             "img_size": SIZE}
    save_checkpoint(run, 7, model.state_dict(), None, state, ema_state=ema_state)
    model.eval()
    if ema:
        model.load_state_dict(ema_state)  # the reference for an EMA export
    return run, model


def _gray_input(seed: int = 0) -> tuple[Image.Image, torch.Tensor]:
    """A grayscale PIL image and the same pixels as a [1, 1, H, W] tensor in [0, 1]."""
    arr = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    return Image.fromarray(arr, mode="L"), torch.from_numpy(arr).float().div(255)[None, None]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, PretrainModel]:
    root = tmp_path_factory.mktemp("export")
    run, model = make_run(root, hier=True)
    out = export_backbone(run, root / "out")
    return run, out, model


def test_files_and_config(exported):
    _, out, model = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPORT_FILES)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == ARCH and cfg["num_classes"] == 0
    assert cfg["num_features"] == model.encoder.num_features == 320
    assert cfg["global_pool"] == "avg" and cfg["model_args"] == {"in_chans": 1}
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [1, SIZE, SIZE]
    assert pc["mean"] == [model.input_mean] == [0.5] and pc["std"] == [model.input_std] == [0.25]
    assert pc["first_conv"] == "stem.0" and pc["classifier"] == "head.fc" and pc["license"] == "cc-by-nc-4.0"
    assert {"interpolation", "crop_pct"} <= set(pc)
    assert cfg["sonofm"]["step"] == 7 and cfg["sonofm"]["images_seen"] == 28 and cfg["sonofm"]["recipe"]
    keys = set(load_file(str(out / "model.safetensors")))
    assert keys == set(model.encoder.state_dict())  # timm names: no prefix, no decoder, heads or classifier
    assert not any(k.startswith(("encoder.", "decoder.", "hier.", "head.fc")) for k in keys)
    assert not list(out.parent.glob(".out.export-tmp-*"))  # temp folder cleaned up


def test_features_only_round_trip_matches_run_encoder(exported):
    _, out, model = exported
    img, x01 = _gray_input()
    feat_model = timm.create_model(f"local-dir:{out}", pretrained=True, features_only=True).eval()
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    data_cfg = timm.data.resolve_data_config({}, model=plain)
    assert data_cfg["input_size"] == (1, SIZE, SIZE)
    assert tuple(data_cfg["mean"]) == (0.5,) and tuple(data_cfg["std"]) == (0.25,)
    x = timm.data.create_transform(**data_cfg)(img).unsqueeze(0)  # timm's own preprocessing
    with torch.no_grad():
        ref_in = (x01 - model.input_mean) / model.input_std  # what the run feeds its encoder
        assert torch.allclose(x, ref_in, atol=1e-6)
        ones = torch.ones(1, SIZE // 32, SIZE // 32)
        ref = masked_forward_features(model.encoder, ref_in, ones)  # the pretraining code path
        got = feat_model(x)
        assert len(got) == 4
        for a, b in zip(got, ref.stages):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
        inter = model.encoder.forward_intermediates(ref_in, intermediates_only=True)
        for a, b in zip(got, inter):
            assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(plain.forward_features(x), model.encoder.forward_features(ref_in), atol=1e-5)
        assert torch.allclose(plain(x), model.encoder(ref_in), atol=1e-5)
        # what the card promises for RGB pipelines: in_chans=3 with the gray image in every channel
        rgb = timm.create_model(f"local-dir:{out}", pretrained=True, in_chans=3).eval()
        assert torch.allclose(rgb(x.repeat(1, 3, 1, 1)), plain(x), atol=1e-4)
        # the perturbed weights really came through: a random init differs
        fresh = timm.create_model(ARCH, pretrained=False, in_chans=1, num_classes=0).eval()
        assert not torch.allclose(fresh.forward_features(x), plain.forward_features(x), atol=1e-3)


def test_downstream_loader_reads_the_export(exported):
    """sonofm's own probe/finetune loader takes the exported folder and the run alike."""
    from sonofm.models.loading import load_encoder

    run, out, _ = exported
    from_export, info = load_encoder(str(out))
    from_run, _ = load_encoder(str(run))
    assert info["kind"] == "timm" and info["name"] == ARCH
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(from_export.forward_features(x), from_run.forward_features(x))


def test_card_lists_data_counts_licences_and_usage(exported):
    _, out, _ = exported
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\nlicense: cc-by-nc-4.0\n")
    assert ("| busi | thorax / breast | 780 | 620 | 81 | 79 | breast: 780 | benign: 437, malignant: 210, "
            "normal: 133 |") in card
    assert "| pocus | not recorded | 1900 | 1500 | 210 | 190 | lung: 1900 |" in card
    assert "| **total** | | 2680 | 2120 | 291 | 269 |" in card
    assert "Non-commercial" in card and "CC0" in card
    assert "**7 steps**" in card and "**28 images seen**" in card
    assert f'timm.create_model("hf-hub:<namespace>/<repo>", pretrained=True)  # or "local-dir:{out.name}"' in card
    assert "features_only=True" in card and "1-channel input" in card
    assert "hierarchical taxonomy classifier" in card and "No downstream results" in card


def test_ema_export_uses_ema_weights(tmp_path):
    run, ema_ref = make_run(tmp_path, hier=False, ema=True, sources=("synth_breast_linear_a",))
    out = export_backbone(run, tmp_path / "ema_out", use_ema=True)
    saved = load_file(str(out / "model.safetensors"))
    enc = ema_ref.encoder.state_dict()
    assert all(torch.equal(saved[k], enc[k]) for k in enc)
    raw = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert not torch.equal(saved["stem.0.weight"], raw["encoder.stem.0.weight"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sonofm"]["weights"] == "ema" and cfg["pretrained_cfg"]["license"] == "apache-2.0"
    assert "EMA weights (decay 0.99)" in (out / "README.md").read_text()


def test_use_ema_without_ema_is_a_clear_error(tmp_path):
    run, _ = make_run(tmp_path, hier=False, ema=False)
    with pytest.raises(FileNotFoundError, match=r"ema\.safetensors: this run has no EMA weights"):
        export_backbone(run, tmp_path / "out", use_ema=True)
    assert not (tmp_path / "out").exists()


def test_wrong_architecture_lists_mismatched_keys(tmp_path):
    run, _ = make_run(tmp_path, hier=False, ckpt_arch="convnextv2_femto")  # config.yaml says atto
    with pytest.raises(IncompatibleCheckpointError) as err:
        export_backbone(run, tmp_path / "out")
    msg = str(err.value)
    assert "shape mismatch (138)" in msg and "head.norm.weight: checkpoint (384,) vs model (320,)" in msg
    assert "state.json says model=convnextv2_femto" in msg
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.export-tmp-*"))


def test_missing_keys_are_listed(tmp_path):
    run, _ = make_run(tmp_path, hier=False, ckpt_arch="convnextv2_nano")  # 8 blocks in stage 2, atto 6
    with pytest.raises(IncompatibleCheckpointError, match=r"unexpected \(\d+\): stages\.\d\.blocks"):
        export_backbone(run, tmp_path / "out")


def test_results_table_and_missing_index_note(tmp_path):
    run, _ = make_run(tmp_path, hier=False, sources=("synth_breast_linear_a",),
                      extra_shards=(str(tmp_path / "gone"),))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({
        "busi_cls": {"pretrained": {"balanced_accuracy": {"mean": 0.81234, "std": 0.0211}, "auroc": 0.9},
                     "random": {"balanced_accuracy": {"mean": 0.5, "std": 0.01}, "auroc": 0.6}},
        "cca_seg": {"dice": 0.9134, "hd95": 3.2, "folds": [0.9, 0.92]},
    }))
    out = export_backbone(run, tmp_path / "out", results=results)
    card = (out / "README.md").read_text()
    # a hand-written nested file: each number a row; what it does not say (data, split, protocol) shows as —
    assert "| busi_cls | — | — | — | pretrained | balanced accuracy | 0.812 ± 0.021 | — |" in card
    assert "| busi_cls | — | — | — | random | AUROC | 0.600 | — |" in card
    assert "| cca_seg | — | — | — | — | Dice | 0.913 | — |" in card and "| cca_seg | — | — | — | — | folds" not in card
    assert f"`{tmp_path / 'gone'}`: shard index not found" in card
    assert "Non-commercial" not in card
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: results must be a JSON object"):
        load_results(bad)
    with pytest.raises(ExportError, match="bad.json: results must be a JSON object"):
        export_backbone(run, tmp_path / "out2", results=bad)
    assert not (tmp_path / "out2").exists()
    assert results_table({"t": {"acc": 1}}).splitlines()[2] == "| t | — | — | — | — | acc | 1.000 | — |"


def test_reexport_replaces_files_in_existing_folder(exported, tmp_path):
    run, out, _ = exported
    target = tmp_path / "again"
    target.mkdir()
    (target / "keep.txt").write_text("user file")
    (target / "config.json").write_text("{}")
    export_backbone(run, target)
    assert json.loads((target / "config.json").read_text())["architecture"] == ARCH
    assert (target / "keep.txt").read_text() == "user file"
    assert (target / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_failed_check_leaves_old_export_untouched(exported, tmp_path, monkeypatch):
    import sonofm.export as export_mod

    run, _, _ = exported
    target = tmp_path / "old"
    target.mkdir()
    (target / "config.json").write_text('{"old": true}')

    def broken(*a, **k):
        raise RuntimeError("simulated failed round-trip check")

    monkeypatch.setattr(export_mod, "_verify_folder", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        export_backbone(run, target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert json.loads((target / "config.json").read_text()) == {"old": True}
    assert not list(tmp_path.glob(".old.export-tmp-*"))


def test_dry_run_lists_files_and_repo_without_network(exported, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    class NoNetwork:
        def __init__(self, *a, **k):
            raise AssertionError("HfApi must not be constructed in a dry run")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)
    run, _, _ = exported
    out = export_backbone(run, tmp_path / "dry", push_to_hub="someone/sonofm-atto", dry_run=True)
    text = capsys.readouterr().out
    assert "would upload to Hub repo someone/sonofm-atto" in text and "nothing uploaded" in text
    for name in EXPORT_FILES:
        size = (out / name).stat().st_size
        assert name in text
        assert size > 0
    assert "MB" in text or "kB" in text
    card = (out / "README.md").read_text()
    assert 'timm.create_model("hf-hub:someone/sonofm-atto", pretrained=True)' in card
    with pytest.raises(ExportError, match="not a valid Hub repo id"):
        export_backbone(run, tmp_path / "x", push_to_hub="bad repo//id", dry_run=True)
    assert not (tmp_path / "x").exists()


def test_push_calls_hub_api(exported, tmp_path, monkeypatch):
    """The real upload path: repo created (exist_ok) and exactly the export's files uploaded."""
    import huggingface_hub

    calls: list[tuple[str, dict]] = []

    class RecordingApi:
        def create_repo(self, **kw):
            calls.append(("create_repo", kw))
            return f"https://huggingface.co/{kw['repo_id']}"

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    run, _, _ = exported
    out = export_backbone(run, tmp_path / "push", push_to_hub="someone/sonofm-atto")
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1]["repo_id"] == "someone/sonofm-atto" and calls[0][1]["exist_ok"] is True
    up = calls[1][1]
    assert up["folder_path"] == str(out) and sorted(up["allow_patterns"]) == sorted(EXPORT_FILES)


def test_push_failure_keeps_export_and_explains(exported, tmp_path):
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (set by conftest) so the real client refuses without network")
    run, _, _ = exported
    with pytest.raises(ExportError, match="push to the Hub repo 'someone/sonofm-atto' failed"):
        export_backbone(run, tmp_path / "off", push_to_hub="someone/sonofm-atto")
    assert all((tmp_path / "off" / n).is_file() for n in EXPORT_FILES)


def test_input_normalisation_matches_pretrain_model():
    m = PretrainModel(encoder=ARCH, img_size=SIZE, dec_dim=16)
    assert input_normalisation() == (m.input_mean, m.input_std)


@pytest.mark.slow  # a fresh interpreter importing torch + timm: ~15 s on a busy 2-core machine
def test_cli_export_dry_run(exported, tmp_path):
    run, _, _ = exported
    out = tmp_path / "cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sonofm", "export", str(run), str(out), "--push-to-hub", "someone/repo", "--dry-run"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "someone/repo" in proc.stdout and "model.safetensors" in proc.stdout
    assert all((out / n).is_file() for n in EXPORT_FILES)


def test_cli_errors_are_clean(exported, tmp_path, capsys):
    from sonofm.cli import main

    run, _, _ = exported
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "sonofm export: error: run folder not found" in capsys.readouterr().err
    assert main(["export", str(run), str(tmp_path / "out"), "--ema"]) == 2
    assert "this run has no EMA weights" in capsys.readouterr().err


def test_downstream_features_of_the_export_match_the_run(exported):
    """sonofm's own downstream path on the export normalises with the exported mean / std, as the run did."""
    from sonofm.evaluation.features import pooled_features
    from sonofm.models.loading import load_encoder

    _, out, model = exported
    enc, info = load_encoder(str(out))
    assert info["input_mean"] == [0.5] and info["input_std"] == [0.25]
    _, x01 = _gray_input(3)
    with torch.no_grad():
        ref_in = (x01 - model.input_mean) / model.input_std
        ref = masked_forward_features(model.encoder, ref_in, torch.ones(1, SIZE // 32, SIZE // 32))
        want = model.encoder.forward_head(ref.last, pre_logits=True)
        assert torch.allclose(pooled_features(enc, x01), want, atol=1e-5)
