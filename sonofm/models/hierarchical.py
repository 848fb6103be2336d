"""Hierarchical classifier over the taxonomy (region -> organ -> source -> leaf).

Consistent by construction: one linear head scores the leaves (diagnostic labels of sources that have
a vocabulary, plus one leaf per source without labels); the probability of any coarser node is the
sum of its leaves' probabilities, computed in log space (``logsumexp`` over a fixed leaf->node
membership), so children always sum to their parent and every level sums to 1.

Training: every sample contributes ``-log P(finest known node)`` among the configured ``levels``
(marginalised over the leaves below that node), so a sample that only knows its organ trains the organ
marginal and one with a label trains the label. A level missing from ``levels`` is ignored (e.g.
``levels=["region", "organ", "source"]`` ignores the labels). Targets use -1 for unknown; a known
finer node implies its ancestors, which are filled in where the given ancestor is -1 (for accuracy).

The tree is a plain dict (the taxonomy module builds it)::

    {"levels": ["region", "organ", "source", "leaf"],
     "sizes": {"region": R, "organ": O, "source": S, "leaf": L},
     "parents": {"organ": [region of each organ], "source": [organ of each source],
                 "leaf": [source of each leaf]}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: Log-weight of "leaf not under this node": finite (not -inf) so an empty node's logsumexp stays
#: finite and its backward free of NaN; exp(-1e4) is exactly 0 in fp32.
_NOT_MEMBER = -1.0e4


def validate_tree(tree: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the problem when ``tree`` is malformed."""
    try:
        levels, sizes, parents = list(tree["levels"]), tree["sizes"], tree["parents"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"taxonomy tree needs 'levels', 'sizes' and 'parents': {e}") from e
    if not levels or len(set(levels)) != len(levels):
        raise ValueError(f"taxonomy tree: levels must be distinct and non-empty, got {levels}")
    for lvl in levels:
        if int(sizes.get(lvl, 0)) < 1:
            raise ValueError(f"taxonomy tree: size of level {lvl!r} must be >= 1, got {sizes.get(lvl)}")
    for parent, child in zip(levels[:-1], levels[1:]):
        idx = parents.get(child)
        if idx is None or len(idx) != int(sizes[child]):
            raise ValueError(
                f"taxonomy tree: parents[{child!r}] must list the {parent} of each of the {sizes[child]} {child} nodes"
            )
        bad = [i for i in idx if not 0 <= int(i) < int(sizes[parent])]
        if bad:
            raise ValueError(f"taxonomy tree: parents[{child!r}] has indices outside [0, {sizes[parent]}): {bad[:5]}")


def masked_mean_pool(feat: Tensor, weight: Tensor) -> Tensor:
    """Mean of ``feat`` ``[B, C, h, w]`` over positions weighted by ``weight`` ``[B, h, w]`` (e.g. the
    visible mask), -> ``[B, C]``. Positions of weight 0 (masked) do not enter the mean."""
    w = weight.to(feat.dtype)[:, None]
    return (feat * w).sum((2, 3)) / w.sum((2, 3)).clamp(min=1e-6)


