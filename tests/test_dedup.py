"""Exact and near-duplicate detection with perceptual hashes."""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from sonofm.datasets.preprocess.dedup import DuplicateFilter, dhash, hamming, phash


def _image(seed: int, h: int = 160, w: int = 200) -> np.ndarray:
    """Speckle with a few smooth structures, different per seed (like different scans)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.zeros((h, w))
    for _ in range(4):
        cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(15, 50), rng.uniform(15, 60)
        base += rng.uniform(-60, 60) * np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))
    return np.clip(100 + base + rng.normal(0, 12, (h, w)), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int = 60) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def test_hashes_are_stable_under_small_changes() -> None:
    a = _image(0)
    near = _jpeg(np.clip(a.astype(int) + 8, 0, 255).astype(np.uint8))
    resized = np.asarray(Image.fromarray(a).resize((150, 120), Image.Resampling.BILINEAR))
    for h, tol in ((phash, 4), (dhash, 8)):  # dhash follows gradients: a little less robust
        assert hamming(h(a), h(near)) <= tol
        assert hamming(h(a), h(resized)) <= tol
        assert hamming(h(a), h(_image(1))) > 12
    assert 0 <= phash(a) < 2**64


def test_filter_counts_exact_and_near_and_keeps_first() -> None:
    f = DuplicateFilter(threshold=4)
    a, b, c = _image(0), _image(1), _image(2)
    assert f.add("a", a) and f.add("b", b) and f.add("c", c)
    assert not f.add("a-copy", a.copy())
    assert not f.add("b-bright-jpeg", _jpeg(np.clip(b.astype(int) + 6, 0, 255).astype(np.uint8)))
    assert f.add("d", _image(3))
    assert (f.n_exact, f.n_near, len(f)) == (1, 1, 4)
    assert f.duplicates[0][:3] == ("a-copy", "a", "exact")
    assert f.duplicates[1][:3] == ("b-bright-jpeg", "b", "near")
    assert f.report() == {"kept": 4, "exact_duplicates": 1, "near_duplicates": 1}


def test_different_images_are_not_duplicates_and_lookup_is_fast() -> None:
    f = DuplicateFilter(threshold=4)
    rng = np.random.default_rng(0)
    # Many random hashes in the index: lookups compare with band-mates only.
    for i in range(20000):
        h = int(rng.integers(0, 2**63)) << 1
        f._hashes.append(h)
        f._keys.append(f"r{i}")
        for j in range(len(f._bands)):
            f._tables[j][f._band(h, j)].append(len(f._hashes) - 1)
    imgs = [_image(100 + i, 64, 80) for i in range(30)]
    t = time.perf_counter()
    new = [f.add(f"img{i}", im) for i, im in enumerate(imgs)]
    assert time.perf_counter() - t < 2.0
    assert all(new) and f.n_near == 0 and f.n_exact == 0
