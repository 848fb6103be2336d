"""benchmarks/gpu_throughput.py in its tiny mode: one run measures every row it promises.

The figures themselves are recorded in benchmarks/RESULTS_gpu_throughput.md; this checks that the
command runs on this machine's device (CPU here) and writes a complete, plausible JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tiny_mode_measures_both_steps_the_stream_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_throughput.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert report["device"] == device and report["tiny"] and report["img_size"] == 64
    rows = {(r["model"], r["precision"], r["channels_last"], r["compile"]): r for r in report["runs"]}
    expected_precisions = {"fp32", "bf16"} if device == "cpu" or torch.cuda.is_bf16_supported() else {"fp32"}
    assert {k[1] for k in rows} == expected_precisions
    assert {k[0] for k in rows} == {"convnextv2_atto"} and all(k[2] and not k[3] for k in rows)
    for row in rows.values():
        for kind in ("full", "plain"):
            m = row[kind]
            assert m["images_per_s"] > 0 and m["s_per_step"] > 0 and m["peak_mem_mb"] > 100, (kind, m)
        assert row["full_vs_plain"] == row["full"]["images_per_s"] / row["plain"]["images_per_s"]
    (wait,) = report["data_wait"]
    assert 0.0 <= wait["data_wait_share"] < 1.0 and wait["images_per_s"] > 0
    assert "| model | precision | channels_last | compile |" in proc.stdout and "data wait share" in proc.stdout
