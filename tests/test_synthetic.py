"""The synthetic B-mode corpus: determinism, speckle physics, lesion shapes, masks, field and layout."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull

from sonofm.datasets.synthetic import (
    LABELS,
    MANIFEST_COLUMNS,
    RAYLEIGH_MEAN_STD,
    SOURCES,
    SYNTHETIC_SOURCES,
    generate_corpus,
    make_contact_sheet,
    plan,
    render_sample,
    simulate_homogeneous_envelope,
)
from sonofm.datasets.synthetic.geometry import geometry
from sonofm.datasets.synthetic.shapes import Shape
from sonofm.datasets.synthetic.writer import png_bytes

SIZE = 192


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def _load(root: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / rel))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """60 images at 192 px; seed 5 gives every label and every source."""
    out = tmp_path_factory.mktemp("synth") / "corpus"
    return generate_corpus(out, n=60, seed=5, size=SIZE, progress=False)


def test_same_seed_is_byte_identical_across_runs_and_workers(tmp_path):
    a = _hashes(generate_corpus(tmp_path / "a", n=20, seed=7, size=128, progress=False).parent)
    b = _hashes(generate_corpus(tmp_path / "b", n=20, seed=7, size=128, workers=2, progress=False).parent)
    assert len(a) == 2 * 20 + 2  # images, masks, manifest, README
    assert a == b
    c = _hashes(generate_corpus(tmp_path / "c", n=20, seed=8, size=128, progress=False).parent)
    images = [k for k in a if k.startswith("images/")]
    differing = [k for k in images if c.get(k) != a[k]]
    assert len(differing) == len(images), "a different seed must give different images"


def test_plan_is_prefix_stable_and_groups_patients():
    small, large = plan(37, seed=1), plan(200, seed=1)
    assert [i for i, _, _ in large] == list(range(200))
    assert large[:30] == small[:30]
    per_patient = Counter(p for _, _, p in large)
    assert all(2 <= k <= 6 for k in list(per_patient.values())[:-1])
    sources = {p: s for _, s, p in large}
    assert all(sources[p] == s for _, s, p in large)  # a patient belongs to one source


@pytest.mark.parametrize("source", ["synth_breast_linear_a", "synth_liver_convex_b"])
def test_envelope_is_rayleigh_in_homogeneous_tissue(source):
    env = simulate_homogeneous_envelope(source, size=256, seed=0).astype(np.float64)
    assert env.ndim == 2 and env.min() >= 0
    band = env[env.shape[0] // 4 : env.shape[0] // 2]  # mid depths, away from the field edges
    band = band / band.mean(axis=1, keepdims=True)  # remove the slow depth trend left by the TGC
    ratio = band.mean() / band.std()
    assert abs(ratio - RAYLEIGH_MEAN_STD) < 0.1, f"mean/std {ratio:.3f}, Rayleigh {RAYLEIGH_MEAN_STD:.3f}"
    # the shape, not only the moment ratio: P(A < mean) = 1 - exp(-pi/4) for a Rayleigh variable
    assert abs(np.mean(band < 1.0) - (1 - np.exp(-np.pi / 4))) < 0.03
    # and log compression destroys it: displayed grey levels are far from Rayleigh
    db = 20 * np.log10(band + 1e-6) + 60
    assert abs(db.mean() / db.std() - RAYLEIGH_MEAN_STD) > 1.0


def _solidity(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs, ys], 1).astype(float)
    corners = np.concatenate([pts + [dx, dy] for dx in (0, 1) for dy in (0, 1)])
    return float(mask.sum() / ConvexHull(corners).volume)


def test_corpus_layout_and_labels(corpus):
    root = corpus.parent
    rows = _rows(corpus)
    assert len(rows) == 60
    assert tuple(rows[0].keys()) == MANIFEST_COLUMNS
    assert set(Counter(r["label"] for r in rows)) == set(LABELS)
    assert {r["source"] for r in rows} <= set(SYNTHETIC_SOURCES)
    assert (root / "README.txt").read_text().startswith("sonofm synthetic B-mode corpus")
    groups = Counter(r["group"] for r in rows)
    assert max(groups.values()) >= 2
    for r in rows:
        meta = SYNTHETIC_SOURCES[r["source"]]
        assert (r["organ"], r["region"], r["probe"]) == (meta["organ"], meta["region"], meta["probe"])
        assert r["path"].startswith(f"images/{r['source']}/") and r["mask"].startswith(f"masks/{r['source']}/")
        img, mask = _load(root, r["path"]), _load(root, r["mask"])
        assert img.shape == mask.shape == (SIZE, SIZE) and img.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert (mask.max() == 0) == (r["label"] == "normal"), r["path"]
        assert float(r["pixel_spacing_mm"]) == pytest.approx(geometry(r["source"], SIZE).spacing_mm, rel=1e-5)
    labels_per_group = {g: {r["label"] for r in rows if r["group"] == g} for g in groups}
    assert all(len(v) == 1 for v in labels_per_group.values())  # a patient keeps its lesion


def test_malignant_borders_are_more_irregular_than_benign(corpus):
    root = corpus.parent
    sol: dict[str, list[float]] = {"benign": [], "cyst": [], "malignant": []}
    for r in _rows(corpus):
        if r["label"] in sol:
            mask = _load(root, r["mask"]) > 0
            if mask.sum() >= 150:  # smaller masks are too pixelated for a shape measure
                sol[r["label"]].append(_solidity(mask))
    assert all(len(v) >= 3 for v in sol.values()), {k: len(v) for k, v in sol.items()}
    smooth = sol["benign"] + sol["cyst"]
    assert min(smooth) > 0.9, smooth
    assert np.median(sol["malignant"]) < 0.8, sol["malignant"]
    assert max(sol["malignant"]) < min(smooth)


def test_masks_align_with_lesions(corpus):
    root = corpus.parent
    checked = 0
    for r in _rows(corpus):
        if r["label"] not in ("cyst", "malignant"):
            continue
        mask = _load(root, r["mask"]) > 0
        if mask.sum() < 100:
            continue
        img = _load(root, r["path"]).astype(np.float64)
        field = geometry(r["source"], SIZE).field
        ring = ndimage.binary_dilation(mask, iterations=7) & ~ndimage.binary_dilation(mask, iterations=2) & field
        inside, outside = img[mask].mean(), img[ring].mean()
        factor = 0.6 if r["label"] == "cyst" else 0.75  # anechoic vs hypoechoic
        assert inside < factor * outside, f"{r['path']}: lesion mean {inside:.1f}, surround {outside:.1f}"
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("source", ["synth_thyroid_linear_a", "synth_liver_convex_a"])
def test_scan_converted_mask_matches_the_geometry(source):
    """The beam-grid lesion, scan-converted like the image, is the shape drawn at the pixels' positions."""
    g = geometry(source, 256)
    depth = SOURCES[source].depth_mm
    shape = Shape(0.12 * depth, 0.5 * depth, 0.08 * depth, 0.05 * depth, 0.4,
                  spikes=np.array([[0.5, 0.6, 0.12], [2.5, 0.5, 0.1], [4.0, 0.7, 0.12]]))
    beam = g.scan_convert(g.inner(shape.q(g.X, g.Y) < 1).astype(np.float32)) >= 0.5
    rows, cols = np.mgrid[0:256, 0:256]
    r0, c0 = g.origin_px
    direct = shape.q(((cols + 0.5 - c0) * g.spacing_mm).astype(np.float32),
                     ((rows + 0.5 - r0) * g.spacing_mm).astype(np.float32)) < 1
    iou = (beam & direct).sum() / (beam | direct).sum()
    assert iou > 0.9, iou
    shift = np.subtract(ndimage.center_of_mass(beam), ndimage.center_of_mass(direct))
    assert np.abs(shift).max() < 0.3, shift


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_outside_the_field_only_marks(source):
    s = render_sample(source, seed=0, patient=3, index=11, size=SIZE)
    g = geometry(source, SIZE)
    assert s.marks.any(), "some burnt-in text is expected"
    assert not (s.marks & g.keepout).any(), "marks must lie outside the (dilated) acoustic field"
    outside = ~s.field
    assert (s.image[outside & ~s.marks] == 0).all()
    assert s.image[s.field].mean() > 20  # the field holds tissue, not black
    assert (s.mask[~s.field] == 0).all()
    # the field is one connected region with a linear rectangle or a convex fan shape
    assert ndimage.label(s.field)[1] == 1
    rows = np.flatnonzero(s.field.any(1))
    widths = s.field[rows].sum(1)
    if SOURCES[source].probe == "linear":
        assert widths.max() - widths.min() <= 1
    else:
        assert widths[-1] > 1.5 * widths[0]  # the fan widens with depth


