"""Masked-image-modelling pretraining under Accelerate (engine, schedule, checkpoints, logging)."""
