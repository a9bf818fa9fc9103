r"""Self-supervised fine-tuning on unlabeled video (the BootsTAP stage; `tapir.training.task_bootstap`).

From the checkpoint of the README's first command, on the built-in unlabeled clips (photographs under random
motion: `tapir.data.realpix` with training seeds, never its evaluation seeds), mixed with the built-in labelled
scenes:
  python -m experiments.train --config configs/bootstap.py:cpu --workdir /tmp/bootstap_cpu
On a folder (or glob) of your own videos, from a released checkpoint:
  python -m experiments.train --config configs/bootstap.py --workdir /tmp/bootstap \
      --config.init_from=checkpoints/bootstapir_checkpoint_v2.npy --config.selfsup.source=/data/videos
The same recipe without the self-supervised branch (the comparison row of the README):
  python -m experiments.train --config configs/bootstap.py:cpu_supervised --workdir /tmp/supervised_cpu

Presets: '' the BootsTAPIR architecture at 256x256 (set init_from and selfsup.source), `cpu` (fine-tunes
/tmp/tapir_cpu/tapir_checkpoint.npz with the `cpu` model for 300 steps, with the knobs that measured best at
that scale: CPU_KNOBS), `cpu_spec` (the same with every knob at the spec's default), `cpu_supervised` (the same
steps supervised only), `tiny` (tests).

`selfsup` knobs, defaults and where they come from (`../shared/spec/bootstap.md`; none of the values below is
published by the paper unless it says so):
  source             '' or 'realpix': the built-in unlabeled clips; else a folder or glob of videos (ffmpeg).
  per_device_batch   unlabeled clips per device per step (4 at cpu scale; 8 in the spec's 1:1 default).
  num_queries        teacher queries per clip, uniform over (t, y, x) (spec default 256; 64 at cpu scale).
  teacher_decay      EMA decay of the teacher (0.99, the spec's choice for short runs; 0 = a frozen teacher).
  visibility_rule    where a pseudo-label is visible: 'eval' (the library's rule, uncertain = occluded; the spec's
                     default) or 'occ_only' (the occlusion logit alone).
  teacher_scale      the teacher sees each clip at this multiple of the training size (1.0: the same); the
                     student's view is resampled from it to the training size (area prefilter).
  cycle_consistency  keep a track only if the teacher, re-queried at a point of it, returns within cycle_px
                     of the query and visible there (True; the spec's reading of the paper's "cycle filter").
  cycle_px           4.0 (256-scale pixels, the Huber delta).
  resample_queries   the student is queried at another visible point of the track (True; the paper's principle).
  out_of_frame       'occluded' (labels leaving the view are occluded, as Kubric's) or 'mask'.
  weight, supervised_weight  loss weights of the two branches (1 : 1, the spec's default); supervised_weight 0
                     drops the labelled batch.
  max_skipped_fraction  the run stops when more than this share of video files cannot be decoded (0.1).
  export_teacher     also write the teacher's weights at the end (False).
  views              the student's view (`tapir.data.student_views.StudentViewConfig`): a crop box of area
                     (0.3, 1.0) and aspect (0.5, 2.0) of the frame (the Kubric sampler's ranges), flips and
                     rotation off, constant in time; corruptions: Kubric's colour augmentation, blur, noise and
                     JPEG-like compression (probabilities and ranges have no published source).
"""

import ml_collections

from configs import tapir as tapir_configs

PRESETS = ('cpu', 'cpu_spec', 'cpu_supervised', 'tiny')
# Measured at the `cpu` scale (README, "What it does at the cpu scale"); the base keeps the spec's defaults. At
# 64x64 the uncertainty head flags most real-image points (the evaluation rule then labels them occluded), a
# teacher at twice the size tracks better, and a third of the tracks pass the filters, so the masked mean
# under-weights the branch.
CPU_KNOBS = dict(visibility_rule='occ_only', teacher_scale=2.0, weight=5.0)


def _selfsup() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      source='',
      per_device_batch=8,
      num_queries=256,
      teacher_decay=0.99,
      visibility_rule='eval',
      teacher_scale=1.0,
      cycle_consistency=True,
      cycle_px=4.0,
      resample_queries=True,
      out_of_frame='occluded',
      weight=1.0,
      supervised_weight=1.0,
      max_skipped_fraction=0.1,
      export_teacher=False,
      views=ml_collections.ConfigDict(dict(
          crop_area=(0.3, 1.0),
          crop_aspect=(0.5, 2.0),
          flip_probability=0.0,
          max_rotation_deg=0.0,
          time_varying=False,
          color_augmentation=True,
          blur_probability=0.3,
          blur_sigma=(0.0, 1.5),
          noise_probability=0.3,
          noise_std=(0.0, 0.03),
          jpeg_probability=0.3,
          jpeg_quality=(40, 95),
      )),
  ))


def get_config(preset: str = '') -> ml_collections.ConfigDict:
  if preset and preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose one of {PRESETS}')
  base = {'': 'bootstapir', 'cpu': 'cpu', 'cpu_spec': 'cpu', 'cpu_supervised': 'cpu', 'tiny': 'tiny'}[preset]
  c = tapir_configs.get_config(base)
  with c.unlocked():
    c.task = 'tapir' if preset == 'cpu_supervised' else 'bootstap'
    c.selfsup = _selfsup()
    c.optimizer.update(learning_rate=1e-4, warmup_steps=1000)
    if preset in ('cpu', 'cpu_spec', 'cpu_supervised'):
      c.init_from = '/tmp/tapir_cpu/tapir_checkpoint.npz'  # the README's first command
      c.training_steps = 300
      c.optimizer.update(learning_rate=3e-4, warmup_steps=20)
      c.selfsup.update(per_device_batch=4, num_queries=64)
      if preset == 'cpu':
        c.selfsup.update(**CPU_KNOBS)
      c.checkpoint_every_steps = 100
      c.eval.update(every_steps=100, dataset='realpix')
    elif preset == 'tiny':
      c.optimizer.update(learning_rate=1e-3, warmup_steps=1)
      c.selfsup.update(per_device_batch=1, num_queries=8)
  c.lock()
  return c
