"""The model card's licences and data counts: read from the taxonomy's source facts and from the
shard indexes through their owner, never from tables of their own."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sonofm.datasets.taxonomy import Taxonomy
from sonofm.model_card import (
    UNKNOWN_LICENCE,
    CardInfo,
    DataSummary,
    model_licence,
    read_data_summary,
    render_card,
    source_licence,
)
from sonofm.paths import packaged_configs


def _card(sources: list[str]) -> str:
    data = DataSummary(sources=[{"source": s, "total": 3, "split": {"train": 3}, "organ": {}, "label": {},
                                 "taxonomy": None} for s in sources])
    recipe = {"masking.ratio": 0.6, "decoder.kind": "fcmae", "target.kind": "pixel", "hierarchy.weight": 0.0}
    info = CardInfo(architecture="convnextv2_atto", in_chans=1, img_size=64, num_features=320,
                    feature_channels=[40, 80, 160, 320], num_params=3_400_000, mean=[0.5], std=[0.25], step=1,
                    images_seen=4, weights="model", ema_decay=0.0, run_name="run", recipe=recipe, data=data,
                    licence=model_licence(sources))
    return render_card(info)


def test_licence_on_the_card_is_the_one_in_the_taxonomy_file() -> None:
    raw = yaml.safe_load((packaged_configs() / "taxonomy.yaml").read_text(encoding="utf-8"))
    for name in ("busi", "cca", "pocus", "synth_liver_convex_a"):
        written = raw["sources"][name]["licence"]
        assert tuple(source_licence(name)) == (written["text"], written["id"], written["kind"])
        assert f"- **{name}**: {written['text']}." in _card([name])
    assert model_licence(["busi"]) == "cc0-1.0" and model_licence(["busi", "cca"]) == "cc-by-4.0"
    assert model_licence(["synth_breast_linear_a", "busi"]) == "apache-2.0"


def test_a_source_without_facts_has_no_licence() -> None:
    for name in ("my_scans", "hc18"):  # a user's source; a built-in one whose terms sonofm does not record
        assert source_licence(name) == UNKNOWN_LICENCE
        assert f"- **{name}**: {UNKNOWN_LICENCE.text}." in _card([name])
    assert Taxonomy.load().source_facts("my_scans") is None
    assert model_licence(["my_scans", "busi"]) == "other"
    assert model_licence(["synthesis_of_mine"]) == "other"  # no name rule: only the taxonomy's facts count


def test_noncommercial_caveat_names_the_sources_by_their_facts() -> None:
    card = _card(["pocus", "busi"])
    assert "license: cc-by-nc-4.0" in card
    assert "> **Non-commercial caveat**: POCUS is among the training sources" in card
    assert "Non-commercial caveat" not in _card(["busi", "cca"])


def _index(folder: Path, source: str, counts: dict[str, int]) -> None:
    shards = [{"file": f"{source}-{s}-000000.tar", "split": s, "count": n} for s, n in counts.items()]
    for s in counts:
        (folder / f"{source}-{s}-000000.tar").write_bytes(b"")
    (folder / f"{source}.index.json").write_text(json.dumps(
        {"source": source, "shards": shards, "counts": {"split": counts, "organ": {"None": 2}, "label": {}}}))


def test_data_summary_reads_indexes_through_their_owner(tmp_path: Path) -> None:
    good, bad, empty = tmp_path / "good", tmp_path / "bad", tmp_path / "empty"
    for d in (good, bad, empty):
        d.mkdir()
    _index(good, "busi", {"train": 2, "test": 1})
    (bad / "x.index.json").write_text("{not json")
    summary = read_data_summary([str(good), str(bad), str(empty), str(tmp_path / "gone")], tmp_path)
    assert summary.names == ["busi"]
    src = summary.sources[0]
    assert (src["total"], src["split"], src["organ"], src["folder"]) == (3, {"train": 2, "test": 1},
                                                                          {"unlabelled": 2}, str(good))
    notes = "\n".join(summary.notes)
    assert "x.index.json" in notes and "not listed" in notes
    assert f"`{empty}`: no shard index in {empty}" in notes
    assert f"`{tmp_path / 'gone'}`: shard index not found" in notes
