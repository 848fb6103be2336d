"""The one shard reader: the stream, finetuning and ``iter_tar_samples`` see the same samples.

Shards are written with the project's own writer (what the build writes) or, for tars the builder
never writes (folders, links, a cut-short file), with ``tarfile``.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonofm.datasets.shards import (
    CorruptCounter,
    CorruptSample,
    EncodedSample,
    ShardReadError,
    ShardSetWriter,
    count_samples,
    decode_png,
    decode_sample,
    encode_png,
    iter_tar_samples,
    read_index,
    sample_key,
    sample_meta,
    write_json_atomic,
)
from sonofm.datasets.stream.loader import StreamSpec, make_eval_loader
from sonofm.finetune.data import samples_from_shards


def _built(out: Path, n: int = 5) -> Path:
    """One shard of ``n`` samples written by the shard writer, with its index; returns the tar."""
    w = ShardSetWriter(out, "toy", samples_per_shard=100)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, size=(20, 24), dtype=np.uint8)
        meta = sample_meta({"source": "toy", "split": "val", "path": f"d/{i}.png"})
        w.add(EncodedSample(sample_key("toy", f"d/{i}.png"), meta, encode_png(img),
                            encode_png((img > 128).astype(np.uint8)) if i % 2 else None,
                            encode_png(np.ones_like(img, dtype=bool))))
    entries = w.close()
    write_json_atomic(out / "toy.index.json", {"source": "toy", "shards": entries})
    return out / entries[0]["file"]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_stream_finetune_and_iter_tar_samples_read_the_same_samples(tmp_path: Path) -> None:
    shard = _built(tmp_path)
    plain = list(iter_tar_samples(shard))
    counter = CorruptCounter()
    counted = list(iter_tar_samples(shard, counter))
    url = list(iter_tar_samples(f"file://{shard}"))
    assert [s["__key__"] for s in plain] == [sample_key("toy", f"d/{i}.png") for i in range(5)]
    assert [{k: v for k, v in s.items() if k != "__url__"} for s in url] == \
        [{k: v for k, v in s.items() if k != "__url__"} for s in plain] == \
        [{k: v for k, v in s.items() if k != "__url__"} for s in counted]
    assert counter.as_dict()["total"] == 0
    with tarfile.open(shard) as tar:  # the bytes are the members', untouched
        assert plain[1]["mask.png"] == tar.extractfile(f"{plain[1]['__key__']}.mask.png").read()
    loader = make_eval_loader(StreamSpec([str(tmp_path)], split="val"), batch_size=2, img_size=16, num_workers=0)
    assert [k for b in loader for k in b["key"]] == [s["__key__"] for s in plain]
    finetune = samples_from_shards(tmp_path, "val")
    assert [s.meta["key"] for s in finetune] == [s["__key__"] for s in plain]
    decoded = [decode_sample(s) for s in plain]
    assert all(np.array_equal(f.image, d.image) for f, d in zip(finetune, decoded))
    assert [f.mask is None for f in finetune] == [d.mask is None for d in decoded] == [True, False] * 2 + [True]
    assert count_samples(shard) == 5


def test_keys_keep_their_folder_and_foreign_members_are_skipped_alike(tmp_path: Path) -> None:
    meta = json.dumps({"split": "train"}).encode()
    img = _png(np.full((8, 8), 7, np.uint8))
    shard = tmp_path / "x-train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for name in ("a/k.png", "a/k.json", "b/k.png", "b/k.json"):
            _add(tar, name, img if name.endswith("png") else meta)
        _add(tar, "__meta__.json", b"{}")
        link = tarfile.TarInfo("c/k.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    plain = list(iter_tar_samples(shard))
    assert [s["__key__"] for s in plain] == ["a/k", "b/k"], "two folders, two samples"
    counter = CorruptCounter()
    assert [s["__key__"] for s in iter_tar_samples(shard, counter)] == ["a/k", "b/k"]
    assert counter.as_dict()["tar"] == 1, "the link is counted, not read"
    assert count_samples(shard) == 2


def test_a_cut_short_shard_is_counted_with_a_counter_and_named_without(tmp_path: Path) -> None:
    shard = _built(tmp_path)
    with tarfile.open(shard) as tar:
        inside = [m for m in tar if m.name.endswith(".png")][3].offset_data + 100  # in a member's data
    cut = tmp_path / "toy-val-000001.tar"
    cut.write_bytes(shard.read_bytes()[:inside])
    counter = CorruptCounter()
    kept = list(iter_tar_samples(cut, counter))
    assert 0 < len(kept) < 5 and counter.as_dict()["tar"] == 1
    with pytest.raises(ShardReadError, match=r"toy-val-000001\.tar: unreadable shard"):
        list(iter_tar_samples(cut))


def test_finetune_reads_16_bit_png_like_the_stream(tmp_path: Path) -> None:
    img16 = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500)
    with tarfile.open(tmp_path / "us16-val-000000.tar", "w") as tar:
        _add(tar, "us16-a.png", _png(img16))
        _add(tar, "us16-a.json", json.dumps({"source": "us16", "split": "val"}).encode())
    (s,) = samples_from_shards(tmp_path, "val")
    expected = (img16.astype(np.float64) * (255.0 / img16.max())).astype(np.uint8)
    assert s.image.dtype == np.uint8 and np.array_equal(s.image, expected)
    assert np.array_equal(decode_png(_png(img16), "image"), expected)


def test_corrupt_samples_have_a_kind(tmp_path: Path) -> None:
    good = _png(np.zeros((8, 8), np.uint8))
    for raw, kind in (({"json": b"{}"}, "image"), ({"png": b"\x89PNG no"}, "image"), ({"png": good}, "json"),
                      ({"png": good, "json": b"[1]"}, "json"),
                      ({"png": good, "json": b"{}", "mask.png": _png(np.zeros((4, 8), np.uint8))}, "mask")):
        with pytest.raises(CorruptSample) as e:
            decode_sample(raw)
        assert e.value.kind == kind
    with pytest.raises(ValueError, match=r"toy-val-000000\.tar:toy-bad: no json member"):
        with tarfile.open(tmp_path / "toy-val-000000.tar", "w") as tar:
            _add(tar, "toy-bad.png", good)
        samples_from_shards(tmp_path / "toy-val-000000.tar", "val")


def test_read_index_from_path_or_url_and_source_from_the_file_name(tmp_path: Path) -> None:
    p = tmp_path / "busi.index.json"
    p.write_text(json.dumps({"shards": [{"file": "busi-train-000000.tar", "split": "train", "count": 1}]}))
    assert read_index(p) == read_index(f"file://{p}") == read_index(str(p))
    assert read_index(p)["source"] == "busi"
    p.write_text(json.dumps({"source": "busi", "shards": [{"file": "x.tar"}]}))
    with pytest.raises(ValueError, match=r"busi\.index\.json: not a shard index"):
        read_index(p)
