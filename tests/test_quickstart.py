"""``sonofm quickstart --small``: the whole pipeline end to end, and every artefact it promises.

One reduced run on the synthetic corpus (in process), then a re-run through the CLI in a subprocess
that must reuse every finished stage; the ``--data`` variant on a small real subset (BUSI images in
the Kaggle layout + a few CCA recordings, linked into tmp_path) needs the shared data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sonofm.checkpoints import latest_checkpoint
from sonofm.quickstart import SPLITS, find_datasets, known_layouts, run_quickstart

REPO = Path(__file__).resolve().parents[1]


def _nonempty(path: Path) -> Path:
    assert path.is_file(), f"missing: {path}"
    assert path.stat().st_size > 0, f"empty: {path}"
    return path


def _png(path: Path) -> None:
    with Image.open(_nonempty(path)) as im:
        im.verify()


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("pretrained", "random", "encoder"):
            rows[cells[0]] = cells[1:]
    return rows


def _check_artifacts(summary: dict, out: Path, probe_tasks: set[str], seg_tasks: set[str]) -> None:
    assert list(out.glob("shards/**/*.index.json")), "no shard index"
    run = Path(summary["run_dir"])
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    _nonempty(ckpt / "model.safetensors")
    _png(Path(summary["paths"]["reconstruction grid"]))
    assert Path(summary["paths"]["reconstruction grid"]).parent == run / "samples"
    _png(run / "plots" / "loss.png")
    _png(out / "comparison.png")

    assert set(summary["probe"]) == probe_tasks
    for task, by_enc in summary["probe"].items():
        assert set(by_enc) == {"pretrained", "random"}
        for enc, path in by_enc.items():
            rep = json.loads(_nonempty(Path(path)).read_text())
            assert set(rep["methods"]) == {"linear", "knn"}, (task, enc)
            assert rep["encoder"]["kind"] == {"pretrained": "pretrain", "random": "random"}[enc], (task, enc)
            for method in ("linear", "knn"):
                _png(Path(path).parent / f"confusion_{method}.png")
    assert set(summary["seg"]) == seg_tasks
    for task, by_enc in summary["seg"].items():
        assert set(by_enc) == {"pretrained", "random"}
        for enc, path in by_enc.items():
            rep = json.loads(_nonempty(Path(path)).read_text())
            assert 0.0 <= rep["final"]["dice"] <= 1.0, (task, enc)
            assert rep["final"]["n"] > 0
            overlays = sorted((Path(path).parent / "overlays").glob("*.png"))
            assert overlays, f"no overlays for {task}/{enc}"
            _png(overlays[0])

    export = Path(summary["paths"]["exported backbone"])
    for name in ("config.json", "model.safetensors", "README.md"):
        _nonempty(export / name)
    card = (export / "README.md").read_text()
    assert "pretrained" in card and "random" in card, "the model card shows the results table"
    assert json.loads((export / "config.json").read_text())["architecture"] == "convnextv2_atto"

    rows = _table_rows(summary["table"])
    assert set(rows) == {"encoder", "pretrained", "random"}
    n_cols = 3 * len(probe_tasks) + 2 * len(seg_tasks)
    assert len(rows["encoder"]) == len(rows["pretrained"]) == len(rows["random"]) == n_cols
    assert "TRAIN split" in summary["footnote"] and "TEST split" in summary["footnote"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary = run_quickstart(out=out, small=True)
    return summary, out, buf.getvalue()


def test_small_run_produces_every_artifact(small_run: tuple[dict, Path, str]) -> None:
    summary, out, printed = small_run
    _check_artifacts(summary, out, {"synthetic"}, {"synthetic lesion"})
    header = _table_rows(summary["table"])["encoder"]
    assert header == ["probe bal. acc", "probe AUROC", "kNN bal. acc", "seg Dice", "seg HD95 (mm)"]
    assert summary["table"] in printed, "the table is printed"
    for stage in range(1, 8):
        assert f"[quickstart {stage}/7]" in printed
    assert "(elapsed " in printed
    for name in ("reconstruction grid", "loss curve", "pretrained vs random", "exported backbone"):
        assert f"  {name}: " in printed
    assert json.loads((out / "summary.json").read_text())["table"] == summary["table"]
    results = json.loads((out / "results.json").read_text())["results"]
    assert {r["task"] for r in results} == {"classification", "segmentation"}
    assert {r["split"] for r in results} == {"test"} and all(r["dataset"] != "—" for r in results)
    assert {r["encoder"] for r in results} == {"pretrained", "random"}
    card = (out / "export" / "README.md").read_text()
    assert "| segmentation | synthetic lesion | test | UPerNet finetuned" in card


def test_rerun_through_cli_reuses_finished_stages(small_run: tuple[dict, Path, str]) -> None:
    summary, out, _ = small_run
    seg_report = Path(summary["seg"]["synthetic lesion"]["pretrained"])
    before = seg_report.stat().st_mtime_ns
    ckpt = latest_checkpoint(out / "pretrain")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "sonofm", "quickstart", "--small", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "keeping the complete corpus" in text
    assert "up to date" in text  # shard builder skipped every source
    assert "one seed: pretrained ahead of random on" in text and "--seeds 3" in text
    assert "run already complete" in text  # pretraining resumed at its last step
    assert text.count("reusing ") == 4  # 2 probes + 2 segmentations
    assert seg_report.stat().st_mtime_ns == before
    assert latest_checkpoint(out / "pretrain") == ckpt
    rows = _table_rows(text)
    assert set(rows) == {"encoder", "pretrained", "random"}
    assert rows["pretrained"] == _table_rows(summary["table"])["pretrained"]


def test_more_seeds_reuse_seed_0_and_report_the_spread(small_run: tuple[dict, Path, str]) -> None:
    """``seeds=2`` in a one-seed run's folder: seed 0 is reused as it is, seed 1 is trained under ``seed-1``,
    every cell becomes mean ± sd over the two seeds and the conclusion is about the seed spread."""
    import contextlib
    import io
    import statistics

    from sonofm.quickstart import report

    summary, out, _ = small_run
    seg0 = Path(summary["seg"]["synthetic lesion"]["pretrained"])
    before = seg0.stat().st_mtime_ns
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        two = run_quickstart(out=out, small=True, seeds=2)
    printed = buf.getvalue()
    assert seg0.stat().st_mtime_ns == before, "seed 0's results are reused"
    assert printed.count("reusing ") == 4  # seed 0: 2 probes + 2 segmentations; seed 1 computes its own
    seed1 = out / "seed-1"
    assert latest_checkpoint(seed1 / "pretrain") is not None
    for enc in ("pretrained", "random"):
        _nonempty(seed1 / "probe" / "synthetic" / enc / "probe.json")
        _nonempty(seed1 / "seg" / "synthetic_lesion" / enc / "report.json")
    assert [p["seed"] for p in two["per_seed"]] == [0, 1]
    s0, s1 = (p["scores"] for p in two["per_seed"])
    assert s0["synthetic lesion dice"]["pretrained"] == pytest.approx(json.loads(seg0.read_text())["final"]["dice"])
    assert s0 != s1, "a seed changes the pretraining, the random init and the finetuning"

    rows = _table_rows(two["table"])
    for enc in ("pretrained", "random"):
        assert all("±" in cell for cell in rows[enc]), rows[enc]
        dice = [p["scores"]["synthetic lesion dice"][enc] for p in two["per_seed"]]
        assert rows[enc][3] == f"{statistics.mean(dice):.3f} ± {statistics.stdev(dice):.3f}"
    assert "mean ± sample sd over 2 seeds" in two["footnote"]
    assert two["conclusion"].startswith("over 2 seeds, pretrained beats random beyond the seed spread")
    assert two["conclusion"] in printed and two["table"] in printed
    assert set(two["pretrained_beats_random"]) == set(s0)
    for key, gaps in report.gaps([report.scores(*_reports(out, k)) for k in (0, 1)]).items():
        assert two["pretrained_beats_random"][key.key] == report.clear_gap(gaps)
    results = json.loads((out / "results.json").read_text())["results"]
    own = [r for r in results if r["encoder"] in ("pretrained", "random")]  # the exported backbone: seed 0
    spread = [r for r in results if r["encoder"] in ("pretrained, 2 seeds", "random, 2 seeds")]
    assert len(own) == len(spread) == len(results) / 2
    assert all("seeds" not in r["protocol"] for r in own)
    assert all("mean ± sd over 2 seeds" in r["protocol"] and r["std"] is not None for r in spread)
    dice = next(r for r in own if r["encoder"] == "pretrained" and r["metric"] == "Dice")
    assert dice["mean"] == pytest.approx(s0["synthetic lesion dice"]["pretrained"])
    card = (out / "export" / "README.md").read_text()
    assert "pretrained, 2 seeds" in card
    assert str(seed1) in printed, "the other seeds' folders are named"
    _png(out / "comparison.png")


def _reports(out: Path, seed: int) -> tuple[dict, dict]:
    """The probe and segmentation reports one seed of the small run wrote, as the report functions take them."""
    root = out if seed == 0 else out / f"seed-{seed}"
    probes = {"synthetic": {e: json.loads((root / "probe" / "synthetic" / e / "probe.json").read_text())
                            for e in ("pretrained", "random")}}
    segs = {"synthetic lesion": {}}
    for e in ("pretrained", "random"):
        rep = json.loads((root / "seg" / "synthetic_lesion" / e / "report.json").read_text())
        segs["synthetic lesion"][e] = {**rep, "hd95_unit": "mm"}
    return probes, segs


def test_a_gap_is_clear_only_when_every_seed_agrees_and_it_exceeds_twice_its_spread() -> None:
    from sonofm.quickstart.report import Score, clear_gap, conclusion

    assert clear_gap([0.10, 0.12, 0.11])
    assert not clear_gap([0.12]), "one seed cannot tell"
    assert not clear_gap([0.20, 0.15, -0.01]), "one seed behind"
    assert not clear_gap([0.02, 0.20, 0.05]), "mean 0.09 < 2 sd (0.19)"
    dice = Score("t", "seg", "dice", "seg Dice")
    hd = Score("t", "seg", "hd95", "seg HD95 (mm)", higher_is_better=False, digits=1)
    seeds = [{dice: {"pretrained": 0.50, "random": 0.35}, hd: {"pretrained": 20.0, "random": 18.0}},
             {dice: {"pretrained": 0.48, "random": 0.36}, hd: {"pretrained": 15.0, "random": 30.0}},
             {dice: {"pretrained": 0.49, "random": 0.34}, hd: {"pretrained": 17.0, "random": 33.0}}]
    text, clear = conclusion(seeds)
    assert clear == {"t dice": True, "t hd95": False}  # HD95: lower is better, and seed 0 is behind
    assert "on 1 of 2 scores: seg Dice +0.140 ± 0.017" in text
    assert "not beyond the spread" in text and "seg HD95 (mm) +9.7 ± 10.1" in text
    text, ahead = conclusion(seeds[:1])
    assert ahead == {"t dice": True, "t hd95": False}
    assert text.startswith("one seed: pretrained ahead of random on 1 of 2 scores") and "--seeds 3" in text


def test_seeds_must_be_a_whole_number_of_at_least_one(tmp_path: Path) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="seeds must be a whole number >= 1"):
            run_quickstart(out=tmp_path / "out", small=True, seeds=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists(), "refused before any work"
    proc = subprocess.run([sys.executable, "-m", "sonofm", "quickstart", "--seeds", "0", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "expected a whole number >= 1, got '0'" in proc.stderr, proc.stderr


def test_other_recipe_in_same_folder_is_refused(small_run: tuple[dict, Path, str]) -> None:
    _, out, _ = small_run
    with pytest.raises(ValueError, match="another recipe"):
        run_quickstart(out=out, small=False)  # fails before generating anything
    assert json.loads((out / ".quickstart" / "corpus.json").read_text())["n"] == 120


def test_data_without_known_layout_lists_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as err:
        find_datasets(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg
    known = known_layouts()
    assert list(known) == ["busi", "cca", "pocus", "hc18"]
    for name, facts in known.items():
        assert facts.display in msg and name in msg and facts.layout in msg
    with pytest.raises(FileNotFoundError, match="not a folder"):
        run_quickstart(data=tmp_path / "missing", out=tmp_path / "out", small=True)


def test_known_layouts_are_the_taxonomy_facts_of_sources_with_an_adapter() -> None:
    """Discovery reads display name, layout, unit of splitting and tasks from ``configs/taxonomy.yaml``."""
    from sonofm.datasets.sources.adapters import ADAPTERS
    from sonofm.datasets.taxonomy import source_facts
    from sonofm.quickstart.discovery import tasks_of

    for name, facts in known_layouts().items():
        assert name in ADAPTERS, f"{name}: a layout in the taxonomy needs an adapter of the same name"
        assert facts == source_facts(name) and facts.group and facts.tasks
    busi = tasks_of("busi", Path("shards/busi"))
    assert [(t.name, t.kind, t.group_desc) for t in busi] == [("BUSI", "probe", "image"), ("BUSI", "seg", "image")]
    assert [(t.name, t.kind, t.group_desc) for t in tasks_of("cca", Path("x"))] == [("CCA", "seg", "recording")]


def test_a_split_without_samples_gives_none(small_run: tuple[dict, Path, str]) -> None:
    """The shard indexes say a split is empty: no samples, and no error to recognise by its text."""
    from sonofm.quickstart.stages import _split

    _, out, _ = small_run
    assert _split(out / "shards", "no_such_split") == []
    assert _split(out / "shards", "test")


# ----------------------------------------------------------------------------------- --data (real)


def _link(src: Path, dst: Path) -> None:
    """Copied, not linked: adapters refuse links that leave the source folder (they read the linked file)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _real_subset(shared: Path, root: Path) -> Path:
    """~40 BUSI images with masks (Kaggle layout) and CCA frames of recordings in both train and test."""
    from sonofm.datasets.build.splits import assign_split

    busi_src = shared / "busi" / "Dataset_BUSI_with_GT"
    busi_dst = root / "busi" / "Dataset_BUSI_with_GT"
    for cls, n in (("benign", 14), ("malignant", 13), ("normal", 13)):
        images = sorted(p for p in (busi_src / cls).glob("*.png") if "_mask" not in p.name)[:n]
        for img in images:
            _link(img, busi_dst / cls / img.name)
            for mask in (busi_src / cls).glob(f"{img.stem}_mask*.png"):
                _link(mask, busi_dst / cls / mask.name)

    cca_src = shared / "cca" / "Common Carotid Artery Ultrasound Images"
    cca_dst = root / "cca" / "Common Carotid Artery Ultrasound Images"
    frames: dict[str, list[Path]] = {}
    for p in sorted((cca_src / "US images").glob("*.png")):
        if (cca_src / "Expert mask images" / p.name).is_file():
            frames.setdefault(p.name.split("_slice_")[0], []).append(p)
    by_split: dict[str, list[str]] = {}
    for rec in sorted(frames):
        by_split.setdefault(assign_split(f"cca/{rec}", SPLITS), []).append(rec)
    chosen = by_split["train"][:2] + by_split["test"][:1]
    assert len(chosen) == 3, by_split
    for rec in chosen:
        for p in frames[rec][::12][:5]:  # spread out: consecutive frames are near-duplicates
            _link(p, cca_dst / "US images" / p.name)
            _link(cca_src / "Expert mask images" / p.name, cca_dst / "Expert mask images" / p.name)
    return root


@pytest.mark.realdata
def test_data_variant_on_a_small_real_subset(shared_data: Path, tmp_path: Path) -> None:
    data = _real_subset(shared_data, tmp_path / "data")
    found = find_datasets(data)
    assert set(found) == {"busi", "cca"}
    summary = run_quickstart(data=data, out=tmp_path / "out", small=True)
    _check_artifacts(summary, tmp_path / "out", {"BUSI"}, {"BUSI", "CCA"})
    header = _table_rows(summary["table"])["encoder"]
    assert header[:3] == ["BUSI probe bal. acc", "BUSI probe AUROC", "BUSI kNN bal. acc"]
    assert "CCA seg Dice" in header
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == ["busi", "cca"]
    assert "BUSI" in summary["data"] and "CCA" in summary["data"]
