"""TAP-Vid metrics on hand-built cases whose values are computed by hand in the comments."""

import warnings

import numpy as np
import pytest

from tapir import metrics


def _track(num_frames, query_frame=0.0, occluded=()):
  """One video with one static track at (x, y) = (10, 20); returns query_points, gt_occ, gt_tracks."""
  gt_tracks = np.tile(np.array([10.0, 20.0]), (1, 1, num_frames, 1))  # [1, 1, t, 2]
  gt_occ = np.zeros((1, 1, num_frames), bool)
  gt_occ[0, 0, list(occluded)] = True
  query_points = np.array([[[query_frame, 20.0, 10.0]]])
  return query_points, gt_occ, gt_tracks


def _scalars(m):
  return {k: float(np.squeeze(v)) for k, v in m.items()}


@pytest.mark.parametrize('mode', ['first', 'strided'])
def test_perfect_predictions_score_one(mode):
  qp, occ, tracks = _track(6, query_frame=1, occluded=(3, 4))
  m = _scalars(metrics.compute_tapvid_metrics(qp, occ, tracks, occ.copy(), tracks.copy(), mode))
  assert set(m) == set(metrics.METRIC_KEYS)
  assert all(v == 1.0 for v in m.values()), m


def test_shift_of_one_and_a_half_pixels():
  qp, occ, tracks = _track(5)
  pred = tracks + np.array([1.5, 0.0])  # 1.5 px: fails δ = 1, passes δ >= 2
  m = _scalars(metrics.compute_tapvid_metrics(qp, occ, tracks, occ, pred, 'first'))
  assert m['pts_within_1'] == 0.0
  assert m['jaccard_1'] == 0.0  # TP 0, 4 visible, FP 4 (visible but off): 0 / 8
  for d in (2, 4, 8, 16):
    assert m[f'pts_within_{d}'] == 1.0 and m[f'jaccard_{d}'] == 1.0
  assert m['average_jaccard'] == pytest.approx(0.8)
  assert m['average_pts_within_thresh'] == pytest.approx(0.8)
  assert m['occlusion_accuracy'] == 1.0


def test_thresholds_are_strict():
  qp, occ, tracks = _track(5)
  m = _scalars(metrics.compute_tapvid_metrics(qp, occ, tracks, occ, tracks + np.array([0.0, 2.0]), 'first'))
  assert m['pts_within_2'] == 0.0 and m['pts_within_4'] == 1.0  # distance exactly 2 is not < 2


def test_predicted_visible_on_occluded_frames_is_a_false_positive():
  qp, occ, tracks = _track(5, occluded=(3, 4))
  pred_occ = np.zeros_like(occ)  # predicts visible everywhere, positions perfect
  m = _scalars(metrics.compute_tapvid_metrics(qp, occ, tracks, pred_occ, tracks, 'first'))
  # Evaluated frames 1..4: visible 1, 2 (TP 2); predicted visible on occluded 3, 4 (FP 2): 2 / (2 + 2).
  assert m['jaccard_1'] == 0.5 and m['average_jaccard'] == 0.5
  assert m['pts_within_1'] == 1.0  # position accuracy ignores predicted occlusion
  assert m['occlusion_accuracy'] == 0.5


def test_predicted_occluded_on_visible_frame_is_a_false_negative():
  qp, occ, tracks = _track(5)
  pred_occ = occ.copy()
  pred_occ[0, 0, 2] = True
  m = _scalars(metrics.compute_tapvid_metrics(qp, occ, tracks, pred_occ, tracks, 'first'))
  assert m['jaccard_1'] == 0.75  # TP 3 of 4 visible, FP 0: 3 / (4 + 0)
  assert m['occlusion_accuracy'] == 0.75


def _garbage_before(qp, occ, tracks, frames):
  pred_tracks, pred_occ = tracks.copy(), occ.copy()
  pred_tracks[0, 0, frames] += 100.0
  return pred_tracks, pred_occ


