"""Where training metrics go: JSON lines always, wandb and TensorBoard on request.

JSON lines are the record of truth (plots and resumed runs read them back); wandb defaults to
offline mode so nothing leaves the machine unless the user asks for it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from sonofm.atomic_io import write_text
from sonofm.errors import UserError


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


TENSORBOARD_HINT = 'pip install "sonofm[tensorboard]" (or pip install tensorboard), or set logging.tensorboard=false'


def check_tensorboard() -> None:
    """Refuse ``logging.tensorboard=true`` when TensorBoard is not installed, saying how to install it."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise UserError(f"logging.tensorboard=true needs TensorBoard, which is not installed: {TENSORBOARD_HINT}")


class MetricsLogger:
    """Append metric rows to ``metrics.jsonl`` and mirror them to optional backends."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        enabled: bool = True,
        wandb: bool = False,
        wandb_project: str = "sonofm",
        wandb_mode: str = "offline",
        tensorboard: bool = False,
        config: dict | None = None,
        resume_step: int = 0,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        self._tb = None
        if not enabled:
            return
        if tensorboard:  # before wandb starts a run: a missing optional logger must not leave one behind
            check_tensorboard()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step > 0 and self.path.exists():
            self._truncate_after(resume_step)
        if wandb:
            import wandb as _wandb

            os.environ.setdefault("WANDB_MODE", wandb_mode)
            self._wandb = _wandb.init(
                project=wandb_project, dir=str(run_dir), config=config, mode=wandb_mode, resume="allow",
                id=Path(run_dir).resolve().name,
            )
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after the checkpoint we resume from, so the file has no repeated steps."""
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        write_text(self.path, "".join(k + "\n" for k in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` (a line cut by a crash is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
