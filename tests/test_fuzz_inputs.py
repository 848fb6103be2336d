"""Bad input through the whole data path: adapters, the shard build and the shard reader.

Every case in the tables below is a file (or shard member) a real collection may contain. Each
must end as either a clear error naming the file or a counted skip naming it (build report
``errors``; stream ``corrupt_counts`` plus a log line with shard and key), and none may crash the
run, kill a DataLoader worker or hang: every case runs under a deadline (a daemon thread joined
with a timeout, so a hang fails the test instead of blocking the suite). A seeded byte-flip fuzz of
a valid PNG inside a shard closes the file.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import tarfile
import threading
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sonofm.datasets.build.orchestrate import build_shards
from sonofm.datasets.sources.adapters import AdapterError, get_adapter
from sonofm.datasets.stream.loader import (
    StreamError,
    StreamSpec,
    corrupt_counts,
    make_eval_loader,
    make_train_loader,
)

DEADLINE_S = 60.0


def within_deadline(fn: Callable[[], Any], seconds: float = DEADLINE_S) -> Any:
    """Run ``fn`` in a daemon thread; fail the test if it has not finished after ``seconds``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"hung: still running after {seconds:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ---------------------------------------------------------------------------------- file makers


def png_bytes(arr: np.ndarray) -> bytes:
    """PNG of ``arr`` in the mode its dtype and shape imply (uint16 -> I;16, (H, W, 2) -> LA, ...)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def gray(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 236, (h, w), dtype=np.uint8)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_header_bomb(w: int = 100_000, h: int = 100_000) -> bytes:
    """A valid PNG header claiming ``w`` x ``h`` 8-bit gray pixels over a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def png_real_bomb(side: int = 12_000) -> bytes:
    """A PNG that really decodes to ``side``² black pixels (144 MP by default) from ~140 kB."""
    comp, row = zlib.compressobj(9), bytes(side + 1)  # filter byte + one row of zeros
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def png16() -> bytes:
    data = png_bytes(gray().astype(np.uint16) * 200)
    assert Image.open(io.BytesIO(data)).mode.startswith("I"), "a 16-bit PNG"
    return data


def png_rgba() -> bytes:
    rgba = np.dstack([gray(seed=1)] * 3 + [np.full((40, 48), 200, np.uint8)])
    return png_bytes(rgba)


