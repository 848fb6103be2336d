"""Hierarchical classifier: tree-consistent marginals, unknown levels, accuracy, weight 0 = plain FCMAE."""

from __future__ import annotations

import math

import pytest
import torch

from sonofm.models import HierarchicalClassifier, PretrainModel, masked_mean_pool, validate_tree

# region 0: organs 0, 1; region 1: organ 2
# organ 0: sources 0, 1; organ 1: source 2; organ 2: source 3
# source 0: leaves 0, 1 (labels); source 1: leaf 2; source 2: leaves 3, 4, 5 (labels); source 3: leaf 6
TREE = {
    "levels": ["region", "organ", "source", "leaf"],
    "sizes": {"region": 2, "organ": 3, "source": 4, "leaf": 7},
    "parents": {"organ": [0, 0, 1], "source": [0, 0, 1, 2], "leaf": [0, 0, 1, 2, 2, 2, 3]},
}


def _t(**levels: list[int]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in levels.items()}


def test_marginals_are_consistent() -> None:
    head = HierarchicalClassifier(8, TREE)
    logits = torch.randn(5, 7) * 3
    lp = head.level_log_probs(logits)
    p = {k: v.exp() for k, v in lp.items()}
    for lvl, size in TREE["sizes"].items():
        assert p[lvl].shape == (5, size)
        torch.testing.assert_close(p[lvl].sum(1), torch.ones(5))
    for parent, child in (("region", "organ"), ("organ", "source"), ("source", "leaf")):
        idx = torch.tensor(TREE["parents"][child])
        summed = torch.zeros_like(p[parent]).index_add_(1, idx, p[child])
        torch.testing.assert_close(summed, p[parent])
    # hand check: P(organ 0) = leaves 0, 1, 2
    torch.testing.assert_close(p["organ"][:, 0], torch.softmax(logits, 1)[:, :3].sum(1))


def test_loss_is_nll_of_finest_known_node() -> None:
    head = HierarchicalClassifier(8, TREE)
    logits = torch.randn(3, 7)
    probs = torch.softmax(logits, 1)
    # sample 0 knows its leaf, sample 1 only its organ (1 = leaves 3..5), sample 2 only its region (1 = leaf 6)
    loss, m = head.loss(logits, _t(leaf=[1, -1, -1], organ=[-1, 1, -1], region=[0, -1, 1]))
    expected = -(probs[0, 1].log() + probs[1, 3:6].sum().log() + probs[2, 6].log()) / 3
    torch.testing.assert_close(loss, expected)
    assert m["count/leaf"] == 1 and m["count/organ"] == 2 and m["count/region"] == 3  # ancestors filled in


def test_unknown_level_is_left_out_of_loss() -> None:
    head = HierarchicalClassifier(8, TREE)
    logits = torch.randn(2, 7)
    targets = _t(organ=[1, 1], leaf=[-1, 4])  # sample 0: leaf unknown; sample 1: leaf known
    # moving probability among the leaves of organ 1 (3, 4, 5), keeping their sum
    moved = logits.clone()
    lse = torch.logsumexp(logits[:, 3:6], 1, keepdim=True)
    moved[:, 3:6] = lse + torch.log(torch.tensor([0.7, 0.2, 0.1]))
    l0, _ = head.loss(logits[:1], {k: v[:1] for k, v in targets.items()})
    l0_moved, _ = head.loss(moved[:1], {k: v[:1] for k, v in targets.items()})
    torch.testing.assert_close(l0, l0_moved)  # the unknown leaf level does not enter the loss
    l1, _ = head.loss(logits[1:], {k: v[1:] for k, v in targets.items()})
    l1_moved, _ = head.loss(moved[1:], {k: v[1:] for k, v in targets.items()})
    assert not torch.allclose(l1, l1_moved)  # a known leaf does
    # a level left out of the configuration is ignored even when known
    coarse = HierarchicalClassifier(8, TREE, levels=["region", "organ", "source"])
    coarse.load_state_dict(head.state_dict())
    a, m = coarse.loss(logits, targets)
    b, _ = coarse.loss(logits, _t(organ=[1, 1], leaf=[3, 5]))
    torch.testing.assert_close(a, b)
    assert "acc/leaf" not in m and "acc/source" in m
    # a sample that knows nothing contributes nothing
    c, _ = head.loss(torch.cat([logits, torch.randn(1, 7) * 10]), _t(organ=[1, 1, -1], leaf=[-1, 4, -1]))
    d, _ = head.loss(logits, targets)
    torch.testing.assert_close(c, d)


def test_unknown_organ_does_not_count_in_organ_accuracy() -> None:
    head = HierarchicalClassifier(8, TREE)
    logits = torch.full((3, 7), -5.0)
    logits[0, 6] = 5.0  # predicts leaf 6 -> source 3 -> organ 2 -> region 1
    logits[1, 0] = 5.0  # predicts organ 0, region 0
    logits[2, 3] = 5.0  # predicts organ 1, region 0
    targets = _t(region=[1, 1, 0], organ=[2, -1, 0])  # sample 1: organ unknown (and would be wrong)
    _, m = head.loss(logits, targets)
    assert m["count/organ"] == 2 and m["acc/organ"] == pytest.approx(0.5)
    assert m["count/region"] == 3 and m["acc/region"] == pytest.approx(2 / 3)
    assert m["count/leaf"] == 0 and m["acc/leaf"] == 0.0


