"""Exact and near-duplicate removal with perceptual hashes.

Public ultrasound sets repeat images (BUSI holds near-identical copies; clips hold near-identical
frames). Duplicates inflate a source's weight and leak between splits, so the shard writer drops
them and reports how many. Exact copies are found by a SHA-1 of the pixels, near copies (re-encoded,
brightened, rescaled) by the Hamming distance of a DCT perceptual hash.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
from PIL import Image
from scipy.fft import dctn


def _small(gray: np.ndarray, h: int, w: int) -> np.ndarray:
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"hashing needs a uint8 (H, W) image, got {gray.dtype} {gray.shape}")
    return np.asarray(Image.fromarray(gray).resize((w, h), Image.Resampling.BOX), dtype=np.float64)


def _pack(bits: np.ndarray) -> int:
    out = 0
    for bit in bits.ravel():
        out = (out << 1) | int(bit)
    return out


def phash(gray: np.ndarray, hash_size: int = 8) -> int:
    """DCT perceptual hash: signs of the lowest ``hash_size``² frequencies against their median.

    Low frequencies survive re-encoding, small gain changes and resizing, so copies land within a
    few bits of each other. ``hash_size=8`` gives a 64-bit integer.
    """
    coeffs = dctn(_small(gray, 4 * hash_size, 4 * hash_size), type=2, norm="ortho")
    low = coeffs[:hash_size, :hash_size].ravel()
    return _pack(low[1:] > np.median(low[1:])) << 1  # the DC term says only brightness: bit 0 = 0


def dhash(gray: np.ndarray, hash_size: int = 8) -> int:
    """Difference hash: whether each cell is brighter than its right neighbour (cheap, gradient based)."""
    s = _small(gray, hash_size, hash_size + 1)
    return _pack(s[:, 1:] > s[:, :-1])


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return (a ^ b).bit_count()


def image_digests(gray: np.ndarray, hash_size: int = 8) -> tuple[str, int]:
    """``(sha1 of shape + pixels, perceptual hash)`` of one image: what :class:`DuplicateFilter` compares."""
    digest = hashlib.sha1(f"{gray.shape}".encode() + np.ascontiguousarray(gray).tobytes()).hexdigest()
    return digest, phash(gray, hash_size)


class DuplicateFilter:
    """Streaming duplicate filter; the first image seen of a group of duplicates is kept.

    Near duplicates are found with multi-index hashing: the 64-bit hash is cut into
    ``threshold + 1`` bands, and two hashes within ``threshold`` bits must agree exactly on at least
    one band (pigeonhole), so each lookup only compares against the few images sharing a band.
    """

    def __init__(self, threshold: int = 4, hash_size: int = 8) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.hash_size = hash_size
        self.n_bits = hash_size * hash_size
        n_bands = threshold + 1
        edges = np.linspace(0, self.n_bits, n_bands + 1).round().astype(int)
        self._bands = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
        self._tables: list[dict[int, list[int]]] = [defaultdict(list) for _ in self._bands]
        self._hashes: list[int] = []
        self._keys: list[str] = []
        self._sha: dict[str, str] = {}
        self.n_exact = 0
        self.n_near = 0
        #: (dropped key, kept key, "exact" | "near", Hamming distance)
        self.duplicates: list[tuple[str, str, str, int]] = []

    def _band(self, h: int, i: int) -> int:
        a, b = self._bands[i]
        return (h >> (self.n_bits - b)) & ((1 << (b - a)) - 1)

    def find(self, gray: np.ndarray) -> tuple[str, str, int] | None:
        """The kept key this image duplicates, as (key, kind, distance), or None if it is new."""
        return self._find(*image_digests(gray, self.hash_size))

    def _find(self, digest: str, h: int) -> tuple[str, str, int] | None:
        if digest in self._sha:
            return self._sha[digest], "exact", 0
        best: tuple[int, int] | None = None
        for i in range(len(self._bands)):
            for idx in self._tables[i].get(self._band(h, i), ()):
                d = hamming(h, self._hashes[idx])
                if d <= self.threshold and (best is None or (d, idx) < best):
                    best = (d, idx)
        if best is not None:
            return self._keys[best[1]], "near", best[0]
        return None

    def add(self, key: str, gray: np.ndarray) -> bool:
        """Record ``gray`` under ``key``; True if it is new (keep it), False if a duplicate (drop it)."""
        return self.add_digests(key, *image_digests(gray, self.hash_size))

    def add_digests(self, key: str, digest: str, h: int) -> bool:
        """:meth:`add` with :func:`image_digests` already computed (by a build worker, in parallel);
        the order-dependent lookup stays with the caller, so results do not depend on the workers."""
        hit = self._find(digest, h)
        if hit is not None:
            kept, kind, dist = hit
            if kind == "exact":
                self.n_exact += 1
            else:
                self.n_near += 1
            self.duplicates.append((key, kept, kind, dist))
            return False
        self._sha[digest] = key
        idx = len(self._hashes)
        self._hashes.append(h)
        self._keys.append(key)
        for i in range(len(self._bands)):
            self._tables[i][self._band(h, i)].append(idx)
        return True

    def __len__(self) -> int:
        return len(self._keys)

    def report(self) -> dict[str, int]:
        """Counts for the build report."""
        return {"kept": len(self._keys), "exact_duplicates": self.n_exact, "near_duplicates": self.n_near}
