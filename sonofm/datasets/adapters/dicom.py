"""DICOM files (single and multi-frame) with pixel spacing, ultrasound regions and colour handled.

Every photometric interpretation pydicom decodes is turned into what the other adapters yield:
MONOCHROME2 as is, MONOCHROME1 inverted, RGB as is, YBR_* converted to RGB by pydicom, PALETTE
COLOR expanded through its lookup table. Data wider than 8 bits goes to 8 bits through the
stored VOI window when there is one (DICOM's linear window function), else by min-max over the
frames kept. 8-bit data is kept as stored: ultrasound scanners write display-ready pixels.

Pixel spacing comes from ``PixelSpacing`` or, as ultrasound scanners write it, from the Sequence
of Ultrasound Regions (``PhysicalDeltaX/Y`` in cm when the unit code is 3); the regions themselves
go to ``meta["us_regions"]`` (they locate the acoustic field and split dual-view screens). The
group is the patient (hashed ``PatientID``, else ``StudyInstanceUID``, else the file): patient
identifiers must not end up in shard metadata in clear.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sonofm.datasets.adapters.base import DICOM_EXTENSIONS, Adapter, Item, list_files, relpath
from sonofm.datasets.imageio import AdapterError
from sonofm.datasets.video import DEDUP_THRESHOLD, Deduper, even_indices

CM_UNITS = 3  # PhysicalUnitsX/YDirection code for centimetres
_PROBES = (("CURVED", "convex"), ("PHASED", "phased"), ("SECTOR", "phased"), ("LINEAR", "linear"))


@dataclass
class DicomFrames:
    """Frames kept from one file (``(frame index or None, uint8 image)``) and header metadata."""

    frames: list[tuple[int | None, np.ndarray]]
    meta: dict[str, Any] = field(default_factory=dict)
    n_frames: int = 1
    n_duplicates: int = 0


def is_dicom(path: Path) -> bool:
    """True when the file carries the ``DICM`` magic after its 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _hash(kind: str, value: str) -> str:
    return f"{kind}-{hashlib.sha1(value.encode()).hexdigest()[:16]}"


def _group(ds) -> str | None:
    for kind, tag in (("patient", "PatientID"), ("study", "StudyInstanceUID")):
        value = str(ds.get(tag, "") or "").strip()
        if value:
            return _hash(kind, value)
    return None


def _regions(ds) -> list[dict[str, Any]]:
    out = []
    for r in ds.get("SequenceOfUltrasoundRegions", []) or []:
        ux, uy = r.get("PhysicalUnitsXDirection"), r.get("PhysicalUnitsYDirection")
        dx, dy = r.get("PhysicalDeltaX"), r.get("PhysicalDeltaY")
        spacing = None
        if ux == CM_UNITS and uy == CM_UNITS and dx and dy and float(dx) > 0 and float(dy) > 0:
            spacing = [abs(float(dy)) * 10.0, abs(float(dx)) * 10.0]
        box = [
            r.get(k)
            for k in (
                "RegionLocationMinX0",
                "RegionLocationMinY0",
                "RegionLocationMaxX1",
                "RegionLocationMaxY1",
            )
        ]
        out.append(
            {
                "box": [int(v) for v in box] if all(v is not None for v in box) else None,
                "spatial_format": int(r.get("RegionSpatialFormat", 0) or 0),
                "data_type": int(r.get("RegionDataType", 0) or 0),
                "pixel_spacing_mm": spacing,
                "transducer": str(r.get("TransducerType", "") or "") or None,
            }
        )
    return out


def _spacing(ds, regions: list[dict[str, Any]]) -> list[float] | None:
    ps = ds.get("PixelSpacing")
    if ps is not None and len(ps) == 2 and all(float(v) > 0 for v in ps):
        return [float(ps[0]), float(ps[1])]
    # Largest 2D (spatial format 1) region with a calibrated spacing, else any calibrated region.
    calibrated = [r for r in regions if r["pixel_spacing_mm"] is not None]
    calibrated.sort(key=lambda r: (r["spatial_format"] != 1, -_area(r["box"])))
    return calibrated[0]["pixel_spacing_mm"] if calibrated else None


def _area(box: list[int] | None) -> int:
    return 0 if box is None else max(0, box[2] - box[0] + 1) * max(0, box[3] - box[1] + 1)


def _probe(ds, regions: list[dict[str, Any]]) -> str | None:
    names = [str(ds.get("TransducerType", "") or "")] + [r["transducer"] or "" for r in regions]
    for name in names:
        up = name.upper()
        for key, probe in _PROBES:
            if key in up:
                return probe
    return None


def _frame_rate(ds) -> float | None:
    ft = ds.get("FrameTime")
    if ft:
        return 1000.0 / float(ft)
    for tag in ("CineRate", "RecommendedDisplayFrameRate"):
        if ds.get(tag):
            return float(ds.get(tag))
    return None


def _indices(
    n: int, frames_per_video: int | None, fps: float | None, rate: float | None, limit: int | None
) -> list[int]:
    n = min(n, limit) if limit is not None else n
    if fps is not None and rate:
        step = rate / fps
        return sorted({min(n - 1, int(round(k * step))) for k in range(int(np.ceil(n / step)))}) if n else []
    if frames_per_video is None:
        return list(range(n))
    return even_indices(n, frames_per_video)


