"""The self-supervised (BootsTAP) step: a teacher's tracks on the clean clip become the labels of a student that sees
a transformed, corrupted copy and is queried at other points of the same tracks.

Per unlabeled clip (`tapir.data.unlabeled_batches`: the clean clip at `teacher_scale` x the training size, the
student's view of it at the training size, the per-frame affine map from the clean clip's raster to the view's,
and uniform teacher queries):
  1. teacher pass, inference mode, no gradient: tracks, occlusion and expected_dist of every query; visibility by
     `visibility_rule` (`teacher_visibility`: the library's rule, `tapir.conventions.visibility_from_logits`, or
     the occlusion logit alone);
  2. a point of each track re-drawn uniformly among the frames where the teacher sees it and the view contains it
     (`sample_on_track`);
  3. cycle consistency: the teacher re-queried there (its feature grids reused) must come back visible within
     `cycle_px` (256-scale) of the original query, else the track is masked (`cycle_mask`);
  4. labels mapped into the view exactly (`tapir.data.student_views.map_points`); a label leaving the view is
     occluded (or masked: `out_of_frame='mask'`); the student's query is the re-drawn point (or the original one);
  5. the TAPIR loss of the student on the view against those labels, under the masks.
The teacher is an exponential moving average of the student (`ema_update`), kept in `TrainState.extra`.
Axis glossary: b clips, n tracks, t frames.
"""

from typing import Any, Callable, Mapping, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from tapir import conventions
from tapir.data import student_views
from tapir.models import families

VISIBILITY_RULES = ('eval', 'occ_only')


def check_visibility_rule(rule: str, name: str = 'visibility_rule') -> None:
  """ValueError naming `name` unless `rule` is one of VISIBILITY_RULES."""
  if rule not in VISIBILITY_RULES:
    raise ValueError(f'{name} must be one of {VISIBILITY_RULES}, got {rule!r}')


def teacher_visibility(outputs: Mapping[str, jax.Array], rule: str) -> jax.Array:
  """[b, n, t] bool: where the teacher's pseudo-label is visible.

  'eval': the rule of the library's outputs, (1 - sigmoid(occlusion)) (1 - sigmoid(expected_dist)) > 0.5, so an
  uncertain position counts as occluded; 'occ_only': occlusion < 0, whatever the uncertainty.
  """
  check_visibility_rule(rule)
  if rule == 'eval':
    return conventions.visibility_from_logits(outputs['occlusion'], outputs['expected_dist'])
  return outputs['occlusion'] < 0


class PseudoLabels(NamedTuple):
  query_points: jax.Array  # [b, n, 3] (t, y, x) student queries in the view's raster pixels
  target_points: jax.Array  # [b, n, t, 2] (x, y) in the view's raster pixels
  occluded: jax.Array  # [b, n, t] bool
  mask: jax.Array  # [b, n, t] float32: 1 where the loss counts
  kept: jax.Array  # [b, n] bool: tracks that passed the filters


