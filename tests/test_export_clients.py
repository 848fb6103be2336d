"""The exported backbone loads, strictly and with the same features, in the clients users have:
plain timm, timm ``features_only`` and segmentation_models_pytorch ``tu-`` encoders (the snippet
the model card shows, run as written); and no exported file records a local path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp  # a declared dev dependency: the client under test
import timm
import torch
from safetensors.torch import load_file

from sonofm.export import FEATURES_NAME, export_backbone
from tests.test_export import ARCH, SIZE, make_run


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("clients")
    run, _ = make_run(root, hier=True)
    return root, export_backbone(run, root / "out")


def _features(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return model.forward_intermediates(x, intermediates_only=True)


def test_features_file_loads_strictly_into_smp_tu_encoder(exported: tuple[Path, Path]) -> None:
    _, out = exported
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    unet = smp.Unet(f"tu-{ARCH}", encoder_weights=None, in_channels=1)
    unet.encoder.model.load_state_dict(load_file(str(out / FEATURES_NAME)), strict=True)
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        got = unet.encoder.model.eval()(x)
        want = _features(plain, x)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_features_only_timm_from_either_file(exported: tuple[Path, Path]) -> None:
    _, out = exported
    via_hub_path = timm.create_model(f"local-dir:{out}", pretrained=True, features_only=True).eval()
    fresh = timm.create_model(ARCH, pretrained=False, features_only=True, in_chans=1).eval()
    fresh.load_state_dict(load_file(str(out / FEATURES_NAME)), strict=True)
    x = torch.rand(1, 1, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(via_hub_path(x), fresh(x)):
            torch.testing.assert_close(a, b)


def test_card_snippets_run_as_written(exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```python block of the card runs from the export's parent folder (where its
    ``local-dir:`` name points) without sonofm."""
    root, out = exported
    card = (out / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert any("segmentation_models_pytorch" in b for b in blocks), "the card shows no smp snippet"
    monkeypatch.chdir(root)
    from PIL import Image

    Image.new("L", (SIZE + 16, SIZE), 128).save(root / "frame.png")  # the frame the timm snippet opens
    for block in blocks:
        code = block.replace('"hf-hub:<namespace>/<repo>"', f'"local-dir:{out.name}"')
        assert "sonofm" not in re.sub(r"#.*", "", code), code  # users need timm (and smp), not sonofm
        exec(compile(code, "model card", "exec"), {})


def test_no_local_paths_in_the_export(exported: tuple[Path, Path]) -> None:
    root, out = exported
    for name in ("config.json", "README.md"):
        text = (out / name).read_text()
        assert str(root) not in text and str(Path.cwd()) not in text, name
        assert not re.search(r"(?<![\w:])/(tmp|home|root|Users|work)/", text), name
