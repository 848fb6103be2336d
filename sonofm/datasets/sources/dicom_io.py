"""Reading and decoding DICOM files (single and multi-frame): pixel spacing, ultrasound regions, colour.

Kept apart from the adapters so that the adapter base (which decodes ``.dcm`` files met by any
adapter) and :class:`~sonofm.datasets.sources.adapters.dicom.DicomAdapter` both import it without a cycle.

Every photometric interpretation pydicom decodes is turned into what the other adapters yield:
MONOCHROME2 as is, MONOCHROME1 inverted, RGB as is, YBR_* converted to RGB by pydicom, PALETTE
COLOR expanded through its lookup table. Data wider than 8 bits goes to 8 bits through the
stored VOI window when there is one (DICOM's linear window function), else by min-max over the
frames kept. 8-bit data is kept as stored: ultrasound scanners write display-ready pixels.

Pixel spacing comes from ``PixelSpacing`` or, as ultrasound scanners write it, from the Sequence
of Ultrasound Regions (``PhysicalDeltaX/Y`` in cm when the unit code is 3); the regions themselves
go to ``meta["us_regions"]``. When a file has regions, they decide what is a sample: every 2-D
tissue region is one record per kept frame, cropped to its box, with its own spacing and probe
(a dual-view screen gives two; the clinic name, date and UI around the boxes are cut away), and
every other region (colour flow, Doppler spectra, M-mode, traces, grey and colour bars, graphics)
is only counted; a file with regions but no tissue region gives no record. Files without regions
yield whole frames (the acoustic field is then detected in preprocessing).

The group is the patient (hashed ``PatientID``, else ``StudyInstanceUID``, else the file): patient
identifiers must not end up in shard metadata in clear. Organ and region come from
``BodyPartExamined`` or keywords of the study/series descriptions through :data:`ANATOMY_KEYWORDS`;
only the mapped taxonomy names reach the metadata, never the header text (descriptions may hold
names).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sonofm.datasets.sources.imageio import AdapterError
from sonofm.datasets.sources.video import DEDUP_THRESHOLD, Deduper, even_indices

CM_UNITS = 3  # PhysicalUnitsX/YDirection code for centimetres
_PROBES = (("CURVED", "convex"), ("PHASED", "phased"), ("SECTOR", "phased"), ("LINEAR", "linear"))

#: Region Spatial Format (0018,6012), DICOM PS3.3 C.8.5.5.1.1.
SPATIAL_FORMATS: dict[int, str] = {0: "none", 1: "2d", 2: "m_mode", 3: "spectral", 4: "waveform", 5: "graphics"}
#: Region Data Type (0018,6014), DICOM PS3.3 C.8.5.5.1.2.
DATA_TYPES: dict[int, str] = {
    0: "none",
    1: "tissue",
    2: "colour_flow",
    3: "pw_spectral_doppler",
    4: "cw_spectral_doppler",
    5: "doppler_mean_trace",
    6: "doppler_mode_trace",
    7: "doppler_max_trace",
    8: "volume_trace",
    9: "d_volume_dt_trace",
    10: "ecg_trace",
    11: "pulse_trace",
    12: "phonocardiogram_trace",
    13: "grey_bar",
    14: "colour_bar",
    15: "integrated_backscatter",
    16: "area_trace",
    17: "d_area_dt",
    18: "other_physiological",
}
_TRACE_TYPES = frozenset({5, 6, 7, 8, 9, 10, 11, 12, 16, 17, 18})

#: Header keywords -> ``(organ, region)`` of the built-in taxonomy (``configs/taxonomy.yaml``).
#: Matched as whole words of ``BodyPartExamined`` (DICOM defined terms such as ``BREAST``,
#: ``CHEST``, ``ABDOMEN``) and, when that says nothing known, of the study and series
#: descriptions. An organ of ``None`` means only the region is known (``ABDOMEN``: liver or
#: kidney). Several matches that disagree on the organ keep only a shared region, and on the
#: region keep nothing: a guessed organ would teach the classifier a wrong target. Entries of
#: ``(None, None)`` name anatomy outside the built-in tree (pelvis, gynaecology, ...): they veto a
#: guess from the other words (``OB/GYN``) rather than add one.
ANATOMY_KEYWORDS: dict[str, tuple[str | None, str | None]] = {
    "BREAST": ("breast", "thorax"),
    "MAMMA": ("breast", "thorax"),
    "LUNG": ("lung", "thorax"),
    "LUNGS": ("lung", "thorax"),
    "CHEST": ("lung", "thorax"),
    "PLEURA": ("lung", "thorax"),
    "PLEURAL": ("lung", "thorax"),
    "HEART": ("heart", "thorax"),
    "CARDIAC": ("heart", "thorax"),
    "ECHO": ("heart", "thorax"),
    "ECHOCARDIOGRAPHY": ("heart", "thorax"),
    "ECHOCARDIOGRAM": ("heart", "thorax"),
    "TTE": ("heart", "thorax"),
    "TEE": ("heart", "thorax"),
    "THORAX": (None, "thorax"),
    "THYROID": ("thyroid", "head_and_neck"),
    "CAROTID": ("carotid", "head_and_neck"),
    "NECK": (None, "head_and_neck"),
    "HEADNECK": (None, "head_and_neck"),
    "LIVER": ("liver", "abdomen"),
    "HEPATIC": ("liver", "abdomen"),
    "KIDNEY": ("kidney", "abdomen"),
    "KIDNEYS": ("kidney", "abdomen"),
    "RENAL": ("kidney", "abdomen"),
    "ABDOMEN": (None, "abdomen"),
    "ABDOMINAL": (None, "abdomen"),
    "FETUS": (None, "fetus"),
    "FETAL": (None, "fetus"),
    "OB": (None, "fetus"),
    "OBSTETRIC": (None, "fetus"),
    "OBSTETRICS": (None, "fetus"),
    "OBSTETRICAL": (None, "fetus"),
    "FETAL HEAD": ("fetal_head", "fetus"),
    "PELVIS": (None, None),
    "PELVIC": (None, None),
    "GYN": (None, None),
    "GYNECOLOGY": (None, None),
    "GYNAECOLOGY": (None, None),
    "UTERUS": (None, None),
    "OVARY": (None, None),
    "PROSTATE": (None, None),
    "SCROTUM": (None, None),
    "TESTIS": (None, None),
}
_WORD = re.compile(r"[A-Z0-9]+")
_MAX_WORDS = max(len(k.split()) for k in ANATOMY_KEYWORDS)


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
        out[-1]["kind"] = region_kind(out[-1]["spatial_format"], out[-1]["data_type"])
    return out


def region_kind(spatial_format: int, data_type: int) -> str:
    """What a region holds, from its PS3.3 C.8.5.5.1 codes: ``"tissue"`` (a 2-D B-mode image, the only
    kind that becomes a sample) or the kind of everything else, as named in the build counters."""
    if data_type == 13:
        return "grey_bar"
    if data_type == 14:
        return "colour_bar"
    if data_type in (3, 4) or spatial_format == 3:
        return "spectral_doppler"
    if spatial_format == 2:
        return "m_mode"
    if spatial_format == 4 or data_type in _TRACE_TYPES:
        return "trace"
    if spatial_format == 1 and data_type == 1:
        return "tissue"
    if spatial_format == 1 and data_type == 2:
        return "colour_flow"  # overlays a tissue region: its pixels are in that region's crop
    if spatial_format == 5:
        return "graphics"
    if data_type == 15:
        return "integrated_backscatter"
    if spatial_format == 0 and data_type == 0:
        return "none"
    return "unknown"


def _clip_box(box: list[int] | None, rows: int, cols: int) -> tuple[tuple[int, int, int, int] | None, str]:
    """A region box (inclusive corners) clipped to the image, or ``None`` and why it is unusable."""
    if box is None:
        return None, "no_box"
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        return None, "empty_box"
    if x0 >= cols or y0 >= rows or x1 < 0 or y1 < 0:
        return None, "outside_image"
    clipped = (max(0, x0), max(0, y0), min(cols - 1, x1), min(rows - 1, y1))
    return clipped, "clipped_to_image" if clipped != tuple(box) else "ok"


def tissue_regions(
    regions: list[dict[str, Any]], rows: int, cols: int, count: Callable[..., None] | None = None
) -> list[tuple[int, tuple[int, int, int, int]]]:
    """``(index in the sequence, box clipped to the image)`` of every usable 2-D tissue region.

    ``count(key)`` is told the kind of every region (``us_regions_tissue``,
    ``us_regions_other_<kind>``) and why a tissue box was skipped or clipped
    (``us_regions_skipped_<reason>``, ``us_regions_clipped_to_image``).
    """
    count = count or _no_count
    out = []
    for i, r in enumerate(regions):
        if r["kind"] != "tissue":
            count(f"us_regions_other_{r['kind']}")
            continue
        count("us_regions_tissue")
        box, why = _clip_box(r["box"], rows, cols)
        if box is None:
            count(f"us_regions_skipped_{why}")
            continue
        if why != "ok":
            count(f"us_regions_{why}")
        out.append((i, box))
    return out


def _no_count(key: str, n: int = 1) -> None:
    """Stand-in counter for callers that keep no statistics."""


def _anatomy_matches(text: str) -> list[tuple[str | None, str | None]]:
    words = _WORD.findall(text.upper())
    found = []
    for n in range(1, _MAX_WORDS + 1):
        for i in range(len(words) - n + 1):
            hit = ANATOMY_KEYWORDS.get(" ".join(words[i : i + n]))
            if hit is not None:
                found.append(hit)
    return found


def anatomy(body_part: str | None = None, *descriptions: str | None) -> tuple[str | None, str | None]:
    """``(organ, region)`` of the built-in taxonomy from header text, ``None`` where not clearly known.

    ``BodyPartExamined`` decides when one of its words is in :data:`ANATOMY_KEYWORDS`; the
    descriptions are read only when it says nothing known (absent, or a term outside the table).
    """
    for texts in ((body_part,), descriptions):
        found = [m for t in texts if t for m in _anatomy_matches(str(t))]
        if found:
            regions = {r for _, r in found}
            if len(regions) != 1 or None in regions:
                return None, None
            organs = {o for o, _ in found if o is not None}
            return (organs.pop() if len(organs) == 1 else None), regions.pop()
    return None, None


def _pixel_spacing_tag(ds) -> list[float] | None:
    ps = ds.get("PixelSpacing")
    if ps is not None and len(ps) == 2 and all(float(v) > 0 for v in ps):
        return [float(ps[0]), float(ps[1])]
    return None


def _spacing(ds, regions: list[dict[str, Any]]) -> list[float] | None:
    ps = _pixel_spacing_tag(ds)
    if ps is not None:
        return ps
    # Largest 2D (spatial format 1) region with a calibrated spacing, else any calibrated region.
    calibrated = [r for r in regions if r["pixel_spacing_mm"] is not None]
    calibrated.sort(key=lambda r: (r["spatial_format"] != 1, -_area(r["box"])))
    return calibrated[0]["pixel_spacing_mm"] if calibrated else None


def _area(box: list[int] | None) -> int:
    return 0 if box is None else max(0, box[2] - box[0] + 1) * max(0, box[3] - box[1] + 1)


def _probe_kind(name: str | None) -> str | None:
    up = (name or "").upper()
    for key, probe in _PROBES:
        if key in up:
            return probe
    return None


def _probe(ds, regions: list[dict[str, Any]]) -> str | None:
    names = [str(ds.get("TransducerType", "") or "")] + [r["transducer"] or "" for r in regions]
    for name in names:
        probe = _probe_kind(name)
        if probe is not None:
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


def _open(p: Path):
    """The dataset of ``p`` (pixel data not decoded yet); :class:`AdapterError` unless it holds pixels."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():  # a file cut short warns here; it is reported below instead
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(p)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as e:
        raise AdapterError(f"{p}: not a readable DICOM file ({e})") from e
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if _has_pixel_tag(p):  # the element starts in the file but pydicom dropped it: the file ends inside it
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            raise AdapterError(
                f"{p}: pixel data cut short (the file ends inside it, {p.stat().st_size} bytes; transfer syntax "
                f"{getattr(ts, 'name', ts)}): an incomplete copy or download"
            )
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise AdapterError(f"{p}: DICOM without pixel data{kind}")
    return ds


