"""Frozen-encoder features, extracted once and cached to ``.npz``.

Probes and kNN sweep many settings over the same features; running the encoder once per dataset
and encoder keeps every sweep cheap. The cache stores a fingerprint (encoder, weights file, image
size, pooling, a caller-given data description) and is recomputed when any of them changes.

Pooling: the last stage goes through timm's own head (global average pool + the head norm,
``pre_logits``), i.e. exactly the feature a timm user gets from ``model(x)`` with
``num_classes=0``; with ``concat_prev`` the globally averaged previous stage is appended.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sonofm.atomic_io import atomic_file
from sonofm.models.input_norm import InputNorm

__all__ = ["pooled_features", "extract_features", "cached_features", "fingerprint"]


def pooled_features(encoder: nn.Module, x: Tensor, concat_prev: bool = False) -> Tensor:
    """``[B, D]`` pooled last-stage feature (``D = num_features``, or ``+ prev stage`` channels).

    ``x`` holds images in [0, 1]; they are normalised with the encoder's recorded input statistics
    (:class:`sonofm.models.input_norm.InputNorm`) first.
    """
    feats = encoder.forward_intermediates(InputNorm(encoder).to(x.device)(x), intermediates_only=True)
    last = encoder.forward_head(encoder.norm_pre(feats[-1]), pre_logits=True)
    if not concat_prev:
        return last
    return torch.cat([last, feats[-2].mean(dim=(2, 3))], dim=1)


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    batches: Iterable[dict[str, Any]],
    concat_prev: bool = False,
    device: str | torch.device = "cpu",
    keep: tuple[str, ...] = ("key",),
    progress: str | None = None,
) -> dict[str, np.ndarray]:
    """Run the frozen encoder over ``batches`` (``image`` ``[B,C,S,S]``) and stack the pooled features.

    Returns ``features`` (float32 ``[N, D]``) plus, for every name in ``keep``, the per-sample values
    found in the batch (lists such as ``key``, or 1-D tensors). ``progress`` titles a bar over the
    batches (on stderr; none by default).
    """
    if progress:
        from tqdm.auto import tqdm

        try:
            total: int | None = len(batches)  # type: ignore[arg-type]
        except TypeError:  # an endless or unsized iterator
            total = None
        batches = tqdm(batches, total=total, desc=progress, unit="batch", dynamic_ncols=True, leave=False)
    was_training = encoder.training
    encoder.eval().to(device)
    feats: list[np.ndarray] = []
    extra: dict[str, list[Any]] = {k: [] for k in keep}
    try:
        for batch in batches:
            x = batch["image"].to(device, dtype=torch.float32)
            feats.append(pooled_features(encoder, x, concat_prev).float().cpu().numpy())
            for k in keep:
                v = batch[k]
                extra[k].extend(v.cpu().tolist() if isinstance(v, Tensor) else list(v))
    finally:
        encoder.train(was_training)
    if not feats:
        raise ValueError("extract_features: the data yielded no batch")
    out = {"features": np.concatenate(feats).astype(np.float32)}
    out.update({k: np.asarray(v) for k, v in extra.items()})
    return out


def fingerprint(encoder_info: dict[str, Any], **settings: Any) -> str:
    """A JSON string identifying what the features depend on (weights file size/mtime included)."""
    fp: dict[str, Any] = {k: encoder_info.get(k) for k in ("spec", "kind", "name", "source", "in_chans", "input_mean", "input_std")}
    src = encoder_info.get("weights_file") or encoder_info.get("source")  # published weights: the cached file
    if encoder_info.get("weights_file"):
        fp["weights_file"] = str(src)
    if src and Path(src).is_file():
        st = Path(src).stat()
        fp["source_stat"] = [st.st_size, int(st.st_mtime)]
    fp.update(settings)
    return json.dumps(fp, sort_keys=True, default=str)


def cached_features(
    path: str | os.PathLike | None, fp: str, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Load ``path`` when its fingerprint equals ``fp``, else ``compute()`` and write it atomically."""
    if path is None:
        return compute()
    path = Path(path)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["__fingerprint__"]) == fp:
                    return {k: z[k] for k in z.files if k != "__fingerprint__"}
        except (OSError, KeyError, ValueError):
            pass  # unreadable or foreign cache: recompute and overwrite
    data = compute()
    with atomic_file(path, suffix=".tmp.npz") as tmp:  # np.savez appends .npz to any other name
        np.savez(tmp, __fingerprint__=np.asarray(fp), **{k: np.asarray(v) for k, v in data.items()})
    return data
