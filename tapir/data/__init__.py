"""Data: `kubric` (MOVi-E example -> tracks), `geometry`, `synthetic` (built-in scenes), `pipeline` (tf.data),
`streams` (training sources, prefetch), `tapvid` / `kubric_eval` / `jhmdb` (benchmark readers),
`query_sampling` and `validation`. Knows nothing of models, tracking, training or evaluation."""
