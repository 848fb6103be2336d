"""Fault injection for crash-safety tests: ``SONOFM_FAULT=<point>:<n>`` kills the process there.

Crash safety can only be shown by crashing: the reliability tests set this variable in a child
process to ``kill -9`` it at a precise point (after optimiser step ``n``, or in the middle of the
``n``-th checkpoint write) and then check that resuming loses nothing. Unset, it costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SONOFM_FAULT"
POINTS = ("after_step", "in_checkpoint", "in_shard")  # in_shard: before the n-th finished shard is renamed


def _spec() -> tuple[str, int] | None:
    raw = os.environ.get(ENV)
    if not raw:
        return None
    point, _, n = raw.partition(":")
    if point not in POINTS or not n.lstrip("-").isdigit():
        raise ValueError(f"{ENV}={raw!r}: expected <point>:<n> with point in {POINTS}")
    return point, int(n)


def maybe_kill(point: str, n: int) -> None:
    """SIGKILL this process if ``SONOFM_FAULT`` names ``point`` and ``n``."""
    spec = _spec()
    if spec is not None and spec == (point, n):
        os.kill(os.getpid(), signal.SIGKILL)
