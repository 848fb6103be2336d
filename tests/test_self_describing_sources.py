"""Sources with no taxonomy entry: built, stored with their own entry in the index, and pretrained on
from another working directory (the tree comes from the shards, not from a file next to the user).

What these prove: a DICOM folder, an image folder and a CSV under names the taxonomy has never heard
of build into shards without any repository edit; each index stores the entry its source was built
with (organ from the DICOM header when it says one, labels as the records carry them, ``unlabelled``
never ``None``); a user taxonomy file adds a region, an organ and a source and is honoured and
stored; pretraining with the hierarchy on runs from an unrelated directory over all of these (an
unlabelled archive of unknown organ included), reading every sample without one counted as corrupt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonofm.config import PretrainConfig, load_config
from sonofm.datasets.build.orchestrate import build_shards
from sonofm.datasets.shards import load_indexes
from sonofm.datasets.taxonomy import UNLABELLED, Taxonomy

REPO = Path(__file__).resolve().parents[1]
KW = {"max_side": 64, "samples_per_shard": 4, "dedup": False, "progress": False, "workers": 1,
      "split_fractions": {"train": 1.0, "val": 0.0, "test": 0.0}}


def _scan(seed: int, size: int = 72) -> np.ndarray:
    """A B-mode-like frame: speckle inside a rectangle, black screen border around it."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.uint8)
    tissue = np.clip(rng.gamma(2.0, 40.0, (size - 16, size - 16)), 0, 255).astype(np.uint8)
    img[8:-8, 8:-8] = tissue
    return img


def _folder(root: Path, n: int = 6) -> Path:
    for i in range(n):
        sub = root / "2024" / f"study{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_scan(i)).save(sub / f"img{i}.png")
    return root


def _csv(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,label,group"]
    for i in range(6):
        Image.fromarray(_scan(100 + i)).save(root / f"n{i}.png")
        rows.append(f"n{i}.png,{'benign' if i % 2 else 'malignant'},p{i // 2}")
    (root / "Nodule-Clinic.csv").write_text("\n".join(rows) + "\n")
    return root / "Nodule-Clinic.csv"


def _dicoms(root: Path) -> Path:
    from sonofm.datasets.synthetic.dicom_writer import write_us_dicom

    for i in range(4):
        write_us_dicom(root / f"s{i}.dcm", _scan(200 + i)[None], photometric="MONOCHROME2",
                       patient_id=f"PAT^{i // 2}", body_part="BREAST")
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("selfdesc")
    taxonomy = root / "my_taxonomy.yaml"
    taxonomy.write_text(
        "regions:\n  pelvis: [ovary]\n"
        "sources:\n  gyn_clinic: {organ: ovary, labels: [cyst, solid], description: 'our gynaecology clinic'}\n"
    )
    gyn = root / "gyn"
    for i in range(4):
        sub = gyn / ("cyst" if i % 2 else "solid")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_scan(300 + i)).save(sub / f"g{i}.png")
    out = root / "shards"
    build_shards(
        [
            f"dicom:{_dicoms(root / 'PACS export')}",
            f"folder:{_folder(root / 'Archive_2024')}?labels=null",
            f"csv:{_csv(root / 'csv')}",
            f"folder:{gyn}?source=gyn_clinic",
        ],
        out,
        taxonomy=taxonomy,
        **KW,
    )
    return out


def test_new_sources_build_and_store_their_entry(shards: Path) -> None:
    indexes = {i["source"]: i for i in load_indexes(shards)}
    assert set(indexes) == {"pacs_export", "archive_2024", "nodule-clinic", "gyn_clinic"}
    entry = {name: i["taxonomy"]["source"] for name, i in indexes.items()}
    # DICOM: organ mapped from BodyPartExamined, region from the built-in tree; not declared anywhere
    assert (entry["pacs_export"]["organ"], entry["pacs_export"]["region"]) == ("breast", "thorax")
    assert entry["pacs_export"]["declared"] is False
    # unlabelled archive of unknown organ: nothing invented, and "unlabelled" (never "None") in counts
    assert (entry["archive_2024"]["organ"], entry["archive_2024"]["labels"]) == (None, [])
    assert indexes["archive_2024"]["counts"]["label"] == {UNLABELLED: 6}
    assert indexes["archive_2024"]["counts"]["organ"] == {UNLABELLED: 6}
    assert "None" not in json.dumps(indexes["archive_2024"]["counts"])
    # CSV named after its stem; its labels become its vocabulary
    assert entry["nodule-clinic"]["labels"] == ["benign", "malignant"]
    # the user taxonomy file: new region and organ, declared labels, stored in the index
    gyn = indexes["gyn_clinic"]["taxonomy"]
    assert gyn["source"]["organ"] == "ovary" and gyn["source"]["region"] == "pelvis"
    assert gyn["source"]["declared"] is True and gyn["source"]["labels"] == ["cyst", "solid"]
    assert gyn["source"]["description"] == "our gynaecology clinic" and gyn["regions"] == {"pelvis": ["ovary"]}


