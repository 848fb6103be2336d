"""Training core that both loops (pretraining and finetuning) share: LR schedule and EMA."""
