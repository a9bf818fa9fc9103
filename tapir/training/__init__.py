"""Training: `state` (TrainState, optimiser, schedule, the pmapped step), `evaluator` (periodic evaluation and
summaries) and `loop` (`train_and_evaluate`: resume, prefetch, checkpoints, fault handling)."""