def _first(value) -> float:
    """First value of a possibly multi-valued element (WindowCenter may hold several windows)."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)


def _window(arr: np.ndarray, ds) -> np.ndarray | None:
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None:
        return None
    c, w = _first(c), _first(w)
    if w < 1:
        return None
    y = ((arr - (c - 0.5)) / (w - 1) + 0.5).clip(0.0, 1.0)
    return np.round(y * 255).astype(np.uint8)


def to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    """Frames (F, H, W[, 3]) as decoded by pydicom -> ``uint8`` display pixels (see module docstring)."""
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        bits = int(ds.get("RedPaletteColorLookupTableDescriptor", [0, 0, 8])[2] or 8)
        if bits > 8 or rgb.max() > 255:
            return ((rgb.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return rgb.astype(np.uint8)
    if arr.dtype == np.uint8:
        out = arr
    else:
        data = arr.astype(np.float64)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        data = data * slope + intercept
        windowed = _window(data, ds) if pi.startswith("MONOCHROME") else None
        if windowed is not None:
            out = windowed
        else:
            lo, hi = float(data.min()), float(data.max())
            out = (
                np.round((data - lo) * (255.0 / (hi - lo))).astype(np.uint8)
                if hi > lo
                else np.zeros(data.shape, np.uint8)
            )
    if pi == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out)


def read_dicom(
    path: str | os.PathLike,
    frames_per_video: int | None = 8,
    fps: float | None = None,
    dedup_threshold: float = DEDUP_THRESHOLD,
    decode_limit: int | None = None,
) -> DicomFrames:
    """Decode the kept frames of one DICOM file and its metadata; :class:`AdapterError` names the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    p = Path(path)
    try:
        ds = pydicom.dcmread(p)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as e:
        raise AdapterError(f"{p}: not a readable DICOM file ({e})") from e
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise AdapterError(f"{p}: DICOM without pixel data{kind}")
    n = int(ds.get("NumberOfFrames", 1) or 1)
    multi = n > 1
    rate = _frame_rate(ds)
    indices = _indices(n, frames_per_video, fps, rate, decode_limit) if multi else [0]
    try:
        if multi:
            raw = np.stack([pixel_array(ds, index=i) for i in indices])
        else:
            raw = pixel_array(ds)[None]
    except Exception as e:  # noqa: BLE001 - decoders raise many types (missing plugin, corrupt data)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", ts)
        raise AdapterError(f"{p}: cannot decode pixel data (transfer syntax {ts_name}): {e}") from e
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if (spp == 1 and raw.ndim != 3) or (spp == 3 and raw.ndim != 4):
        raise AdapterError(f"{p}: unexpected pixel array shape {raw.shape[1:]} for SamplesPerPixel={spp}")
    images = to_uint8(raw, ds)
    dedup = Deduper(dedup_threshold if multi else 0.0)
    frames = [(i if multi else None, img) for i, img in zip(indices, images) if dedup.keep(img)]
    regions = _regions(ds)
    meta: dict[str, Any] = {
        "group": _group(ds),
        "pixel_spacing_mm": _spacing(ds, regions),
        "probe": _probe(ds, regions),
        "photometric": str(ds.get("PhotometricInterpretation", "")) or None,
    }
    if regions:
        meta["us_regions"] = regions
    return DicomFrames(frames, meta, n, dedup.dropped)


class DicomAdapter(Adapter):
    """``root`` is a DICOM file or a folder searched recursively (``.dcm``/``.dicom``, and files
    without extension that carry the DICM magic). Options: ``labels`` (``"folder"``: first
    sub-folder is the class), plus the frame-sampling options of every adapter.
    """

    name = "dicom"
    options = {"labels": None}

    def __init__(self, root, source: str | None = None, **options) -> None:
        super().__init__(root, source, **options)
        if self.opts["labels"] not in (None, "folder"):
            raise TypeError(f"dicom: labels must be 'folder' or None, got {self.opts['labels']!r}")
        if self.root.is_file():
            self.data_dir = self.root.parent

    def items(self) -> list[Item]:
        if self.root.is_file():
            files = [self.root]
        else:
            files = list_files(self.root, DICOM_EXTENSIONS)
            others = [
                p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() not in DICOM_EXTENSIONS
            ]
            files += [
                p
                for p in others
                if not any(x.startswith(".") for x in p.relative_to(self.root).parts) and is_dicom(p)
            ]
            files.sort(key=lambda p: relpath(p, self.root))
        if not files:
            raise AdapterError(f"dicom: no DICOM files under {self.root}")
        items = []
        for p in files:
            rel = relpath(p, self.data_dir)
            parts = Path(rel).parts
            label = parts[0] if self.opts["labels"] == "folder" and len(parts) > 1 else None
            items.append(Item(path=rel, meta={"label": label}))
        return items

    def decode(self, rel: str):
        dcm = read_dicom(self.data_dir / rel, **self.frame_options())
        self.count("dicom_frames_dropped_duplicate", dcm.n_duplicates)
        for index, image in dcm.frames:
            yield index, image, dcm.meta
