"""``experiments/shared_study.py`` through the library: its probe scheme (each test fold predicted by a
probe trained on every other labelled sample) and its shard key reading, on small hand-made inputs."""

from __future__ import annotations

import importlib.util
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sonofm.finetune.data import Sample

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "shared_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("shared_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["shared_study"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("shared_study", None)


def test_probe_test_split_predicts_every_test_sample_once_from_other_groups(study) -> None:
    rng = np.random.default_rng(0)
    classes = ("a", "b")
    samples, feats = [], []
    for i in range(60):
        label = classes[i % 2]
        split = "test" if i < 30 else "train"
        meta = {"label": label if i % 7 else None, "group": f"g{i // 3}", "split": split, "key": f"k{i}"}
        samples.append(Sample(np.zeros((4, 4), np.uint8), None, meta))
        feats.append(rng.normal(size=8) + (6.0 if label == "b" else 0.0))
    rep = study.probe_test_split(np.array(feats, np.float32), samples, classes, folds=3, seed=0)
    labelled = [s for s in samples if s.meta["label"] is not None]
    assert rep["n_labelled"] == len(labelled) and rep["n_dropped"] == 60 - len(labelled)
    assert rep["n_test"] == sum(s.meta["split"] == "test" for s in labelled) and rep["n_test_groups"] == 10
    for method in ("linear", "knn"):
        res = rep["methods"][method]
        assert len(res["per_fold"]) == 3
        assert res["summary"]["balanced_accuracy"]["mean"] > 0.9  # separable classes
    assert not any(name.startswith("test_") for name in vars(study))  # nothing for pytest to collect


def test_shard_keys_are_read_by_the_shard_reader(study, tmp_path: Path) -> None:
    path = tmp_path / "s-train-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("a.png", "a.json", "b.png", "b.mask.png"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    assert study._shard_keys(path) == {"a", "b"}
