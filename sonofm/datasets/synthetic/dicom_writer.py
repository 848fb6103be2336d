"""A small, real ultrasound DICOM writer (pydicom) for tests and benchmarks.

Scanner exports are what the DICOM adapter has to survive, and they cannot be shipped (they hold
patients). This writes the same structure from arrays: US Image Storage (one frame) or US
Multi-frame Image Storage, explicit VR little endian, a Sequence of Ultrasound Regions with the
calibration and region codes of PS3.3 C.8.5.5, and the header tags (patient, body part,
descriptions) whose handling the adapter must get right.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
FRAME_TIME_TAG = 0x00181063  # Frame Time, the Frame Increment Pointer of a cine loop
CM_UNITS = 3  # Physical Units X/Y Direction: cm

#: Region keys with a short name; any other key must be a DICOM keyword of the region item.
_REGION_KEYS = {"box", "spatial_format", "data_type", "delta_x_cm", "delta_y_cm", "transducer"}


def _check_keyword(keyword: str, where: str) -> None:
    from pydicom.datadict import dictionary_has_tag, tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None or not dictionary_has_tag(tag):
        raise ValueError(f"write_us_dicom: {where}: {keyword!r} is not a DICOM keyword")


def _region_item(spec: Mapping[str, Any], index: int):
    """One item of the Sequence of Ultrasound Regions from its short description."""
    from pydicom.dataset import Dataset

    if "box" not in spec:
        raise ValueError(f"write_us_dicom: region {index} needs a 'box' (x0, y0, x1, y1), got {dict(spec)}")
    x0, y0, x1, y1 = (int(v) for v in spec["box"])
    item = Dataset()
    item.RegionSpatialFormat = int(spec.get("spatial_format", 1))
    item.RegionDataType = int(spec.get("data_type", 1))
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    dx, dy = spec.get("delta_x_cm"), spec.get("delta_y_cm")
    calibrated = dx is not None and dy is not None
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = CM_UNITS if calibrated else 0
    item.PhysicalDeltaX = float(dx) if calibrated else 0.0
    item.PhysicalDeltaY = float(dy) if calibrated else 0.0
    if spec.get("transducer"):
        item.TransducerType = str(spec["transducer"])
    for key, value in spec.items():
        if key in _REGION_KEYS:
            continue
        _check_keyword(str(key), f"region {index}")
        setattr(item, str(key), value)
    return item


def _as_frames(frames: np.ndarray | Sequence[np.ndarray], photometric: str) -> np.ndarray:
    """``(F, H, W)`` or ``(F, H, W, 3)``: a frame axis added to a single image."""
    arr = np.stack([np.asarray(f) for f in frames]) if isinstance(frames, (list, tuple)) else np.asarray(frames)
    single = 3 if photometric == "RGB" else 2
    if arr.ndim == single:
        arr = arr[None]
    if arr.ndim != single + 1 or (photometric == "RGB" and arr.shape[-1] != 3):
        shape = "(H, W, 3) or (F, H, W, 3)" if photometric == "RGB" else "(H, W) or (F, H, W)"
        raise ValueError(f"write_us_dicom: {photometric} frames must be {shape}, got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("write_us_dicom: no frames given")
    return np.ascontiguousarray(arr)


def write_us_dicom(
    path: str | os.PathLike,
    frames: np.ndarray | Sequence[np.ndarray],
    *,
    photometric: str = "RGB",
    regions: Sequence[Mapping[str, Any]] | None = None,
    patient_id: str | None = None,
    body_part: str | None = None,
    study_description: str | None = None,
    frame_time_ms: float | None = None,
    **extra_tags: Any,
) -> Path:
    """Write ``frames`` as an ultrasound DICOM file and return its path.

    ``frames`` is one image or several (``(F, H, W[, 3])`` or a list): one frame gives US Image
    Storage, several US Multi-frame Image Storage. ``photometric`` is ``"RGB"`` (uint8) or
    ``"MONOCHROME2"`` (uint8 or uint16). ``regions`` are dicts ``{box: (x0, y0, x1, y1)`` (inclusive
    pixel corners), ``spatial_format``, ``data_type`` (PS3.3 C.8.5.5.1 codes, default 1 and 1),
    ``delta_x_cm``, ``delta_y_cm`` (calibrated in cm when both are given), ``transducer}``, plus any
    region-item DICOM keyword. ``extra_tags`` are DICOM keywords set on the dataset as given.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if photometric not in ("RGB", "MONOCHROME2"):
        raise ValueError(f"write_us_dicom: photometric must be 'RGB' or 'MONOCHROME2', got {photometric!r}")
    arr = _as_frames(frames, photometric)
    if arr.dtype == np.uint8:
        bits = 8
    elif arr.dtype == np.uint16 and photometric == "MONOCHROME2":
        bits = 16
    else:
        raise ValueError(f"write_us_dicom: {photometric} frames must be uint8 (or uint16 grey), got {arr.dtype}")
    multi = arr.shape[0] > 1
    sop = US_MULTIFRAME_STORAGE if multi else US_IMAGE_STORAGE

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.set_pixel_data(arr if multi else arr[0], photometric, bits)
    if patient_id is not None:
        ds.PatientID = str(patient_id)
    if body_part is not None:
        ds.BodyPartExamined = str(body_part)
    if study_description is not None:
        ds.StudyDescription = str(study_description)
    if frame_time_ms is not None:
        ds.FrameTime = float(frame_time_ms)
        if multi:
            ds.FrameIncrementPointer = FRAME_TIME_TAG
    if regions is not None:
        ds.SequenceOfUltrasoundRegions = [_region_item(r, i) for i, r in enumerate(regions)]
    for key, value in extra_tags.items():
        _check_keyword(key, "extra tag")
        setattr(ds, key, value)

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(p, enforce_file_format=True)
    return p
