"""Models as Haiku modules: `tapir` (composition) over `resnet`, `cost_volume`, `refinement`, `causal`,
`extra_convs`, `chunking`; `tapnet` over `tsm_resnet`. They import only `tapir.conventions`."""
