"""DICOM Sequence of Ultrasound Regions: each 2-D tissue region its own sample (issue 12, point 3).

Screens are written with the package's own DICOM writer (pydicom), the clinic name and date drawn
with PIL outside the image boxes, as scanners burn them in.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw

from sonofm.datasets.build.orchestrate import build_shards
from sonofm.datasets.preprocess.pipeline import preprocess
from sonofm.datasets.shards import iter_tar_samples
from sonofm.datasets.sources.adapters import get_adapter
from sonofm.datasets.sources.dicom_io import ANATOMY_KEYWORDS, anatomy, region_kind
from sonofm.datasets.synthetic.dicom_writer import write_us_dicom
from sonofm.datasets.taxonomy import Taxonomy

H, W = 480, 640
LEFT = (20, 60, 309, 379)  # x0, y0, x1, y1, inclusive (DICOM RegionLocationMin/Max)
RIGHT = (330, 60, 619, 379)
COLOUR_BAR = (624, 60, 634, 300)
SPECTRAL = (20, 392, 619, 470)
CLINIC, DATE = "St Mary Clinic", "2024-05-01 14:32"

REGIONS = [
    {"box": LEFT, "spatial_format": 1, "data_type": 1, "delta_x_cm": 0.02, "delta_y_cm": 0.03,
     "transducer": "LINEAR"},
    {"box": RIGHT, "spatial_format": 1, "data_type": 1, "delta_x_cm": 0.04, "delta_y_cm": 0.05,
     "transducer": "CURVED LINEAR"},
    {"box": COLOUR_BAR, "spatial_format": 5, "data_type": 14},
    {"box": SPECTRAL, "spatial_format": 3, "data_type": 3, "delta_x_cm": 0.1, "delta_y_cm": 0.2},
    {"box": (100, 150, 200, 250), "spatial_format": 1, "data_type": 2},  # colour flow over the left view
]
SPACINGS = {0: [0.3, 0.2], 1: [0.5, 0.4]}  # mm, row then column: PhysicalDeltaY, X * 10
BOXES = {0: LEFT, 1: RIGHT}


def crop(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return frame[y0 : y1 + 1, x0 : x1 + 1]


def screen(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A dual-view RGB screen and the mask of its burnt-in text (drawn outside both tissue boxes)."""
    rng = np.random.default_rng(seed)
    frame = np.zeros((H, W, 3), np.uint8)
    for box in (LEFT, RIGHT):
        x0, y0, x1, y1 = box
        frame[y0 : y1 + 1, x0 : x1 + 1] = rng.integers(30, 220, (y1 - y0 + 1, x1 - x0 + 1, 1), dtype=np.uint8)
    x0, y0, x1, y1 = COLOUR_BAR
    ramp = np.linspace(0, 255, y1 - y0 + 1).astype(np.uint8)[:, None]
    frame[y0 : y1 + 1, x0 : x1 + 1, 0] = ramp
    frame[y0 : y1 + 1, x0 : x1 + 1, 2] = 255 - ramp
    x0, y0, x1, y1 = SPECTRAL
    frame[y0 : y1 + 1, x0 : x1 + 1] = rng.integers(0, 120, (y1 - y0 + 1, x1 - x0 + 1, 1), dtype=np.uint8)
    before = frame.copy()
    im = Image.fromarray(frame)
    draw = ImageDraw.Draw(im)
    draw.text((20, 8), CLINIC, fill=(255, 255, 255))
    draw.text((420, 8), DATE, fill=(255, 255, 0))
    draw.text((20, 30), "DOE^JANE", fill=(255, 255, 255))
    frame = np.asarray(im).copy()
    text = (frame != before).any(axis=2)
    assert text.sum() > 100
    for box in (LEFT, RIGHT):
        assert not crop(text, box).any()  # the premise: all text lies outside the image boxes
    return frame, text


def records(path: Path, **options):
    ad = get_adapter("dicom", path, **options)
    return list(ad), ad.stats


