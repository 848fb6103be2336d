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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sonofm.datasets.adapters import AdapterError, get_adapter
from sonofm.datasets.build import build_shards
from sonofm.datasets.stream import (
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
    with caplog.at_level(logging.WARNING, logger="sonofm.datasets.stream"):
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
