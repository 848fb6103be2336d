"""The model card's results: one readable row per number (task, dataset, split, protocol, encoder,
metric, mean ± std, n) from sonofm's records, from a ``probe.json`` as ``sonofm probe`` writes it, or
from a hand-written nested file."""

from __future__ import annotations

from sonofm.evaluation.probe import cross_validate
from sonofm.model_card import RESULTS_FORMAT, result_record, result_records, results_table


def test_records_render_one_row_each() -> None:
    data = {"format": RESULTS_FORMAT, "results": [
        result_record("segmentation", "cca", "test", "UPerNet finetuned 500 steps", "runs/pre", "dice", 0.91234, 64),
        result_record("classification", "busi", "test", "linear probe, 5-fold CV by group", "runs/pre",
                      "balanced_accuracy", {"mean": 0.8123, "std": 0.0211}, 120),
    ]}
    lines = results_table(data).splitlines()
    assert lines[0] == "| task | dataset | split | protocol | encoder | metric | mean ± std | n |"
    assert lines[2] == "| segmentation | cca | test | UPerNet finetuned 500 steps | runs/pre | Dice | 0.912 | 64 |"
    assert lines[3] == ("| classification | busi | test | linear probe, 5-fold CV by group | runs/pre | "
                        "balanced accuracy | 0.812 ± 0.021 | 120 |")


def test_a_probe_json_names_its_data_split_and_folds() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 4)) + y[:, None]
    report = cross_validate(x, y, [f"p{i // 3}" for i in range(60)], 2, folds=4, methods=("linear",))
    report.update(encoder={"spec": "runs/pre"}, data={"datasets": ["busi"], "split": "test"})
    rows = [r for r in result_records(report) if r["metric"] == "balanced accuracy"]
    assert len(rows) == 1
    r = rows[0]
    assert (r["task"], r["dataset"], r["split"], r["encoder"]) == ("classification", "busi", "test", "runs/pre")
    assert r["protocol"] == "linear probe, frozen features, 4-fold CV by group" and r["n"] == 60
    assert r["std"] is not None
