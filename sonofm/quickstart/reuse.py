"""Re-running quickstart with the same ``out`` reuses finished results: a stamp of each result's inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sonofm.atomic_io import write_json


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (a stamp that does not match)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def reuse(folder: Path, report_name: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict:
    """``folder/report_name`` when ``folder/stamp.json`` equals ``key`` (same inputs), else ``compute()``."""
    stamp, report = folder / "stamp.json", folder / report_name
    key = json.loads(json.dumps(key, default=str))
    if read_json(stamp) == key and report.is_file():
        data = read_json(report)
        if isinstance(data, dict):
            print(f"  reusing {report} (same encoder weights and settings)")
            return data
    stamp.unlink(missing_ok=True)
    data = compute()
    write_json(stamp, key)
    return data


def weights_id(spec: str) -> dict[str, Any]:
    """What identifies an encoder's weights: the spec, plus the latest checkpoint's name and mtime, and the
    input normalisation downstream models apply (results made before it existed are not reused)."""
    from sonofm.models.input_norm import INPUT_MEAN, INPUT_STD

    if spec.startswith("random:"):
        return {"spec": spec, "input_norm": [INPUT_MEAN, INPUT_STD]}
    from sonofm.models.encoder_spec import is_published, weights_cached

    if is_published(spec):  # the weights file in the Hugging Face cache (its snapshot names the revision)
        file = weights_cached(spec)
        return {"spec": spec, "file": str(file.resolve()) if file else None,
                "mtime": file.stat().st_mtime_ns if file else None}
    from sonofm.checkpoints import MODEL_FILE, latest_checkpoint

    ckpt = latest_checkpoint(spec)
    st = (ckpt / MODEL_FILE).stat() if ckpt is not None else None
    return {"spec": spec, "checkpoint": ckpt.name if ckpt else None, "mtime": st.st_mtime_ns if st else None,
            "input_norm": [INPUT_MEAN, INPUT_STD]}