def test_corpus_images_black_outside_field_except_marks(corpus):
    root = corpus.parent
    for r in _rows(corpus)[::7]:
        img = _load(root, r["path"])
        keepout = geometry(r["source"], SIZE).keepout
        outside = img[~keepout]
        assert (outside > 0).mean() < 0.08  # sparse text, ruler ticks
        assert (img[keepout & ~geometry(r["source"], SIZE).field] == 0).all()


def test_refuses_foreign_folder_and_replaces_own_corpus(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a sonofm synthetic corpus"):
        generate_corpus(foreign, n=2, progress=False)
    out = tmp_path / "c"
    generate_corpus(out, n=12, seed=0, size=96, progress=False)
    generate_corpus(out, n=4, seed=0, size=96, progress=False)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    rows = _rows(out / "manifest.csv")
    assert files == {r["path"] for r in rows} | {r["mask"] for r in rows}  # no stale images left
    with pytest.raises(ValueError, match="size"):
        generate_corpus(tmp_path / "d", n=2, size=32, progress=False)


def test_png_encoder_round_trips():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(37, 53), dtype=np.uint8)
    path_bytes = png_bytes(a)
    from io import BytesIO

    assert np.array_equal(np.asarray(Image.open(BytesIO(path_bytes))), a)
    assert png_bytes(a) == path_bytes


def test_contact_sheet(corpus, tmp_path):
    out = make_contact_sheet(corpus, tmp_path / "sheet.png", n=12)
    im = Image.open(out)
    assert im.width > 600 and im.height > 200
    assert out.stat().st_size < 400_000
