"""The benchmark's suites (`scripts/benchmark.py --suite NAME`), and `dry_run`: any case at tiny sizes.

Each case is a dict: `kind` (offline, online, train, train_memory, gradient, train_cpu_preset, render_cpu_batch,
selfsup_cpu_preset, teacher_cpu_preset, inference_cpu_preset), and for the model cases `frames`, `size` (square
frames), `points`, optionally `batch`, `chunk`, `dense` (the patch formulation), `remat`, `feature_chunk`, `data`,
`dtype` (compute precision, offline and online), `model='tiny'` (`TINY_MODEL`) and `peaks='tiny'` (`TINY_PEAKS`:
small peak micro-benchmarks).
"""

# Rendering a `cpu` batch of built-in scenes, and the self-supervised cases: in the default and the quick suite.
_DATA_AND_SELFSUP = (
    dict(kind='render_cpu_batch', scenes='photographic'),
    dict(kind='render_cpu_batch', scenes='procedural'),
    dict(kind='selfsup_cpu_preset'),
    dict(kind='teacher_cpu_preset'),
    dict(kind='inference_cpu_preset'),
)

CASES = {
    'default': [
        # kind, frames, size, points, extra
        dict(kind='offline', frames=24, size=256, points=256),  # the reference comparison point
        dict(kind='offline', frames=24, size=256, points=256, dense=True),
        dict(kind='offline', frames=24, size=256, points=64),
        dict(kind='offline', frames=48, size=256, points=256),
        dict(kind='offline', frames=24, size=256, points=1024),
        dict(kind='offline', frames=24, size=512, points=256),
        dict(kind='offline', frames=96, size=256, points=256, feature_chunk=16),
        dict(kind='online', frames=16, size=256, points=256),
        dict(kind='train', frames=24, size=256, points=256, batch=1),
        dict(kind='train_memory', frames=24, size=256, points=256, remat=False),
        dict(kind='train_memory', frames=24, size=256, points=256, remat=True),
        dict(kind='gradient', frames=4, size=256, points=256),
        dict(kind='gradient', frames=4, size=256, points=256, dense=False),
        dict(kind='train_cpu_preset'),
        dict(kind='train_cpu_preset', dense=False),
        dict(kind='train_cpu_preset', data=True),
        *_DATA_AND_SELFSUP,
    ],
    'accelerator': [  # the cases that matter on a GPU or TPU (run where one is at hand; `--dry` checks it anywhere)
        # offline at 256² and 512²: 256 points with the gather and with dense patches, and 1024 points
        *(dict(kind='offline', frames=24, size=size, points=points, **extra) for size in (256, 512)
          for points, extra in ((256, {}), (256, dict(dense=True)), (1024, {}))),
        dict(kind='online', frames=16, size=256, points=8),
        dict(kind='online', frames=16, size=256, points=256),
        # bfloat16 compute (tapir.models.precision) beside float32
        dict(kind='offline', frames=24, size=256, points=256, dtype='bfloat16'),
        dict(kind='online', frames=16, size=256, points=8, dtype='bfloat16'),
        dict(kind='train', frames=24, size=256, points=256, batch=8),  # the paper recipe's per-device batch
        dict(kind='gradient', frames=4, size=256, points=256),
        dict(kind='gradient', frames=4, size=256, points=256, dense=False),
    ],
    'tiny': [  # the accounting on tiny models (tests/test_flops.py): small shapes, small peak benchmarks
        dict(kind='offline', frames=2, size=32, points=16, chunk=8, model='tiny', peaks='tiny'),
        dict(kind='online', frames=2, size=32, points=8, model='tiny', peaks='tiny'),
        dict(kind='gradient', frames=2, size=32, points=8, chunk=8, model='tiny', peaks='tiny'),
    ],
    'quick': [
        dict(kind='offline', frames=8, size=128, points=64),
        dict(kind='online', frames=8, size=128, points=64),
        dict(kind='train_cpu_preset'),
        dict(kind='train_cpu_preset', data=True),
        *_DATA_AND_SELFSUP,
    ],
}


TINY_MODEL = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32, initial_resolution=(32, 32),
                  pyramid_level=0)
TINY_PEAKS = dict(matmul=256, conv_shape=(1, 32, 32, 16), copy_mb=4, repeats=3)


def dry_run(case: dict) -> dict:
  """`case` at tiny sizes with the tiny model and peaks: the same code path in seconds (for tests and for checking
  a suite before a device is at hand; its numbers mean nothing)."""
  if case['kind'] not in ('offline', 'online', 'train', 'train_memory', 'gradient'):
    return dict(case)
  return {**case, 'frames': min(case['frames'], 2), 'size': 32, 'points': min(case['points'], 8),
          'batch': min(case.get('batch', 1), 2), 'chunk': 8, 'model': 'tiny', 'peaks': 'tiny',
          **({'feature_chunk': 1} if case.get('feature_chunk') else {})}