def _has_pixel_tag(p: Path) -> bool:
    """Whether the bytes of ``p`` hold the (7FE0,0010) Pixel Data tag (little endian, as written)."""
    with open(p, "rb") as f:
        return b"\xe0\x7f\x10\x00" in f.read()


def _header_meta(ds, regions: list[dict[str, Any]]) -> dict[str, Any]:
    """What the header says that a record keeps: hashed group, spacing, probe, mapped anatomy (no text)."""
    organ, region = anatomy(ds.get("BodyPartExamined"), ds.get("StudyDescription"), ds.get("SeriesDescription"))
    meta: dict[str, Any] = {
        "group": _group(ds),
        "pixel_spacing_mm": _spacing(ds, regions),
        "probe": _probe(ds, regions),
        "photometric": str(ds.get("PhotometricInterpretation", "")) or None,
        # hints, not facts: a source's declared or spec'd organ wins over a header (see Taxonomy.annotate)
        "header_organ": organ,
        "header_region": region,
    }
    if regions:
        meta["us_regions"] = regions
    return meta


def _decode_frames(
    ds,
    p: Path,
    frames_per_video: int | None = 8,
    fps: float | None = None,
    dedup_threshold: float = DEDUP_THRESHOLD,
    decode_limit: int | None = None,
) -> DicomFrames:
    from pydicom.pixels import pixel_array

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
    return DicomFrames(frames, _header_meta(ds, _regions(ds)), n, dedup.dropped)


