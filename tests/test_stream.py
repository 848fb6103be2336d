"""Streaming: exact-once evaluation, reproducible and resumable training, mixing, corrupt data.

The shards are written here with ``tarfile`` (the layout of ``sonofm.datasets.sources.records``), so these
tests do not depend on the shard writer.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sonofm.datasets.stream.loader import (
    StreamError,
    StreamSpec,
    corrupt_counts,
    discover_shards,
    eval_assignment,
    make_eval_loader,
    make_train_loader,
    mixing_probabilities,
)

LABELS = {"benign": 0, "malignant": 1}


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_source(root: Path, source: str, *, split: str = "train", shards: int = 3, per_shard: int = 10,
                 size: tuple[int, int] = (40, 48), masks: bool = True, fields: bool = True,
                 corrupt: dict[str, str] | None = None, seed: int = 0) -> list[str]:
    """Write ``{source}-{split}-NNNNNN.tar`` shards and ``{source}.index.json``; return all keys.

    ``corrupt`` maps a key to ``"png"`` (garbage image bytes) or ``"json"`` (bad JSON).
    """
    rng = np.random.default_rng(seed)
    corrupt = corrupt or {}
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / f"{source}.index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"source": source, "shards": []}
    keys = []
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    fan = (((xx - w / 2) ** 2 + yy**2) < (0.95 * h) ** 2) & (np.abs(xx - w / 2) < 0.2 * w + 0.6 * yy)
    for s in range(shards):
        name = f"{source}-{split}-{s:06d}.tar"
        with tarfile.open(root / name, "w") as tar:
            for i in range(per_shard):
                key = f"{source}-{split}{s}x{i}"
                keys.append(key)
                image = (rng.integers(0, 256, size) * fan).astype(np.uint8)
                label = ["benign", "malignant", None][i % 3]
                meta = {"source": source, "label": label, "split": split, "group": f"g{s}"}
                _add(tar, f"{key}.png", b"\x89PNG garbage" if corrupt.get(key) == "png" else _png(image))
                if masks and i % 2 == 0:
                    _add(tar, f"{key}.mask.png", _png((image > 128).astype(np.uint8)))
                if fields:
                    _add(tar, f"{key}.field.png", _png(fan.astype(np.uint8) * 255))
                _add(tar, f"{key}.json", b"{not json" if corrupt.get(key) == "json" else json.dumps(meta).encode())
        index["shards"].append({"file": name, "split": split, "count": per_shard})
    index_path.write_text(json.dumps(index))
    return keys


def targets(meta: dict) -> dict:
    return {"label": LABELS.get(meta.get("label")), "source": 0}


def keys_of(loader, n_batches: int | None = None) -> list[str]:
    it = iter(loader) if n_batches is None else islice(loader, n_batches)
    return [k for batch in it for k in batch["key"]]


def test_discover_shards_reads_index_patterns_and_filters_split(tmp_path: Path) -> None:
    write_source(tmp_path, "busi", shards=2, per_shard=4)
    write_source(tmp_path, "busi", split="val", shards=1, per_shard=3)
    train = discover_shards(tmp_path, "train")
    assert [(Path(u).name, n) for u, n in train] == [("busi-train-000000.tar", 4), ("busi-train-000001.tar", 4)]
    assert [n for _, n in discover_shards(tmp_path / "busi.index.json", "val")] == [3]
    pattern = str(tmp_path / "busi-train-{000000..000001}.tar")
    assert discover_shards(pattern, "ignored") == [(str(tmp_path / f"busi-train-00000{i}.tar"), 4) for i in (0, 1)]
    assert discover_shards("pipe:cat a.tar::https://host/b-{0..1}.tar", None) == [
        ("pipe:cat a.tar", -1), ("https://host/b-0.tar", -1), ("https://host/b-1.tar", -1)]
    with pytest.raises(StreamError, match="no shards of split 'test'"):
        discover_shards(tmp_path, "test")


def test_mixing_probabilities_temperature_formula() -> None:
    sizes = [100, 400, 1600]
    np.testing.assert_allclose(mixing_probabilities(sizes), np.array(sizes) / 2100)
    for t in (0.5, 2.0, 3.0):
        p = np.power(sizes, 1 / t)
        np.testing.assert_allclose(mixing_probabilities(sizes, temperature=t), p / p.sum())
    np.testing.assert_allclose(mixing_probabilities(sizes, temperature=1e6), [1 / 3] * 3, atol=1e-4)
    np.testing.assert_allclose(mixing_probabilities(sizes, weights=[4, 1, 0]), [0.8, 0.2, 0.0])
    with pytest.raises(ValueError, match="unknown"):
        mixing_probabilities([10, -1])


def test_eval_assignment_is_an_exact_cover() -> None:
    for n_shards in (1, 2, 3, 4, 7, 9):
        for consumers in (1, 2, 4, 6):
            counts = [11, 3, 1, 8, 5, 2, 6, 4, 9][:n_shards]
            seen = Counter()
            for c in range(consumers):
                reads = eval_assignment(n_shards, c, consumers)
                assert reads, "every consumer gets work"
                for j, stride, offset in reads:
                    seen.update((j, i) for i in range(offset, counts[j], stride))
            assert seen == Counter({(j, i): 1 for j in range(n_shards) for i in range(counts[j])})


@pytest.mark.parametrize("shards", [5, 2])  # more shards than the 4 consumers, and fewer (split inside shards)
def test_eval_mode_reads_each_sample_once_over_2_ranks_x_2_workers(tmp_path: Path, shards: int) -> None:
    keys = write_source(tmp_path / "a", "busi", split="val", shards=shards, per_shard=7)
    keys += write_source(tmp_path / "b", "cca", split="val", shards=1, per_shard=5)
    spec = StreamSpec(paths=[str(tmp_path / "a"), str(tmp_path / "b")], split="val")
    seen: list[str] = []
    for rank in range(2):
        loader = make_eval_loader(spec, batch_size=4, img_size=32, rank=rank, world_size=2, num_workers=2,
                                  target_fn=targets)
        got = keys_of(loader)
        assert got, f"rank {rank} got nothing"
        seen += got
        assert corrupt_counts(loader)["total"] == 0
    assert Counter(seen) == Counter(keys)


def test_batches_have_fixed_shapes_targets_and_masks(tmp_path: Path) -> None:
    write_source(tmp_path, "busi", shards=2, per_shard=6)
    spec = StreamSpec(paths=[str(tmp_path)])
    batch = next(iter(make_train_loader(spec, batch_size=6, img_size=32, seed=0, num_workers=0,
                                        target_fn=targets, return_meta=True, round_samples=12)))
    assert batch["image"].shape == (6, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["field"].shape == (6, 1, 32, 32) and set(batch["field"].unique().tolist()) <= {0.0, 1.0}
    assert batch["mask"].shape == (6, 32, 32) and batch["mask"].dtype == torch.long
    has = batch["has_mask"].tolist()
    assert has == [int(k.rsplit("x", 1)[1]) % 2 == 0 for k in batch["key"]]
    assert all(batch["mask"][i].eq(0).all() for i in range(6) if not has[i])
    labels = [LABELS.get(m["label"], -1) for m in batch["meta"]]
    assert batch["targets"]["label"].tolist() == labels and -1 in labels
    assert batch["targets"]["label"].dtype == torch.long
    eval_batch = next(iter(make_eval_loader(StreamSpec([str(tmp_path)]), batch_size=3, img_size=32, num_workers=0)))
    assert "meta" not in eval_batch and eval_batch["targets"] == {}
    assert eval_batch["image"].shape == (3, 1, 32, 32)


def test_training_is_reproducible_resumes_exactly_and_differs_by_rank(tmp_path: Path) -> None:
    write_source(tmp_path / "a", "busi", shards=4, per_shard=8)
    write_source(tmp_path / "b", "cca", shards=3, per_shard=6, masks=False, fields=False)
    spec = StreamSpec(paths=[str(tmp_path / "a"), str(tmp_path / "b")], weights=[0.5, 0.5])
    kw = dict(batch_size=4, img_size=32, world_size=2, num_workers=2, shuffle_buffer=8, round_samples=10,
              persistent_workers=False)

    def run(rank: int = 0, seed: int = 7, resume: int = 0, n: int = 14) -> list[dict]:
        loader = make_train_loader(spec, seed=seed, rank=rank, resume_samples=resume, **kw)
        return list(islice(loader, n))

    full = run()
    keys = [k for b in full for k in b["key"]]
    assert len(keys) == 56
    assert keys == [k for b in run() for k in b["key"]], "same seed, same sequence"
    assert keys != [k for b in run(seed=8) for k in b["key"]]
    rank1 = [k for b in run(rank=1) for k in b["key"]]
    assert rank1 != keys and Counter(rank1) != Counter(keys)
    for done in (3, 8):  # batches consumed before the interruption; 8 crosses several rounds per worker
        resumed = run(resume=done * 4, n=14 - done)
        assert [k for b in resumed for k in b["key"]] == keys[done * 4 :], f"resume after {done} batches"
        for a, b in zip(resumed, full[done:]):  # same augmentation too
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["field"], b["field"])
    with pytest.raises(ValueError, match="multiple of batch_size"):
        make_train_loader(spec, seed=0, resume_samples=6, **kw)


def test_weights_set_the_share_of_each_source(tmp_path: Path) -> None:
    write_source(tmp_path / "a", "busi", shards=3, per_shard=10, masks=False, fields=False)
    write_source(tmp_path / "b", "cca", shards=3, per_shard=10, masks=False, fields=False)
    spec = StreamSpec(paths=[str(tmp_path / "a"), str(tmp_path / "b")], weights=[0.8, 0.2])
    loader = make_train_loader(spec, batch_size=20, img_size=16, seed=1, num_workers=0, round_samples=50,
                               shuffle_buffer=20)
    keys = keys_of(loader, 25)
    share = sum(k.startswith("busi") for k in keys) / len(keys)
    assert len(keys) == 500 and abs(share - 0.8) < 0.04, share
    # temperature: sizes 30 and 30 * 4 -> at T=2 the shares are 1:2
    write_source(tmp_path / "c", "pocus", shards=12, per_shard=10, masks=False, fields=False)
    spec = StreamSpec(paths=[str(tmp_path / "a"), str(tmp_path / "c")], temperature=2.0)
    keys = keys_of(make_train_loader(spec, batch_size=20, img_size=16, seed=1, num_workers=0, round_samples=60,
                                     shuffle_buffer=20), 30)
    share = sum(k.startswith("busi") for k in keys) / len(keys)
    assert abs(share - 1 / 3) < 0.04, share


def test_corrupt_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    keys = write_source(tmp_path, "busi", shards=2, per_shard=6,
                        corrupt={"busi-train0x2": "png", "busi-train1x3": "json"})
    spec = StreamSpec(paths=[str(tmp_path)])
    loader = make_eval_loader(spec, batch_size=4, img_size=32, num_workers=2)
    got = keys_of(loader)
    assert sorted(got) == sorted(set(keys) - {"busi-train0x2", "busi-train1x3"})
    counts = corrupt_counts(loader)
    assert counts["image"] == 1 and counts["json"] == 1 and counts["total"] == 2
    train = make_train_loader(spec, batch_size=4, img_size=32, seed=0, num_workers=2, round_samples=12)
    got = keys_of(train, 12)
    assert len(got) == 48 and "busi-train0x2" not in got and "busi-train1x3" not in got
    assert train.corrupt_counts()["image"] >= 2 and train.corrupt_counts()["json"] >= 2


def test_truncated_tar_is_counted_and_the_stream_goes_on(tmp_path: Path) -> None:
    keys = write_source(tmp_path, "busi", shards=3, per_shard=6, masks=False)
    shard = tmp_path / "busi-train-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    spec = StreamSpec(paths=[str(tmp_path)])
    loader = make_eval_loader(spec, batch_size=4, img_size=32, num_workers=0)
    got = set(keys_of(loader))
    assert {k for k in keys if "train1x" not in k} <= got
    assert 0 < len(got & {k for k in keys if "train1x" in k}) < 6
    assert corrupt_counts(loader)["tar"] == 1
    train = make_train_loader(spec, batch_size=4, img_size=32, seed=0, num_workers=0, round_samples=18)
    assert len(keys_of(train, 10)) == 40 and train.corrupt_counts()["tar"] >= 1


def test_stream_of_only_corrupt_data_fails_clearly(tmp_path: Path) -> None:
    write_source(tmp_path, "busi", shards=2, per_shard=3,
                 corrupt={f"busi-train{s}x{i}": "png" for s in range(2) for i in range(3)})
    spec = StreamSpec(paths=[str(tmp_path)])
    with pytest.raises(StreamError, match="no usable sample"):
        keys_of(make_eval_loader(spec, batch_size=2, img_size=16, num_workers=0))
    with pytest.raises(StreamError, match="no usable sample"):
        keys_of(make_train_loader(spec, batch_size=2, img_size=16, seed=0, num_workers=0, round_samples=6), 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "busi-train-000000.tar").write_bytes(b"")
    (empty / "busi.index.json").write_text(json.dumps({"shards": [
        {"file": "busi-train-000000.tar", "split": "train", "count": 4}]}))
    with pytest.raises(StreamError, match="yielded no sample"):
        keys_of(make_train_loader(StreamSpec([str(empty)]), batch_size=2, img_size=16, seed=0, num_workers=0), 1)


def test_split_by_consumer_mode_refuses_too_few_shards(tmp_path: Path) -> None:
    write_source(tmp_path, "busi", shards=3, per_shard=4)
    spec = StreamSpec(paths=[str(tmp_path)])
    with pytest.raises(StreamError, match=r"3 shards .* for 4 consumers \(world_size 2 x num_workers 2\)"):
        make_train_loader(spec, batch_size=2, img_size=16, seed=0, world_size=2, num_workers=2, resampled=False)
    # with enough shards each consumer reads only its own share
    seen = []
    for rank in range(3):
        loader = make_train_loader(spec, batch_size=2, img_size=16, seed=0, rank=rank, world_size=3,
                                   num_workers=0, resampled=False, round_samples=8)
        seen.append({k.split("x")[0] for k in keys_of(loader, 6)})
    assert all(len(s) == 1 for s in seen) and len(set.union(*seen)) == 3


def test_bad_index_is_named(tmp_path: Path) -> None:
    (tmp_path / "busi.index.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"busi\.index\.json: cannot read shard index"):
        discover_shards(tmp_path, "train")
    (tmp_path / "busi.index.json").write_text(json.dumps({"shards": [
        {"file": "gone.tar", "split": "train", "count": 3}]}))
    with pytest.raises(ValueError, match="gone.tar but .* does not exist"):
        discover_shards(str(tmp_path), "train")
    assert os.path.exists(tmp_path / "busi.index.json")