def test_dual_view_screen_gives_one_record_per_tissue_region(tmp_path: Path) -> None:
    frame, text = screen(0)
    p = write_us_dicom(tmp_path / "dual.dcm", frame, regions=REGIONS, patient_id="DOE^JANE")
    recs, stats = records(p)
    assert [r.meta["us_region"] for r in recs] == [0, 1]
    for r in recs:
        i = r.meta["us_region"]
        assert r.meta["us_region_box"] == list(BOXES[i])
        assert np.array_equal(r.image, crop(frame, BOXES[i]))
        assert r.meta["pixel_spacing_mm"] == pytest.approx(SPACINGS[i])
        assert r.meta["us_frame_size"] == [H, W]
        assert r.meta["frame"] is None and r.meta["group"].startswith("patient-")
    assert [r.meta["probe"] for r in recs] == ["linear", "convex"]
    # the text is in the screen but in neither record (a record is exactly its box)
    assert text.any() and all(r.image.shape[:2] != text.shape for r in recs)
    assert stats["us_regions_tissue"] == 2
    assert stats["us_regions_other_colour_bar"] == 1
    assert stats["us_regions_other_spectral_doppler"] == 1
    assert stats["us_regions_other_colour_flow"] == 1
    assert stats["dicom_files_with_us_regions"] == 1


def test_preprocess_rescales_the_region_spacing(tmp_path: Path) -> None:
    frame, _ = screen(1)
    p = write_us_dicom(tmp_path / "dual.dcm", frame, regions=REGIONS)
    for rec in records(p)[0]:
        out = preprocess(rec, max_side=100)
        t, left, b, r = out.meta["crop"]
        nh, nw = out.meta["size"]
        assert max(nh, nw) <= 100 and (b - t) > nh  # really downsized
        sr, sc = SPACINGS[rec.meta["us_region"]]
        assert out.meta["pixel_spacing_mm"] == pytest.approx([sr * (b - t) / nh, sc * (r - left) / nw])
        assert out.meta["us_region"] == rec.meta["us_region"]


def test_multiframe_clip_gives_frames_times_tissue_regions(tmp_path: Path) -> None:
    frames = np.stack([screen(s)[0] for s in range(4)])
    p = write_us_dicom(tmp_path / "clip.dcm", frames, regions=REGIONS, frame_time_ms=40.0)
    recs, _ = records(p, frames_per_video=None)
    assert [(r.meta["frame"], r.meta["us_region"]) for r in recs] == [(f, i) for f in range(4) for i in (0, 1)]
    for r in recs:
        assert np.array_equal(r.image, crop(frames[r.meta["frame"]], BOXES[r.meta["us_region"]]))
    recs, _ = records(p, frames_per_video=2)
    assert len(recs) == 4 and {r.meta["us_region"] for r in recs} == {0, 1}


def test_file_without_tissue_region_gives_no_record_and_is_counted(tmp_path: Path) -> None:
    frame, _ = screen(2)
    p = write_us_dicom(tmp_path / "pw.dcm", frame, regions=[REGIONS[3], {"box": (0, 0, 10, 10), "spatial_format": 4,
                                                                         "data_type": 10}])
    recs, stats = records(p)
    assert recs == []
    assert stats["dicom_files_without_tissue_region"] == 1
    assert stats["us_regions_other_spectral_doppler"] == 1 and stats["us_regions_other_trace"] == 1
    assert "us_regions_tissue" not in stats


def test_region_codes_follow_the_dicom_tables() -> None:
    assert region_kind(1, 1) == "tissue"
    assert region_kind(1, 2) == "colour_flow"
    assert region_kind(3, 3) == region_kind(3, 4) == "spectral_doppler"
    assert region_kind(2, 1) == region_kind(2, 2) == "m_mode"
    assert all(region_kind(4, t) == "trace" for t in range(5, 13))
    assert region_kind(0, 13) == "grey_bar" and region_kind(5, 14) == "colour_bar"
    assert region_kind(5, 0) == "graphics" and region_kind(0, 0) == "none" and region_kind(1, 99) == "unknown"


def test_boxes_are_clipped_or_skipped_with_a_reason(tmp_path: Path) -> None:
    frame, _ = screen(3)
    regions = [
        {"box": (600, 400, 700, 500)},  # partly outside: clipped to the image
        {"box": (100, 100, 50, 200)},  # max < min: empty
        {"box": (700, 10, 800, 20)},  # wholly outside
        REGIONS[0],
    ]
    p = write_us_dicom(tmp_path / "odd.dcm", frame, regions=regions)
    recs, stats = records(p)
    assert [r.meta["us_region"] for r in recs] == [0, 3]
    assert recs[0].meta["us_region_box"] == [600, 400, W - 1, H - 1]
    assert np.array_equal(recs[0].image, frame[400:, 600:])
    assert stats["us_regions_clipped_to_image"] == 1
    assert stats["us_regions_skipped_empty_box"] == 1 and stats["us_regions_skipped_outside_image"] == 1
    # every tissue box unusable: whole frames, as for a file without regions (field detected later)
    p = write_us_dicom(tmp_path / "bad.dcm", frame, regions=[regions[2]])
    recs, stats = records(p)
    assert len(recs) == 1 and np.array_equal(recs[0].image, frame) and "us_region" not in recs[0].meta
    assert stats["dicom_files_tissue_regions_unusable"] == 1


