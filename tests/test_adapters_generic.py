"""Generic adapters (folder, csv, dicom, hc18, synthetic) on layouts generated in tmp_path."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from sonofm.datasets.sources.adapters import ADAPTERS, AdapterError, get_adapter
from sonofm.datasets.sources.adapters.hc18 import fill_outline
from sonofm.datasets.taxonomy import Taxonomy

US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def blob(h: int, w: int, box: tuple[int, int, int, int], value: int = 255) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = value
    return m


def gray(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


# ------------------------------------------------------------------------------------ registry


def test_registry_and_unknown_names(tmp_path: Path) -> None:
    assert set(ADAPTERS) == {"busi", "cca", "pocus", "hc18", "folder", "csv", "dicom", "synthetic", "fmuia"}
    with pytest.raises(KeyError, match="did you mean busi"):
        get_adapter("bussi", tmp_path)
    with pytest.raises(AdapterError, match="does not exist"):
        get_adapter("cca", tmp_path / "missing")
    with pytest.raises(TypeError, match="unknown option.*frames_per_vid.*valid options"):
        get_adapter("pocus", tmp_path, frames_per_vid=3)


# -------------------------------------------------------------------------------------- folder


def make_folder(root: Path) -> None:
    save(root / "benign" / "a (1).png", gray(seed=1))
    save(root / "benign" / "a (1)_mask.png", blob(24, 32, (2, 2, 6, 6)))
    save(root / "benign" / "a (1)_mask_1.png", blob(24, 32, (10, 10, 14, 20)))
    save(root / "benign" / "a (10).png", gray(seed=2))
    save(root / "benign" / "a (10)_mask.png", blob(24, 32, (0, 0, 3, 3)))
    save(root / "malignant" / "pat7_img2.png", gray(seed=3))  # no mask
    save(root / "loose.png", gray(seed=4))


def test_folder_classes_and_pattern_masks(tmp_path: Path) -> None:
    make_folder(tmp_path)
    named = tmp_path.parent / "My Thyroid-Clinic"
    named.mkdir()
    assert get_adapter("folder", named).source == "my_thyroid-clinic"  # no source=: the folder's name
    ad = get_adapter("folder", tmp_path, source="mine", mask_pattern="{stem}_mask*.png", probe="linear")
    items = ad.items()
    assert [i.path for i in items] == [
        "benign/a (1).png",
        "benign/a (10).png",
        "loose.png",
        "malignant/pat7_img2.png",
    ]
    assert [len(i.masks) for i in items] == [2, 1, 0, 0]  # "a (1)" does not take "a (10)"'s mask
    assert ad.report() == {"images_without_mask": 2}
    recs = {r.meta["path"]: r for r in ad}
    merged = recs["benign/a (1).png"].mask
    assert (
        merged.tolist()
        == ((blob(24, 32, (2, 2, 6, 6)) | blob(24, 32, (10, 10, 14, 20))) > 0).astype(int).tolist()
    )
    meta = recs["malignant/pat7_img2.png"].meta
    assert meta["label"] == "malignant" and meta["source"] == "mine" and meta["probe"] == "linear"
    assert recs["loose.png"].meta["label"] is None and recs["loose.png"].mask is None
    assert (
        len(
            get_adapter(
                "folder", tmp_path, source="mine", mask_pattern="{stem}_mask*.png", require_mask=True
            ).items()
        )
        == 2
    )
    grouped = get_adapter("folder", tmp_path, source="mine", group_regex=r"^(pat\d+)|^(.*)$")
    assert {i.path: i.meta["group"] for i in grouped.items()}["malignant/pat7_img2.png"] == "pat7"


def test_folder_parallel_mask_dir_and_ids(tmp_path: Path) -> None:
    save(tmp_path / "images" / "x" / "s1.png", gray(seed=5))
    save(tmp_path / "images" / "y" / "s2.jpg", gray(seed=6))
    save(tmp_path / "masks" / "x" / "s1.png", blob(24, 32, (1, 1, 5, 5), value=2))
    ad = get_adapter(
        "folder", tmp_path, source="mine", image_dir="images", mask_dir="masks", mask_values="ids"
    )
    recs = list(ad)
    assert [r.meta["label"] for r in recs] == ["x", "y"]
    assert recs[0].mask.max() == 2 and recs[1].mask is None
    assert recs[0].meta["path"] == "images/x/s1.png"


def test_folder_mask_size_mismatch_names_file(tmp_path: Path) -> None:
    save(tmp_path / "c" / "img.png", gray())
    save(tmp_path / "c" / "img_mask.png", blob(10, 10, (0, 0, 2, 2)))
    ad = get_adapter("folder", tmp_path, source="mine", mask_pattern="{stem}_mask.png")
    with pytest.raises(AdapterError, match=r"img\.png: mask .* is 10x10 but the image is 32x24"):
        list(ad)


def test_folder_decodes_videos(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((16, 16), 20 * i, np.uint8)) for i in range(10)]
    (tmp_path / "lung").mkdir()
    frames[0].save(tmp_path / "lung" / "clip.gif", save_all=True, append_images=frames[1:], duration=40)
    recs = list(get_adapter("folder", tmp_path, source="mine", frames_per_video=3))
    assert [r.meta["frame"] for r in recs] == [1, 5, 8]
    assert {r.meta["group"] for r in recs} == {"lung/clip.gif"} and recs[0].meta["label"] == "lung"


# ----------------------------------------------------------------------------------------- csv


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_csv_manifest_columns(tmp_path: Path) -> None:
    save(tmp_path / "img" / "a.png", gray(seed=1))
    save(tmp_path / "img" / "b.png", gray(seed=2))
    save(tmp_path / "m" / "a1.png", blob(24, 32, (0, 0, 4, 4)))
    save(tmp_path / "m" / "a2.png", blob(24, 32, (20, 20, 24, 32)))
    write_csv(
        tmp_path / "list.csv",
        "path,label,mask,group,organ,pixel_spacing_mm,scanner\n"
        "img/a.png,benign,m/a1.png;m/a2.png,p1,thyroid,0.1 0.2,X1\n"
        "./img/b.png,,,,,0.3,\n",
    )
    ad = get_adapter("csv", tmp_path / "list.csv", source="tn3k")
    recs = list(ad)
    a, b = recs
    assert a.meta["label"] == "benign" and a.meta["group"] == "p1" and a.meta["scanner"] == "X1"
    assert a.meta["pixel_spacing_mm"] == [0.1, 0.2] and b.meta["pixel_spacing_mm"] == [0.3, 0.3]
    assert a.mask.sum() == 16 + 48 and set(np.unique(a.mask)) == {0, 1}
    assert b.meta["path"] == "img/b.png" and b.meta["group"] == "img/b.png" and b.mask is None
    assert all(r.meta["source"] == "tn3k" for r in recs) and ad.sources() == ["tn3k"]
    taxonomy = Taxonomy.load()
    assert taxonomy.annotate(a.meta)["region"] == "head_and_neck"  # CSV organ agrees with the taxonomy
    with pytest.raises(ValueError, match="organ 'thyroid' given"):
        taxonomy.annotate({**a.meta, "source": "busi"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\nx.png,a\n", r"list\.csv: required column 'path' missing"),
        ("path\n../outside.png\n", r"list\.csv, row 2, column 'path': path '\.\./outside\.png' leaves"),
        ("path\nok.png\n/etc/passwd\n", r"list\.csv, row 3, column 'path': path '/etc/passwd' leaves"),
        ("path,mask\nok.png,sub/../../m.png\n", r"list\.csv, row 2, column 'mask'"),
        ("path,pixel_spacing_mm\nok.png,-1\n", r"list\.csv, row 2, column 'pixel_spacing_mm'"),
        ("path\n\n", r"list\.csv: manifest has no rows"),
    ],
)
def test_csv_errors_name_csv_and_row(tmp_path: Path, text: str, message: str) -> None:
    write_csv(tmp_path / "d" / "list.csv", text)
    with pytest.raises(AdapterError, match=message):
        get_adapter("csv", tmp_path / "d" / "list.csv", source="s").items()


def test_csv_source_named_after_the_manifest_and_missing_file(tmp_path: Path) -> None:
    write_csv(tmp_path / "clinic" / "manifest.csv", "path\nnot_there.png\n")
    write_csv(tmp_path / "clinic" / "Liver_2024.csv", "path\nnot_there.png\n")
    # rows without a source: the folder's name for the default manifest.csv, else the CSV's stem
    assert [i.meta["source"] for i in get_adapter("csv", tmp_path / "clinic").items()] == ["clinic"]
    assert get_adapter("csv", tmp_path / "clinic" / "Liver_2024.csv").sources() == ["liver_2024"]
    write_csv(tmp_path / "manifest.csv", "path\nnot_there.png\n")
    ad = get_adapter("csv", tmp_path, source="s")
    (item,) = ad.items()
    with pytest.raises(AdapterError, match=r"not_there\.png: file not found"):
        list(ad.load(item))


def test_synthetic_corpus_through_manifest(tmp_path: Path) -> None:
    from sonofm.datasets.synthetic import generate_corpus

    generate_corpus(tmp_path / "corpus", 4, seed=1, size=64, progress=False)
    ad = get_adapter("synthetic", tmp_path / "corpus")
    recs = list(ad)
    assert len(recs) == 4
    assert ad.sources() == sorted({r.meta["source"] for r in recs})
    taxonomy = Taxonomy.load()
    for r in recs:
        assert r.meta["source"].startswith("synth_") and r.meta["source"] != "synthetic"
        assert r.mask is not None and set(np.unique(r.mask)) <= {0, 1}
        assert taxonomy.annotate(r.meta)["organ"] == r.meta["organ"]


# --------------------------------------------------------------------------------------- dicom


def make_dicom(path: Path, arr: np.ndarray, pi: str, bits: int, **tags) -> Path:
    """A DICOM file holding ``arr`` (frames first when several), created with pydicom."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop = US_MULTIFRAME_STORAGE if tags.pop("multi", False) else US_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.SOPClassUID = sop
    ds.Modality = "US"
    ds.set_pixel_data(arr, pi, bits)
    for k, v in tags.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def one(path: Path, **options):
    ad = get_adapter("dicom", path, **options)
    return list(ad)


