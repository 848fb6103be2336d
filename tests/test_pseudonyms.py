"""Patient identifiers in file names and group columns never reach the shards in clear.

A hospital export names folders after patients and manifests carry record numbers as the group.
For sources read with the generic adapters (DICOM, folder, CSV) the build stores paths and groups
as keyed hashes: the shards' metadata, their sample keys and the index (whose report lists failed
files) hold no identifier, while equal groups stay equal (splits and group-aware CV unchanged).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonofm.datasets.build.orchestrate import build_shards
from sonofm.datasets.shards import iter_tar_samples

KW = {"max_side": 64, "samples_per_shard": 4, "dedup": False, "progress": False, "workers": 1}
SECRETS = ("DOE", "JANE", "1234567", "7654321")


def _scan(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((72, 72), np.uint8)
    img[8:-8, 8:-8] = np.clip(rng.gamma(2.0, 40.0, (56, 56)), 0, 255).astype(np.uint8)
    return img


def _archive(root: Path) -> Path:
    for i in range(4):
        d = root / "DOE^JANE_1234567" / f"visit{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_scan(i)).save(d / f"JANE_DOE_{i}.png")
    (root / "DOE^JANE_1234567" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = ["path,group"] + [f"DOE^JANE_1234567/visit{i % 2}/JANE_DOE_{i}.png,{'1234567' if i < 2 else '7654321'}"
                             for i in range(4)]
    (root / "records.csv").write_text("\n".join(rows) + "\n")
    return root


def _shards(out: Path) -> tuple[list[dict], list[dict], str]:
    samples = [s for tar in sorted(out.glob("*.tar")) for s in iter_tar_samples(tar)]
    metas = [json.loads(s["json"]) for s in samples]
    text = "\n".join(p.read_text() for p in out.glob("*.index.json"))
    return samples, metas, text


def test_paths_groups_keys_and_index_hold_no_identifier(tmp_path: Path) -> None:
    data = _archive(tmp_path / "export")
    rep = build_shards([f"folder:{data}?labels=null&source=archive", f"csv:{data / 'records.csv'}"],
                       tmp_path / "out", **KW)
    archive = rep["sources"]["archive"]
    assert archive["pseudonymised"] and archive["decode_errors"] == 1
    assert "broken.png" in json.dumps(archive["errors"])  # the caller (console) is told which file
    samples, metas, index_text = _shards(tmp_path / "out")
    assert len(samples) == 8
    for s, m in zip(samples, metas):
        blob = s["__key__"] + json.dumps(m)
        assert not any(secret in blob for secret in SECRETS), blob
        assert m["path"].startswith("file-") and m["path"].endswith(".png") and m["group"].startswith("group-")
    assert not any(secret in index_text for secret in SECRETS)
    assert "broken" not in index_text and str(data) not in index_text
    # equal groups stay equal: the CSV's two record numbers give two groups of two images each
    groups = [m["group"] for m in metas if m["source"] == "records"]
    assert sorted(groups.count(g) for g in set(groups)) == [2, 2]


def test_splits_do_not_depend_on_the_setting_and_the_key_changes_pseudonyms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _archive(tmp_path / "export")
    fr = {"split_fractions": {"train": 0.5, "val": 0.0, "test": 0.5}}
    build_shards([f"csv:{data / 'records.csv'}"], tmp_path / "a", **KW, **fr)
    build_shards([f"csv:{data / 'records.csv'}?pseudonymise=false"], tmp_path / "clear", **KW, **fr)
    monkeypatch.setenv("SONOFM_PSEUDONYM_KEY", "a secret only the hospital knows")
    build_shards([f"csv:{data / 'records.csv'}"], tmp_path / "b", **KW, **fr)
    (sa, a, _), (sc, clear, _), (_, b, _) = (_shards(tmp_path / d) for d in ("a", "clear", "b"))
    assert {m["path"] for m in clear} == {f"DOE^JANE_1234567/visit{i % 2}/JANE_DOE_{i}.png" for i in range(4)}
    assert {m["group"] for m in clear} == {"1234567", "7654321"}
    split_clear = {s["png"]: m["split"] for s, m in zip(sc, clear)}  # the same image, matched by its pixels
    split_a = {s["png"]: m["split"] for s, m in zip(sa, a)}
    assert split_a == split_clear and set(split_a.values()) == {"train", "test"}  # same splits, pseudonym or not
    assert {m["group"] for m in a}.isdisjoint({m["group"] for m in b})  # another key, other pseudonyms
    assert {m["path"] for m in a}.isdisjoint({m["path"] for m in b})