def test_empty_node_keeps_gradients_finite() -> None:
    tree = {
        "levels": ["region", "organ", "leaf"],
        "sizes": {"region": 2, "organ": 3, "leaf": 3},
        "parents": {"organ": [0, 0, 1], "leaf": [0, 0, 1]},  # organ 2 and region 1 have no leaves
    }
    head = HierarchicalClassifier(4, tree)
    feats = torch.randn(2, 4, requires_grad=True)
    loss, _ = head.loss(head(feats), _t(region=[0, 0], organ=[1, -1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()
    assert head.level_log_probs(head(feats))["organ"][:, 2].max() < -1000


def test_tree_validation() -> None:
    validate_tree(TREE)
    bad = {**TREE, "parents": {**TREE["parents"], "source": [0, 0, 1]}}
    with pytest.raises(ValueError, match="parents\\['source'\\]"):
        validate_tree(bad)
    bad = {**TREE, "parents": {**TREE["parents"], "organ": [0, 0, 5]}}
    with pytest.raises(ValueError, match="outside"):
        validate_tree(bad)
    with pytest.raises(ValueError, match="subset"):
        HierarchicalClassifier(4, TREE, levels=["organ", "disease"])


def test_masked_mean_pool_ignores_masked_positions() -> None:
    feat = torch.randn(2, 3, 2, 2)
    w = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])
    pooled = masked_mean_pool(feat, w)
    torch.testing.assert_close(pooled[0], (feat[0, :, 0, 0] + feat[0, :, 1, 1]) / 2)
    torch.testing.assert_close(pooled[1], feat[1, :, 1, 0])


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("decoder", ["fcmae", "spark"])
def test_weight_zero_is_plain_fcmae(decoder: str) -> None:
    kw = dict(encoder="convnextv2_atto", img_size=64, decoder=decoder, dec_dim=32, drop_path_rate=0.0)
    torch.manual_seed(0)
    plain = PretrainModel(**kw)
    zero = PretrainModel(**kw, hier_weight=0.0, tree=TREE, levels=["region", "organ"])
    zero.load_state_dict(plain.state_dict(), strict=True)  # same parameters, no extra heads
    images, field = torch.rand(2, 1, 64, 64), torch.ones(2, 1, 64, 64)
    targets = _t(region=[0, 1], organ=[1, -1], source=[-1, -1], leaf=[-1, -1])
    outs, grads = [], []
    for model, t in ((plain, None), (zero, targets)):
        out = model(images, field, t, generator=torch.Generator().manual_seed(3))
        out["loss"].backward()
        outs.append(out)
        grads.append(_grads(model))
    assert torch.equal(outs[0]["loss"], outs[1]["loss"]) and outs[1]["loss_hier"] == 0
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.equal(grads[0][n], grads[1][n]), n
    # with a positive weight the heads join: loss_rec is unchanged, the total adds w * loss_hier
    torch.manual_seed(0)
    hier = PretrainModel(**kw, hier_weight=0.5, tree=TREE)
    missing, unexpected = hier.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("hier.") for k in missing)
    out = hier(images, field, targets, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out["loss_rec"], outs[0]["loss"])
    assert out["loss_hier"] > 0 and math.isclose(
        out["loss"].item(), out["loss_rec"].item() + 0.5 * out["loss_hier"].item(), rel_tol=1e-6
    )
    assert {"acc/region", "acc/organ", "acc/source", "acc/leaf"} <= out.keys()
    out["loss"].backward()
    assert hier.encoder.head.norm.weight.grad is not None  # timm's pre-logits norm is trained
    assert not torch.equal(_grads(hier)["encoder.stages.3.blocks.1.mlp.fc2.weight"],
                           grads[0]["encoder.stages.3.blocks.1.mlp.fc2.weight"])


def test_hier_pool_ignores_masked_patches() -> None:
    torch.manual_seed(0)
    model = PretrainModel("convnext_atto", img_size=64, dec_dim=32, hier_weight=1.0, tree=TREE).eval()
    images = torch.rand(1, 1, 64, 64)
    mask = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    noisy = images.clone()
    noisy[..., :32, 32:] = torch.rand(32, 32)
    a = model(images, mask=mask, targets=_t(region=[0]))
    b = model(noisy, mask=mask, targets=_t(region=[0]))
    torch.testing.assert_close(a["logits"], b["logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["loss_hier"], b["loss_hier"], atol=1e-5, rtol=0)


def test_target_errors_and_empty_targets() -> None:
    head = HierarchicalClassifier(4, TREE)
    logits = torch.randn(2, 7, requires_grad=True)
    with pytest.raises(ValueError, match="not tree levels"):
        head.loss(logits, _t(label=[0, 1]))
    with pytest.raises(ValueError, match="shape"):
        head.loss(logits, _t(organ=[0, 1, 2]))
    loss, m = head.loss(logits, {})
    assert loss == 0 and m["count/region"] == 0
    loss.backward()  # still in the graph (DDP needs every parameter used)
