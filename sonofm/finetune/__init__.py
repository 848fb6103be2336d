"""Supervised finetuning: UPerNet segmentation, prompt-conditioned model, universal training."""
