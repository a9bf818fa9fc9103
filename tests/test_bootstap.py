"""The self-supervised (BootsTAP) stage: re-drawn queries, the cycle filter, the EMA teacher, pseudo-labels through
the student's view, the runner (2 devices, resume), and its knobs."""

import json
import os
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bootstap as bootstap_configs
from configs import tapir as tapir_configs
from tapir.data import student_views
from tapir.data import unlabeled_batches
from tapir.training import loop as trainer
from tapir.training import selfsup
from tapir.training import tasks
from tests.conftest import REPO
from tests.conftest import run_on_two_cpu_devices
from tests.conftest import with_overrides


def _config(preset='tiny', **overrides):
  return with_overrides(bootstap_configs.get_config(preset), overrides)


def test_sample_on_track_draws_only_eligible_frames():
  tracks = jnp.arange(2 * 3 * 5 * 2, dtype=jnp.float32).reshape(2, 3, 5, 2)
  eligible = jnp.zeros((2, 3, 5), bool).at[0, 0, 3].set(True).at[1, 2, 1].set(True).at[1, 2, 4].set(True)
  seen = set()
  for k in range(20):
    queries, any_eligible = selfsup.sample_on_track(jax.random.PRNGKey(k), tracks, eligible)
    np.testing.assert_array_equal(any_eligible, [[True, False, False], [False, False, True]])
    assert queries[0, 0, 0] == 3
    np.testing.assert_array_equal(queries[0, 0, 1:], tracks[0, 0, 3, ::-1])  # (y, x) of the track's point
    seen.add(int(queries[1, 2, 0]))
    frame = int(queries[1, 2, 0])
    np.testing.assert_array_equal(queries[1, 2, 1:], tracks[1, 2, frame, ::-1])
  assert seen == {1, 4}


def test_cycle_mask_keeps_tracks_that_come_back():
  # One clip of 64x64 (256-scale factor 4), 4 tracks queried at frame 1, (y, x) = (10, 20).
  query = jnp.tile(jnp.array([1.0, 10.0, 20.0]), (1, 4, 1))
  back = jnp.zeros((1, 4, 3, 2))
  back = back.at[0, 0, 1].set([20.5, 10.0])  # 0.5 px = 2 px at 256-scale: kept
  back = back.at[0, 1, 1].set([21.5, 10.0])  # 1.5 px = 6 px: too far
  back = back.at[0, 2, 1].set([20.0, 10.0])  # on the query but not visible there
  back = back.at[0, 3, 1].set([20.0, 10.9])  # 0.9 px = 3.6 px: kept
  visible = jnp.ones((1, 4, 3), bool).at[0, 2, 1].set(False)
  np.testing.assert_array_equal(selfsup.cycle_mask(back, visible, query, (64, 64), 4.0),
                                [[True, False, False, True]])


def test_ema_update_and_frozen_teacher():
  teacher, student = {'a': jnp.array([1.0, 2.0])}, {'a': jnp.array([3.0, 6.0])}
  np.testing.assert_allclose(selfsup.ema_update(teacher, student, 0.75)['a'], [1.5, 3.0])
  assert selfsup.ema_update(teacher, student, 0.0) is teacher


class _FakeTeacher:
  """A teacher whose tracks are given: apply(...) returns them and re-draws queries as the real one does."""

  def __init__(self, tracks, visible, second_tracks=None, second_visible=None, uncertain=None, rule='eval'):
    logit = lambda v: jnp.where(v, -10.0, 10.0)
    # `uncertain`: seen (occlusion logit < 0) but with a large expected distance.
    dist = lambda v: logit(v) if uncertain is None else jnp.where(uncertain, 10.0, logit(v))
    self.first = dict(tracks=tracks, occlusion=logit(visible), expected_dist=dist(visible))
    st = tracks if second_tracks is None else second_tracks
    sv = visible if second_visible is None else second_visible
    self.second = dict(tracks=st, occlusion=logit(sv), expected_dist=dist(sv))
    self.rule = rule

  def apply(self, params, state, rng, video, queries, eligible_fn):
    del params, state, video, queries
    eligible = eligible_fn(self.first['tracks'], selfsup.teacher_visibility(self.first, self.rule))
    redrawn, any_eligible = selfsup.sample_on_track(rng, self.first['tracks'], eligible)
    return (self.first, self.second, redrawn, any_eligible), None


def _knobs(**kw):
  base = dict(visibility_rule='eval', cycle_consistency=True, cycle_px=4.0, resample_queries=True,
              out_of_frame='occluded')
  return types.SimpleNamespace(**{**base, **kw})


