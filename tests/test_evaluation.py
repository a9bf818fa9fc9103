"""The evaluation loop with the zero-motion baseline on tiny synthetic videos."""

import csv
import json

import numpy as np
import pytest

from tapir.evaluation import loop as evaluation
from tapir import metrics
from tapir.data import tapvid


def _stored(seed, t=6, n=4, h=16, w=16):
  """Normalised arrays of a video whose points drift, occluded now and then."""
  rng = np.random.default_rng(seed)
  video = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
  start = rng.uniform(0.2, 0.8, (n, 1, 2))
  points = start + np.arange(t)[None, :, None] * rng.uniform(-0.01, 0.01, (n, 1, 2))  # [n, t, 2]
  occluded = rng.random((n, t)) < 0.25
  occluded[:, 0] = False
  return video, points, occluded


def _examples(query_mode, resolution=(16, 16)):
  return [tapvid.make_example(*_stored(seed), f'video{seed}', query_mode, resolution) for seed in (0, 1)]


def test_zero_motion_predictor():
  query_points = np.array([[2.0, 5.0, 7.0], [0.0, 1.5, 3.25]])  # (t, y, x)
  tracks, occluded = evaluation.zero_motion_predictor(np.zeros((4, 8, 8, 3), np.uint8), query_points)
  assert tracks.shape == (2, 4, 2) and occluded.shape == (2, 4) and occluded.dtype == bool
  np.testing.assert_array_equal(tracks[0], [[7.0, 5.0]] * 4)
  np.testing.assert_array_equal(tracks[1], [[3.25, 1.5]] * 4)
  assert not occluded.any()


@pytest.mark.parametrize('query_mode', ['first', 'strided'])
def test_evaluate_matches_compute_tapvid_metrics(query_mode, tmp_path):
  examples = _examples(query_mode)
  result = evaluation.evaluate(evaluation.zero_motion_predictor, examples, query_mode, metric_resolution=(16, 16),
                               progress=False)
  assert result.video_names == ['video0', 'video1']
  for i, ex in enumerate(examples):
    tracks, occluded = evaluation.zero_motion_predictor(ex.video, ex.query_points)
    expected = metrics.compute_tapvid_metrics(ex.query_points[None], ex.occluded[None], ex.target_points[None],
                                              occluded[None], tracks[None], query_mode)
    for key in metrics.METRIC_KEYS:
      assert result.per_video[key][i] == pytest.approx(float(expected[key][0]))
  for key in metrics.METRIC_KEYS:
    assert result.mean[key] == pytest.approx(np.mean(result.per_video[key]))
  assert 0 < result.mean['average_jaccard'] < 1  # the baseline is neither perfect nor useless here

  table = result.table('synthetic', fmt='markdown')
  assert table.split('\n')[2].split(' | ')[1] == f"{result.mean['average_jaccard'] * 100:.1f}"
  latex = result.table(fmt='latex').split('\n')
  assert len(latex) == 2 and latex[1].split(' & ')[0] == format(result.mean['average_jaccard'] * 100, '.3')

  result.to_csv(tmp_path / 'r.csv')
  rows = list(csv.DictReader(open(tmp_path / 'r.csv')))
  assert [r['video_name'] for r in rows] == ['video0', 'video1', 'mean']
  assert float(rows[2]['average_jaccard']) == result.mean['average_jaccard']
  result.to_json(tmp_path / 'r.json')
  record = json.load(open(tmp_path / 'r.json'))
  assert record['num_videos'] == 2 and record['query_mode'] == query_mode
  assert record['per_video'][1]['jaccard_4'] == pytest.approx(result.per_video['jaccard_4'][1])


def test_full_resolution_inference_is_scored_at_the_metric_resolution():
  # The same stored data read at 256x256 and at its native 16x16: the zero-motion baseline is linear in the
  # coordinates, so after rescaling predictions and ground truth to 256x256 the scores must agree.
  at_256 = evaluation.evaluate(evaluation.zero_motion_predictor, _examples('first', (256, 256)), 'first',
                               progress=False)
  native = evaluation.evaluate(evaluation.zero_motion_predictor, _examples('first', None), 'first', progress=False)
  for key in metrics.METRIC_KEYS:
    np.testing.assert_allclose(native.per_video[key], at_256.per_video[key])
  # Without rescaling, the 16x16 pixels would make every track look 16 times closer.
  unscaled = evaluation.evaluate(evaluation.zero_motion_predictor, _examples('first', None), 'first',
                                 metric_resolution=(16, 16), progress=False)
  assert unscaled.mean['pts_within_1'] > native.mean['pts_within_1']


def test_videos_without_queries_are_skipped_and_bad_predictions_rejected():
  video, points, occluded = _stored(0)
  empty = tapvid.make_example(video, points, np.ones_like(occluded), 'empty', 'first', None)
  result = evaluation.evaluate(evaluation.zero_motion_predictor, [empty] + _examples('first'), 'first',
                               metric_resolution=(16, 16), progress=False)
  assert result.skipped == ['empty'] and result.video_names == ['video0', 'video1']
  assert result.table('mine').endswith('mine: 1 of 3 videos not scored, no visible point to query: empty')
  assert 'not scored' not in evaluation.evaluate(evaluation.zero_motion_predictor, _examples('first'), 'first',
                                                 progress=False).table()

  def logits_predictor(video, query_points):
    tracks, occluded = evaluation.zero_motion_predictor(video, query_points)
    return tracks, occluded.astype(np.float32)
  with pytest.raises(ValueError, match='boolean'):
    evaluation.evaluate(logits_predictor, _examples('first'), 'first', progress=False)
  with pytest.raises(ValueError, match=r"'video0'.*expected \[q, t, 2\]"):
    evaluation.evaluate(lambda v, q: (np.zeros((1, 1, 2)), np.zeros((1, 1), bool)), _examples('first'), 'first',
                        progress=False)
  with pytest.raises(ValueError, match='query_mode'):
    evaluation.evaluate(evaluation.zero_motion_predictor, [], 'q_first')
