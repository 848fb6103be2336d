"""Masked-image-modelling pretraining under Accelerate (engine, checkpoints, logging); schedule and EMA live in sonofm.train."""