def test_pseudo_labels_map_through_the_view_and_mark_what_leaves_it():
  t, h, w = 4, 32, 32
  # The view: a 2x zoom on the top-left quarter (box [0, 0, 16, 16] of the 32x32 clip), the same at every frame.
  view = student_views.view_from_boxes(np.tile([[0.0, 0.0, 16.0, 16.0]], (t, 1)), (h, w))
  affines = jnp.asarray(view.affines)[None]  # [1, t, 2, 3]
  tracks = jnp.array([[[[4.0 + f, 5.0] for f in range(t)],  # inside the quarter throughout
                       [[10.0 + 2 * f, 8.0] for f in range(t)]]])  # leaves it (x >= 16) at frames 3
  visible = jnp.ones((1, 2, t), bool).at[0, 0, 2].set(False)
  queries = jnp.array([[[0.0, 5.0, 4.0], [0.0, 8.0, 10.0]]])
  clip = dict(video=jnp.zeros((1, t, h, w, 3)), student_video=jnp.zeros((1, t, h, w, 3)), affines=affines,
              query_points=queries)
  labels = selfsup.pseudo_labels(_FakeTeacher(tracks, visible), None, None, jax.random.PRNGKey(0), clip,
                                 _knobs())
  np.testing.assert_allclose(labels.target_points, tracks * 2)
  np.testing.assert_array_equal(labels.occluded[0, 0], [False, False, True, False])  # the teacher's own occlusion
  np.testing.assert_array_equal(labels.occluded[0, 1], [False, False, False, True])  # out of the view at frame 3
  assert labels.kept.all() and (labels.mask == 1).all()
  for n in range(2):  # the student's query is a visible in-view point of the track, mapped into the view
    frame = int(labels.query_points[0, n, 0])
    assert not labels.occluded[0, n, frame]
    np.testing.assert_allclose(labels.query_points[0, n, 1:], 2 * tracks[0, n, frame, ::-1])
  masked = selfsup.pseudo_labels(_FakeTeacher(tracks, visible), None, None, jax.random.PRNGKey(0), clip,
                                 _knobs(out_of_frame='mask'))
  np.testing.assert_array_equal(masked.mask[0, 1], [1, 1, 1, 0])
  assert not masked.occluded[0, 1, 3]
  # A track whose re-query wanders off is masked by the cycle filter, and kept without it.
  wandering = tracks.at[0, 1].add(5.0)
  cycled = selfsup.pseudo_labels(_FakeTeacher(tracks, visible, second_tracks=wandering), None, None,
                                 jax.random.PRNGKey(0), clip, _knobs())
  np.testing.assert_array_equal(cycled.kept, [[True, False]])
  assert (cycled.mask[0, 1] == 0).all()
  unfiltered = selfsup.pseudo_labels(_FakeTeacher(tracks, visible, second_tracks=wandering), None, None,
                                     jax.random.PRNGKey(0), clip, _knobs(cycle_consistency=False))
  assert unfiltered.kept.all()
  # Without re-sampling the student keeps the teacher's query (mapped).
  fixed = selfsup.pseudo_labels(_FakeTeacher(tracks, visible), None, None, jax.random.PRNGKey(0), clip,
                                _knobs(resample_queries=False))
  np.testing.assert_allclose(fixed.query_points, jnp.array([[[0.0, 10.0, 8.0], [0.0, 16.0, 20.0]]]))


def test_teacher_visibility_rules():
  outputs = dict(occlusion=jnp.array([-3.0, -3.0, 3.0, 0.5]), expected_dist=jnp.array([-3.0, 3.0, -3.0, -9.0]))
  # eval: (1 - sigmoid(occ)) (1 - sigmoid(dist)) > 0.5; occ_only: occ < 0
  np.testing.assert_array_equal(selfsup.teacher_visibility(outputs, 'eval'), [True, False, False, False])
  np.testing.assert_array_equal(selfsup.teacher_visibility(outputs, 'occ_only'), [True, True, False, False])
  with pytest.raises(ValueError, match='visibility_rule'):
    selfsup.teacher_visibility(outputs, 'soft')
  with pytest.raises(ValueError, match='visibility_rule'):
    selfsup.make_teacher({}, 8, 'tapir', 'soft')


