r"""TAP-Net, TAPIR and the zero-motion baseline on the same videos: one markdown table.

The README's comparison (both trained by their `cpu` presets on the built-in scenes, scored on held-out synthetic
8-frame scenes rendered and scored at 256x256, both models run at their 64x64 training size):
  python -m experiments.train --config configs/tapir.py:cpu --workdir /tmp/tapir_cpu
  python -m experiments.train --config configs/tapnet.py:cpu --workdir /tmp/tapnet_cpu
  python scripts/compare_baselines.py --output /tmp/baselines.md

Released checkpoints on TAP-Vid-DAVIS (after scripts/download_checkpoints.sh and scripts/download_tapvid.sh):
  python scripts/compare_baselines.py --dataset davis --path tapvid/tapvid_davis/tapvid_davis.pkl \
      --tapnet_checkpoint checkpoints/tapnet_checkpoint.npy --tapnet_resolution 256,256 \
      --tapir_checkpoint checkpoints/tapir_checkpoint_panning.npy --tapir_preset tapir --tapir_resolution 256,256

The same models on real photographs with known motion (`tapir.data.realpix`, no download):
  python scripts/compare_baselines.py --dataset realpix --output /tmp/baselines_realpix.md

An empty checkpoint flag leaves that model out. TAP-Net runs each whole video in one call (any length) at
`--tapnet_resolution`; TAPIR at `--tapir_resolution` (default: the resolution it was built for).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

# pylint: disable=g-import-not-at-top,wrong-import-position
from tapir import metrics
from tapir.data import streams
from tapir.data import tapvid
from tapir.evaluation import loop as evaluation
import tapir

_TAPNET = flags.DEFINE_string('tapnet_checkpoint', '/tmp/tapnet_cpu/tapnet_checkpoint.npz', 'TAP-Net weights')
_TAPNET_RES = flags.DEFINE_list('tapnet_resolution', ['64', '64'], 'height,width TAP-Net runs at')
_TAPIR = flags.DEFINE_string('tapir_checkpoint', '/tmp/tapir_cpu/tapir_checkpoint.npz', 'TAPIR weights')
_TAPIR_PRESET = flags.DEFINE_string('tapir_preset', '', "TAPIR preset for released files ('': stored settings)")
_TAPIR_RES = flags.DEFINE_list('tapir_resolution', [], 'height,width TAPIR runs at (default: its own)')
_DATASET = flags.DEFINE_string('dataset', 'synthetic', "'synthetic' (built-in held-out scenes), 'realpix' (real "
                               "photographs, known motion) or a TAP-Vid reader")
_PATH = flags.DEFINE_string('path', '', 'TAP-Vid dataset path')
_MODES = flags.DEFINE_list('query_modes', ['first', 'strided'], 'query modes')
_NUM_VIDEOS = flags.DEFINE_integer('num_videos', 50, 'synthetic / realpix: number of held-out clips')
_NUM_FRAMES = flags.DEFINE_integer('num_frames', 8, 'synthetic / realpix: frames per clip')
_SCENE_KIND = flags.DEFINE_enum('scene_kind', 'photographic', ['photographic', 'procedural'],
                                  'synthetic: the built-in scenes\' kind (tapir.data.synthetic.SCENE_KINDS)')
_SIZE = flags.DEFINE_list('size', ['256', '256'], 'synthetic / realpix: height,width rendered and scored at')
_CHUNK = flags.DEFINE_integer('query_chunk_size', 64, 'queries per model call')
_OUTPUT = flags.DEFINE_string('output', '', 'write the markdown table here too')


def _hw(values, name):
  if len(values) != 2 or not all(v.isdigit() and int(v) > 0 for v in values):
    raise app.UsageError(f'--{name} must be height,width (positive ints); got {",".join(values)}')
  return int(values[0]), int(values[1])


def predictors() -> dict:
  out = {}
  if _TAPNET.value:
    tracker = tapir.load_tracker(_TAPNET.value, query_chunk_size=_CHUNK.value)
    out['TAP-Net'] = evaluation.tracker_predictor(tracker, _hw(_TAPNET_RES.value, 'tapnet_resolution'))
  if _TAPIR.value:
    tracker = tapir.load_tracker(_TAPIR.value, _TAPIR_PRESET.value or None, query_chunk_size=_CHUNK.value)
    size = _hw(_TAPIR_RES.value, 'tapir_resolution') if _TAPIR_RES.value else tracker.resolution
    out['TAPIR'] = evaluation.tracker_predictor(tracker, size)
  out['zero motion'] = evaluation.zero_motion_predictor
  return out


def examples(query_mode: str):
  if _DATASET.value == 'synthetic':
    from tapir.data import synthetic
    h, w = _hw(_SIZE.value, 'size')
    scenes = synthetic.SceneConfig.of_kind(_SCENE_KIND.value, height=h, width=w, num_frames=_NUM_FRAMES.value)
    return streams.synthetic_evaluation_set(_NUM_VIDEOS.value, query_mode, scenes)
  if _DATASET.value == 'realpix':
    from tapir.data import realpix
    h, w = _hw(_SIZE.value, 'size')
    clips = realpix.RealPixConfig(height=h, width=w, num_frames=_NUM_FRAMES.value)
    return realpix.evaluation_examples(_NUM_VIDEOS.value, query_mode, clips)
  return tapvid.open_dataset(_DATASET.value, _PATH.value, query_mode)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  table = {}
  for name, predict in predictors().items():
    for mode in _MODES.value:
      logging.info('evaluating %s on %s (%s)', name, _DATASET.value, mode)
      table[f'{_DATASET.value} {mode}: {name}'] = evaluation.evaluate(predict, examples(mode), mode).mean
  markdown = metrics.format_results_table(table, 'markdown')
  print(markdown)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      f.write(markdown)


if __name__ == '__main__':
  app.run(main)
