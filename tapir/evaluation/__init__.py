"""Evaluation: `loop` (any predictor on TAP-Vid examples or JHMDB, per-video results, the zero-motion baseline)
and `runner` (config-driven: predictors x datasets x query modes -> files and tables)."""
