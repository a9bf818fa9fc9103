"""Training: `state` (TrainState, optimiser, schedule, the pmapped step), `task` and `tasks` (the objectives:
supervised `task_tapir` / `task_tapnet`, self-supervised `task_bootstap` with `selfsup`), `checkpointing` (restore
with fallback), `preemption` (SIGTERM / SIGINT), `reporting`, `evaluator` (periodic evaluation and summaries) and
`loop` (`train_and_evaluate`: resume, prefetch, checkpoints, fault handling)."""
