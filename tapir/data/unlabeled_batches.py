"""Batches for self-supervised training: unlabeled clips with the student's view and the teacher's queries.

For clip i of the run (a pure function of (config.seed, i), whatever the number of hosts):
  the clip (`tapir.data.unlabeled.clip_source`: the user's videos or the built-in photographs under motion) at the
  teacher's size (`teacher_hw`: `selfsup.teacher_scale` times the training size) and the training length, in
  [-1, 1]; a student view of it at the training size (`tapir.data.student_views`: a spatial transform and
  corruptions, with the per-frame affine map from the clip's raster to the view's); and `selfsup.num_queries`
  teacher queries (t, y, x) uniform over the clip (integer frames, continuous positions).
`mixed_batches` pairs them with the supervised stream of `config.data` (`tapir.data.streams.train_batches`) as
{'supervised': ..., 'unlabeled': ...}, both for the same step; the unlabeled batch also carries the source's
count of skipped (undecodable) videos, so that the step's metrics and the training history report it.
"""

import itertools
from typing import Iterator

import jax
import numpy as np

from tapir.data import streams
from tapir.data import student_views
from tapir.data import unlabeled

Batch = dict[str, np.ndarray]


def view_config(config) -> student_views.StudentViewConfig:
  """The student view settings of `config.selfsup.views` (tuples as the dataclass expects)."""
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.selfsup.views.items()}
  return student_views.StudentViewConfig(**fields)


def teacher_hw(config) -> tuple[int, int]:
  """(h, w) of the clips the teacher sees: `selfsup.teacher_scale` times `data.train_hw`, rounded."""
  scale = config.selfsup.teacher_scale
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 1 <= scale <= 8:
    raise ValueError(f'selfsup.teacher_scale must be a number in [1, 8] (the teacher\'s clip size over the '
                     f'training size), got {scale!r}')
  return tuple(int(round(scale * s)) for s in config.data.train_hw)


def make_unlabeled_example(video: np.ndarray, rng: np.random.Generator, views: student_views.StudentViewConfig,
                           num_queries: int, hw_student: tuple[int, int] | None = None) -> Batch:
  """One clip (uint8 [t, h, w, 3], the teacher's) -> 'video' float32 [t, h, w, 3] and 'student_video' float32
  [t, h', w', 3] (`hw_student`; default the clip's own size) in [-1, 1], 'affines' [t, 2, 3] (clip raster ->
  view raster) and 'query_points' [num_queries, 3] (t, y, x) in the clip's raster."""
  t, h, w, _ = video.shape
  hw_student = (h, w) if hw_student is None else tuple(hw_student)
  clean = video.astype(np.float32) / np.float32(127.5) - 1
  view = student_views.draw_view(rng, views, t, (h, w), hw_student)
  student = student_views.render_view(clean, view, rng, views, hw_student)
  queries = np.stack([rng.integers(0, t, num_queries).astype(np.float32), rng.uniform(0, h, num_queries),
                      rng.uniform(0, w, num_queries)], axis=-1).astype(np.float32)
  return dict(video=clean, student_video=student.astype(np.float32), affines=view.affines.astype(np.float32),
              query_points=queries)


def unlabeled_batches(config, start_step: int = 0) -> Iterator[Batch]:
  """Batches [local_devices, selfsup.per_device_batch, ...] for steps `start_step`, `start_step + 1`, ..."""
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  knobs = config.selfsup
  devices, per_device = jax.local_device_count(), knobs.per_device_batch
  local = devices * per_device
  views = view_config(config)
  hw_student = tuple(config.data.train_hw)
  source = unlabeled.clip_source(knobs.source, config.data.num_frames, teacher_hw(config), config.seed,
                                 start_index=start_step * local, process_index=jax.process_index(),
                                 process_count=jax.process_count(),
                                 max_skipped_fraction=knobs.max_skipped_fraction)
  clips = iter(source)
  indices = itertools.count(start_step * local * jax.process_count() + jax.process_index(), jax.process_count())
  while True:
    examples = []
    for _ in range(local):
      clip, index = next(clips), next(indices)
      rng = np.random.default_rng(np.random.SeedSequence([config.seed, index, 0xB0075]))
      examples.append(make_unlabeled_example(clip['video'], rng, views, knobs.num_queries, hw_student))
    batch = {k: np.stack([e[k] for e in examples]).reshape((devices, per_device) + examples[0][k].shape)
             for k in examples[0]}
    skipped = getattr(source, 'skipped', 0)
    batch['skipped_videos'] = np.full((devices,), skipped, np.int32)
    yield batch


def mixed_batches(config, start_step: int = 0) -> Iterator[dict[str, Batch]]:
  """{'supervised': the labelled batch of `config.data`, 'unlabeled': `unlabeled_batches`} per step; without the
  supervised part when `config.selfsup.supervised_weight` is 0. The supervised stream's skipped examples, if any,
  are listed under `streams.SKIPPED_KEY` of the pair."""
  unlabeled_stream = unlabeled_batches(config, start_step)
  if config.selfsup.supervised_weight == 0:
    return ({'unlabeled': u} for u in unlabeled_stream)
  return (_mixed(s, u) for s, u in zip(streams.train_batches(config, start_step), unlabeled_stream))


def _mixed(supervised: Batch, unlabeled_batch: Batch) -> dict[str, Batch]:
  """The step's two batches; the supervised one's skipped examples (host side) move to the top level, where the
  trainer looks for them."""
  supervised = dict(supervised)
  skipped = supervised.pop(streams.SKIPPED_KEY, None)
  mixed = {'supervised': supervised, 'unlabeled': unlabeled_batch}
  return mixed if skipped is None else {**mixed, streams.SKIPPED_KEY: skipped}