def test_dicom_monochrome_8_bit_spacing_and_hashed_group(tmp_path: Path) -> None:
    arr = gray(seed=7)
    p = make_dicom(tmp_path / "a.dcm", arr, "MONOCHROME2", 8, PixelSpacing=[0.2, 0.3], PatientID="DOE^JOHN")
    (rec,) = one(p)
    assert np.array_equal(rec.image, arr) and rec.meta["frame"] is None
    assert rec.meta["pixel_spacing_mm"] == [0.2, 0.3]
    assert rec.meta["group"].startswith("patient-") and "DOE" not in rec.meta["group"]
    p1 = make_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1", 8)
    assert np.array_equal(one(p1)[0].image, 255 - arr)


def test_dicom_16_bit_window_and_min_max(tmp_path: Path) -> None:
    arr = np.array([[0, 1000], [2000, 4000]], np.uint16)
    p = make_dicom(tmp_path / "w.dcm", arr, "MONOCHROME2", 12, WindowCenter=1000.5, WindowWidth=2001)
    img = one(p)[0].image
    assert img.dtype == np.uint8 and img.tolist() == [[0, 128], [255, 255]]
    p = make_dicom(tmp_path / "mm.dcm", arr, "MONOCHROME2", 12)
    assert one(p)[0].image.tolist() == [[0, 64], [128, 255]]


