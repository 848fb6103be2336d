"""Shard writer: keys, metadata, atomic and deterministic tars, cutting by count, resume checks."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonofm.atomic_io import to_jsonable
from sonofm.datasets.shards import (
    EncodedSample,
    ResumeMismatch,
    ShardSetWriter,
    TarShard,
    encode_png,
    file_sha256,
    iter_tar_samples,
    sample_key,
    sample_meta,
    shard_name,
    shard_pattern,
)
from sonofm.datasets.shards import (
    tmp_path as shard_tmp_path,
)
from sonofm.datasets.sources.records import META_KEYS
from sonofm.datasets.sources.specs import SourceSpec, parse_source_arg, parse_sources


def _sample(i: int, split: str = "train", mask: bool = True) -> EncodedSample:
    rng = np.random.default_rng(i)
    img = rng.integers(0, 255, size=(24, 32), dtype=np.uint8)
    meta = sample_meta({"source": "toy", "split": split, "group": f"g{i}", "path": f"d/{i}.png",
                        "extra": np.float32(1.5)})
    return EncodedSample(
        key=sample_key("toy", f"d/{i}.png"),
        meta=meta,
        png=encode_png(img),
        mask_png=encode_png((img > 128).astype(np.uint8)) if mask else None,
        field_png=encode_png(np.ones_like(img, dtype=bool)),
    )


def test_sample_key_is_safe_unique_and_stable():
    k = sample_key("busi", "benign/benign (1).png")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", k) and k.startswith("busi-benign_benign_1-")
    assert k == sample_key("busi", "benign/benign (1).png")
    assert sample_key("s", "a b.png") != sample_key("s", "a_b.png")  # sanitise alike, hash differs
    assert sample_key("s", "v.mp4", frame=3) != sample_key("s", "v.mp4", frame=4)
    assert "_f00003-" in sample_key("s", "v.mp4", frame=3)
    assert "." not in sample_key("s", "x" * 300 + ".tar.gz")


def test_meta_has_all_keys_and_plain_types():
    m = sample_meta({"source": "x", "pixel_spacing_mm": np.array([0.1, 0.2]), "n": np.int64(3),
                     "flag": np.bool_(True), "bad": float("nan"), "field": {"box": (1, 2, 3, 4)}})
    assert list(m)[: len(META_KEYS)] == list(META_KEYS)
    assert m["label"] is None and m["pixel_spacing_mm"] == [0.1, 0.2] and m["n"] == 3
    assert m["flag"] is True and m["bad"] is None and m["field"] == {"box": [1, 2, 3, 4]}
    json.dumps(m)
    with pytest.raises(TypeError, match="cannot store object"):
        to_jsonable(object())


def test_shard_invisible_until_commit_and_byte_identical(tmp_path):
    final = tmp_path / shard_name("toy", "train", 0)
    shard = TarShard(final)
    shard.add(_sample(0))
    assert not list(tmp_path.glob("*.tar")) and shard_tmp_path(final).exists()
    entry = shard.commit()
    assert entry["count"] == 1 and final.is_file() and not shard_tmp_path(final).exists()
    assert entry["sha256"] == file_sha256(final)
    # Same samples -> same bytes (fixed mtimes/owners), so a rebuild can be compared by hash.
    other = tmp_path / "b" / final.name
    other.parent.mkdir()
    s2 = TarShard(other)
    s2.add(_sample(0))
    assert s2.commit()["sha256"] == entry["sha256"]
    # Aborting removes the temporary file and leaves nothing visible.
    s3 = TarShard(tmp_path / shard_name("toy", "val", 0))
    s3.add(_sample(1))
    s3.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", final.name]


def test_writer_cuts_by_count_per_split_and_is_readable(tmp_path):
    import webdataset as wds

    w = ShardSetWriter(tmp_path, "toy", samples_per_shard=3)
    splits = ["train", "val", "train", "train", "train", "val", "test", "train"]
    for i, s in enumerate(splits):
        w.add(_sample(i, s, mask=i % 2 == 0))
    entries = w.close()
    assert [(e["file"], e["count"]) for e in entries] == [
        ("toy-test-000000.tar", 1), ("toy-train-000000.tar", 3), ("toy-train-000001.tar", 2),
        ("toy-val-000000.tar", 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [e["file"] for e in entries]
    assert all(shard_pattern("toy").match(e["file"]) for e in entries)
    # Readable by webdataset, with the layout of records.py.
    ds = wds.WebDataset(str(tmp_path / "toy-train-000000.tar"), shardshuffle=False)
    got = list(ds)
    assert [g["__key__"] for g in got] == [sample_key("toy", f"d/{i}.png") for i in (0, 2, 3)]
    assert "mask.png" in got[0] and "mask.png" not in got[2] and "field.png" in got[0]
    meta = json.loads(got[0]["json"])
    assert meta["split"] == "train" and meta["extra"] == 1.5
    img = np.asarray(Image.open(io.BytesIO(got[0]["png"])))
    assert img.shape == (24, 32) and img.dtype == np.uint8
    assert [s["__key__"] for s in iter_tar_samples(tmp_path / "toy-train-000000.tar")] == [
        g["__key__"] for g in got]


def _write_all(out, splits, done=None, per=3, encode=None):
    log = []
    w = ShardSetWriter(out, "toy", samples_per_shard=per, done=done or {}, on_commit=log.append)
    for i, s in enumerate(splits):
        smp = _sample(i, s)
        if encode is not None and not encode(smp.key):
            smp.png = smp.mask_png = smp.field_png = None
        w.add(smp)
    return w, w.close(), log


def test_resume_skips_recorded_shards_and_checks_keys(tmp_path):
    splits = ["train"] * 7 + ["val"] * 2
    full, entries, log = _write_all(tmp_path / "a", splits)
    ref = {e["file"]: e["sha256"] for e in entries}
    # A killed build recorded only the first train shard; a re-run that skips its samples' encoding.
    _, e1, log1 = _write_all(tmp_path / "b", splits)
    done = {log1[0]["file"]: log1[0]}
    for e in e1[1:]:
        (tmp_path / "b" / e["file"]).unlink()
    recorded = set(log1[0]["keys"])
    w, e2, _ = _write_all(tmp_path / "b", splits, done=done, encode=lambda k: k not in recorded)
    assert w.skipped == 1
    assert {e["file"]: e["sha256"] for e in e2} == ref
    # Different samples than recorded -> ResumeMismatch (the build then starts the source over).
    w = ShardSetWriter(tmp_path / "b", "toy", samples_per_shard=3, done=done)
    with pytest.raises(ResumeMismatch, match="recorded shard has"):
        w.add(_sample(99, "train"))
    w.abort()
    # A sample the workers did not encode but that must be written is a mismatch too.
    w = ShardSetWriter(tmp_path / "c", "toy", samples_per_shard=3)
    smp = _sample(0)
    smp.png = None
    with pytest.raises(ResumeMismatch, match="not encoded"):
        w.add(smp)
    w.abort()
    assert not list((tmp_path / "c").iterdir())


def test_resume_rewrites_recorded_shards_that_are_gone_or_changed(tmp_path):
    splits = ["train"] * 4
    _, entries, log = _write_all(tmp_path, splits)
    (tmp_path / entries[0]["file"]).unlink()
    w, e2, _ = _write_all(tmp_path, splits, done={log[0]["file"]: log[0]})
    assert w.skipped == 0 and e2[0]["sha256"] == entries[0]["sha256"]
    # Same size, other bytes (changed since recorded): rewritten too.
    f = tmp_path / entries[0]["file"]
    data = bytearray(f.read_bytes())
    data[600] ^= 0xFF
    f.write_bytes(bytes(data))
    w, e3, _ = _write_all(tmp_path, splits, done={log[0]["file"]: log[0]})
    assert w.skipped == 0 and file_sha256(f) == entries[0]["sha256"]


def test_bad_names_rejected(tmp_path):
    with pytest.raises(ValueError, match="source name"):
        ShardSetWriter(tmp_path, "bad.name")
    w = ShardSetWriter(tmp_path, "ok")
    smp = _sample(0, "tr-ain")
    with pytest.raises(ValueError, match="split name"):
        w.add(smp)


def test_source_arguments(tmp_path):
    s = parse_source_arg("folder:/data/x?source=mine&mask_pattern=*_mask.png&frames_per_video=4")
    assert s == SourceSpec("folder", Path("/data/x"), "mine", {"mask_pattern": "*_mask.png", "frames_per_video": 4})
    f = tmp_path / "sources.yaml"
    f.write_text("- busi:rel/busi\n- {adapter: pocus, root: /abs/pocus, frames_per_video: 2}\n")
    specs = parse_sources([str(f), "cca:/c"])
    assert [(x.adapter, x.root, x.options) for x in specs] == [
        ("busi", tmp_path / "rel/busi", {}), ("pocus", Path("/abs/pocus"), {"frames_per_video": 2}),
        ("cca", Path("/c"), {})]
    with pytest.raises(ValueError, match="ADAPTER:PATH"):
        parse_source_arg("just-a-path")


def _toy_folder(root: Path, n: int = 12) -> Path:
    """``root/<label>/pNN_i.png`` speckle images with a bright rectangle field, plus one corrupt file."""
    rng = np.random.default_rng(0)
    for i in range(n):
        label = ("benign", "malignant")[i % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        img = np.zeros((60, 80), np.uint8)
        img[6:54, 8:72] = rng.gamma(2.0, 40.0, size=(48, 64)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / label / f"p{i % 5}_{i}.png")
    (root / "benign" / "p0_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def test_build_small_folder_errors_reruns_and_workers(tmp_path):
    from sonofm.datasets.build.orchestrate import build_shards
    from sonofm.datasets.shards import load_indexes

    data = _toy_folder(tmp_path / "data")
    spec = f"folder:{data}?source=busbra&group_regex=^(p[0-9])_"
    kw = {"max_side": 32, "samples_per_shard": 3, "dedup": True, "progress": False}
    rep = build_shards([spec], tmp_path / "a", workers=1, **kw)["sources"]["busbra"]
    assert rep["files"] == 13 and rep["records_read"] == 12 and rep["decode_errors"] == 1
    assert rep["errors"][0]["file"].endswith("p0_broken.png") and "p0_broken.png" in rep["errors"][0]["reason"]
    assert rep["samples_written"] + rep["duplicates_exact"] + rep["duplicates_near"] == 12
    (idx,) = load_indexes(tmp_path / "a")
    assert idx["complete"] and sum(s["count"] for s in idx["shards"]) == rep["samples_written"]
    assert sorted(p.name for p in (tmp_path / "a").glob("*.tar")) == sorted(s["file"] for s in idx["shards"])
    assert idx["counts"]["organ"] == {"breast": rep["samples_written"]}
    assert sum(idx["counts"]["groups"].values()) == 5  # p0..p4, each in one split
    # Same output with two processes; a re-run with nothing changed decodes nothing.
    build_shards([spec], tmp_path / "b", workers=2, **kw)
    assert [s["sha256"] for s in load_indexes(tmp_path / "b")[0]["shards"]] == [s["sha256"] for s in idx["shards"]]
    assert build_shards([spec], tmp_path / "a", workers=1, **kw)["sources"]["busbra"]["up_to_date"]
    # Other settings: rebuilt, and shards of the old layout are removed.
    build_shards([spec], tmp_path / "a", workers=1, **{**kw, "samples_per_shard": 100})
    (idx2,) = load_indexes(tmp_path / "a")
    assert len(idx2["shards"]) <= 3
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.suffix == ".tar") == sorted(
        s["file"] for s in idx2["shards"])


def test_build_rejects_misplaced_or_repeated_sources(tmp_path):
    """An undeclared source needs no entry, but an organ the taxonomy lacks, or a declared source
    placed elsewhere, stops the build before anything is decoded."""
    from sonofm.datasets.build.orchestrate import build_shards
    from sonofm.datasets.taxonomy import TaxonomyError

    data = _toy_folder(tmp_path / "data", n=2)
    with pytest.raises(TaxonomyError, match=r"organ 'brest' is not listed under any region.*did you mean breast"):
        build_shards([f"folder:{data}?source=nope&organ=brest"], tmp_path / "o", progress=False)
    with pytest.raises(TaxonomyError, match=r"source 'busbra': organ 'liver' given but the taxonomy"):
        build_shards([f"folder:{data}?source=busbra&organ=liver"], tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="given twice"):
        build_shards([f"folder:{data}?source=busbra", f"folder:{data}?source=busbra"], tmp_path / "o",
                     progress=False)
    assert not list((tmp_path / "o").glob("*.tar"))


def test_resume_with_records_that_do_not_match_rebuilds_the_source(tmp_path, capsys):
    """A progress record whose keys differ from what the build produces: start the source over."""
    from sonofm.datasets.build.orchestrate import build_shards
    from sonofm.datasets.shards import index_path, load_indexes, progress_path

    data = _toy_folder(tmp_path / "data")
    spec = f"folder:{data}?source=busbra"
    kw = {"max_side": 32, "samples_per_shard": 3, "dedup": False, "progress": False, "workers": 1}
    build_shards([spec], tmp_path / "o", **kw)
    (idx,) = load_indexes(tmp_path / "o")
    first = idx["shards"][0]
    keys = [s["__key__"] for s in iter_tar_samples(tmp_path / "o" / first["file"])]
    # Pretend a killed run recorded this shard with other keys (e.g. a file changed in place).
    index_path(tmp_path / "o", "busbra").unlink()
    entry = {**first, "keys": keys[::-1]}
    progress_path(tmp_path / "o", "busbra").write_text(
        json.dumps({"fingerprint": idx["fingerprint"]}) + "\n" + json.dumps(entry) + "\n")
    capsys.readouterr()
    rep = build_shards([spec], tmp_path / "o", **kw)["sources"]["busbra"]
    assert "do not match this build" in capsys.readouterr().out
    assert rep["shards_skipped"] == 0
    (again,) = load_indexes(tmp_path / "o")
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in idx["shards"]]
    assert not progress_path(tmp_path / "o", "busbra").exists()


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_is_a_clear_error_and_leaves_no_shard(tmp_path, monkeypatch, where):
    """ENOSPC while a member is written or while the shard is flushed: an OutputError naming the shard
    and the folder; nothing under the final name, and no hidden temporary left either."""
    import errno
    import os
    import tarfile

    from sonofm.datasets.shards import OutputError
    from sonofm.errors import is_user_error

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = ShardSetWriter(tmp_path, "toy", samples_per_shard=2)
    writer.add(_sample(0))
    if where == "write":
        monkeypatch.setattr(tarfile.TarFile, "addfile", full)
    else:
        monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError) as err:
        writer.add(_sample(1))  # the second sample completes the shard: written, then committed
    writer.abort()
    msg = str(err.value)
    assert "toy-train-000000.tar" in msg and str(tmp_path) in msg and "disk is full" in msg, msg
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError) and is_user_error(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no final-named partial shard, no temporary"


def test_json_index_write_failure_leaves_no_temporary(tmp_path, monkeypatch):
    import errno
    import os

    from sonofm.datasets.shards import OutputError, write_json_atomic

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=r"toy\.index\.json: No space left on device \(the disk is full"):
        write_json_atomic(tmp_path / "toy.index.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