def test_uncertain_points_are_occluded_labels_under_eval_and_visible_under_occ_only():
  t, h, w = 4, 32, 32
  view = student_views.view_from_boxes(np.tile([[0.0, 0.0, 32.0, 32.0]], (t, 1)), (h, w))  # the whole frame
  tracks = jnp.array([[[[4.0 + f, 5.0] for f in range(t)], [[9.0, 8.0 + f] for f in range(t)]]])
  visible = jnp.ones((1, 2, t), bool)
  uncertain = jnp.zeros((1, 2, t), bool).at[0, 1, 1:].set(True)  # track 1 is sure only at frame 0
  clip = dict(video=jnp.zeros((1, t, h, w, 3)), student_video=jnp.zeros((1, t, h, w, 3)),
              affines=jnp.asarray(view.affines)[None], query_points=jnp.array([[[0.0, 5.0, 4.0], [0.0, 8.0, 9.0]]]))
  for rule, expected in (('eval', [False, True, True, True]), ('occ_only', [False, False, False, False])):
    labels = selfsup.pseudo_labels(_FakeTeacher(tracks, visible, uncertain=uncertain, rule=rule), None, None,
                                   jax.random.PRNGKey(0), clip, _knobs(visibility_rule=rule))
    np.testing.assert_array_equal(labels.occluded[0, 1], expected)
    assert labels.kept.all()  # re-queried at frame 0 under eval (its only visible frame), anywhere under occ_only
    if rule == 'eval':
      assert int(labels.query_points[0, 1, 0]) == 0


def test_unlabeled_batches_are_deterministic_and_resume():
  config = _config()
  first = [next(iter(unlabeled_batches.unlabeled_batches(config, 0))) for _ in range(2)]
  np.testing.assert_array_equal(first[0]['student_video'], first[1]['student_video'])
  stream = unlabeled_batches.unlabeled_batches(config, 0)
  batches = [next(stream) for _ in range(3)]
  resumed = next(unlabeled_batches.unlabeled_batches(config, 2))
  for key in ('video', 'student_video', 'affines', 'query_points'):
    np.testing.assert_array_equal(resumed[key], batches[2][key])
  assert not np.array_equal(batches[0]['video'], batches[1]['video'])
  b = batches[0]
  t, (h, w) = config.data.num_frames, config.data.train_hw
  assert b['video'].shape == (1, 1, t, h, w, 3) and b['affines'].shape == (1, 1, t, 2, 3)
  assert b['query_points'].shape == (1, 1, config.selfsup.num_queries, 3)


def test_teacher_sees_the_clip_at_teacher_scale_and_labels_land_in_the_students_raster(tmp_path):
  identity_view = {'selfsup.views.crop_area': (1.0, 1.0), 'selfsup.views.crop_aspect': (1.0, 1.0),
                   'selfsup.views.color_augmentation': False, 'selfsup.views.blur_probability': 0.0,
                   'selfsup.views.noise_probability': 0.0, 'selfsup.views.jpeg_probability': 0.0}
  config = _config(**{'selfsup.teacher_scale': 2.0, **identity_view})
  t, (h, w) = config.data.num_frames, config.data.train_hw
  assert unlabeled_batches.teacher_hw(config) == (2 * h, 2 * w)
  b = next(unlabeled_batches.unlabeled_batches(config, 0))
  assert b['video'].shape == (1, 1, t, 2 * h, 2 * w, 3) and b['student_video'].shape == (1, 1, t, h, w, 3)
  # The whole frame, halved: a teacher pixel (x, y) is the student's (x / 2, y / 2). Student pixel j reads the
  # teacher's 2-pixel box filter bilinearly at 2j + 1/2: weights (1, 3, 3, 1) / 8 on pixels 2j - 1 .. 2j + 2.
  np.testing.assert_allclose(b['affines'][0, 0], np.tile([[[0.5, 0, 0], [0, 0.5, 0]]], (t, 1, 1)), atol=1e-6)
  taps = np.array([1.0, 3.0, 3.0, 1.0]) / 8
  video = b['video'][0, 0].astype(np.float64)
  rows = sum(k * video[:, 2 * 1 - 1 + i: 2 * (h - 2) + i: 2] for i, k in enumerate(taps))  # student rows 1 .. h-2
  both = sum(k * rows[:, :, 2 * 1 - 1 + i: 2 * (w - 2) + i: 2] for i, k in enumerate(taps))
  np.testing.assert_allclose(b['student_video'][0, 0, :, 1:-1, 1:-1], both, atol=1e-5)
  assert (b['query_points'][..., 1] < 2 * h).all() and (b['query_points'][..., 1] >= h).any()
  # The student trains against them, from scratch, two steps.
  out = trainer.train_and_evaluate(_config(**{'selfsup.teacher_scale': 2.0, 'training_steps': 2,
                                              'eval.every_steps': 100}), str(tmp_path / 'run'))
  assert out['step'] == 2 and np.isfinite(out['metrics']['selfsup_loss'])


