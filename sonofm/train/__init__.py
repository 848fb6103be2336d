"""Training core that both loops (pretraining and finetuning) share.

- :mod:`~sonofm.train.accel`: ``make_accelerator(precision)`` (cpu=True without CUDA, fp16 only
  with Accelerate's gradient scaler), ``uses_fsdp``, ``cpu_threads``.
- :mod:`~sonofm.train.fast`: the fast path: ``plan_fast_path(FastPathConfig, device) -> FastPath``,
  ``conv_weights_channels_last``, ``compile_model``, ``compile_unavailable``, ``to_device``.
- :mod:`~sonofm.train.optim`: ``param_groups`` (decay / no-decay, layer ids), ``adamw`` (fused on request).
- :mod:`~sonofm.train.schedule`: ``scaled_lr``, ``lr_at``, ``apply_lr``.
- :mod:`~sonofm.train.guard`: ``NonFiniteGuard``, ``NonFiniteLossError``.
- :mod:`~sonofm.train.checkpointing`: ``save_training_checkpoint``, ``restore_training_state``,
  ``gather_model_state``, ``gather_optimizer_state``, ``load_optimizer_state`` (DDP and FSDP),
  through the directory format of :mod:`sonofm.checkpoints`.
- :mod:`~sonofm.train.ema`: ``ModelEMA`` (timm's ``ModelEmaV3``, model key names).
- :mod:`~sonofm.train.loggers`: ``MetricsLogger``, ``read_metrics``.
"""
