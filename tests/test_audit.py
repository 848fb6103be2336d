"""De-identification you can verify (issue 23): burnt-in identifiers are in the raw synthetic screens,
the OCR audit finds them there at its measured recall, and finds none in the shards built from them.

Needs the tesseract binary and pytesseract (the ``ocr`` extra; ``.ci/run`` installs both)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sonofm.cli import main as cli_main
from sonofm.datasets.build.orchestrate import SourceSpec, build_shards
from sonofm.datasets.shards import EncodedSample, ShardSetWriter, encode_png, ocr
from sonofm.datasets.shards.audit import audit_shards, measure_recall
from sonofm.datasets.synthetic import generate_corpus, plan, render_sample

N_SCREENS = 12  # 128-px quickstart screens: 7 px text, the ID, date and time lines 2-3 px from the image


def _have_ocr() -> bool:
    try:
        ocr.check_ocr()
    except ocr.OcrUnavailable:
        return False
    return True


needs_ocr = pytest.mark.skipif(not _have_ocr(), reason=f"no OCR engine: {ocr.INSTALL_HINT}")


def test_classify_tells_identifiers_from_other_text() -> None:
    r = ocr.classify("SYN L12-5\nID 000036\n2021 /03/ 21\n13.26\nD1 1.89cm\nLT BREAST")
    assert r.identifiers == {"date": ["2021/03/21"], "time": ["13.26"], "digits": ["000036"]}
    assert "BREAST" in r.words and "SYN" in r.words
    assert not ocr.classify("G50 DR58 10.0MHz D4.0cm 1 2 3 4").has_identifier  # scanner settings, ruler
    assert ocr.exact_read(ocr.classify("2021081 5 | 07.00"), "07:00")  # ':' read as '.' still counts
    assert not ocr.exact_read(ocr.classify("2021081 5"), "2021/08/15")  # a broken date is no exact read


def test_missing_ocr_is_one_line_with_the_install_command(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pytesseract(name: str, *args, **kwargs):
        if name == "pytesseract":
            raise ImportError("No module named 'pytesseract'")
        return real_import(name, *args, **kwargs)

    ocr._engine_version.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_pytesseract)
    try:
        code = cli_main(["shards", "audit", "/nonexistent"])
    finally:
        monkeypatch.undo()
        ocr._engine_version.cache_clear()
    err = capsys.readouterr().err
    assert code != 0
    assert "pip install 'sonofm[ocr]'" in err and "apt-get install tesseract-ocr" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@needs_ocr
def test_audit_finds_identifiers_in_raw_screens_and_none_in_built_shards(tmp_path: Path, capsys) -> None:
    # the raw screens, with the identifiers the generator drew
    corpus = tmp_path / "corpus"
    generate_corpus(corpus, n=N_SCREENS, seed=0, size=128, workers=1, progress=False)
    samples = [render_sample(src, 0, patient, i, 128) for i, src, patient in plan(N_SCREENS, 0)]
    with_ids = [s for s in samples if any(ocr.classify(t).has_identifier for t in s.texts)]
    assert len(with_ids) >= 0.75 * N_SCREENS  # an ID line does not always fit beside a wide field
    raw = [(s.image, ocr.read_text(s.image)) for s in with_ids]
    raw_flagged = np.mean([r.has_identifier for _, r in raw])
    raw_recall = measure_recall(raw[::2], seed=0)  # identifiers planted into these very screens
    # the audit reads the drawn identifiers about as often as it reads identifiers it planted itself
    assert raw_flagged >= 0.3
    assert raw_flagged >= raw_recall.background / raw_recall.n - 0.25, (raw_flagged, raw_recall.to_dict())

    # a shard folder holding the raw screens as they are (no crop): the audit fails it, exit status 1
    leaky = tmp_path / "leaky"
    writer = ShardSetWriter(leaky, "leaky", 100)
    for i, s in enumerate(samples):
        writer.add(EncodedSample(f"leaky-{i:03d}", {"split": "train", "source": "leaky"}, encode_png(s.image)))
    writer.close()
    code = cli_main(["shards", "audit", str(leaky), "--recall-images", "2", "--sheet", str(tmp_path / "leaky.png"),
                     "--json", str(tmp_path / "leaky.json")])
    out = capsys.readouterr().out
    assert code == 1 and "FAILED" in out and "OCR recall" in out
    assert (tmp_path / "leaky.png").is_file()

    # the shards built from the same screens (field crop + text blanking): nothing identifier-like
    build_shards([SourceSpec("synthetic", corpus)], tmp_path / "shards", max_side=128, samples_per_shard=32,
                 workers=1, progress=False)
    report = audit_shards(tmp_path / "shards", recall_images=8, sheet=tmp_path / "clean.png", progress=False)
    assert report.images_read == report.images_total >= N_SCREENS - 2  # (near duplicates may go)
    assert report.identifiers == [], report.summary()
    assert report.passed and "PASSED" in report.summary()
    # ... and "0 found" comes with a recall measured on these stored images (7 px text: OCR reads a
    # share of it, benchmarks/RESULTS_privacy.md); an engine that reads nothing would show 0 here
    assert report.recall.n == 8 and report.recall.background >= 1, report.recall.to_dict()
    assert "OCR recall on 8 of these images" in report.summary()


@needs_ocr
def test_text_keep_keeps_in_field_labels_blank_removes_them(tmp_path: Path) -> None:
    """A label drawn over the tissue of the raw screens: blanked by default, kept with ?text=keep."""
    from PIL import Image

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, n=6, seed=1, size=128, workers=1, progress=False)
    shutil.rmtree(tmp_path / "corpus" / "masks", ignore_errors=True)
    rng = np.random.default_rng(0)
    for p in sorted((corpus / "images").rglob("*.png")):
        img = np.asarray(Image.open(p))
        s = render_sample(p.parent.name, 1, 0, int(p.stem), 128)
        ys, xs = np.nonzero(s.field)
        cy, cx = int(np.median(ys)), int(np.median(xs))
        label = ocr.plant_identifier(img[cy - 10 : cy + 10, cx - 40 : cx + 40], "2019/07/23", rng, background=False)
        img = img.copy()
        img[cy - 10 : cy + 10, cx - 40 : cx + 40] = label
        Image.fromarray(img).save(p)
    reports = {}
    for mode in ("blank", "keep"):
        rep = build_shards([f"folder:{corpus / 'images'}?source=labelled&labels=null&text={mode}"],
                           tmp_path / mode, max_side=128, workers=1, progress=False, dedup=False)
        reports[mode] = rep["sources"]["labelled"]
    assert reports["blank"]["text_mode"] == "blank" and reports["keep"]["text_mode"] == "keep"
    assert reports["blank"]["text_blanked_images"] >= 1
    assert reports["keep"]["text_blanked_images"] == 0
    assert reports["keep"]["text_inside_field"] == reports["blank"]["text_inside_field"] >= 1


@needs_ocr
@pytest.mark.parametrize("before", [None, "3"])
def test_reading_text_leaves_the_environment_as_it_was(before: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    # read_text once left OMP_THREAD_LIMIT=1 in os.environ; every later child (a training run started by
    # the next test, or by the user's pipeline) inherited it and deadlocked in oneDNN
    if before is None:
        monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    else:
        monkeypatch.setenv("OMP_THREAD_LIMIT", before)
    image = np.zeros((64, 160), np.uint8)
    ocr.plant_identifier(image, "ID 123456", np.random.default_rng(0))
    ocr.read_text(image)
    assert os.environ.get("OMP_THREAD_LIMIT") == before