def read_dicom(
    path: str | os.PathLike,
    frames_per_video: int | None = 8,
    fps: float | None = None,
    dedup_threshold: float = DEDUP_THRESHOLD,
    decode_limit: int | None = None,
) -> DicomFrames:
    """Decode the kept whole frames of one DICOM file and its metadata; :class:`AdapterError` names the file."""
    p = Path(path)
    return _decode_frames(_open(p), p, frames_per_video, fps, dedup_threshold, decode_limit)


def _region_meta(
    file_meta: dict[str, Any], ds, region: dict[str, Any], index: int, box: tuple[int, int, int, int]
) -> dict[str, Any]:
    """The file's metadata with the region's own spacing, probe, index, box and the screen's size."""
    probe = _probe_kind(region["transducer"]) or file_meta["probe"]
    return {
        **file_meta,
        "pixel_spacing_mm": region["pixel_spacing_mm"] or _pixel_spacing_tag(ds),
        "probe": probe,
        "us_region": index,
        "us_region_box": list(box),
        "us_frame_size": [int(ds.Rows), int(ds.Columns)],
    }


def decode_dicom(
    path: str | os.PathLike, count: Callable[..., None] | None = None, **frame_options: Any
) -> Iterator[tuple[int | None, np.ndarray, dict[str, Any]]]:
    """``(frame index or None, uint8 image, metadata)`` of every sample of one DICOM file.

    The one DICOM decode of every adapter. With ultrasound regions, each kept frame gives one image
    per usable 2-D tissue region, cropped to its box (inclusive corners, clipped to the image), with
    ``us_region`` (index in the sequence), ``us_region_box`` (``[x0, y0, x1, y1]`` of the crop in
    frame coordinates) and ``us_frame_size`` (``[rows, cols]`` of the frame) in the metadata; a file whose regions hold no tissue region gives nothing
    (its pixels are not even decoded), and one whose tissue boxes are all unusable gives whole
    frames, as a file without regions does. ``count(key, n)`` receives the counters of the build
    report (see :func:`tissue_regions`).
    """
    count = count or _no_count
    p = Path(path)
    ds = _open(p)
    regions = _regions(ds)
    tissue: list[tuple[int, tuple[int, int, int, int]]] = []
    if regions:
        count("dicom_files_with_us_regions")
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        tissue = tissue_regions(regions, rows, cols, count)
        if not tissue:
            if not any(r["kind"] == "tissue" for r in regions):
                count("dicom_files_without_tissue_region")
                return
            count("dicom_files_tissue_regions_unusable")
    dcm = _decode_frames(ds, p, **frame_options)
    count("dicom_frames_dropped_duplicate", dcm.n_duplicates)
    if not tissue:
        for index, image in dcm.frames:
            yield index, image, dcm.meta
        return
    metas = [_region_meta(dcm.meta, ds, regions[i], i, box) for i, box in tissue]
    for index, image in dcm.frames:
        for (_, (x0, y0, x1, y1)), meta in zip(tissue, metas):
            yield index, np.ascontiguousarray(image[y0 : y1 + 1, x0 : x1 + 1]), meta
