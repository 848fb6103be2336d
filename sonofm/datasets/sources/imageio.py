"""Safe reading of images and masks into ``uint8`` arrays.

Downloaded collections contain truncated files, HTML error pages saved as ``.png``, 16-bit and
palette images, RGBA screenshots and the occasional enormous scan. Every such case here either
becomes a well-defined ``uint8`` array or an :class:`AdapterError` that names the file, so a
shard build can count and report bad files instead of crashing half-way or storing garbage.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sonofm.errors import UserError

#: Largest image accepted (pixels). PIL only warns below twice its own limit; we refuse instead.
MAX_PIXELS = 100_000_000

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


class AdapterError(UserError, ValueError):
    """A source file that cannot be read or decoded; the message names the file and the problem.

    Defined here (not in ``adapters``) so that low-level readers can raise it without importing the
    adapter registry; import it from ``sonofm.datasets.sources.adapters``.
    """


def _open(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    """Open and fully decode ``path`` with every PIL failure turned into :class:`AdapterError`."""
    p = Path(path)
    if not p.is_file():
        raise AdapterError(f"{p}: file not found")
    if p.stat().st_size == 0:
        raise AdapterError(f"{p}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own, stricter pixel limit replaces PIL's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
            w, h = im.size
            if w * h > max_pixels:
                raise AdapterError(
                    f"{p}: {w}x{h} = {w * h / 1e6:.0f} MP exceeds the {max_pixels / 1e6:.0f} MP limit "
                    "(possible decompression bomb)"
                )
            im.load()
    except AdapterError:
        raise
    except Image.DecompressionBombError as e:
        raise AdapterError(f"{p}: refused as a possible decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise AdapterError(f"{p}: not a readable image (unknown or corrupt format)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise AdapterError(f"{p}: cannot decode image ({e})") from e
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # multi-page TIFF / animated PNG: the first frame is the image
    return im


def _scale_high_bit_depth(a: np.ndarray) -> np.ndarray:
    """Map integer data wider than 8 bits to ``uint8`` by the bit depth that holds its maximum.

    A 12-bit image stored in 16 bits is divided by 4095, a full 16-bit one by 65535: the scale
    depends only on the data's range, not on per-image contrast, and 8-bit data stored in 16 bits
    is kept as is.
    """
    a = a.astype(np.int64)
    lo = int(a.min())
    if lo < 0:
        a = a - lo
    hi = int(a.max())
    if hi <= 255:
        return a.astype(np.uint8)
    bits = max(8, int(np.ceil(np.log2(hi + 1))))
    return np.round(a * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)


def _over_black(rgb_or_l: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite onto black: transparent screenshot borders become the black background they show."""
    a = alpha.astype(np.uint16)
    if rgb_or_l.ndim == 3:
        a = a[..., None]
    return ((rgb_or_l.astype(np.uint16) * a + 127) // 255).astype(np.uint8)


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image as ``uint8`` (H, W) for gray modes or (H, W, 3) for colour modes.

    Alpha is dropped by compositing over black, palettes are expanded, 16/32-bit integer data is
    scaled to 8 bits (see :func:`_scale_high_bit_depth`), float data is min-max scaled, and JPEG EXIF
    orientation is applied. Raises :class:`AdapterError` naming the file on any failure.
    """
    im = _open(path, max_pixels)
    try:
        if im.format in ("JPEG", "MPO", "TIFF", "WEBP"):
            im = ImageOps.exif_transpose(im)
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            mode = im.mode
        if mode == "PA":
            im = im.convert("RGBA")
            mode = "RGBA"
        if mode == "1":
            return np.array(im.convert("L"))
        if mode == "L":
            return np.array(im)
        if mode == "LA":
            a = np.array(im)
            return _over_black(a[..., 0], a[..., 1])
        if mode == "RGB":
            return np.array(im)
        if mode in ("RGBA", "RGBa"):
            a = np.array(im.convert("RGBA"))
            return _over_black(a[..., :3], a[..., 3])
        if mode.startswith("I;16") or mode == "I":
            return _scale_high_bit_depth(np.array(im))
        if mode == "F":
            a = np.asarray(im, dtype=np.float64)
            finite = np.isfinite(a)
            if not finite.any():
                raise AdapterError(f"{path}: float image without finite values")
            lo, hi = a[finite].min(), a[finite].max()
            a = np.where(finite, a, lo)
            scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
            return np.round(scaled).astype(np.uint8)
        # CMYK, YCbCr, LAB, HSV, ...: PIL knows how to get to RGB.
        return np.array(im.convert("RGB"))
    except AdapterError:
        raise
    except (OSError, ValueError) as e:
        raise AdapterError(f"{path}: cannot convert image of mode {im.mode} ({e})") from e
    finally:
        im.close()


def read_mask(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a mask as (H, W) ``uint8`` with its stored values (no binarisation).

    Palette masks keep their indices (the class ids), gray masks their values, colour masks whose
    channels agree collapse to one channel; other colour masks take the per-pixel maximum over the
    channels (any colour = foreground). Values above 255 in 16-bit masks are an error: class ids
    beyond 255 cannot be stored in the 8-bit shard mask.
    """
    im = _open(path, max_pixels)
    try:
        mode = im.mode
        if mode in ("P", "L"):
            return np.array(im)
        if mode == "1":
            return np.array(im, dtype=np.uint8)
        if mode in ("LA", "PA"):
            return np.array(im)[..., 0]
        if mode.startswith("I"):
            a = np.array(im)
            if a.min() < 0 or a.max() > 255:
                raise AdapterError(
                    f"{path}: mask values span {a.min()}..{a.max()}, expected class ids 0..255"
                )
            return a.astype(np.uint8)
        a = np.array(im.convert("RGB"))
        if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
            return a[..., 0].copy()
        return a.max(axis=2)
    finally:
        im.close()


#: Masks whose largest value is below this are class ids (0, 1, 2, ...): any non-zero is foreground.
#: From here up, values strictly between 0 and the maximum are anti-aliasing or JPEG noise.
SOFT_MASK_MIN_MAX = 16


def is_soft_mask(mask: np.ndarray) -> bool:
    """True for a mask with values between background and its maximum (an anti-aliased edge, a JPEG
    or resampled 0/255 mask): taking every such value as foreground would grow the structure."""
    hi = int(mask.max()) if mask.size else 0
    if hi < SOFT_MASK_MIN_MAX:
        return False
    return bool(((mask > 0) & (mask < hi)).any())


def binarize(mask: np.ndarray) -> np.ndarray:
    """Foreground as class 1: the convention for single-structure masks.

    A mask of one foreground value (0/255, 0/1) or of small class ids takes any non-zero value; a soft
    mask (:func:`is_soft_mask`) is cut at half its range (``> 127`` for 0..255), because ``> 0`` turns
    every anti-aliased or JPEG-noisy edge pixel into foreground (+68 % on a smooth circle's edge).
    """
    if is_soft_mask(mask):
        return (mask > int(mask.max()) // 2).astype(np.uint8)
    return (mask > 0).astype(np.uint8)


#: Defaults of :func:`degenerate_reason`: smallest side and most elongated shape that can be an image.
MIN_SIDE = 32
MAX_ASPECT = 10.0


def degenerate_reason(
    image: np.ndarray, min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT
) -> tuple[str, str] | None:
    """``(counter, reason)`` for a decoded image that holds no usable ultrasound, else ``None``.

    Such files decode fine (thumbnails, 1x1 tracking pixels, separator strips, blank exports) and
    would otherwise be stored as ordinary samples: pretraining on them teaches nothing and a
    constant image breaks per-patch normalisation. Counters: ``skipped_extreme_aspect`` (longer
    side over ``max_aspect`` times the shorter), ``skipped_tiny`` (a side under ``min_side``),
    ``skipped_all_black`` (nothing above 4 of 255), ``skipped_constant`` (one value, give or take 1).
    """
    h, w = image.shape[:2]
    short, long_ = min(h, w), max(h, w)
    if short > 0 and long_ / short > max_aspect:
        return "skipped_extreme_aspect", f"{w}x{h} is more elongated than {max_aspect:g}:1"
    if short < min_side:
        return "skipped_tiny", f"{w}x{h} has a side under {min_side} px"
    hi = int(image.max())
    if hi <= 4:
        return "skipped_all_black", f"{w}x{h} all black (maximum {hi})"
    flat = image.reshape(h * w, -1)
    if int((flat.max(axis=0).astype(np.int16) - flat.min(axis=0)).max()) <= 1:
        return "skipped_constant", f"{w}x{h} of one constant value ({int(image.min())}..{hi})"
    return None