def test_tree_from_the_shards_extends_the_builtin_one(shards: Path) -> None:
    tree = Taxonomy.from_indexes(load_indexes(shards)).tree()
    names = tree["names"]
    assert set(names["source"]) == {"pacs_export", "archive_2024", "nodule-clinic", "gyn_clinic"}
    assert "ovary" in names["organ"] and "pelvis" in names["region"]  # added by the user file, via the index
    assert "liver" not in names["organ"]  # no class for an organ no sample has
    archive = names["source"].index("archive_2024")
    assert names["organ"][tree["parents"]["source"][archive]] == UNLABELLED
    assert {"gyn_clinic/cyst", "gyn_clinic/solid", "nodule-clinic/benign", "archive_2024"} <= set(names["leaf"])


def test_user_taxonomy_is_refused_when_its_label_is_not_declared(tmp_path: Path) -> None:
    from sonofm.datasets.taxonomy import TaxonomyError

    taxonomy = tmp_path / "t.yaml"
    taxonomy.write_text("regions:\n  pelvis: [ovary]\nsources:\n  gyn: {organ: ovary, labels: [cyst]}\n")
    data = tmp_path / "gyn" / "solid"
    data.mkdir(parents=True)
    Image.fromarray(_scan(1)).save(data / "a.png")
    with pytest.raises(TaxonomyError, match=r"label 'solid' is not in its vocabulary \['cyst'\]"):
        build_shards([f"folder:{tmp_path / 'gyn'}?source=gyn"], tmp_path / "out", taxonomy=taxonomy, **KW)


def test_pretrain_from_another_directory_reads_every_sample(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sonofm.datasets.stream.loader import StreamSpec, make_eval_loader
    from sonofm.pretrain.engine import run_pretraining, taxonomy_for
    from sonofm.train.loggers import read_metrics

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no configs/ here: recipes and taxonomy must come from the package
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    overrides = {
        "run_dir": str(run), "steps": 3, "seed": 0, "data.shards": f"[{shards}]", "data.img_size": 64,
        "data.batch_size": 8, "data.num_workers": 0, "data.shuffle_buffer": 8, "decoder.dim": 32,
        "optim.warmup_steps": 1, "logging.log_every": 1, "logging.sample_every": 0, "logging.progress": False,
        "checkpoint.every": 3, "hierarchy.weight": 0.5,
    }
    cfg = load_config(PretrainConfig, "configs/pretrain/quickstart.yaml", [f"{k}={v}" for k, v in overrides.items()])
    taxonomy = taxonomy_for(cfg)
    loader = make_eval_loader(StreamSpec(paths=[str(shards)], split="train"), batch_size=8, img_size=64,
                              num_workers=0, target_fn=taxonomy.targets)
    seen = {}
    for batch in loader:
        for key, src in zip(batch["key"], batch["targets"]["source"].tolist()):
            seen[key] = src
    assert len(seen) == sum(sum(s["count"] for s in i["shards"]) for i in load_indexes(shards)) == 20
    assert loader.corrupt_counts()["total"] == 0 and min(seen.values()) >= 0  # every sample has its source class

    run_pretraining(cfg)
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert len(rows) == 3 and all(np.isfinite(r["loss_hier"]) and r["loss_hier"] > 0 for r in rows)
    saved = json.loads((run / "taxonomy_tree.json").read_text())
    assert saved["names"]["source"] == taxonomy.tree()["names"]["source"]


def test_a_header_organ_is_a_hint_the_spec_overrides(tmp_path: Path) -> None:
    """Scanner headers are often generic or wrong: BodyPartExamined fills an unknown organ, but an
    organ the spec (or a declared entry) gives wins without stopping the build."""
    from sonofm.datasets.synthetic.dicom_writer import write_us_dicom

    for i, part in enumerate(["THYROID", "BREAST"]):
        write_us_dicom(tmp_path / "d" / f"{i}.dcm", _scan(i)[None], photometric="MONOCHROME2", body_part=part)
    build_shards([f"dicom:{tmp_path / 'd'}?source=mixed", f"dicom:{tmp_path / 'd'}?source=breasts&organ=breast"],
                 tmp_path / "out", **KW)
    idx = {i["source"]: i for i in load_indexes(tmp_path / "out")}
    assert idx["mixed"]["counts"]["organ"] == {"breast": 1, "thyroid": 1}
    assert idx["mixed"]["taxonomy"]["source"]["organ"] is None  # two organs: the source's own stays unknown
    assert idx["breasts"]["counts"]["organ"] == {"breast": 2}
