"""Continued pretraining (``model.init=<spec>``) from weights in a Hugging Face cache the test writes
itself (``fake_hub``, offline): the encoder starts from them (decoder and heads new), the run's config,
checkpoints, export and card name the source, a kill resumes exactly, and a wrong architecture or a
changed init is refused before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sonofm.checkpoints import latest_checkpoint, load_checkpoint, read_state
from sonofm.config import PretrainConfig, load_config
from sonofm.models.encoder_spec import spec_architecture
from sonofm.models.init_weights import InitArchitectureError
from tests.conftest import HUB_NAME, synthetic_shards
from tests.test_pretrain import _losses, _overrides, _run

SPEC = f"timm:{HUB_NAME}"
GREY = ((0.485 + 0.456 + 0.406) / 3, (0.229 + 0.224 + 0.225) / 3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_shards(tmp_path_factory.mktemp("synth"), n=32, seed=2, size=64,
                            splits={"train": 1.0, "val": 0.0, "test": 0.0}, samples_per_shard=8)


def _args(shards: Path, run: Path, **extra: object) -> list[str]:
    return _overrides(shards, run, **{"steps": 8, "model.init": SPEC, "logging.sample_every": 0, **extra})


def _tree(cfg: PretrainConfig):
    from sonofm.pretrain.engine import taxonomy_for

    return taxonomy_for(cfg).tree() if cfg.hierarchy.weight > 0 else None


def test_encoder_starts_from_init_and_decoder_is_new(fake_hub, shards: Path) -> None:
    from accelerate.utils import set_seed

    from sonofm.pretrain.engine import _start_weights, build_model

    _, rgb = fake_hub
    cfg = load_config(PretrainConfig, "configs/pretrain/quickstart.yaml", _args(shards, Path("unused")))
    set_seed(0)
    model = build_model(cfg, _tree(cfg))
    set_seed(0)
    fresh = build_model(cfg, _tree(cfg))
    init = _start_weights(model, cfg, None, None)
    assert init["spec"] == SPEC and init["adapted_from_chans"] == 3 and init["source"] == f"timm/{HUB_NAME}"
    enc = model.encoder.state_dict()
    for k, v in rgb.state_dict().items():
        if not k.startswith("head.fc"):  # timm's stem adaptation sums the RGB kernels
            assert torch.allclose(enc[k], v.sum(1, keepdim=True) if k == "stem.0.weight" else v), k
    for part in ("decoder", "hier"):  # the decoder and heads are the ones a fresh run builds
        new, ref = getattr(model, part).state_dict(), getattr(fresh, part).state_dict()
        assert all(torch.equal(new[k], ref[k]) for k in new), part
    assert (model.input_mean, model.input_std) == pytest.approx(GREY)


def test_init_run_resumes_exactly_after_kill_and_exports_its_source(fake_hub, shards: Path, tmp_path: Path) -> None:
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    _run(_args(shards, full))
    proc = _run(_args(shards, crashed), env_extra={"SONOFM_FAULT": "after_step:6"}, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert latest_checkpoint(crashed).name == "step-00000004"
    _run([*_args(shards, crashed), "--resume", "auto"])
    a, b = _losses(full), _losses(crashed)
    assert sorted(b) == list(range(1, 9))
    for step in range(5, 9):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), f"step {step}: {b[step]} vs {a[step]}"
    ca, cb = load_checkpoint(latest_checkpoint(full)), load_checkpoint(latest_checkpoint(crashed))
    assert all((ca["model"][k] - cb["model"][k]).abs().max() < 1e-5 for k in ca["model"])

    assert load_config(PretrainConfig, full / "config.yaml").model.init == SPEC  # the run's config names it
    state = read_state(latest_checkpoint(full))
    assert state["init"]["spec"] == SPEC and state["input_mean"] == pytest.approx([GREY[0]])

    refused = _run([*_args(shards, crashed, **{"model.init": "null", "steps": 10}), "--resume", "auto"], check=False)
    assert refused.returncode != 0 and f"started from model.init={SPEC}" in refused.stderr

    from sonofm.export import export_backbone
    from sonofm.models.input_norm import input_stats
    from sonofm.models.loading import load_encoder

    out = export_backbone(full, tmp_path / "export")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pretrained_cfg"]["mean"] == pytest.approx([GREY[0]]) and cfg["sonofm"]["init"]["spec"] == SPEC
    assert f"Initial weights: `{SPEC}`" in (out / "README.md").read_text()
    enc, info = load_encoder(str(full))  # the run and its export carry the statistics it trained with
    assert input_stats(enc)[0] == pytest.approx((GREY[0],)) and info["init"] == SPEC
    assert input_stats(load_encoder(str(out))[0]) == input_stats(enc)

    # the export as a Hub repository (hf-hub:<org>/<repo>, here in the test's cache): timm loads it as is
    cache, _ = fake_hub
    rev = "1" * 40
    snap = cache / "models--me--sonofm-atto" / "snapshots" / rev
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(out / name, snap / name)
    (cache / "models--me--sonofm-atto" / "refs").mkdir()
    (cache / "models--me--sonofm-atto" / "refs" / "main").write_text(rev)
    hub, hub_info = load_encoder("hf-hub:me/sonofm-atto")
    assert hub_info["adapted_from_chans"] is None and input_stats(hub) == input_stats(enc)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in hub.state_dict().items())
    assert spec_architecture("hf-hub:me/sonofm-atto") == "convnextv2_atto"


def test_wrong_architecture_is_refused_before_any_work(fake_hub, tmp_path: Path) -> None:
    from sonofm.pretrain.engine import run_pretraining

    missing = tmp_path / "no-shards-here"
    cfg = load_config(PretrainConfig, "configs/pretrain/quickstart.yaml",
                      _args(missing, tmp_path / "run", **{"model.name": "convnextv2_femto"}))
    with pytest.raises(InitArchitectureError, match="model.init=timm:convnextv2_atto.fcmae_ft_in1k holds "
                                                    "convnextv2_atto weights, but model.name=convnextv2_femto"):
        run_pretraining(cfg)  # the data (missing) is never read, the run folder never made
    assert not (tmp_path / "run").exists()
    proc = _run(_args(missing, tmp_path / "run", **{"model.init": "timm:convnextv2_atto.fcmae"}), check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "hf download timm/convnextv2_atto.fcmae" in lines[0]


def test_per_channel_statistics_normalise_and_stay_out_of_the_state_dict() -> None:
    """A 3-channel run continued from RGB weights keeps their per-channel mean and std (buffers that
    follow the device, not saved: checkpoints stay the encoder's, decoder's and heads' weights)."""
    from sonofm.models import PretrainModel

    model = PretrainModel("convnextv2_atto", in_chans=3, img_size=64, dec_dim=16)
    keys = set(model.state_dict())
    model.set_input_norm([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    x = torch.rand(2, 3, 64, 64)
    want = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(model._normalise(x), want) and set(model.state_dict()) == keys
    assert model.encoder.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    model.set_input_norm(0.5, 0.25)  # one value for all channels: plain numbers again
    assert (model.input_mean, model.input_std) == (0.5, 0.25)