def test_first_ignores_query_frame_and_earlier():
  qp, occ, tracks = _track(5, query_frame=2)
  pred_tracks, pred_occ = _garbage_before(qp, occ, tracks, [0, 1, 2])
  pred_occ[0, 0, 2] = True  # a wrong occlusion on the query frame itself
  m = _scalars(metrics.compute_tapvid_metrics(qp, occ, tracks, pred_occ, pred_tracks, 'first'))
  assert all(v == 1.0 for v in m.values()), m


def test_strided_ignores_only_the_query_frame():
  qp, occ, tracks = _track(5, query_frame=2)
  pred_tracks, pred_occ = _garbage_before(qp, occ, tracks, [2])
  pred_occ[0, 0, 2] = True
  m = _scalars(metrics.compute_tapvid_metrics(qp, occ, tracks, pred_occ, pred_tracks, 'strided'))
  assert all(v == 1.0 for v in m.values()), m
  # Off by 100 px on frames 0, 1 (before the query): evaluated frames 0, 1, 3, 4.
  pred_tracks, pred_occ = _garbage_before(qp, occ, tracks, [0, 1])
  m = _scalars(metrics.compute_tapvid_metrics(qp, occ, tracks, pred_occ, pred_tracks, 'strided'))
  assert m['pts_within_16'] == 0.5  # 2 of 4 visible within
  assert m['jaccard_16'] == pytest.approx(1 / 3)  # TP 2, FP 2, visible 4: 2 / 6
  assert m['occlusion_accuracy'] == 1.0


def test_query_frame_rounds_half_to_even():
  # Two tracks, 6 frames, both queries at a .5 frame; wrong occlusion at frames 3 and 4 respectively.
  occ = np.zeros((1, 2, 6), bool)
  tracks = np.zeros((1, 2, 6, 2))
  qp = np.array([[[2.5, 0.0, 0.0], [3.5, 0.0, 0.0]]])
  pred_occ = occ.copy()
  pred_occ[0, 0, 3] = True  # round(2.5) = 2: frames 3, 4, 5 evaluated, one wrong
  pred_occ[0, 1, 4] = True  # round(3.5) = 4: only frame 5 evaluated
  m = metrics.compute_tapvid_metrics(qp, occ, tracks, pred_occ, tracks, 'first', get_trackwise_metrics=True)
  np.testing.assert_allclose(m['occlusion_accuracy'], [[2 / 3, 1.0]])


def test_trackwise_and_per_video_shapes_and_pooling():
  qp_a, occ_a, tracks_a = _track(5, occluded=(3, 4))
  qp = np.concatenate([qp_a, qp_a], axis=1)
  occ = np.concatenate([occ_a, np.zeros_like(occ_a)], axis=1)  # track 0 occluded at 3, 4; track 1 never
  tracks = np.concatenate([tracks_a, tracks_a], axis=1)
  pred_occ = np.zeros_like(occ)
  video = metrics.compute_tapvid_metrics(qp, occ, tracks, pred_occ, tracks, 'first')
  trackwise = metrics.compute_tapvid_metrics(qp, occ, tracks, pred_occ, tracks, 'first', get_trackwise_metrics=True)
  assert all(v.shape == (1,) for v in video.values())
  assert all(v.shape == (1, 2) for v in trackwise.values())
  np.testing.assert_allclose(trackwise['jaccard_4'], [[0.5, 1.0]])
  np.testing.assert_allclose(video['jaccard_4'], [0.75])  # pooled: TP 6 / (visible 6 + FP 2), not the mean

  rng = np.random.default_rng(0)
  b, n, t = 2, 3, 7
  args = (rng.uniform(0, t - 1, (b, n, 3)), rng.random((b, n, t)) < 0.3, rng.normal(size=(b, n, t, 2)),
          rng.random((b, n, t)) < 0.3, rng.normal(size=(b, n, t, 2)))
  for mode in metrics.QUERY_MODES:
    assert all(v.shape == (b,) for v in metrics.compute_tapvid_metrics(*args, mode).values())
    assert all(v.shape == (b, n) for v in metrics.compute_tapvid_metrics(*args, mode, True).values())


