"""Shared fixtures: the real-data location and quiet, offline defaults for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sonofm.paths import shared_data_dir  # noqa: E402

# One thread per test process: the suite runs on 2 shared cores, where oversubscribed intra-op
# threads make small models many times slower, and results stay reproducible.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data`` (or ``$SONOFM_SHARED_DATA``); skips the test when it is absent."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set SONOFM_SHARED_DATA)")
    return root
