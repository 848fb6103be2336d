"""UPerNet head: shapes, stride-4 fusion, gradients everywhere, and the CE + Dice loss."""

from __future__ import annotations

import pytest
import timm
import torch

from sonofm.finetune.losses import seg_loss, soft_dice_loss
from sonofm.models.input_norm import set_input_stats
from sonofm.models.upernet import SegModel, UPerNetHead


def _encoder():
    torch.manual_seed(0)
    return set_input_stats(timm.create_model("convnextv2_atto", pretrained=False, in_chans=1, num_classes=0))


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_segmodel_shapes_and_gradients(norm):
    model = SegModel(_encoder(), num_classes=3, channels=32, norm=norm)
    x = torch.randn(2, 1, 64, 96)
    logits = model(x)
    assert logits.shape == (2, 3, 64, 96)
    feats = model.encoder.forward_intermediates(x, intermediates_only=True)
    assert model.decoder.fused(feats).shape == (2, 32, 16, 24)  # fusion at stride 4
    assert len(model.decoder.ppm) == 4 and model.decoder.pool_scales == (1, 2, 3, 6)
    seg_loss(logits, torch.randint(0, 3, (2, 64, 96))).backward()
    # the encoder's pooled-head norm is the only part segmentation does not use
    no_grad = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith("encoder.head.")]
    assert not no_grad, no_grad


def test_every_stage_reaches_the_output():
    head = UPerNetHead([8, 16, 32, 64], num_classes=2, channels=16, dropout=0.0).eval()
    feats = [torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
    base = head(feats)
    for i in range(4):
        changed = [f.clone() for f in feats]
        changed[i] = changed[i] + 1.0
        assert not torch.allclose(head(changed), base), f"stage {i} has no effect"


def test_bad_input_size():
    model = SegModel(_encoder(), num_classes=2, channels=16)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 1, 60, 64))
    with pytest.raises(ValueError, match="num_classes"):
        SegModel(_encoder(), num_classes=1)