def test_empty_denominators_give_nan_without_warnings():
  qp, occ, tracks = _track(4, query_frame=0, occluded=(1, 2, 3))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    m = _scalars(metrics.compute_tapvid_metrics(qp, occ, tracks, occ, tracks, 'first'))
    assert np.isnan(m['pts_within_1']) and np.isnan(m['jaccard_1']) and np.isnan(m['average_jaccard'])
    assert m['occlusion_accuracy'] == 1.0
    qp_last, occ_last, tracks_last = _track(4, query_frame=3)  # nothing after the last frame
    m = _scalars(metrics.compute_tapvid_metrics(qp_last, occ_last, tracks_last, occ_last, tracks_last, 'first'))
    assert np.isnan(m['occlusion_accuracy'])


def test_input_validation():
  qp, occ, tracks = _track(4)
  with pytest.raises(ValueError, match='query_mode'):
    metrics.compute_tapvid_metrics(qp, occ, tracks, occ, tracks, 'last')
  with pytest.raises(ValueError, match='pred_tracks'):
    metrics.compute_tapvid_metrics(qp, occ, tracks, occ, tracks[:, :, :3], 'first')
  with pytest.raises(ValueError, match='boolean'):
    metrics.compute_tapvid_metrics(qp, occ, tracks, occ.astype(np.float32) - 0.3, tracks, 'first')
  m = metrics.compute_tapvid_metrics(qp, occ, tracks, occ.astype(np.int32), tracks, 'first')  # 0/1 accepted
  assert float(m['average_jaccard'][0]) == 1.0


def test_accumulator_is_a_plain_mean_over_videos():
  acc = metrics.MetricsAccumulator()
  acc.add({'average_jaccard': np.array([0.2, 0.4])})
  acc.add({'average_jaccard': np.array([0.9])})
  assert acc.num_videos == 3
  assert acc.mean()['average_jaccard'] == pytest.approx(0.5)
  np.testing.assert_allclose(acc.per_video()['average_jaccard'], [0.2, 0.4, 0.9])
  assert metrics.average_metrics([{'a': 1.0}, {'a': 0.0}]) == {'a': 0.5}
  with pytest.raises(ValueError, match='keys'):
    acc.add({'other': np.array([1.0])})


def _means(value):
  return {k: value for k in metrics.METRIC_KEYS}


def test_latex_table_matches_the_reference_log():
  means = _means(0.05)
  means.update(average_jaccard=0.5846, occlusion_accuracy=1.0)
  table = metrics.format_results_table({'davis': means}, fmt='latex')
  header, body = table.split('\n')
  assert header == (r'AJ & $<\delta^{x}_{avg}$ & OA & Jac. $\delta^{0}$ & Jac. $\delta^{1}$ & Jac. $\delta^{2}$ & '
                    r'Jac. $\delta^{3}$ & Jac. $\delta^{4}$ & $<\delta^{0}$ & $<\delta^{1}$ & $<\delta^{2}$ & '
                    r'$<\delta^{3}$ & $<\delta^{4}$')
  assert body == ' & '.join(['58.5', '5.0', '1e+02'] + ['5.0'] * 10)


def test_markdown_table_has_one_row_per_dataset():
  table = metrics.format_results_table({'davis_first': _means(0.5), 'kinetics_first': _means(0.25)})
  lines = table.split('\n')
  assert len(lines) == 4 and lines[0].startswith('| Dataset | AJ |')
  assert lines[2].startswith('| davis_first | 50.0 |') and lines[3].count('25.0') == 13
  with pytest.raises(ValueError, match='lacks'):
    metrics.format_results_table({'x': {'average_jaccard': 1.0}})
  with pytest.raises(ValueError, match='fmt'):
    metrics.format_results_table({'x': _means(1.0)}, fmt='html')
