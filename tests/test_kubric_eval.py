"""TAP-Vid-Kubric: a TFDS MOVi-E validation split (the tiny one of `movi_e_testdata`) through the track pipeline."""

import numpy as np
import pytest

from movi_e_testdata import golden_example
from movi_e_testdata import NUM_EXAMPLES
from movi_e_testdata import TINY_MOVI_E
from movi_e_testdata import tiny_movi_e_builder
from tapir.evaluation import loop as evaluation
from tapir.data import kubric
from tapir.data import tapvid

tfds = pytest.importorskip('tensorflow_datasets')


@pytest.fixture(scope='module')
def data_dir(golden_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  tiny_movi_e_builder(tfds, golden_dir)(data_dir=str(path)).download_and_prepare()
  return path


def _read(data_dir, mode='first', **kwargs):
  kwargs = {'dataset': TINY_MOVI_E, 'tracks_to_sample': 32, **kwargs}
  return list(tapvid.open_dataset('kubric', data_dir, mode, resolution=None, **kwargs))


def test_kubric_reader_is_the_training_pipeline_without_crop(data_dir, golden_dir):
  examples = _read(data_dir)
  assert [e.video_name for e in examples] == [f'validation_{i:04d}' for i in range(NUM_EXAMPLES)]
  scene = golden_example(golden_dir)
  for index, e in enumerate(examples):
    want = kubric.make_training_example(scene, np.random.default_rng([0, index]), 32, random_crop=False,
                                        train_size=scene['video'].shape[1:3])
    np.testing.assert_array_equal(e.video, scene['video'])
    np.testing.assert_array_equal(e.query_points, want['query_points'])
    np.testing.assert_allclose(e.target_points, want['target_points'], atol=1e-5)
    np.testing.assert_array_equal(e.occluded, want['occluded'])
  # A fixed seed per video: the same set every time, different queries per video.
  again = _read(data_dir)
  np.testing.assert_array_equal(again[1].query_points, examples[1].query_points)
  assert not np.array_equal(examples[0].query_points, examples[1].query_points)
  assert len(_read(data_dir, num_videos=2)) == 2


def test_kubric_vflip_mirrors_rows_and_labels(data_dir):
  plain, flipped = _read(data_dir, num_videos=1)[0], _read(data_dir, num_videos=1, vflip=True)[0]
  h = plain.video.shape[1]
  np.testing.assert_array_equal(flipped.video, plain.video[:, ::-1])
  np.testing.assert_allclose(flipped.query_points[:, 1], h - plain.query_points[:, 1], atol=1e-5)
  np.testing.assert_array_equal(flipped.query_points[:, [0, 2]], plain.query_points[:, [0, 2]])
  np.testing.assert_allclose(flipped.target_points[..., 1], h - plain.target_points[..., 1], atol=1e-5)
  np.testing.assert_array_equal(flipped.occluded, plain.occluded)
  # The flipped labels sit on the flipped pixels: query colours are unchanged.
  for (t, y, x), (_, fy, fx) in zip(plain.query_points[:8], flipped.query_points[:8]):
    np.testing.assert_array_equal(plain.video[int(t), int(y), int(x)], flipped.video[int(t), int(fy), int(fx)])


def test_kubric_resized_and_scored(data_dir):
  (example,) = tapvid.open_dataset('kubric', data_dir, 'strided', resolution=(32, 32), dataset=TINY_MOVI_E,
                                   tracks_to_sample=16, num_videos=1)
  assert example.video.shape == (8, 32, 32, 3) and example.query_points.shape == (16, 3)
  assert (example.query_points[:, 1:] <= 32).all()
  result = evaluation.evaluate(evaluation.zero_motion_predictor, [example], 'strided', progress=False)
  assert 0 <= result.mean['occlusion_accuracy'] <= 1


def test_kubric_errors(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match='no_such_set'):
    _read(data_dir, dataset='no_such_set')
  with pytest.raises(FileNotFoundError):
    _read(tmp_path / 'missing')
  with pytest.raises(ValueError, match='query_mode'):
    _read(data_dir, mode='middle')
  with pytest.raises(ValueError, match='tracks_to_sample'):
    list(tapvid.open_dataset('kubric', data_dir, 'first', dataset=TINY_MOVI_E, tracks_to_sample=0))
