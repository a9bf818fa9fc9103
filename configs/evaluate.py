r"""Evaluation on TAP-Vid and on the built-in synthetic set.

Built-in synthetic set (no download; 30 held-out 24-frame 256x256 scenes), a checkpoint against the zero-motion
baseline:
  python -m experiments.evaluate --config configs/evaluate.py --workdir /tmp/tapir_eval \
      --config.checkpoint=/tmp/tapir_cpu/tapir_checkpoint.npz
  (with no checkpoint only the zero-motion baseline is scored.)

The model trained by the README's main command (configs/tapir.py:cpu; it runs at 64x64), on 50 held-out
8-frame scenes rendered and scored at 256x256:
  python -m experiments.evaluate --config configs/evaluate.py:cpu --workdir /tmp/tapir_cpu/eval

Real photographs with known motion (`tapir.data.realpix`: no download; 30 held-out 24-frame 256x256 clips of
photographs moved by exact homographies and elastic warps, with cut-outs occluding them):
  python -m experiments.evaluate --config configs/evaluate.py:realpix --workdir /tmp/tapir_eval \
      --config.checkpoint=checkpoints/tapir_checkpoint_panning.npy
  and the model of configs/tapir.py:cpu (run at 64x64; 50 8-frame clips rendered and scored at 256x256):
  python -m experiments.evaluate --config configs/evaluate.py:realpix_cpu --workdir /tmp/tapir_cpu/eval_realpix

The released TAP-Net baseline on the same data: --config.checkpoint=checkpoints/tapnet_checkpoint.npy (the family
is read off the checkpoint; whole video in one call at 256x256, as the reference).

TAP-Vid-DAVIS with the released TAPIR (after scripts/download_checkpoints.sh and scripts/download_tapvid.sh):
  python -m experiments.evaluate --config configs/evaluate.py:davis --workdir /tmp/tapir_eval \
      --config.checkpoint=checkpoints/tapir_checkpoint_panning.npy \
      --config.path=tapvid/tapvid_davis/tapvid_davis.pkl
  Expect (TAPIR paper / released checkpoint, 256x256): 'first' AJ ~ 56-63, 'strided' AJ ~ 62-66.

Fields: `dataset` ('synthetic', 'realpix', 'davis', 'rgb_stacking', 'kinetics', 'robotap', 'csv', 'npz', 'kubric',
'jhmdb') and its `path` (none for 'synthetic' and 'realpix', sized by `synthetic` / `realpix`: num_videos,
num_frames, hw, tracks; `video_dir` too for 'csv'; for 'kubric' a TFDS data dir, with `kubric.dataset` / `split`
/ `vflip` / `seed` / `num_videos` (0 = all); for 'jhmdb' the dataset root, scored with PCK, `query_modes` unused);
`query_modes`; `checkpoint` and `preset` (or '' to read the family and architecture off the checkpoint);
`resolution_hw` the model runs at; `full_resolution` runs at each video's own size instead (predictions
rescaled to 256x256 for scoring, reported separately as the benchmark requires).
Writes per-video metrics (JSON, CSV) and a results table (markdown, LaTeX) to the workdir.
"""

import ml_collections

from tapir import config_fields


def get_config(preset: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.checkpoint = ''
  # a tapir.PRESETS name, or '' to take the architecture from the checkpoint (its stored family and settings, or a
  # released layout that only one preset fits): `tapir.load_tracker`'s rule, the one every entry point uses.
  c.preset = ''
  c.model_overrides = ml_collections.ConfigDict(dict(initial_resolution=(256, 256)))
  c.dataset = 'synthetic'
  c.path = ''
  c.video_dir = ''  # for the csv format
  c.query_modes = ('first', 'strided')
  c.resolution_hw = (256, 256)
  c.full_resolution = False
  c.query_chunk_size = 64
  c.baselines = ('zero_motion',)
  # kind: the built-in scenes' kind ('photographic' or 'procedural', `tapir.data.synthetic.SCENE_KINDS`)
  c.synthetic = ml_collections.ConfigDict(dict(num_videos=30, num_frames=24, hw=(256, 256), tracks=256,
                                               kind='photographic'))
  c.realpix = ml_collections.ConfigDict(dict(num_videos=30, num_frames=24, hw=(256, 256), tracks=256))
  c.kubric = ml_collections.ConfigDict(dict(dataset='movi_e/256x256', split='validation', vflip=False, seed=0,
                                            num_videos=0))
  if preset in ('davis', 'rgb_stacking', 'kinetics', 'robotap', 'kubric', 'jhmdb'):
    c.dataset = preset
  elif preset == 'realpix':
    c.dataset = 'realpix'
  elif preset == 'kubric_vflip':
    c.dataset = 'kubric'
    c.kubric.vflip = True
  elif preset == 'cpu':
    # The model of `configs/tapir.py:cpu` on held-out synthetic clips like its training data (8 frames, 64x64).
    c.checkpoint = '/tmp/tapir_cpu/tapir_checkpoint.npz'
    c.resolution_hw = (64, 64)
    c.synthetic.update(num_videos=50, num_frames=8)  # rendered and scored at 256x256
  elif preset == 'realpix_cpu':
    # The model of `configs/tapir.py:cpu` on realpix clips as long as its training clips (8 frames, 64x64).
    c.dataset = 'realpix'
    c.checkpoint = '/tmp/tapir_cpu/tapir_checkpoint.npz'
    c.resolution_hw = (64, 64)
    c.realpix.update(num_videos=50, num_frames=8)  # rendered and scored at 256x256
  elif preset:
    raise ValueError(f'unknown preset {preset!r}: use davis, rgb_stacking, kinetics, robotap, kubric, '
                     'kubric_vflip, jhmdb, cpu, realpix or realpix_cpu')
  config_fields.add_placeholders(c, config_fields.EVALUATION_RENAMES)
  c.lock()
  return c