class HierarchicalClassifier(nn.Module):
    """Leaf head + tree marginals. ``forward(pooled [B, D]) -> leaf logits [B, n_leaves]``.

    ``norm``: apply a LayerNorm to the pooled feature first (off when the caller already normalises,
    e.g. with the timm encoder's own ``head.norm``).
    """

    def __init__(
        self, in_dim: int, tree: dict[str, Any], levels: Sequence[str] | None = None, norm: bool = True
    ) -> None:
        super().__init__()
        validate_tree(tree)
        self.tree_levels: list[str] = list(tree["levels"])
        levels = list(levels) if levels is not None else list(self.tree_levels)
        unknown = [lvl for lvl in levels if lvl not in self.tree_levels]
        if unknown or not levels:
            raise ValueError(f"levels {levels} must be a non-empty subset of the tree levels {self.tree_levels}")
        self.levels = [lvl for lvl in self.tree_levels if lvl in levels]  # coarse -> fine
        self.sizes = {lvl: int(tree["sizes"][lvl]) for lvl in self.tree_levels}
        leaf_level = self.tree_levels[-1]
        n_leaves = self.sizes[leaf_level]
        self.norm = nn.LayerNorm(in_dim) if norm else nn.Identity()
        self.head = nn.Linear(in_dim, n_leaves)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        # parent index of each node, and the level-ancestor of each leaf (buffers: move with .to())
        node_of_leaf = torch.arange(n_leaves)
        self._parents: dict[str, str] = {}
        for parent, child in zip(self.tree_levels[:-1][::-1], self.tree_levels[1:][::-1]):
            pidx = torch.as_tensor([int(i) for i in tree["parents"][child]], dtype=torch.long)
            self.register_buffer(f"parent_of_{child}", pidx, persistent=False)
            self._parents[child] = parent
        for lvl in self.tree_levels[::-1]:
            if lvl != leaf_level:
                child = self.tree_levels[self.tree_levels.index(lvl) + 1]
                node_of_leaf = getattr(self, f"parent_of_{child}")[node_of_leaf]
            member = torch.full((n_leaves, self.sizes[lvl]), _NOT_MEMBER)
            member[torch.arange(n_leaves), node_of_leaf] = 0.0
            self.register_buffer(f"member_{lvl}", member, persistent=False)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.head(self.norm(pooled))

    def level_log_probs(self, logits: Tensor) -> dict[str, Tensor]:
        """Log-probabilities ``[B, size]`` of every tree level, marginalised from the leaves."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        out = {}
        for lvl in self.tree_levels:
            if lvl == self.tree_levels[-1]:
                out[lvl] = logp
            else:
                out[lvl] = torch.logsumexp(logp[:, :, None] + getattr(self, f"member_{lvl}")[None], dim=1)
        return out

    def complete_targets(self, targets: dict[str, Tensor], batch: int, device: torch.device) -> dict[str, Tensor]:
        """Targets ``[batch]`` of every tree level (-1 unknown) with levels outside ``levels`` dropped
        and the ancestors implied by a known finer node filled in where unknown."""
        unknown = sorted(set(targets) - set(self.tree_levels))
        if unknown:
            raise ValueError(f"hierarchical targets {unknown} are not tree levels {self.tree_levels}")
        full = {}
        for lvl in self.tree_levels:
            t = targets.get(lvl)
            if lvl not in self.levels or t is None:
                t = torch.full((batch,), -1, dtype=torch.long, device=device)
            elif t.shape != (batch,):
                raise ValueError(f"hierarchical target {lvl!r} has shape {tuple(t.shape)}, expected ({batch},)")
            full[lvl] = t.to(device=device, dtype=torch.long)
        for child in self.tree_levels[1:][::-1]:
            parent = self._parents[child]
            t = full[child]
            implied = torch.where(t >= 0, getattr(self, f"parent_of_{child}")[t.clamp(min=0)], -1)
            full[parent] = torch.where(full[parent] >= 0, full[parent], implied)
        return full

    def loss(self, logits: Tensor, targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean over samples with any known level of ``-log P(finest known node)``, and per level
        ``acc/<level>`` (over the samples that know that level; 0 when none) and ``count/<level>``."""
        logps = self.level_log_probs(logits)
        b = logits.shape[0]
        full = self.complete_targets(targets, b, logits.device)
        nll = logits.new_zeros(b, dtype=torch.float32)
        known_any = torch.zeros(b, dtype=torch.bool, device=logits.device)
        metrics: dict[str, Tensor] = {}
        for lvl in self.levels:  # coarse -> fine: a finer known level overrides
            t = full[lvl]
            known = t >= 0
            lp = logps[lvl].gather(1, t.clamp(min=0)[:, None])[:, 0]
            nll = torch.where(known, -lp, nll)
            known_any = known_any | known
            count = known.sum()
            correct = ((logps[lvl].argmax(1) == t) & known).sum()
            metrics[f"acc/{lvl}"] = correct.float() / count.clamp(min=1).float()
            metrics[f"count/{lvl}"] = count
        n = known_any.sum().clamp(min=1).float()
        loss = (nll * known_any.float()).sum() / n
        return loss, metrics