def test_screen_mask_is_cropped_with_each_region(tmp_path: Path) -> None:
    frame, _ = screen(4)
    write_us_dicom(tmp_path / "dual.dcm", frame, regions=REGIONS)
    mask = np.zeros((H, W), np.uint8)
    mask[100:150, 50:120] = 255  # a lesion in the left view only
    Image.fromarray(mask).save(tmp_path / "dual_mask.png")
    (tmp_path / "manifest.csv").write_text("path,mask\ndual.dcm,dual_mask.png\n")
    recs = list(get_adapter("csv", tmp_path, source="busbra"))
    assert [r.meta["us_region"] for r in recs] == [0, 1]
    assert np.array_equal(recs[0].mask, crop(mask, LEFT) > 0) and not recs[1].mask.any()
    assert recs[0].mask.shape == recs[0].image.shape[:2]


def test_build_writes_one_sample_per_region_with_distinct_keys(tmp_path: Path) -> None:
    data = tmp_path / "dicoms"
    frames = np.stack([screen(s)[0] for s in range(10, 13)])
    write_us_dicom(data / "clip.dcm", frames, regions=REGIONS, frame_time_ms=33.0, patient_id="DOE^JANE",
                   body_part="BREAST")
    write_us_dicom(data / "doppler.dcm", frames[0], regions=[REGIONS[3]], patient_id="DOE^JANE")
    # a source listed nowhere: organ and region come from the header (BodyPartExamined)
    report = build_shards([f"dicom:{data}?source=mydicoms&frames_per_video=8"], tmp_path / "out", max_side=64,
                          workers=1, progress=False)
    rep = report["sources"]["mydicoms"]
    assert rep["samples_written"] == 6 and rep["decode_errors"] == 0
    stats = rep["adapter_stats"]
    assert stats["us_regions_tissue"] == 2
    assert stats["us_regions_other_colour_bar"] == 1
    assert stats["us_regions_other_spectral_doppler"] == 2
    assert stats["us_regions_other_colour_flow"] == 1
    assert stats["dicom_files_without_tissue_region"] == 1
    samples = [s for tar in sorted((tmp_path / "out").glob("*.tar")) for s in iter_tar_samples(tar)]
    metas = [json.loads(s["json"]) for s in samples]
    assert len({s["__key__"] for s in samples}) == 6
    assert sorted((m["frame"], m["us_region"]) for m in metas) == [(f, i) for f in range(3) for i in (0, 1)]
    for s, m in zip(samples, metas):
        assert m["organ"] == "breast" and m["region"] == "thorax"
        assert m["path"].startswith("file-") and m["path"].endswith(".dcm")  # DICOM paths are pseudonymised
        assert max(Image.open(io.BytesIO(s["png"])).size) <= 64
        sr, sc = SPACINGS[m["us_region"]]
        t, left, b, r = m["crop"]
        nh, nw = m["size"]
        assert m["pixel_spacing_mm"] == pytest.approx([sr * (b - t) / nh, sc * (r - left) / nw])
        assert "DOE" not in json.dumps(m)


@pytest.mark.parametrize(
    ("body_part", "description", "expected"),
    [
        ("BREAST", None, ("breast", "thorax")),
        ("THYROID", None, ("thyroid", "head_and_neck")),
        ("CAROTID", None, ("carotid", "head_and_neck")),
        ("LIVER", None, ("liver", "abdomen")),
        ("KIDNEY", None, ("kidney", "abdomen")),
        ("HEART", None, ("heart", "thorax")),
        ("CHEST", None, ("lung", "thorax")),
        ("ABDOMEN", None, (None, "abdomen")),
        ("NECK", None, (None, "head_and_neck")),
        ("PELVIS", "OB 2nd trimester", (None, None)),  # the body part decides, outside the tree
        (None, "Echo TTE complete", ("heart", "thorax")),
        (None, "US Thyroid bilateral", ("thyroid", "head_and_neck")),
        (None, "OB fetal head biometry", ("fetal_head", "fetus")),
        (None, "OB/GYN", (None, None)),  # fetal or gynaecological: not clearly known
        (None, "Liver and thyroid", (None, None)),
        (None, "Liver and kidneys", (None, "abdomen")),
        (None, "echogenic mass", (None, None)),  # whole words only
        ("FOOT", "Renal Doppler", ("kidney", "abdomen")),  # an unknown body part: descriptions read
        (None, None, (None, None)),
    ],
)
def test_organ_and_region_from_the_header(tmp_path: Path, body_part, description, expected) -> None:
    frame = np.random.default_rng(5).integers(0, 256, (40, 60), dtype=np.uint8)
    p = write_us_dicom(tmp_path / "a.dcm", frame, photometric="MONOCHROME2", body_part=body_part,
                       study_description=description)
    (rec,), _ = records(p)
    assert (rec.meta["header_organ"], rec.meta["header_region"]) == expected
    assert np.array_equal(rec.image, frame) and "us_region" not in rec.meta  # no regions: whole frame


