"""The three real collections in ../shared/data go through their adapters unchanged."""

from __future__ import annotations

import pickle
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonofm.datasets.sources.adapters import AdapterError, get_adapter
from sonofm.datasets.sources.records import Record
from sonofm.datasets.taxonomy import Taxonomy

pytestmark = pytest.mark.realdata


def test_busi_counts_labels_and_merged_masks(shared_data: Path) -> None:
    adapter = get_adapter("busi", shared_data / "busi")
    items = adapter.items()
    # Both accepted roots give the same listing.
    assert [i.path for i in get_adapter("busi", shared_data / "busi" / "Dataset_BUSI_with_GT").items()] == [
        i.path for i in items
    ]
    pickle.loads(pickle.dumps(items))  # items travel to worker processes
    records = [r for item in items for r in adapter.load(item)]
    assert len(records) == 780
    assert Counter(r.meta["label"] for r in records) == {"benign": 437, "malignant": 210, "normal": 133}
    assert len({r.meta["group"] for r in records}) == 780  # no patient ids: one group per image
    assert all(
        isinstance(r, Record) and r.mask is not None and set(np.unique(r.mask)) <= {0, 1} for r in records
    )
    assert sum(r.image.ndim == 3 for r in records) == 16  # the RGB images with coloured marks stay RGB

    multi = [(item, rec) for item, rec in zip(items, records) if len(item.masks) > 1]
    assert len(multi) >= 10
    root = adapter.data_dir
    for item, rec in multi:
        files = [np.array(Image.open(root / m)) > 0 for m in item.masks]
        assert any(m.name.endswith("_mask_1.png") for m in map(Path, item.masks))
        assert np.array_equal(rec.mask, np.logical_or.reduce(files).astype(np.uint8)), item.path
        # The merge really adds lesions: the OR differs from the first file alone for some images.
    assert any(
        not np.array_equal(rec.mask, (np.array(Image.open(root / item.masks[0])) > 0).astype(np.uint8))
        for item, rec in multi
    )
    taxonomy = Taxonomy.load()
    assert all(taxonomy.annotate(r.meta)["organ"] == "breast" for r in records[:5])


def test_busi_rejects_wrong_root(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="not the BUSI layout"):
        get_adapter("busi", tmp_path)


def test_cca_counts_groups_and_masks(shared_data: Path) -> None:
    adapter = get_adapter("cca", shared_data / "cca")
    records = list(adapter)
    assert len(records) == 543
    groups = Counter(r.meta["group"] for r in records)
    assert len(groups) == 15
    assert all(r.meta["path"].split("/")[-1].startswith(r.meta["group"] + "_slice_") for r in records)
    assert all(r.meta["label"] is None for r in records)
    assert all(set(np.unique(r.mask)) <= {0, 1} and r.mask.any() for r in records)
    assert adapter.report() == {"images_without_mask": 9, "masks_without_image": 41}


def test_pocus_every_format_groups_and_labels(shared_data: Path) -> None:
    root = shared_data / "pocus"
    present = {p.suffix.lower() for p in root.rglob("*") if p.is_file() and p.suffix.lower() != ".csv"}
    adapter = get_adapter("pocus", root, frames_per_video=2, decode_limit=2)
    items = adapter.items()
    decoded: set[str] = set()
    groups: dict[str, set[str]] = defaultdict(set)
    frames_per_file: Counter[str] = Counter()
    for item in items:
        for rec in adapter.load(item):
            decoded.add(Path(item.path).suffix.lower())
            groups[item.path].add(rec.meta["group"])
            frames_per_file[item.path] += 1
            assert rec.image.dtype == np.uint8 and rec.mask is None
    assert decoded == present
    assert {".gif", ".mp4", ".avi", ".mov", ".mpeg"} <= present
    assert len(frames_per_file) == len(items) == 163  # every file gave at least one record
    assert all(len(g) == 1 for g in groups.values())
    assert len({next(iter(g)) for g in groups.values()}) == len(items)  # one group per source file

    by_path = {i.path: i.meta for i in items}
    uncertain = [p for p in by_path if "/label_uncertain/" in p]
    assert uncertain and all(by_path[p]["label"] is None for p in uncertain)
    assert all(m["label"] is not None for p, m in by_path.items() if p not in uncertain)
    assert by_path["pocus_videos/convex/pneu-radiopaeda.mp4"]["label"] == "pneumonia"
    assert by_path["pocus_videos/linear/Vir_prospective_file1.mp4"]["probe"] == "linear"
    assert all(m["license"] for m in by_path.values())  # every file matched dataset_metadata.csv
    assert Counter(m["label"] for m in by_path.values()) == {
        "healthy": 69,
        "pneumonia": 51,
        "covid": 37,
        "viral": 5,
        None: 1,
    }
    taxonomy = Taxonomy.load()
    assert {taxonomy.annotate({**m, "source": "pocus"})["organ"] for m in by_path.values()} == {"lung"}


def test_pocus_video_frames_sampled_evenly(shared_data: Path) -> None:
    root = shared_data / "pocus"
    adapter = get_adapter("pocus", root, frames_per_video=8, images=False)
    item = next(i for i in adapter.items() if i.path.endswith("Reg_pat1Image_132943.mpeg"))  # 280 frames
    recs = list(adapter.load(item))
    frames = [r.meta["frame"] for r in recs]
    assert 6 <= len(recs) <= 8 and frames == sorted(frames) and frames[-1] > 200
    assert len({r.meta["group"] for r in recs}) == 1
