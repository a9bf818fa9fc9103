"""Data: `kubric` (MOVi-E example -> tracks), `geometry`, `photographs`, `synthetic` (built-in scenes),
`realpix` (real photographs under known motion), `pipeline` (tf.data), `streams` (training sources, prefetch),
`bad_examples` (what a source does with an example it cannot use),
`unlabeled` / `student_views` / `unlabeled_batches` (self-supervised clips), `tapvid` / `kubric_eval` / `jhmdb`
(benchmark readers), `query_sampling` and `validation`. Knows nothing of models, tracking, training or evaluation."""
