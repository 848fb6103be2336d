"""benchmarks/fmuia.py in its tiny mode: the trivial predictor and the smp FPN baseline run end to end
(root made from ../shared/data + synthetic, predictions through the writer, ``sonofm score``), and the
memory check's repeated root predicts every repeated row.

The figures themselves are recorded in benchmarks/RESULTS_fmuia.md; the sonofm finetuning stages are
the README's commands, run end to end by tests/test_fmuia_path.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "fmuia.py"


def _module():
    spec = importlib.util.spec_from_file_location("_bench_fmuia", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_trivial_and_smp_baseline_score_all_nine(tmp_path: Path) -> None:
    work = tmp_path / "work"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--work", str(work), "--only", "root,trivial,smp_fpn",
                           "--smp-budget", "1", "--sources", "busi,synthetic"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads((work / "results.json").read_text())
    kinds = {t["kind"] for t in results["root"]["tasks"].values()}
    assert {"segmentation", "detection", "keypoints"} <= kinds  # classification too where ../shared/data has BUSI
    for name in ("trivial", "smp_fpn"):
        avg = results[name]["averages"]
        assert avg["seg_dice"] is not None and 0.0 <= avg["seg_dice"] <= 1.0
        assert 0.0 <= avg["det_iou"] <= 1.0 and avg["reg_mre"] > 0 and avg["seg_hd"] >= 0
        if "classification" in kinds:
            assert 0.0 <= avg["cls_accuracy"] <= 1.0
        assert results[name]["score_command"].startswith("sonofm score ")
    # the trivial predictor's boxes are the mean training box: positive IoU on lesions of similar place
    assert results["trivial"]["averages"]["det_iou"] > 0
    assert results["smp_fpn"]["steps"] >= 1 and results["smp_fpn"]["train_wall_s"] >= 1
    assert "| seg Dice |" in proc.stdout and "| trivial | smp_fpn |" in proc.stdout

    # the memory check's larger root: every row repeated, over real files the adapter reads
    bench = _module()
    from sonofm.datasets.sources.fmuia import read_root
    from sonofm.datasets.sources.specs import make_adapter, parse_source_arg

    big = tmp_path / "big"
    n = bench.repeated_root(work / "root" / "val", big, 3)
    assert n == 3 * len(read_root(work / "root" / "val", labels=False).rows) == len(read_root(big, labels=False).rows)
    adapter = make_adapter(parse_source_arg(f"fmuia:{big}"))
    loaded = sum(1 for item in adapter.list_items() for _ in adapter.load(item))
    assert loaded == n and not getattr(adapter, "notes", [])
    assert not math.isnan(results["trivial"]["averages"]["seg_hd"])
