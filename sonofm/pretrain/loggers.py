"""Moved to :mod:`sonofm.train.loggers` (the training core both loops share); this name is kept so
that existing imports (scripts, experiments) keep working."""

from sonofm.train.loggers import MetricsLogger, read_metrics

__all__ = ["MetricsLogger", "read_metrics"]
