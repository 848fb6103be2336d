"""Safe image and mask reading: every odd file becomes a defined array or an error naming the file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonofm.datasets.sources.imageio import AdapterError, binarize, read_image, read_mask


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def forged_png(path: Path, width: int, height: int) -> Path:
    """A tiny file whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )
    return path


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_gray_and_rgb_kept_as_decoded(tmp_path: Path) -> None:
    g, c = noise((20, 30)), noise((20, 30, 3), 1)
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(c).save(tmp_path / "c.png")
    assert np.array_equal(read_image(tmp_path / "g.png"), g)
    assert np.array_equal(read_image(tmp_path / "c.png"), c)


def test_truncated_png(tmp_path: Path) -> None:
    p = tmp_path / "cut.png"
    Image.fromarray(noise((64, 64))).save(p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(AdapterError, match=r"cut\.png"):
        read_image(p)


def test_zero_byte_and_missing(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(AdapterError, match=r"empty\.png: empty file"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(AdapterError, match=r"nothere\.png: file not found"):
        read_image(tmp_path / "nothere.png")


def test_text_file_named_png(tmp_path: Path) -> None:
    p = tmp_path / "page.png"
    p.write_text("<html><body>404 Not Found</body></html>\n")
    with pytest.raises(AdapterError, match=r"page\.png: not a readable image"):
        read_image(p)
    with pytest.raises(AdapterError, match=r"page\.png"):
        read_mask(p)


def test_16_bit_scaled_by_bit_depth(tmp_path: Path) -> None:
    twelve = np.array([[0, 4095], [2048, 1024]], dtype=np.uint16)
    Image.fromarray(twelve).save(tmp_path / "12.png")
    assert read_image(tmp_path / "12.png").tolist() == [[0, 255], [128, 64]]
    full = np.array([[0, 65535]], dtype=np.uint16)
    Image.fromarray(full).save(tmp_path / "16.png")
    assert read_image(tmp_path / "16.png").tolist() == [[0, 255]]
    small = np.array([[3, 200]], dtype=np.uint16)  # 8-bit data stored in 16 bits stays as is
    Image.fromarray(small).save(tmp_path / "8in16.png")
    out = read_image(tmp_path / "8in16.png")
    assert out.dtype == np.uint8 and out.tolist() == [[3, 200]]


def test_rgba_alpha_dropped_over_black(tmp_path: Path) -> None:
    a = np.zeros((2, 2, 4), np.uint8)
    a[..., :3] = 200
    a[..., 3] = [[255, 0], [128, 255]]
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (2, 2, 3)
    assert (
        out[0, 0].tolist() == [200] * 3 and out[0, 1].tolist() == [0] * 3 and out[1, 0].tolist() == [100] * 3
    )
    la = Image.fromarray(np.stack([np.full((2, 2), 100, np.uint8), a[..., 3]], -1), "LA")
    la.save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").tolist() == [[100, 0], [50, 100]]


def test_palette_expanded_for_images_kept_for_masks(tmp_path: Path) -> None:
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    im.save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.shape == (2, 2, 3) and img[0, 1].tolist() == [255, 0, 0] and img[1, 0].tolist() == [0, 0, 255]
    assert read_mask(tmp_path / "p.png").tolist() == idx.tolist()  # class ids, not colours


def test_decompression_bomb_refused(tmp_path: Path) -> None:
    p = forged_png(tmp_path / "bomb.png", 12000, 10000)  # 120 MP claimed by a ~100-byte file
    with pytest.raises(AdapterError, match=r"bomb\.png: 12000x10000 = 120 MP exceeds the 100 MP limit"):
        read_image(p)
    p = forged_png(tmp_path / "huge.png", 20000, 20000)  # beyond PIL's own hard limit
    with pytest.raises(AdapterError, match=r"huge\.png: .*decompression bomb"):
        read_image(p)
    Image.fromarray(noise((40, 40))).save(tmp_path / "small.png")
    with pytest.raises(AdapterError, match="limit"):
        read_image(tmp_path / "small.png", max_pixels=1000)


def test_masks(tmp_path: Path) -> None:
    m = np.array([[0, 255], [0, 128]], np.uint8)
    Image.fromarray(np.stack([m] * 3, -1)).save(tmp_path / "rgb_gray.png")
    assert read_mask(tmp_path / "rgb_gray.png").tolist() == m.tolist()
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 1] = [0, 200, 0]
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert binarize(read_mask(tmp_path / "colour.png")).tolist() == [[0, 1], [0, 0]]
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(AdapterError, match=r"big\.png: mask values span 0\.\.300"):
        read_mask(tmp_path / "big.png")
    Image.fromarray(np.array([[0, 2]], np.uint16)).save(tmp_path / "ids16.png")
    assert read_mask(tmp_path / "ids16.png").tolist() == [[0, 2]]