def test_dicom_rgb_ybr_and_palette(tmp_path: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    assert np.array_equal(one(make_dicom(tmp_path / "rgb.dcm", rgb, "RGB", 8))[0].image, rgb)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    out = one(make_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL", 8))[0].image
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).max() <= 2

    idx = np.array([[0, 1, 2, 3]], np.uint8)
    lut = {"Red": [0, 65535, 0, 32768], "Green": [0, 0, 65535, 32768], "Blue": [0, 0, 0, 65535]}
    tags = {}
    for colour, values in lut.items():
        tags[f"{colour}PaletteColorLookupTableDescriptor"] = [4, 0, 16]
        tags[f"{colour}PaletteColorLookupTableData"] = np.array(values, "<u2").tobytes()
    img = one(make_dicom(tmp_path / "pal.dcm", idx, "PALETTE COLOR", 8, **tags))[0].image
    assert img.tolist() == [[[0, 0, 0], [255, 0, 0], [0, 255, 0], [128, 128, 255]]]


def test_dicom_multiframe_and_ultrasound_regions(tmp_path: Path) -> None:
    frames = np.stack([np.full((12, 16), 20 * i, np.uint8) for i in range(10)])
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 2, 1
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 13, 10
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.01, 0.02
    region.TransducerType = "CURVED LINEAR"
    p = make_dicom(
        tmp_path / "cine" / "clip.dcm",
        frames,
        "MONOCHROME2",
        8,
        multi=True,
        SequenceOfUltrasoundRegions=[region],
        StudyInstanceUID="1.2.3.4",
        FrameTime=40.0,
    )
    recs = one(tmp_path, frames_per_video=4)
    assert [r.meta["frame"] for r in recs] == [1, 3, 6, 8]
    assert [int(r.image[0, 0]) for r in recs] == [20, 60, 120, 160]
    meta = recs[0].meta
    assert meta["pixel_spacing_mm"] == pytest.approx([0.2, 0.1])
    assert (
        meta["probe"] == "convex" and meta["group"].startswith("study-") and meta["path"] == "cine/clip.dcm"
    )
    assert meta["us_regions"][0]["box"] == [2, 1, 13, 10]
    assert [r.meta["frame"] for r in one(p, fps=5)] == [0, 5]  # 25 frames/s clip sampled at 5/s
    assert len(one(p, frames_per_video=None)) == 10


def test_dicom_errors_and_extensionless(tmp_path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # basic text SR
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = "x"
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    with pytest.raises(AdapterError, match=r"report\.dcm: DICOM without pixel data"):
        one(tmp_path / "report.dcm")
    (tmp_path / "fake.dcm").write_text("hello")
    with pytest.raises(AdapterError, match=r"fake\.dcm: not a readable DICOM"):
        one(tmp_path / "fake.dcm")
    make_dicom(tmp_path / "series" / "IM0001", gray(), "MONOCHROME2", 8)
    (tmp_path / "series" / "notes.txt").write_text("not dicom")
    assert [i.path for i in get_adapter("dicom", tmp_path / "series").items()] == ["IM0001"]
    assert pydicom.dcmread(tmp_path / "series" / "IM0001").Modality == "US"


# ---------------------------------------------------------------------------------------- hc18


def ellipse(h: int, w: int, box: tuple[int, int, int, int], outline: bool) -> np.ndarray:
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    if outline:
        draw.ellipse(box, outline=255, width=2)
    else:
        draw.ellipse(box, fill=255)
    return np.array(im)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return (a & b).sum() / (a | b).sum()


def make_hc18(root: Path) -> None:
    h, w = 60, 80
    boxes = {
        "010_HC": (10, 8, 70, 50),
        "010_2HC": (20, 10, 60, 52),
        "014_HC": (30, 5, 100, 55),
    }  # 014 leaves the image
    for stem, box in boxes.items():
        save(root / "training_set" / f"{stem}.png", gray(h, w))
        save(root / "training_set" / f"{stem}_Annotation.png", ellipse(h, w, box, outline=True))
    write_csv(
        root / "training_set_pixel_size_and_HC.csv",
        "filename,pixel size(mm),head circumference (mm)\n010_HC.png,0.15,170.5\n010_2HC.png,0.12,171\n014_HC.png,0.2,120\n",
    )
    save(root / "test_set" / "000_HC.png", gray(h, w))
    write_csv(root / "test_set_pixel_size.csv", "filename,pixel size(mm)\n000_HC.png,0.11\n")


def test_hc18_layout(tmp_path: Path) -> None:
    make_hc18(tmp_path)
    ad = get_adapter("hc18", tmp_path)
    items = ad.items()
    pickle.loads(pickle.dumps(items))
    recs = {r.meta["path"]: r for r in ad}
    assert set(recs) == {
        "training_set/010_HC.png",
        "training_set/010_2HC.png",
        "training_set/014_HC.png",
        "test_set/000_HC.png",
    }
    a, b = recs["training_set/010_HC.png"], recs["training_set/010_2HC.png"]
    assert (
        a.meta["group"] == b.meta["group"] == "010"
        and recs["test_set/000_HC.png"].meta["group"] == "test/000"
    )
    assert a.meta["pixel_spacing_mm"] == [0.15, 0.15] and a.meta["hc_mm"] == 170.5
    assert recs["test_set/000_HC.png"].mask is None and recs["test_set/000_HC.png"].meta["hc_mm"] is None
    assert iou(a.mask, ellipse(60, 80, (10, 8, 70, 50), outline=False)) > 0.95
    clipped = recs["training_set/014_HC.png"].mask  # open outline: ellipse fit
    assert iou(clipped, ellipse(60, 80, (30, 5, 100, 55), outline=False)) > 0.93
    assert set(np.unique(a.mask)) == {0, 1}
    assert Taxonomy.load().annotate(a.meta)["region"] == "fetus"
    assert len(get_adapter("hc18", tmp_path, subsets=["test"]).items()) == 1


def test_hc18_fill_closes_small_gaps() -> None:
    outline = ellipse(60, 80, (10, 8, 70, 50), outline=True)
    outline[:, 38:40] = 0  # two 2-px gaps at the top and bottom of the outline
    assert iou(fill_outline(outline), ellipse(60, 80, (10, 8, 70, 50), outline=False)) > 0.95
    with pytest.raises(AdapterError, match="no outline"):
        fill_outline(np.zeros((10, 10), np.uint8), "x.png")