def test_dice_loss_values():
    target = torch.tensor([[[0, 1], [1, 1]]])
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, target, smooth=0.0).item() == pytest.approx(0.0, abs=1e-6)
    # uniform prediction: foreground prob 0.5 everywhere: 2 * 1.5 / (2 + 3) = 0.6 -> loss 0.4
    assert soft_dice_loss(torch.zeros(1, 2, 2, 2), target, smooth=0.0).item() == pytest.approx(0.4)
    # an ignored pixel drops out of both terms
    ignored = torch.tensor([[[0, 1], [1, 255]]])
    loss = seg_loss(perfect, ignored, ce_weight=1.0, dice_weight=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_layer_decay_groups_for_convnext_atto():
    from sonofm.finetune.lr_decay import convnext_layer_id, layer_decay_groups

    depths = [2, 2, 6, 2]
    assert convnext_layer_id("stem.0.weight", depths) == 0
    assert convnext_layer_id("stages.0.blocks.1.conv_dw.weight", depths) == 1
    assert convnext_layer_id("stages.1.downsample.1.weight", depths) == 2
    assert convnext_layer_id("stages.2.blocks.2.mlp.fc1.weight", depths) == 3
    assert convnext_layer_id("stages.2.blocks.3.mlp.fc1.weight", depths) == 4
    assert convnext_layer_id("stages.3.blocks.1.gamma", depths) == 5
    assert convnext_layer_id("head.norm.weight", depths) == 6
    model = SegModel(_encoder(), num_classes=2, channels=16)
    groups = layer_decay_groups(model, weight_decay=0.05, layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["encoder.stem.0.weight"]["lr_scale"] == pytest.approx(0.5**6)
    assert by_name["decoder.classifier.weight"]["lr_scale"] == 1.0
    assert by_name["encoder.stages.3.blocks.0.conv_dw.weight"]["lr_scale"] == pytest.approx(0.5)
    assert by_name["encoder.stem.0.bias"]["weight_decay"] == 0.0  # biases and norms: no decay
    assert by_name["decoder.fuse.1.weight"]["weight_decay"] == 0.0
    assert by_name["decoder.fuse.0.weight"]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_ema_and_schedule_in_training_loop():
    import itertools

    from sonofm.finetune.seg_train import train_segmentation

    torch.manual_seed(0)
    model = SegModel(_encoder(), num_classes=2, channels=16)
    batch = {"image": torch.rand(2, 1, 32, 32), "mask": (torch.rand(2, 32, 32) > 0.7).long()}
    lrs = []
    hist = train_segmentation(model, itertools.repeat(batch), steps=4, lr=1e-3, warmup_steps=2, ema=0.5,
                              layer_decay=1.0, log=lambda r: lrs.append(r["lr"]))
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3) and lrs[-1] < lrs[1]  # warm-up, cosine
    ema = hist["ema"].module
    w, we = model.decoder.classifier.weight, ema.decoder.classifier.weight
    assert not torch.equal(w, we)  # the average lags behind the trained weights


def test_dice_is_per_image_so_a_missed_small_lesion_counts():
    """One image's large lesion found, the other's small lesion missed: per image that is Dice 0.5;
    a single Dice over the batch would hide the miss (the smaller lesion weighs little)."""
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[0, 2:14, 2:14] = 1  # 144 px, predicted
    target[1, 7:9, 7:9] = 1  # 4 px, missed
    logits = torch.full((2, 2, 16, 16), -20.0)
    logits[:, 0] = 20.0
    logits[0, 1, 2:14, 2:14], logits[0, 0, 2:14, 2:14] = 20.0, -20.0
    per_image = soft_dice_loss(logits, target, smooth=0.0).item()
    batch = soft_dice_loss(logits, target, smooth=0.0, per_image=False).item()
    assert per_image == pytest.approx(0.5, abs=1e-4)
    assert batch == pytest.approx(1 - 2 * 144 / (144 + 148), abs=1e-4) and batch < 0.02
    # an image without foreground predicted empty costs nothing with the smoothing term
    empty = torch.zeros(1, 16, 16, dtype=torch.long)
    background = torch.stack([torch.full((16, 16), 20.0), torch.full((16, 16), -20.0)])[None]
    assert soft_dice_loss(background, empty).item() == pytest.approx(0.0, abs=1e-6)


def test_evaluation_counts_lesions_missed_entirely():
    """``missed``: share of images with a lesion where nothing was predicted (HD95 = the diagonal)."""
    import math

    import numpy as np

    from sonofm.finetune.data import Sample
    from sonofm.finetune.seg_train import evaluate_segmentation

    masks = [np.zeros((32, 32), np.uint8) for _ in range(4)]
    for m in masks:
        m[8:20, 8:20] = 1
    samples = [Sample(np.full((32, 32), 100, np.uint8), m, {"path": f"im{i}.png"}) for i, m in enumerate(masks)]

    def background(x):
        out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        out[:, 0] = 1.0
        return out

    res = evaluate_segmentation(background, samples, 32, num_classes=2)
    assert res["missed"] == 1.0 and res["dice"] == 0.0
    assert res["hd95_px"] == pytest.approx(math.hypot(32, 32))

    def centre(x):  # finds a lesion in every image (not exactly the right one)
        out = background(x)
        out[:, 1, 10:18, 10:18] = 2.0
        return out

    res = evaluate_segmentation(centre, samples, 32, num_classes=2)
    assert res["missed"] == 0.0 and 0.0 < res["dice"] < 1.0


def test_training_honours_dice_per_image():
    """The flag reaches the loss: same model, same batch, the first losses differ (lesions of unequal size)."""
    import copy
    import itertools

    from sonofm.finetune.seg_train import train_segmentation

    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[0, 8:56, 8:56] = 1
    mask[1, 30:34, 30:34] = 1
    batch = {"image": torch.rand(2, 1, 64, 64), "mask": mask}
    model = SegModel(_encoder(), num_classes=2, channels=16, dropout=0.0)
    first = {}
    for flag in (True, False):
        hist = train_segmentation(copy.deepcopy(model), itertools.repeat(batch), steps=1, dice_per_image=flag)
        first[flag] = hist["losses"][0]
    assert first[True] != pytest.approx(first[False], rel=1e-3)