def sample_on_track(rng: jax.Array, tracks: jax.Array, eligible: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A frame drawn uniformly among the `eligible` [b, n, t] frames of each track, and its (t, y, x) point.

  Returns: queries [b, n, 3] (t, y, x) on `tracks` [b, n, t, 2] (x, y), and whether any frame was eligible [b, n].
  """
  noise = jax.random.gumbel(rng, eligible.shape)
  frame = jnp.argmax(jnp.where(eligible, noise, -jnp.inf), axis=-1)  # [b, n]
  xy = jnp.take_along_axis(tracks, frame[..., None, None], axis=2)[:, :, 0]  # [b, n, 2]
  queries = jnp.concatenate([frame[..., None].astype(tracks.dtype), xy[..., ::-1]], axis=-1)
  return queries, jnp.any(eligible, axis=-1)


def cycle_mask(returned_tracks: jax.Array, returned_visible: jax.Array, query_points: jax.Array,
               video_hw: tuple[int, int], cycle_px: float) -> jax.Array:
  """[b, n] bool: tracks re-queried elsewhere on themselves that come back to their query.

  Args:
    returned_tracks: [b, n, t, 2] (x, y) the teacher's tracks from the re-drawn queries.
    returned_visible: [b, n, t] their visibility.
    query_points: [b, n, 3] (t, y, x) the original queries.
    video_hw: the clip's (h, w); distances are measured at 256x256 scale, as the loss's.
    cycle_px: the largest distance at the query frame (256-scale pixels).
  """
  frame = query_points[..., 0].astype(jnp.int32)[..., None]  # [b, n, 1]
  back = jnp.take_along_axis(returned_tracks, frame[..., None], axis=2)[:, :, 0]  # [b, n, 2] (x, y)
  visible = jnp.take_along_axis(returned_visible, frame, axis=2)[..., 0]
  scale = jnp.array([256.0 / video_hw[1], 256.0 / video_hw[0]])
  distance = jnp.linalg.norm((back - query_points[..., :0:-1]) * scale, axis=-1)
  return visible & (distance <= cycle_px)


def ema_update(teacher: Any, student: Any, decay: float) -> Any:
  """teacher <- decay * teacher + (1 - decay) * student, leaf by leaf; `decay == 0` keeps the teacher frozen."""
  if decay == 0:
    return teacher
  return jax.tree_util.tree_map(lambda t, s: decay * t + (1 - decay) * s, teacher, student)


def make_teacher(model_kwargs: Mapping[str, Any], query_chunk_size: int, family: str = 'tapir',
                 visibility_rule: str = 'eval') -> hk.TransformedWithState:
  """`apply(params, state, rng, video, queries, eligible_fn)`: the teacher's two passes over one clip.

  The first tracks `queries`; `eligible_fn(tracks, visible) -> [b, n, t] bool` says where a track may be
  re-queried, its `visible` given by `visibility_rule` (`teacher_visibility`); the second pass tracks the re-drawn
  points, with the first pass's feature grids. Inference mode.
  Returns (first outputs, second outputs, re-drawn queries [b, n, 3], any-eligible [b, n]).
  """
  module = families.get(family).module
  check_visibility_rule(visibility_rule)

  def forward(video, queries, eligible_fn: Callable[[jax.Array, jax.Array], jax.Array]):
    model = module(**model_kwargs)
    grids = model.get_feature_grids(video, is_training=False)
    first = model(video, False, queries, query_chunk_size=query_chunk_size, feature_grids=grids)
    visible = teacher_visibility(first, visibility_rule)
    redrawn, any_eligible = sample_on_track(hk.next_rng_key(), first['tracks'], eligible_fn(first['tracks'],
                                                                                            visible))
    second = model(video, False, redrawn, query_chunk_size=query_chunk_size, feature_grids=grids)
    return first, second, redrawn, any_eligible

  return hk.transform_with_state(forward)


def pseudo_labels(teacher: hk.TransformedWithState, teacher_params, teacher_state, rng: jax.Array,
                  clip: Mapping[str, jax.Array], knobs) -> PseudoLabels:
  """The student's labels for a batch of unlabeled clips (no gradient flows through them).

  Args:
    teacher: `make_teacher`'s function.
    teacher_params: its weights (the EMA teacher).
    teacher_state: its Haiku state.
    rng: key for the re-drawn queries.
    clip: 'video' [b, t, h, w, 3] the clean clip; 'student_video' [b, t, h', w', 3] the view; 'affines'
      [b, t, 2, 3] clean raster -> view raster; 'query_points' [b, n, 3] (t, y, x) the teacher's queries.
    knobs: `config.selfsup` (visibility_rule, cycle_consistency, cycle_px, resample_queries, out_of_frame); the
      teacher must have been made with the same visibility_rule.
  """
  video, view = clip['video'], clip['student_video']
  view_hw = view.shape[2:4]
  affines = clip['affines'][:, None]  # [b, 1, t, 2, 3], broadcast over tracks

  def in_view(tracks):  # [b, n, t, 2] -> [b, n, t]
    return student_views.in_frame(student_views.map_points(affines, tracks), view_hw)

  (first, second, redrawn, any_eligible), _ = teacher.apply(
      teacher_params, teacher_state, rng, video, clip['query_points'],
      lambda tracks, visible: visible & in_view(tracks))
  first, second = jax.lax.stop_gradient((first, second))
  tracks = first['tracks']
  visible = teacher_visibility(first, knobs.visibility_rule)
  kept = any_eligible
  if knobs.cycle_consistency:
    second_visible = teacher_visibility(second, knobs.visibility_rule)
    kept &= cycle_mask(second['tracks'], second_visible, clip['query_points'], video.shape[2:4], knobs.cycle_px)
  targets = student_views.map_points(affines, tracks)
  inside = student_views.in_frame(targets, view_hw)
  mask = jnp.broadcast_to(kept[..., None], visible.shape).astype(jnp.float32)
  if knobs.out_of_frame == 'mask':
    mask = mask * inside
    occluded = ~visible
  else:  # 'occluded', as the Kubric labels
    occluded = ~(visible & inside)
  queries = redrawn if knobs.resample_queries else clip['query_points']
  if not knobs.resample_queries:  # the original query must be in the view
    t0 = queries[..., 0].astype(jnp.int32)[..., None]
    kept &= jnp.take_along_axis(inside, t0, axis=2)[..., 0]
    mask = mask * kept[..., None]
  return PseudoLabels(student_views.map_queries(affines, queries), targets, occluded, mask, kept)