def test_tiny_run_logs_both_branches_and_resumes_bit_identically(tmp_path):
  supervised = tapir_configs.get_config('tiny')
  start = trainer.train_and_evaluate(supervised, str(tmp_path / 'start'))['exported']
  config = _config(**{'init_from': start, 'training_steps': 4, 'checkpoint_every_steps': 2,
                      'eval.every_steps': 100, 'selfsup.export_teacher': True})
  straight = trainer.train_and_evaluate(config, str(tmp_path / 'straight'))
  assert straight['step'] == 4
  for key in ('loss', 'position_loss', 'selfsup_loss', 'selfsup_position_loss', 'selfsup_occlusion_loss',
              'selfsup_uncertainty_loss', 'selfsup_kept_tracks', 'total_loss'):
    assert key in straight['metrics'] and np.isfinite(straight['metrics'][key]), key
  rows = [json.loads(line) for line in open(tmp_path / 'straight' / 'train_history.json')]
  assert [r['step'] for r in rows] == [1, 2, 3, 4] and all('selfsup_position_loss' in r for r in rows)
  assert os.path.exists(tmp_path / 'straight' / 'tapir_teacher_checkpoint.npz')
  host = straight['state']
  teacher = host.extra['teacher_params']
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(teacher),
                                                    jax.tree_util.tree_leaves(host.params))]
  assert any(moved)  # the EMA lags the student

  trainer.train_and_evaluate(config, str(tmp_path / 'resumed'), stop_at=2)
  resumed = trainer.train_and_evaluate(config, str(tmp_path / 'resumed'))
  chex.assert_trees_all_equal((resumed['state'].params, resumed['state'].extra), (host.params, host.extra))


_TWO_DEVICES = r'''
import sys
import tempfile
import jax
from configs import bootstap
from tapir.training import loop
config = bootstap.get_config('tiny')
with config.unlocked():
  config.training_steps = 3
  config.eval.every_steps = 100
assert jax.local_device_count() == 2
out = loop.train_and_evaluate(config, tempfile.mkdtemp(dir=sys.argv[1]))  # a fresh run on every attempt
print('STEP', out['step'], 'SELFSUP', out['metrics']['selfsup_loss'])
'''


def test_three_steps_on_two_devices(tmp_path):
  result = run_on_two_cpu_devices([sys.executable, '-c', _TWO_DEVICES, str(tmp_path)])
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'STEP 3' in result.stdout
  assert 'share XLA:CPU' not in result.stderr  # the pool has two threads per device (tests/conftest.py)


@pytest.mark.parametrize('field, value', [
    ('selfsup.teacher_decay', 1.0), ('selfsup.teacher_decay', -0.1), ('selfsup.cycle_px', 0.0),
    ('selfsup.out_of_frame', 'drop'), ('selfsup.weight', -1.0), ('selfsup.per_device_batch', 0),
    ('selfsup.visibility_rule', 'soft'), ('selfsup.teacher_scale', 0.5), ('selfsup.teacher_scale', 9.0),
])
def test_bad_knobs_name_themselves(field, value):
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    tasks.get_task(_config(**{field: value}))


def test_bad_view_knob_and_empty_video_folder(tmp_path):
  with pytest.raises(ValueError, match='crop_area'):
    unlabeled_batches.view_config(_config(**{'selfsup.views.crop_area': (0.0, 2.0)}))
  with pytest.raises(ValueError, match='source'):
    next(unlabeled_batches.unlabeled_batches(_config(**{'selfsup.source': str(tmp_path)})))


def test_presets():
  assert _config('cpu').task == 'bootstap' and _config('cpu_supervised').task == 'tapir'
  assert _config('cpu').training_steps == _config('cpu_supervised').training_steps == _config('cpu_spec').training_steps
  # cpu_spec keeps every knob of the spec's defaults (the base's) but the batch sizes; cpu adds the measured ones.
  base, spec, cpu = (_config(p).selfsup.to_dict() for p in ('', 'cpu_spec', 'cpu'))
  assert {k for k in base if base[k] != spec[k]} == {'per_device_batch', 'num_queries'}
  assert {k: cpu[k] for k in cpu if cpu[k] != spec[k]} == bootstap_configs.CPU_KNOBS
  assert _config('cpu').init_from == _config('cpu_spec').init_from
  with pytest.raises(ValueError, match='unknown preset'):
    bootstap_configs.get_config('gpu')
