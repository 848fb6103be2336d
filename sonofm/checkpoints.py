"""The checkpoint directory of a run, ``run_dir/checkpoints/step-N/`` plus a ``last`` pointer.

The only module that knows this layout: training writes and resumes through it, downstream code
(encoder loading, export, the quickstart, experiments) finds and reads checkpoints through it. It
sits below every stage (torch, safetensors and :mod:`sonofm.atomic_io` only), so the models layer
can locate a run's weights without importing a training loop.

A checkpoint directory is assembled under a hidden temporary name and renamed into place only
when every file is written and flushed, so a crash (even ``kill -9``) leaves either the previous
complete checkpoint or the new complete one, never a half-written one. Weights are safetensors;
optimiser and RNG states are plain tensors and numbers that load with
``torch.load(weights_only=True)``: nothing is ever unpickled.

Layout of ``step-N/``: ``model.safetensors``, optional ``ema.safetensors``, ``optimizer.pt``,
``rng.pt`` (per rank: ``rng-rank{r}.pt``), ``state.json`` (step, samples seen, extra state).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from sonofm.atomic_io import atomic_file, fsync_dir, fsync_tree, save_safetensors
from sonofm.faults import maybe_kill

CKPT_DIR = "checkpoints"
LAST = "last"
STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CKPT_DIR


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def contiguous_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors needs contiguous, non-shared CPU tensors."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and numbers (weights_only-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    state: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write ``step-N/`` atomically, repoint ``last`` and prune all but the newest ``keep_last``."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_safetensors(contiguous_state(model_state), tmp / MODEL_FILE)
    if ema_state is not None:
        save_safetensors(contiguous_state(ema_state), tmp / EMA_FILE)
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    maybe_kill("in_checkpoint", step)  # fault injection: half-written checkpoint (tests only)
    torch.save(rng_state(), tmp / "rng-rank0.pt")
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2))
    fsync_tree(tmp)
    if final.exists():  # re-saving the same step (e.g. end of a run that just checkpointed)
        shutil.rmtree(final)
    os.replace(tmp, final)  # a whole folder: atomic_file is for single files
    fsync_dir(root)
    _point_last(root, final.name)
    prune_checkpoints(root, keep_last)
    return final


def save_rank_rng(ckpt: Path, rank: int) -> None:
    """Non-zero ranks add their own RNG state to a checkpoint the main process wrote."""
    _atomic_torch_save(rng_state(), ckpt / f"rng-rank{rank}.pt")


def _point_last(root: Path, name: str) -> None:
    """Atomically point ``last`` at ``name`` (a symlink, or a text file where links are unavailable)."""
    link = root / LAST
    tmp = root / f".{LAST}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(name, tmp)
    except OSError:
        tmp.write_text(name)
    os.replace(tmp, link)  # a symlink cannot go through atomic_file, which writes regular files
    fsync_dir(root)


def prune_checkpoints(root: Path, keep_last: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[: max(0, len(steps) - max(1, keep_last))]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.tmp-*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run (``last``, else the highest ``step-N``), or None."""
    root = checkpoints_dir(run_dir)
    link = root / LAST
    if link.is_symlink() or link.is_file():
        name = os.readlink(link) if link.is_symlink() else link.read_text().strip()
        target = root / name
        if (target / STATE_FILE).is_file():
            return target
    steps = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    return steps[-1] if steps else None


def locate_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(run_dir, step_dir)`` for a run dir, its ``checkpoints/`` dir or one ``step-N`` dir.

    The same rule for "latest" as :func:`latest_checkpoint` (``last``, else the highest complete
    ``step-N``); a clear error names the path when there is no complete checkpoint.
    """
    path = Path(path)
    if path.name.startswith("step-") and (path / STATE_FILE).is_file():
        return path.parent.parent, path
    run_dir = path.parent if path.name == CKPT_DIR else path
    step = latest_checkpoint(run_dir)
    if step is None:
        raise FileNotFoundError(f"{path}: no complete checkpoint ({CKPT_DIR}/step-N/{STATE_FILE}) found")
    return run_dir, step


def older_checkpoints(ckpt: Path) -> list[Path]:
    """Complete checkpoints of the same run older than ``ckpt``, oldest first (fallbacks after damage)."""
    return sorted(p for p in ckpt.parent.glob("step-*") if p.name < ckpt.name and (p / STATE_FILE).is_file())


def fallback_hint(ckpt: Path) -> str:
    """What to do about a damaged checkpoint: resume from the previous complete one, if there is one."""
    older = older_checkpoints(ckpt)
    if older:
        return (f"delete {ckpt} to resume from the previous complete checkpoint {older[-1]} with --resume auto "
                f"(or pass --resume {older[-1]})")
    return f"delete {ckpt} and start again (there is no earlier complete checkpoint)"


def read_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ``state.json`` (step, samples seen, what it was trained with), read without
    the weights; a missing or damaged file is a ``ValueError`` naming it."""
    path = Path(ckpt) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable checkpoint state ({e})") from e
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{path}: unreadable checkpoint state (no integer 'step')")
    return state


def resolve_checkpoint(run_dir: str | os.PathLike, resume: str | None) -> Path | None:
    """``auto`` → latest of ``run_dir`` (None when the run is new); a path → that checkpoint."""
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if (path / STATE_FILE).is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"--resume {resume}: no complete checkpoint there (expected {STATE_FILE})")
    return found


def _read(path: Path, reader: Any) -> Any:
    """``reader(path)``, with any failure (a refused pickle, a corrupt file) named by its file."""
    try:
        return reader(path)
    except Exception as e:  # noqa: BLE001 - safetensors, torch and json each raise their own types
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: refused or unreadable checkpoint file ({type(e).__name__}: {first})") from e


def load_checkpoint(ckpt: Path, rank: int = 0, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely: safetensors weights, weights_only tensors, JSON state."""
    ckpt = Path(ckpt)
    device = str(map_location)
    out: dict[str, Any] = {
        "model": _read(ckpt / MODEL_FILE, lambda p: load_file(str(p), device=device)),
        "state": _read(ckpt / STATE_FILE, lambda p: json.loads(p.read_text())),
    }
    if (ckpt / EMA_FILE).is_file():
        out["ema"] = _read(ckpt / EMA_FILE, lambda p: load_file(str(p), device=device))
    if (ckpt / "optimizer.pt").is_file():
        out["optimizer"] = _read(ckpt / "optimizer.pt",
                                 lambda p: torch.load(p, map_location=map_location, weights_only=True))
    rng_file = ckpt / f"rng-rank{rank}.pt"
    if rng_file.is_file():
        out["rng"] = _read(rng_file, lambda p: torch.load(p, weights_only=True))
    return out