def png_palette() -> bytes:
    im = Image.fromarray(np.dstack([gray(seed=2)] * 3)).convert("P", palette=Image.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def png_la() -> bytes:
    data = png_bytes(np.dstack([gray(seed=3), np.full((40, 48), 255, np.uint8)]))
    assert Image.open(io.BytesIO(data)).mode == "LA"
    return data


def dicom_without_pixels(path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # US image storage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns = "US", 64, 64  # says it is an image, holds no PixelData
    ds.save_as(path, enforce_file_format=True)


def dicom_jpeg2000_cut_short(path: Path) -> None:
    """A JPEG 2000 DICOM whose copy stopped inside its encapsulated pixel data (pydicom drops the element)."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    from sonofm.datasets.synthetic.dicom_writer import write_us_dicom

    write_us_dicom(path, np.zeros((1, 64, 64), np.uint8), photometric="MONOCHROME2")
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(3000)])  # a J2K codestream start, then data
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:-1500])


def mp4_without_frames(path: Path) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()  # header written, no frame ever encoded


def _write(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _mask_other_size(path: Path) -> None:
    path.write_bytes(png_bytes(gray()))
    Image.fromarray((gray(20, 20) > 128).astype(np.uint8) * 255).save(path.with_name(path.stem + "_mask.png"))


@dataclass(frozen=True)
class FileCase:
    """One source file: how to write it, and ``error`` (with text the message must hold) or ``ok``."""

    id: str
    name: str
    write: Callable[[Path], None]
    expect: str
    match: str = ""


VALID = png_bytes(gray(seed=9))
FILE_CASES = [
    FileCase("truncated_png", "trunc.png", _write(VALID[: len(VALID) // 2]), "error", "cannot decode"),
    FileCase("zero_bytes", "empty.png", _write(b""), "error", "empty file"),
    FileCase("header_bomb", "bomb.png", _write(png_header_bomb()), "error", "decompression bomb"),
    FileCase("png_16bit", "deep.png", _write(png16()), "ok"),
    FileCase("png_rgba", "rgba.png", _write(png_rgba()), "ok"),
    FileCase("png_palette", "pal.png", _write(png_palette()), "ok"),
    FileCase("png_la", "la.png", _write(png_la()), "ok"),
    FileCase("html_named_png", "page.png", _write(b"<html><body>404 Not Found</body></html>"), "error",
             "not a readable image"),
    FileCase("text_named_jpg", "notes.jpg", _write(b"just some text\n" * 10), "error", "not a readable image"),
    FileCase("dicom_no_pixels", "scan.dcm", dicom_without_pixels, "error", "without pixel data"),
    FileCase("dicom_jpeg2000_cut_short", "cut.dcm", dicom_jpeg2000_cut_short, "error", "pixel data cut short"),
    FileCase("mp4_no_frames", "clip.mp4", mp4_without_frames, "error", "clip.mp4"),
    FileCase("garbage_mp4", "junk.mp4", _write(bytes(range(256)) * 40), "error", "junk.mp4"),
    FileCase("mask_other_size", "masked.png", _mask_other_size, "error", "but the image is"),
]


def _folder_with(root: Path, cases: list[FileCase]) -> Path:
    (root / "benign").mkdir(parents=True, exist_ok=True)
    for case in cases:
        case.write(root / "benign" / case.name)
    return root


def _folder_adapter(root: Path):
    return get_adapter("folder", root, source="busbra", mask_pattern="{stem}_mask.png", frames_per_video=2)


@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.id)
def test_adapter_names_the_file_or_decodes(case: FileCase, tmp_path: Path) -> None:
    adapter = _folder_adapter(_folder_with(tmp_path / "d", [case]))
    (item,) = adapter.items()

    def load() -> list:
        return list(adapter.load(item))

    if case.expect == "error":
        with pytest.raises(AdapterError) as err:
            within_deadline(load)
        assert case.name in str(err.value) and case.match in str(err.value), str(err.value)
    else:
        (rec,) = within_deadline(load)
        assert rec.image.dtype == np.uint8 and rec.image.shape[:2] == (40, 48), rec.image.shape
        assert 0 < rec.image.mean() < 255


@pytest.mark.parametrize("workers", [1, 2])
def test_build_counts_every_bad_file_and_writes_the_rest(tmp_path: Path, workers: int) -> None:
    good = [FileCase(f"good{i}", f"good{i}.png", _write(png_bytes(gray(seed=20 + i))), "ok") for i in range(2)]
    root = _folder_with(tmp_path / "d", FILE_CASES + good)
    spec = f"folder:{root}?source=busbra&mask_pattern={{stem}}_mask.png&frames_per_video=2"
    report = within_deadline(lambda: build_shards(
        [spec], tmp_path / "out", max_side=32, samples_per_shard=4, workers=workers, dedup=False,
        progress=False))
    rep = report["sources"]["busbra"]
    errors = {Path(e["file"]).name: e["reason"] for e in rep["errors"]}
    for case in FILE_CASES + good:
        if case.expect == "error":
            assert case.name in errors, f"{case.id}: not reported (errors: {sorted(errors)})"
            assert case.name in errors[case.name] and case.match in errors[case.name], errors[case.name]
        else:
            assert case.name not in errors, f"{case.id}: {errors.get(case.name)}"
    n_ok = sum(c.expect == "ok" for c in FILE_CASES + good)
    assert rep["decode_errors"] == len(errors) == sum(c.expect == "error" for c in FILE_CASES)
    assert rep["samples_written"] == n_ok and rep["files"] == len(FILE_CASES + good)


CSV_CASES = [
    ("missing_path_column", "file,label\ngood.png,benign\n", r"list\.csv: required column 'path' missing"),
    ("dotdot_path", "path,label\ngood.png,benign\n../../etc/passwd,benign\n",
     r"list\.csv, row 3, column 'path': path '\.\./\.\./etc/passwd' leaves"),
    ("absolute_path", "path,label\n/etc/passwd,benign\n", r"list\.csv, row 2, column 'path': path '/etc/passwd'"),
    ("mask_outside", "path,label,mask\ngood.png,benign,../../etc/hosts\n", r"list\.csv, row 2, column 'mask'"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in CSV_CASES], ids=[c[0] for c in CSV_CASES])
def test_build_refuses_a_bad_manifest_naming_csv_and_row(tmp_path: Path, text: str, message: str) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "good.png").write_bytes(png_bytes(gray()))
    (d / "list.csv").write_text(text)
    with pytest.raises(AdapterError, match=message):
        within_deadline(lambda: build_shards([f"csv:{d / 'list.csv'}?source=busbra"], tmp_path / "out",
                                             max_side=32, progress=False))
    assert not list((tmp_path / "out").glob("*.tar")), "nothing written from a manifest that escapes its folder"


def test_build_counts_manifest_rows_whose_file_is_missing(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "good.png").write_bytes(png_bytes(gray()))
    (d / "list.csv").write_text("path,label\ngood.png,benign\ngone.png,malignant\n")
    rep = build_shards([f"csv:{d / 'list.csv'}?source=busbra"], tmp_path / "out", max_side=32, dedup=False,
                       progress=False)["sources"]["busbra"]
    assert rep["samples_written"] == 1 and rep["decode_errors"] == 1
    assert "gone.png: file not found" in rep["errors"][0]["reason"]


# ------------------------------------------------------------------------------------ shard reader


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
            link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _good(tar: tarfile.TarFile, key: str, seed: int = 0) -> None:
    _member(tar, f"{key}.png", png_bytes(gray(seed=seed)))
    _member(tar, f"{key}.json", json.dumps({"source": "busbra", "label": "benign", "split": "train"}).encode())


META = json.dumps({"source": "busbra", "label": "benign", "split": "train"}).encode()


@dataclass(frozen=True)
class ShardCase:
    """One bad sample inside a shard: its members and the corrupt counts it adds (empty: it decodes fine)."""

    id: str
    members: Callable[[tarfile.TarFile, str], None]
    counted: dict[str, int]


def _sample(png: bytes, meta: bytes = META, mask: bytes | None = None) -> Callable[[tarfile.TarFile, str], None]:
    def add(tar: tarfile.TarFile, key: str) -> None:
        _member(tar, f"{key}.png", png)
        if mask is not None:
            _member(tar, f"{key}.mask.png", mask)
        _member(tar, f"{key}.json", meta)
    return add


def _symlinked_png(tar: tarfile.TarFile, key: str) -> None:
    _member(tar, f"{key}.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
    _member(tar, f"{key}.json", META)


def _dotdot_member(tar: tarfile.TarFile, key: str) -> None:
    _member(tar, f"../../{key}.png", VALID)
    _member(tar, f"../../{key}.json", META)


SHARD_CASES = [
    ShardCase("truncated_png", _sample(VALID[: len(VALID) // 2]), {"image": 1}),
    ShardCase("zero_byte_png", _sample(b""), {"image": 1}),
    ShardCase("header_bomb", _sample(png_header_bomb()), {"image": 1}),
    ShardCase("real_bomb_144mp", _sample(png_real_bomb()), {"image": 1}),
    ShardCase("png_16bit", _sample(png16()), {}),
    ShardCase("png_rgba", _sample(png_rgba()), {}),
    ShardCase("png_palette", _sample(png_palette()), {}),
    ShardCase("png_la", _sample(png_la()), {}),
    ShardCase("html_as_png", _sample(b"<html>502 Bad Gateway</html>"), {"image": 1}),
    ShardCase("meta_is_a_list", _sample(VALID, b"[1, 2, 3]"), {"json": 1}),
    ShardCase("meta_is_a_string", _sample(VALID, b'"busbra"'), {"json": 1}),
    ShardCase("meta_is_null", _sample(VALID, b"null"), {"json": 1}),
    ShardCase("meta_not_utf8", _sample(VALID, b"\xff\xfe{\x00"), {"json": 1}),
    ShardCase("meta_unknown_label", _sample(VALID, json.dumps({"source": "busbra", "label": "zebra"}).encode()),
              {"json": 1}),
    ShardCase("meta_source_is_a_list", _sample(VALID, json.dumps({"source": ["busbra"]}).encode()), {"json": 1}),
    ShardCase("mask_other_size", _sample(VALID, mask=png_bytes(np.zeros((8, 8), np.uint8))), {"mask": 1}),
    ShardCase("symlink_member", _symlinked_png, {"tar": 1, "image": 1}),  # skipped link, then no image
    ShardCase("dotdot_member", _dotdot_member, {"tar": 2}),  # both members skipped
]


def _shard_dir(root: Path, cases: list[ShardCase], good: int = 3) -> tuple[Path, list[str], list[str]]:
    """One shard: ``good`` valid samples, then each case's sample; indexed. Returns dir, good and bad keys."""
    root.mkdir(parents=True, exist_ok=True)
    name = "busbra-train-000000.tar"
    good_keys = [f"busbra-good{i}" for i in range(good)]
    bad_keys = [f"busbra-{c.id.replace('_', '')}" for c in cases]
    with tarfile.open(root / name, "w") as tar:
        for i, key in enumerate(good_keys):
            _good(tar, key, seed=i)
        for case, key in zip(cases, bad_keys):
            case.members(tar, key)
    index = {"source": "busbra", "shards": [{"file": name, "split": "train", "count": good + len(cases)}]}
    (root / "busbra.index.json").write_text(json.dumps(index))
    return root, good_keys, bad_keys


def _targets():
    from sonofm.datasets.taxonomy import Taxonomy

    return Taxonomy.load().targets


def _eval_keys(d: Path, workers: int) -> tuple[list[str], dict[str, int]]:
    loader = make_eval_loader(StreamSpec([str(d)]), batch_size=4, img_size=32, num_workers=workers,
                              target_fn=_targets())
    keys = [k for batch in loader for k in batch["key"]]
    return keys, corrupt_counts(loader)


@pytest.mark.parametrize("case", SHARD_CASES, ids=lambda c: c.id)
def test_stream_skips_and_counts_each_bad_sample(case: ShardCase, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    d, good, (bad,) = _shard_dir(tmp_path / "s", [case])
    with caplog.at_level(logging.WARNING, logger="sonofm.datasets.stream.loader"):
        keys, counts = within_deadline(lambda: _eval_keys(d, workers=0))
    assert {k: v for k, v in counts.items() if v and k != "total"} == case.counted, counts
    if not case.counted:
        assert sorted(keys) == sorted([*good, bad]), keys
        return
    assert sorted(keys) == sorted(good), keys
    named = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert any(bad in m and "busbra-train-000000.tar" in m for m in named), named


def test_all_bad_samples_with_two_workers_train_and_eval(tmp_path: Path) -> None:
    """Every case in one shard read by 2 DataLoader workers: no worker dies, every bad sample is counted."""
    d, good, _ = _shard_dir(tmp_path / "s", SHARD_CASES, good=6)
    n_ok = len(good) + sum(not c.counted for c in SHARD_CASES)
    keys, counts = within_deadline(lambda: _eval_keys(d, workers=2))
    assert len(keys) == n_ok == len(set(keys))
    want = {k: sum(c.counted.get(k, 0) for c in SHARD_CASES) for k in ("image", "json", "mask", "tar")}
    assert {k: counts[k] for k in want} == want, counts

    def train() -> dict[str, int]:
        loader = make_train_loader(StreamSpec([str(d)]), batch_size=4, img_size=32, seed=0, num_workers=2,
                                   shuffle_buffer=8, target_fn=_targets(), round_samples=len(SHARD_CASES) + 6)
        it = iter(loader)
        for _ in range(12):  # more than two passes over the shard per worker
            batch = next(it)
            assert batch["image"].shape == (4, 1, 32, 32)
        del it
        return corrupt_counts(loader)

    tcounts = within_deadline(train)
    assert tcounts["image"] >= want["image"] and tcounts["json"] >= want["json"], tcounts


@pytest.mark.parametrize("content", [b"", b"this is not a tar archive" * 40], ids=["zero_byte", "not_a_tar"])
def test_unreadable_shard_is_a_clear_error_naming_it(tmp_path: Path, content: bytes) -> None:
    d = tmp_path / "s"
    d.mkdir()
    (d / "busbra-train-000000.tar").write_bytes(content)
    (d / "busbra.index.json").write_text(json.dumps(
        {"source": "busbra", "shards": [{"file": "busbra-train-000000.tar", "split": "train", "count": 5}]}))
    with pytest.raises(StreamError, match=r"busbra-train-000000\.tar yielded no sample"):
        within_deadline(lambda: _eval_keys(d, workers=0))


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos:pos + 4])
        out.append((png[pos + 4:pos + 8], png[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for pos in rng.choice(len(out), size=min(len(out), int(rng.integers(1, 9))), replace=False):
        out[pos] ^= int(rng.integers(1, 256))
    return bytes(out)


def flipped_png(base: bytes, rng: np.random.Generator, level: int) -> bytes:
    """``base`` with 1-8 bytes XOR-ed at one of three depths, so the flips reach every layer of the decoder.

    0: anywhere in the file (mostly stopped by the chunk CRCs); 1: inside one chunk's payload with
    the CRC recomputed (header fields, the zlib stream); 2: inside the inflated scanlines (filter
    bytes, pixels), re-deflated, so the file is well formed but its content is not.
    """
    if level == 0:
        return _flip(base, rng)
    chunks = _chunks(base)
    if level == 1:
        i = int(rng.integers(0, len(chunks) - 1))  # any chunk but IEND
        chunks[i] = (chunks[i][0], _flip(chunks[i][1], rng))
    else:
        raw = zlib.decompress(b"".join(d for t, d in chunks if t == b"IDAT"))
        idat = zlib.compress(_flip(raw, rng))
        chunks = [c for c in chunks if c[0] != b"IDAT"]
        chunks.insert(len(chunks) - 1, (b"IDAT", idat))
    return b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(tag, data) for tag, data in chunks)


def test_byte_flip_fuzz_every_variant_decoded_or_counted(tmp_path: Path) -> None:
    """50 seeded variants of a valid PNG (three depths of flips) among valid samples: each decodes or is counted."""
    rng = np.random.default_rng(1234)
    base = png_bytes(gray(64, 64, seed=5))
    d = tmp_path / "s"
    d.mkdir()
    name, n, n_good = "busbra-train-000000.tar", 50, 13
    with tarfile.open(d / name, "w") as tar:
        for i in range(n):
            _member(tar, f"busbra-v{i:02d}.png", flipped_png(base, rng, level=i % 3))
            _member(tar, f"busbra-v{i:02d}.json", META)
            if i % 4 == 0:  # valid samples in between (odd and even places): no worker's share is all corrupt
                _good(tar, f"busbra-good{i:02d}", seed=i)
    (d / "busbra.index.json").write_text(json.dumps(
        {"source": "busbra", "shards": [{"file": name, "split": "train", "count": n + n_good}]}))
    keys, counts = within_deadline(lambda: _eval_keys(d, workers=2))
    decoded = [k for k in keys if "-v" in k]
    assert len(keys) - len(decoded) == n_good
    assert len(decoded) + counts["image"] == n and counts["total"] == counts["image"], (len(decoded), counts)
    assert counts["image"] >= 10 and len(decoded) >= 5, f"flips should break many variants, not all: {counts}"
    print(f"\nbyte-flip fuzz: {n} variants, {len(decoded)} decoded, {counts['image']} skipped and counted")


# ------------------------------------------------------------ nothing skipped, dropped or altered silently
#
# One table of bad sources for the whole build (issue 14). Each row builds a tiny source (and, for the
# output cases, a bad output folder) and names its one expected outcome:
#   "error": a clear error (a UserError or an OSError the CLI prints as one line, never a traceback),
#            whose message names the file, key, source or folder given in ``match``;
#   "skip":  the build goes on, the report counter ``counter`` is exactly 1, the source gives
#            ``samples`` samples, no other skip counter moved and ``match`` names what was left out;
#   "ok":    a correct decode: ``samples`` samples, nothing skipped, no decode error.


def _good_png(p: Path, seed: int = 100, h: int = 40, w: int = 48) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(png_bytes(gray(h, w, seed=seed)))


def _src(d: Path, n_good: int = 1) -> Path:
    root = d / "src"
    for i in range(n_good):
        _good_png(root / "benign" / f"good{i}.png", seed=100 + i)
    return root


def _folder(root: Path, **opts: Any) -> str:
    query = "".join(f"&{k}={v}" for k, v in opts.items())
    return f"folder:{root}?source=bad{query}"


def _extra(name: str, data: Callable[[], bytes], n_good: int = 1, **opts: Any) -> Callable[[Path], str]:
    """A folder source: ``n_good`` good images and one more file ``benign/name``."""
    def make(d: Path) -> str:
        root = _src(d, n_good)
        (root / "benign" / name).write_bytes(data())
        return _folder(root, **opts)
    return make


def _img(arr: Callable[[], np.ndarray], fmt: str = "PNG") -> Callable[[], bytes]:
    def data() -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr()).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        return buf.getvalue()
    return data


def _black_gif() -> bytes:
    frames = [Image.fromarray(np.zeros((48, 48), np.uint8)) for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def _linked(make_link: Callable[[Path, Path], None], n_good: int = 1, **opts: Any) -> Callable[[Path], str]:
    """A folder source (``n_good`` images) plus links made by ``make_link(root, elsewhere)``."""
    def make(d: Path) -> str:
        root = _src(d, n_good)
        elsewhere = d / "elsewhere"  # outside the source root
        _good_png(elsewhere / "outside.png", seed=7)
        _good_png(elsewhere / "sub" / "o.png", seed=8)
        make_link(root, elsewhere)
        return _folder(root, **opts)
    return make


def _hidden_store(root: Path) -> Path:
    store = root / ".store"
    _good_png(store / "x.png", seed=9)
    return store


def _csv(text: str, files: dict[str, Callable[[Path], None]] | None = None, **opts: Any) -> Callable[[Path], str]:
    """A CSV source ``d/src/list.csv`` beside ``good.png`` (and ``files`` made by their writers)."""
    def make(d: Path) -> str:
        root = d / "src"
        _good_png(root / "good.png", seed=100)
        _good_png(root / "two.png", seed=101)
        for name, write in (files or {}).items():
            write(root / name)
        (root / "list.csv").write_text(text)
        query = "".join(f"&{k}={v}" for k, v in opts.items())
        return f"csv:{root / 'list.csv'}?source=bad{query}"
    return make


def _soft_disc(h: int = 64, w: int = 64, r: float = 8.0, ramp: float = 6.0) -> np.ndarray:
    """A disc of radius ``r`` with an anti-aliased edge ``ramp`` px wide (0..255)."""
    yy, xx = np.mgrid[:h, :w]
    dist = np.hypot(yy - h / 2, xx - w / 2)
    return np.round(255 * np.clip((r + ramp / 2 - dist) / ramp, 0, 1)).astype(np.uint8)


def _masked(mask: Callable[[], bytes], mask_name: str = "m_mask.png") -> Callable[[Path], str]:
    def make(d: Path) -> str:
        root = d / "src"
        _good_png(root / "benign" / "m.png", seed=11, h=64, w=64)
        (root / "benign" / mask_name).write_bytes(mask())
        return _folder(root, mask_pattern="{stem}_mask*")
    return make


def _dicom(path: Path, seed: int = 0) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns = "US", 48, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = gray(48, 64, seed=seed).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _dicom_link_out(d: Path) -> str:
    root = d / "src"
    _dicom(root / "a.dcm")
    _dicom(d / "elsewhere" / "b.dcm", seed=1)
    (root / "b.dcm").symlink_to(d / "elsewhere" / "b.dcm")
    return f"dicom:{root}?source=bad"


def _only(*files: tuple[str, Callable[[], bytes]]) -> Callable[[Path], str]:
    """A folder source holding just ``files`` (no good image)."""
    def make(d: Path) -> str:
        root = d / "src" / "benign"
        root.mkdir(parents=True)
        for name, data in files:
            (root / name).write_bytes(data())
        return _folder(root.parent)
    return make


def _is_a_file(d: Path) -> Path:
    (d / "out.tar").write_bytes(b"not a folder")
    return d / "out.tar"


def _under_a_file(d: Path) -> Path:
    (d / "afile").write_text("x")
    return d / "afile" / "shards"


def _refuse_writes(code: int) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """The output folder refuses every new file with ``code`` (EACCES as a chmod-ed folder does for a
    normal user; root ignores permissions, so the kernel's answer is simulated at ``os.open``)."""
    import errno
    import os

    def patch(mp: pytest.MonkeyPatch, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        if code == errno.EACCES and os.geteuid() != 0:
            out.chmod(0o555)
            return
        real = os.open

        def guarded(path: Any, flags: int, *a: Any, **k: Any) -> int:
            if str(path).startswith(str(out)) and flags & os.O_CREAT:
                raise OSError(code, os.strerror(code), str(path))
            return real(path, flags, *a, **k)

        mp.setattr(os, "open", guarded)
    return patch


def _disk_full_at_second_shard(mp: pytest.MonkeyPatch, out: Path) -> None:
    """ENOSPC from the tar writer once the second shard is being written (the first is complete)."""
    import errno

    real = tarfile.TarFile.addfile

    def addfile(self: tarfile.TarFile, tarinfo: tarfile.TarInfo, fileobj: Any = None) -> None:
        if "000001" in str(getattr(self.fileobj, "name", "")):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, tarinfo, fileobj)

    mp.setattr(tarfile.TarFile, "addfile", addfile)


def _symlink(target: Path | str, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _outside_link(link: Path) -> None:
    """``link`` (in ``d/src``) to an image in ``d/elsewhere``, outside the source's folder."""
    target = link.parent.parent / "elsewhere" / "outside.png"
    _good_png(target, seed=7)
    _symlink(target, link)


def _fifo(d: Path) -> str:
    import os

    root = _src(d)
    os.mkfifo(root / "benign" / "pipe.png")
    return _folder(root)


@dataclass(frozen=True)
class BadCase:
    """One bad source: how to make it, and its one expected outcome (see the comment above)."""

    id: str
    make: Callable[[Path], str]
    expect: str  # "error" | "skip" | "ok"
    counter: str = ""
    samples: int = 0
    match: str = ""
    dedup: bool = False
    out: Callable[[Path], Path] | None = None
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    build: dict[str, Any] | None = None


_TRUNC = VALID[: len(VALID) // 2]
ROW = "path,label\n"
BAD_CASES = [
    # degenerate images: decode fine, hold no ultrasound
    BadCase("image_1x1", _extra("dot.png", _img(lambda: np.array([[128]], np.uint8))), "skip", "skipped_tiny", 1,
            "dot.png"),
    BadCase("strip_20000x20", _extra("strip.png", _img(lambda: gray(20, 20000))), "skip", "skipped_extreme_aspect",
            1, "strip.png"),
    BadCase("strip_20x20000", _extra("tall.png", _img(lambda: gray(20000, 20))), "skip", "skipped_extreme_aspect",
            1, "tall.png"),
    BadCase("aspect_just_over_10", _extra("wide.png", _img(lambda: gray(32, 330))), "skip",
            "skipped_extreme_aspect", 1, "wide.png"),
    BadCase("aspect_exactly_10", _extra("wide.png", _img(lambda: gray(32, 320))), "ok", samples=2),
    BadCase("side_31", _extra("small.png", _img(lambda: gray(31, 200))), "skip", "skipped_tiny", 1, "small.png"),
    BadCase("side_32", _extra("small.png", _img(lambda: gray(32, 32))), "ok", samples=2),
    BadCase("all_black", _extra("black.png", _img(lambda: np.zeros((64, 64), np.uint8))), "skip",
            "skipped_all_black", 1, "black.png"),
    BadCase("near_black_noise", _extra("dark.png", _img(lambda: gray(64, 64) % 4)), "skip", "skipped_all_black", 1,
            "dark.png"),
    BadCase("constant_gray", _extra("flat.png", _img(lambda: np.full((64, 64), 128, np.uint8))), "skip",
            "skipped_constant", 1, "flat.png"),
    BadCase("constant_white", _extra("white.png", _img(lambda: np.full((64, 64), 255, np.uint8))), "skip",
            "skipped_constant", 1, "white.png"),
    BadCase("constant_colour", _extra("red.png", _img(lambda: np.full((64, 64, 3), (200, 30, 30), np.uint8))),
            "skip", "skipped_constant", 1, "red.png"),
    BadCase("constant_jpeg", _extra("flat.jpg", _img(lambda: np.full((64, 64), 90, np.uint8), "JPEG")), "skip",
            "skipped_constant", 1, "flat.jpg"),
    BadCase("transparent_rgba", _extra("clear.png", _img(lambda: np.dstack([gray(64, 64)] * 3
                                                                           + [np.zeros((64, 64), np.uint8)]))),
            "skip", "skipped_all_black", 1, "clear.png"),
    BadCase("constant_16bit", _extra("deep.png", _img(lambda: np.full((64, 64), 1000, np.uint16))), "skip",
            "skipped_constant", 1, "deep.png"),
    BadCase("low_contrast_kept", _extra("faint.png", _img(lambda: (gray(64, 64) % 11 + 100).astype(np.uint8))),
            "ok", samples=2),
    BadCase("gif_of_black_frames", _extra("black.gif", _black_gif, frames_per_video=3), "skip",
            "skipped_all_black", 1, "black.gif"),
    # links
    BadCase("linked_subfolder_inside", _linked(lambda r, e: _symlink(_hidden_store(r), r / "extra")), "ok",
            samples=2),
    BadCase("linked_subfolder_sibling", _linked(lambda r, e: (_good_png(r / "malignant" / "x.png", 9),
                                                              _symlink(r / "malignant", r / "also"))),
            "skip", "files_linked_twice", 2, "also"),
    BadCase("linked_subfolder_outside", _linked(lambda r, e: _symlink(e / "sub", r / "more")), "skip",
            "symlinks_outside_root", 1, "more"),
    BadCase("linked_file_inside", _linked(lambda r, e: _symlink(_hidden_store(r) / "x.png", r / "benign" / "l.png")),
            "ok", samples=2),
    BadCase("linked_file_outside", _linked(lambda r, e: _symlink(e / "outside.png", r / "benign" / "o.png")), "skip",
            "symlinks_outside_root", 1, "o.png"),
    BadCase("link_farm_with_links_any", _linked(lambda r, e: (_symlink(e / "outside.png", r / "benign" / "o.png"),
                                                              _symlink(e / "sub", r / "more")), links="any"),
            "ok", samples=3),
    BadCase("bad_links_option", _linked(lambda r, e: None, links="sometimes"), "error", match="links must be one of"),
    BadCase("relative_link_outside", _linked(lambda r, e: _symlink("../../elsewhere/outside.png",
                                                                   r / "benign" / "rel.png")),
            "skip", "symlinks_outside_root", 1, "rel.png"),
    BadCase("link_to_etc_passwd", _linked(lambda r, e: _symlink("/etc/passwd", r / "benign" / "p.png")), "skip",
            "symlinks_outside_root", 1, "p.png"),
    BadCase("dangling_file_link", _linked(lambda r, e: _symlink(r / "gone.png", r / "benign" / "d.png")), "skip",
            "symlinks_dangling", 1, "d.png"),
    BadCase("dangling_folder_link", _linked(lambda r, e: _symlink(r / "gone", r / "folder")), "skip",
            "symlinks_dangling", 1, "folder"),
    BadCase("self_loop_link", _linked(lambda r, e: _symlink("me.png", r / "benign" / "me.png")), "skip",
            "symlinks_dangling", 1, "me.png"),
    BadCase("folder_loop_link", _linked(lambda r, e: _symlink(r, r / "benign" / "up")), "skip", "symlink_loops", 1,
            "up"),
    BadCase("mask_link_outside", _linked(lambda r, e: _symlink(e / "outside.png", r / "benign" / "good0_mask.png"),
                                         n_good=2, mask_pattern="{stem}_mask.png"),
            "skip", "symlinks_outside_root", 1, "good0_mask.png"),
    BadCase("fifo_named_png", _fifo, "skip", "special_files", 1, "pipe.png"),
    BadCase("readme_beside_images", _extra("README.txt", lambda: b"notes\n"), "skip", "other_files_ignored", 1,
            "README.txt"),
    BadCase("csv_row_link_outside", _csv(ROW + "good.png,a\nout.png,b\n",
                                         {"out.png": lambda p: _outside_link(p)}),
            "skip", "symlinks_outside_root", 1, "out.png"),
    BadCase("csv_mask_link_outside", _csv("path,label,mask\ngood.png,a,\ntwo.png,b,m.png\n",
                                          {"m.png": lambda p: _outside_link(p)}),
            "skip", "symlinks_outside_root", 1, "m.png"),
    BadCase("csv_dangling_link", _csv(ROW + "good.png,a\nd.png,b\n", {"d.png": lambda p: _symlink("nowhere.png", p)}),
            "skip", "symlinks_dangling", 1, "d.png"),
    BadCase("dicom_link_outside", _dicom_link_out, "skip", "symlinks_outside_root", 1, "b.dcm"),
    # keys are unique within a source
    BadCase("csv_row_twice_dedup_off", _csv(ROW + "good.png,a\ngood.png,a\n"), "skip", "duplicate_keys", 1,
            "good.png"),
    BadCase("csv_row_twice_dedup_on", _csv(ROW + "good.png,a\ngood.png,a\n"), "skip", "duplicate_keys", 1,
            "good.png", dedup=True),
    BadCase("csv_path_twice_two_labels", _csv(ROW + "good.png,a\ngood.png,b\ntwo.png,a\n"), "skip",
            "duplicate_keys", 2, "good.png"),
    BadCase("csv_dot_slash_same_file", _csv(ROW + "good.png,a\n./good.png,a\n"), "skip", "duplicate_keys", 1,
            "good.png"),
    BadCase("csv_dotdot_same_file", _csv(ROW + "good.png,a\nsub/../good.png,a\n"), "skip", "duplicate_keys", 1,
            "good.png"),
    BadCase("same_pixels_two_names", _extra("copy.png", lambda: png_bytes(gray(seed=100))), "skip",
            "duplicates_exact", 1, "good0", dedup=True),
    # ragged CSV rows
    BadCase("csv_row_extra_cell", _csv(ROW + "good.png,a\ntwo.png,b,extra\n"), "skip", "ragged_csv_rows", 1,
            "row 3"),
    BadCase("csv_row_missing_cell", _csv("path,label,group\ngood.png,a,g1\ntwo.png,b\n"), "skip",
            "ragged_csv_rows", 1, "row 3"),
    BadCase("csv_unquoted_comma", _csv(ROW + "good.png,cyst, simple\ntwo.png,b\n"), "skip", "ragged_csv_rows", 1,
            "row 2"),
    BadCase("csv_quoted_comma", _csv(ROW + 'good.png,"cyst, simple"\ntwo.png,b\n'), "ok", samples=2),
    BadCase("csv_blank_lines", _csv(ROW + "good.png,a\n\n\ntwo.png,b\n"), "ok", samples=2),
    BadCase("csv_trailing_comma_everywhere", _csv("path,label,\ngood.png,a,\ntwo.png,b,\n"), "ok", samples=2),
    BadCase("csv_every_row_ragged", _csv(ROW + "good.png,a,x\ntwo.png,b,y\n"), "error", match="list.csv"),
    # masks
    BadCase("mask_antialiased", _masked(_img(_soft_disc)), "skip", "masks_thresholded", 1),
    BadCase("mask_jpeg", _masked(_img(lambda: (_soft_disc(ramp=0.5) > 127).astype(np.uint8) * 255, "JPEG"),
                                 "m_mask.jpg"), "skip", "masks_thresholded", 1),
    BadCase("mask_hard_0_255", _masked(_img(lambda: (_soft_disc() > 127).astype(np.uint8) * 255)), "ok", samples=1),
    BadCase("mask_0_1", _masked(_img(lambda: (_soft_disc() > 127).astype(np.uint8))), "ok", samples=1),
    BadCase("mask_class_ids_0_1_2", _masked(_img(lambda: np.minimum(_soft_disc() // 100, 2).astype(np.uint8))),
            "ok", samples=1),
    BadCase("image_without_mask", _extra("good0_mask.png", _img(lambda: np.zeros((40, 48), np.uint8)), n_good=2,
                                         mask_pattern="{stem}_mask.png"), "skip", "images_without_mask", 2),
    BadCase("image_without_mask_required", _extra("good0_mask.png", _img(lambda: np.zeros((40, 48), np.uint8)),
                                                  n_good=2, mask_pattern="{stem}_mask.png", require_mask="true"),
            "skip", "images_without_mask", 1),
    # unreadable files
    BadCase("truncated_png", _extra("trunc.png", lambda: _TRUNC), "skip", "decode_errors", 1, "trunc.png"),
    BadCase("uppercase_extension", _extra("UP.PNG", lambda: png_bytes(gray(seed=5))), "ok", samples=2),
    BadCase("every_file_unreadable", _only(("a.png", lambda: _TRUNC), ("b.png", lambda: b"")), "error",
            match="source bad: every one of 2 files failed"),
    BadCase("every_image_degenerate", _only(("a.png", _img(lambda: np.zeros((64, 64), np.uint8))),
                                            ("b.png", _img(lambda: np.array([[1]], np.uint8)))), "error",
            match="source bad: no sample written from 2 files (1 tiny, 1 all black)"),
    BadCase("empty_folder", _only(), "error", match="found under {d}/src"),
    BadCase("csv_dotdot_outside", _csv(ROW + "../../etc/passwd,a\n"), "error", match="list.csv, row 2"),
    # the output folder
    BadCase("out_is_a_file", lambda d: _folder(_src(d)), "error", match="out.tar is an existing file",
            out=_is_a_file),
    BadCase("out_under_a_file", lambda d: _folder(_src(d)), "error", match="afile/shards", out=_under_a_file),
    BadCase("out_not_writable", lambda d: _folder(_src(d)), "error", match="/out is not writable",
            patch=_refuse_writes(13)),
    BadCase("out_read_only_fs", lambda d: _folder(_src(d)), "error", match="read-only", patch=_refuse_writes(30)),
    BadCase("disk_full_mid_build", lambda d: _folder(_src(d, 3)), "error", match="bad-train-000001.tar in ",
            patch=_disk_full_at_second_shard, build={"samples_per_shard": 1, "split_fractions": {"train": 1.0}}),
]


def _counter(rep: dict[str, Any], name: str) -> int:
    for part in ("skipped", "altered", "adapter_stats"):
        if name in rep.get(part, {}):
            return int(rep[part][name])
    return int(rep.get(name, 0) or 0)


def _named(rep: dict[str, Any]) -> str:
    """Everything the report names as left out: skipped files, decode errors, duplicates."""
    return json.dumps([rep["skipped_files"], rep["errors"], rep["duplicates"]])


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_source_table(case: BadCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sonofm.errors import is_user_error

    spec = case.make(tmp_path)
    out = case.out(tmp_path) if case.out else tmp_path / "out"
    if case.patch is not None:
        case.patch(monkeypatch, out)
    kw = {"max_side": 64, "samples_per_shard": 100, "workers": 1, "dedup": case.dedup, "progress": False,
          **(case.build or {})}

    def build() -> dict[str, Any]:
        return build_shards([spec], out, **kw)

    if case.expect == "error":
        with pytest.raises(Exception) as err:
            within_deadline(build)
        assert is_user_error(err.value), f"a traceback, not a clear error: {err.type.__name__}: {err.value}"
        assert case.match.format(d=tmp_path) in str(err.value), str(err.value)
        if out.is_dir():
            assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], "temporary files left"
            assert not (out / "bad.index.json").exists()
            if case.id == "disk_full_mid_build":
                assert sorted(p.name for p in out.glob("*.tar")) == ["bad-train-000000.tar"], (
                    "the shard being written must not appear under its final name")
        return
    rep = within_deadline(build)["sources"]["bad"]
    assert rep["samples_written"] == case.samples, rep
    others = {k: v for k, v in rep["skipped"].items() if k != case.counter}
    assert not others, f"something else was skipped: {others} ({rep['skipped_files']})"
    if case.expect == "ok":
        assert rep["decode_errors"] == 0 and not rep["skipped"], (rep["errors"], rep["skipped_files"])
        assert rep["duplicates_exact"] + rep["duplicates_near"] == 0
        return
    assert _counter(rep, case.counter) == 1, (case.counter, rep["skipped"], rep["adapter_stats"])
    if case.counter != "decode_errors":
        assert rep["decode_errors"] == 0, rep["errors"]
    assert case.match in _named(rep), _named(rep)


def test_bad_source_table_covers_every_class() -> None:
    """At least 40 rows, every outcome, and every example quoted in the issue is a row."""
    kinds = Counter(c.expect for c in BAD_CASES)
    assert len(BAD_CASES) >= 40 and len({c.id for c in BAD_CASES}) == len(BAD_CASES)
    assert kinds["error"] >= 5 and kinds["skip"] >= 20 and kinds["ok"] >= 5, kinds
    quoted = {"linked_subfolder_inside", "dangling_file_link", "linked_file_outside", "image_1x1", "strip_20000x20",
              "all_black", "constant_gray", "csv_row_twice_dedup_off", "csv_row_extra_cell", "csv_row_missing_cell",
              "image_without_mask", "mask_antialiased", "out_is_a_file", "out_not_writable", "out_read_only_fs",
              "disk_full_mid_build", "every_file_unreadable"}
    assert quoted <= {c.id for c in BAD_CASES}, quoted - {c.id for c in BAD_CASES}
    print(f"\nbad-source table: {len(BAD_CASES)} cases, {kinds['error']} clear errors, {kinds['skip']} counted "
          f"skips, {kinds['ok']} correct decodes")


def test_soft_mask_cut_at_half_range_keeps_the_area(tmp_path: Path) -> None:
    """An anti-aliased disc: ``> 0`` would grow it by far more than half; half range keeps its area."""
    from sonofm.datasets.shards import iter_tar_samples

    disc = _soft_disc(r=8.0, ramp=6.0)
    true_area = np.pi * 8.0**2
    assert (disc > 0).sum() > 1.6 * true_area, "the edge is soft enough for > 0 to be badly wrong"
    spec = _masked(_img(lambda: disc))(tmp_path)
    rep = build_shards([spec], tmp_path / "out", max_side=64, dedup=False, progress=False,
                       split_fractions={"train": 1.0})["sources"]["bad"]
    assert rep["altered"]["masks_thresholded"] == 1
    (shard,) = sorted((tmp_path / "out").glob("*.tar"))
    (sample,) = list(iter_tar_samples(shard))
    mask = np.array(Image.open(io.BytesIO(sample["mask.png"])))
    assert set(np.unique(mask)) <= {0, 1} and abs(int(mask.sum()) - true_area) < 0.15 * true_area, mask.sum()


def test_listing_and_worker_counters_all_reach_the_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Counted in the main process while listing (no mask, a link out, a ragged row) and in two workers
    while decoding (tiny, constant, soft mask): every counter is in the report, the index and the line."""
    root = _src(tmp_path, n_good=3)
    (root / "benign" / "good0_mask.png").write_bytes(_img(lambda: _soft_disc(40, 48))())
    (root / "benign" / "dot.png").write_bytes(_img(lambda: np.array([[7]], np.uint8))())
    (root / "benign" / "flat.png").write_bytes(_img(lambda: np.full((40, 48), 60, np.uint8))())
    _good_png(tmp_path / "elsewhere" / "x.png", seed=3)
    (root / "benign" / "x.png").symlink_to(tmp_path / "elsewhere" / "x.png")
    spec = _folder(root, mask_pattern="{stem}_mask.png")
    report = within_deadline(lambda: build_shards([spec], tmp_path / "out", max_side=32, workers=2, dedup=False,
                                                  progress=True))
    rep = report["sources"]["bad"]
    assert rep["skipped"] == {"skipped_tiny": 1, "skipped_constant": 1, "symlinks_outside_root": 1}, rep["skipped"]
    assert rep["adapter_stats"]["images_without_mask"] == 4  # good1, good2, dot, flat: counted while listing
    assert rep["altered"] == {"masks_thresholded": 1} and rep["samples_written"] == 3
    assert {Path(n["file"]).name for n in rep["skipped_files"]} == {"dot.png", "flat.png", "x.png"}
    index = json.loads((tmp_path / "out" / "bad.index.json").read_text())
    assert index["report"]["skipped"] == rep["skipped"] and index["report"]["altered"] == rep["altered"]
    line = capsys.readouterr().out
    for words in ("skipped 1 tiny, 1 constant, 1 links leaving the source folder", "1 soft masks cut at half range",
                  "images_without_mask 4"):
        assert words in line, line