def test_series_description_is_read_and_no_header_text_reaches_meta(tmp_path: Path) -> None:
    frame, _ = screen(6)
    secrets = ["Jane Roe", "St Mary", "PAT-0042", "Dr Who"]
    p = write_us_dicom(
        tmp_path / "a.dcm", frame, regions=REGIONS[:2], patient_id="PAT-0042",
        study_description="Jane Roe follow-up at St Mary", SeriesDescription="Carotid left, Dr Who",
        PatientName="Roe^Jane", InstitutionName="St Mary Clinic", ReferringPhysicianName="Who^Dr",
    )
    assert pydicom.dcmread(p).SeriesDescription.startswith("Carotid")
    recs, _ = records(p)
    assert len(recs) == 2
    for r in recs:
        assert (r.meta["header_organ"], r.meta["header_region"]) == ("carotid", "head_and_neck")
        text = json.dumps(r.meta, default=str).lower()
        assert not any(s.lower() in text for s in secrets + ["roe", "mary"])


def test_anatomy_table_names_the_built_in_taxonomy() -> None:
    tax = Taxonomy.load()
    for keyword, (organ, region) in ANATOMY_KEYWORDS.items():
        if organ is not None:
            assert tax.organ_region[organ] == region, keyword
        elif region is not None:
            assert region in tax.regions, keyword
    assert anatomy("HEADNECK") == (None, "head_and_neck")


def test_writer_rejects_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="photometric"):
        write_us_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint8), photometric="YBR_FULL")
    with pytest.raises(ValueError, match="RGB frames must be"):
        write_us_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        write_us_dicom(tmp_path / "a.dcm", np.zeros((4, 4, 3), np.uint8), NotATag=1)
    with pytest.raises(ValueError, match="needs a 'box'"):
        write_us_dicom(tmp_path / "a.dcm", np.zeros((4, 4, 3), np.uint8), regions=[{"data_type": 1}])
    p = write_us_dicom(tmp_path / "m.dcm", np.zeros((2, 4, 5), np.uint16), photometric="MONOCHROME2",
                       frame_time_ms=20.0)
    ds = pydicom.dcmread(p)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1" and int(ds.NumberOfFrames) == 2
    assert ds.BitsStored == 16 and ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_a_linear_region_is_its_box_even_with_dark_deep_tissue(tmp_path: Path) -> None:
    """Power Doppler screen, linear probe, deep tissue black down to the box's bottom: detection alone
    loses the deep field (and calls it a fan); the scanner's region says the box is the image."""
    from sonofm.datasets.preprocess.field import detect_field
    from sonofm.datasets.preprocess.pipeline import preprocess
    from sonofm.datasets.synthetic.screens import render_screen, score_field, screen_gray

    sc = render_screen("power_doppler", 4)
    (region,) = sc.regions
    x0, y0, x1, y1 = region["box"]
    alone = detect_field(screen_gray(sc.image)[y0:y1 + 1, x0:x1 + 1])
    assert alone.mask.mean() < 0.95  # the case this guards against
    write_us_dicom(tmp_path / "pd.dcm", sc.image[None], photometric="RGB", regions=sc.regions)
    (rec,) = list(get_adapter("dicom", tmp_path))
    out = preprocess(rec, max_side=4096)
    kept = np.zeros(sc.field.shape, bool)
    t, left, b, r = out.meta["crop"]
    kept[y0 + t:y0 + b, x0 + left:x0 + r] = out.field_mask
    assert score_field(sc, kept)["iou"] > 0.98
