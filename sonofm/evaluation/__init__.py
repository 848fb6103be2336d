"""Frozen-feature evaluation: metrics, feature extraction, probes and plots."""
