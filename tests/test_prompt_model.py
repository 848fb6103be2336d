"""Prompt model: zero gates make prompts inert at initialisation, open gates make them matter; type views."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from sonofm.finetune.prompt_types import apply_type, sample_type, taxonomy_organs
from sonofm.finetune.tasks import get_task_kind
from sonofm.models.input_norm import set_input_stats
from sonofm.models.prompt_model import Prompt, PromptModel, PromptVocab

ORGANS = ["breast", "carotid", "thyroid"]


def _model(**kw):
    torch.manual_seed(0)
    enc = set_input_stats(timm.create_model("convnextv2_atto", pretrained=False, in_chans=1, num_classes=0))
    return PromptModel(enc, ORGANS, seg_heads={"cca": 2}, cls_heads={"busi": 3}, decoder_channels=32, **kw).eval()


PA = [Prompt("breast", "cls", "whole", "tumour"), Prompt("carotid", "seg", "local", "organ")]
PB = [Prompt("thyroid", "seg", "location", "organ"), Prompt("breast", "cls", "whole", "tumour")]


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_zero_gates_make_output_independent_of_prompt(gate):
    model = _model(gate=gate)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        for task, ds in (("seg", "cca"), ("cls", "busi")):
            assert torch.equal(model(x, ds, task, PA), model(x, ds, task, PB))
        # opening the gates makes the prompt matter (so the check above can fail)
        for g in model.prompt.gates:
            g.fill_(0.5)
        for task, ds in (("seg", "cca"), ("cls", "busi")):
            assert not torch.allclose(model(x, ds, task, PA), model(x, ds, task, PB))


def test_gates_learn_and_prompt_free_variant():
    model = _model().train()
    x = torch.randn(2, 1, 64, 64)
    model(x, "busi", "cls", PA).sum().backward()
    assert model.prompt.gates[4].grad is not None and model.prompt.gates[4].grad.abs().sum() > 0
    free = _model(use_prompts=False)
    assert free.prompt is None and not any("prompt" in n for n, _ in free.named_parameters())
    assert free(x, "cca", "seg").shape == (2, 2, 64, 64)
    assert free(x, "busi", "cls").shape == (2, 3)
    with pytest.raises(ValueError, match="pass one Prompt"):
        _model()(x, "busi", "cls")
    with pytest.raises(KeyError, match="no classification head"):
        free(x, "cca", "cls")


def test_vocab():
    vocab = PromptVocab(ORGANS)
    assert vocab.dim == 3 + 4 + 3 + 2  # organs, task kinds (seg, cls, det, kp), types, natures
    v = vocab.encode([Prompt("carotid", "seg", "local", "organ")])
    assert v.tolist() == [[0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1]]
    with pytest.raises(ValueError, match="organ='liverx'"):
        vocab.encode([Prompt("liverx", "seg")])
    organs = taxonomy_organs()
    assert "breast" in organs and "carotid" in organs


def test_type_views():
    image = torch.rand(1, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[10:14, 20:24] = 1
    img, m, kind = apply_type(image, mask, "local")
    assert kind == "local" and img.shape == (1, 32, 32) and m.shape == (32, 32)
    assert m.float().mean() > mask.float().mean() * 4  # the lesion fills much more of the crop
    img, m, kind = apply_type(image, mask, "location", alpha=0.4)
    assert kind == "location" and torch.equal(m, mask)
    assert torch.allclose(img[0, 11, 21], 0.6 * image[0, 11, 21] + 0.4)
    assert torch.allclose(img[0, 0, 0], 0.6 * image[0, 0, 0])
    # no foreground: stays whole
    img, m, kind = apply_type(image, torch.zeros(32, 32, dtype=torch.long), "local")
    assert kind == "whole" and torch.equal(img, image)
    rng = np.random.default_rng(0)
    seg, cls = get_task_kind("seg").prompt_types, get_task_kind("cls").prompt_types
    kinds = {sample_type(seg, True, rng) for _ in range(50)}
    assert kinds == {"whole", "local"}
    assert {sample_type(cls, True, rng) for _ in range(50)} == {"whole", "local", "location"}
    assert sample_type(cls, False, rng) == "whole"
    assert {sample_type(get_task_kind("det").prompt_types, True, rng) for _ in range(20)} == {"whole"}
