"""TAP-Vid readers and query sampling on tiny files written here in the published layouts."""

import csv
import io
import pickle

import mediapy
import numpy as np
from PIL import Image
import pytest

from tapir.data import tapvid


def _tracks(n, t):
  """Distinct pixel positions: track i at frame f is (x, y) = (10 i + f, 100 + 10 i + f)."""
  i, f = np.meshgrid(np.arange(n), np.arange(t), indexing='ij')
  return np.stack([10 * i + f, 100 + 10 * i + f], axis=-1).astype(np.float32)


def test_sample_queries_first():
  occluded = np.ones((4, 6), bool)
  occluded[0, :] = False  # visible from frame 0
  occluded[2, 3:] = False  # first visible at frame 3; track 1 is never visible
  occluded[3, 1] = False  # visible at frame 1 only
  tracks = _tracks(4, 6)
  query_points, target_points, occ = tapvid.sample_queries_first(occluded, tracks)
  np.testing.assert_array_equal(query_points, [[0, 100, 0], [3, 123, 23], [1, 131, 31]])
  assert query_points.dtype == np.float32
  np.testing.assert_array_equal(target_points, tracks[[0, 2, 3]])
  np.testing.assert_array_equal(occ, occluded[[0, 2, 3]])


def test_sample_queries_strided():
  occluded = np.ones((5, 11), bool)  # stride 5: query frames 0, 5, 10
  occluded[0, :] = False  # visible at all three
  occluded[2, 3:7] = False  # visible at 5 only; track 1 never visible
  occluded[3, 1:5] = False  # visible, but at no stride frame: dropped
  occluded[4, 10] = False
  tracks = _tracks(5, 11)
  query_points, target_points, occ, trackgroup = tapvid.sample_queries_strided(occluded, tracks)
  np.testing.assert_array_equal(trackgroup, [0, 0, 2, 0, 4])  # by query frame, then by track
  np.testing.assert_array_equal(query_points, [[0, 100, 0], [5, 105, 5], [5, 125, 25], [10, 110, 10],
                                               [10, 150, 50]])
  np.testing.assert_array_equal(target_points, tracks[trackgroup])
  np.testing.assert_array_equal(occ, occluded[trackgroup])
  empty = tapvid.sample_queries_strided(np.ones((2, 3), bool), _tracks(2, 3))
  assert [a.shape for a in empty] == [(0, 3), (0, 3, 2), (0, 3), (0,)]


def _arrays(t=4, h=24, w=32, n=3, seed=0):
  rng = np.random.default_rng(seed)
  video = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
  points = rng.uniform(0.1, 0.9, (n, t, 2)).astype(np.float32)
  points[0, 0] = (0.5, 0.25)
  occluded = np.zeros((n, t), bool)
  occluded[1, :2] = True
  return {'video': video, 'points': points, 'occluded': occluded}


def _dump(path, obj):
  with open(path, 'wb') as f:
    pickle.dump(obj, f)
  return path


def test_davis_resizes_to_256_and_scales_points(tmp_path):
  data = {'bear': _arrays(seed=0), 'car': _arrays(seed=1)}
  path = _dump(tmp_path / 'tapvid_davis.pkl', data)
  examples = list(tapvid.read_davis(path, 'first'))
  assert [e.video_name for e in examples] == ['bear', 'car']
  bear = examples[0]
  assert bear.video.shape == (4, 256, 256, 3) and bear.video.dtype == np.uint8
  np.testing.assert_array_equal(bear.video, mediapy.resize_video(data['bear']['video'], (256, 256)))
  np.testing.assert_allclose(bear.target_points[0, 0], [128.0, 64.0])
  np.testing.assert_allclose(bear.target_points, data['bear']['points'] * 256, rtol=1e-6)
  np.testing.assert_allclose(bear.query_points[1], [2, *(data['bear']['points'][1, 2, ::-1] * 256)], rtol=1e-6)
  assert bear.trackgroup is None

  native = next(tapvid.read_davis(path, 'strided', resolution=None))
  assert native.video.shape == (4, 24, 32, 3)
  np.testing.assert_allclose(native.target_points[0, 0], [16.0, 6.0])  # (0.5 * w, 0.25 * h)
  np.testing.assert_array_equal(native.trackgroup, [0, 2])  # 4 frames: only frame 0, where track 1 is occluded
  batch = native.to_model_batch()
  assert batch['video'].shape == (1, 4, 24, 32, 3) and batch['video'].dtype == np.float32
  assert batch['trackgroup'].shape == (1, 2)


def test_davis_at_the_output_size_is_not_resampled(tmp_path):
  data = {'same': _arrays(h=16, w=16)}
  example = next(tapvid.read_davis(_dump(tmp_path / 'd.pkl', data), 'first', resolution=(16, 16)))
  np.testing.assert_array_equal(example.video, data['same']['video'])


def test_rgb_stacking_list_pickle(tmp_path):
  path = _dump(tmp_path / 'tapvid_rgb_stacking.pkl', [_arrays(seed=0), _arrays(seed=1)])
  examples = list(tapvid.read_rgb_stacking(path, 'strided', resolution=(16, 16)))
  assert [e.video_name for e in examples] == ['rgb_stacking_0000', 'rgb_stacking_0001']
  assert examples[1].video.shape == (4, 16, 16, 3)


def _jpeg(frame):
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def test_kinetics_shards_with_jpeg_frames(tmp_path):
  plain = _arrays(seed=0)
  plain['video'][:] = 200  # flat frames survive JPEG almost exactly
  encoded = dict(plain, video=np.array([_jpeg(f) for f in plain['video']], dtype=object),
                 points=plain['points'].astype(np.float64))
  _dump(tmp_path / '0000_of_0010.pkl', [encoded])
  _dump(tmp_path / '0001_of_0010.pkl', {'clip_b': _arrays(seed=2)})
  _dump(tmp_path / 'notes.pkl', 'not a shard')  # ignored: does not match *_of_0010.pkl
  examples = list(tapvid.read_kinetics(tmp_path, 'first', resolution=(16, 16)))
  assert [e.video_name for e in examples] == ['0000_of_0010_0000', 'clip_b']
  first = examples[0]
  assert first.video.dtype == np.uint8 and first.video.shape == (4, 16, 16, 3)
  assert np.abs(first.video.astype(int) - 200).max() <= 2
  assert first.target_points.dtype == np.float32
  np.testing.assert_allclose(first.target_points, plain['points'] * 16, rtol=1e-6)


def _write_mp4(path, frames):
  from tapir import video as video_io  # pylint: disable=g-import-not-at-top
  video_io.ensure_ffmpeg()
  mediapy.write_video(path, frames, fps=10)


def _csv_rows(video_id, points, occluded):
  for p, o in zip(points, occluded):
    yield [video_id] + [v for (x, y), oc in zip(p, o) for v in (f'{x:.6f}', f'{y:.6f}', str(int(oc)))]


def test_csv_dataset_with_mp4(tmp_path, monkeypatch):
  frames = np.full((5, 32, 48, 3), 90, np.uint8)
  _write_mp4(str(tmp_path / 'clip.mp4'), frames)
  points = np.random.default_rng(0).uniform(0.1, 0.9, (2, 7, 2))  # 7 annotated frames, 5 video frames
  occluded = np.zeros((2, 7), bool)
  occluded[1, :3] = True
  with open(tmp_path / 'ann.csv', 'w', newline='') as f:
    csv.writer(f).writerows(_csv_rows('clip', points, occluded))
  (example,) = tapvid.read_csv_dataset(tmp_path / 'ann.csv', tmp_path, 'first', resolution=(16, 16))
  assert example.video_name == 'clip' and example.video.shape == (5, 16, 16, 3)
  assert example.occluded.shape == (2, 5)  # annotation truncated to the video
  np.testing.assert_allclose(example.query_points[1], [3, points[1, 3, 1] * 16, points[1, 3, 0] * 16], atol=1e-4)

  monkeypatch.setattr(tapvid, 'CSV_MAX_FRAMES', 2)  # 5 frames -> 3 parts [0, 1), [1, 3), [3, 5)
  parts = list(tapvid.open_dataset('csv', tmp_path / 'ann.csv', 'strided', (16, 16), video_dir=tmp_path))
  assert [p.video_name for p in parts] == ['clip_part0', 'clip_part1', 'clip_part2']
  assert [p.video.shape[0] for p in parts] == [1, 2, 2]


def test_npz_round_trip(tmp_path):
  arrays = _arrays()
  tapvid.write_npz_example(tmp_path / 'walk.npz', **arrays)
  tapvid.write_npz_example(tmp_path / 'run.npz', **_arrays(seed=3))
  names = [e.video_name for e in tapvid.read_npz_dataset(tmp_path, 'first', resolution=None)]
  assert names == ['run', 'walk']
  example = next(tapvid.open_dataset('npz', tmp_path / 'walk.npz', 'first', resolution=None))
  np.testing.assert_array_equal(example.video, arrays['video'])
  np.testing.assert_allclose(example.target_points[0, 0], [16.0, 6.0])


def test_missing_paths_raise_file_not_found(tmp_path):
  for reader in (tapvid.read_davis, tapvid.read_rgb_stacking, tapvid.read_robotap, tapvid.read_kinetics,
                 tapvid.read_npz_dataset):
    with pytest.raises(FileNotFoundError, match='nowhere'):
      reader(tmp_path / 'nowhere', 'first')
  with pytest.raises(FileNotFoundError, match='_of_0010'):
    tapvid.read_kinetics(tmp_path, 'first')
  (tmp_path / 'a.csv').write_text('ghost,0.5,0.5,0\n')
  with pytest.raises(FileNotFoundError, match='ghost.mp4'):
    list(tapvid.read_csv_dataset(tmp_path / 'a.csv', tmp_path, 'first'))


def test_wrong_formats_name_the_file_and_the_expected_format(tmp_path):
  text = tmp_path / 'davis.pkl'
  text.write_text('hello')
  with pytest.raises(ValueError, match=r"davis.pkl.*cannot unpickle.*expected .*'occluded': bool \[N, T\]"):
    list(tapvid.read_davis(text, 'first'))
  missing = _dump(tmp_path / 'missing.pkl', {'v': {'video': _arrays()['video']}})
  with pytest.raises(ValueError, match=r"missing.pkl \['v'\].*missing keys \['occluded', 'points'\]"):
    list(tapvid.read_davis(missing, 'first'))
  pixels = _arrays()
  pixels['points'] = pixels['points'] * 256
  with pytest.raises(ValueError, match='pixels.pkl.*look like pixels'):
    list(tapvid.read_robotap(_dump(tmp_path / 'pixels.pkl', {'v': pixels}), 'first'))
  floaty = dict(_arrays(), video=_arrays()['video'] / 255.0)
  with pytest.raises(ValueError, match=r"float.pkl.*'video' must be uint8"):
    list(tapvid.read_davis(_dump(tmp_path / 'float.pkl', {'v': floaty}), 'first'))
  short = dict(_arrays(), occluded=np.zeros((3, 2), bool))
  with pytest.raises(ValueError, match='does not match'):
    list(tapvid.read_davis(_dump(tmp_path / 'short.pkl', {'v': short}), 'first'))
  with pytest.raises(ValueError, match='not a list'):
    list(tapvid.read_rgb_stacking(_dump(tmp_path / 'dict.pkl', {'v': _arrays()}), 'first'))
  (tmp_path / 'bad.npz').write_bytes(b'not a zip')
  with pytest.raises(ValueError, match=r'bad.npz.*npz'):
    list(tapvid.read_npz_dataset(tmp_path / 'bad.npz', 'first'))
  (tmp_path / 'b.csv').write_text('clip,0.5,0.5\n')
  with pytest.raises(ValueError, match=r'b.csv line 1.*multiple of 3'):
    tapvid.read_csv_dataset(tmp_path / 'b.csv', tmp_path, 'first')


def test_open_dataset_and_query_mode_errors(tmp_path):
  with pytest.raises(ValueError, match=r"unknown TAP-Vid dataset 'davsi'.*'csv', 'davis', 'kinetics', 'kubric', 'npz'"):
    tapvid.open_dataset('davsi', tmp_path, 'first')
  with pytest.raises(ValueError, match='query_mode'):
    tapvid.open_dataset('davis', tmp_path, 'q_first')
  with pytest.raises(ValueError, match='video_dir'):
    tapvid.open_dataset('csv', tmp_path, 'first')


def test_rescale_to_metric_resolution_is_a_pure_multiplication():
  query_points = np.array([[3.0, 12.0, 24.0]])  # (t, y, x) in a 48 x 96 (h, w) video
  tracks = np.array([[[24.0, 12.0]]])
  qp, tr = tapvid.rescale_to_metric_resolution(query_points, tracks, (48, 96))
  np.testing.assert_allclose(qp, [[3.0, 64.0, 64.0]])
  np.testing.assert_allclose(tr, [[[64.0, 64.0]]])


class _Payload:
  """Unpickling this calls `open(path, 'w')`: what a crafted annotation file would do."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, 'w'))


def test_a_crafted_pickle_cannot_run_code(tmp_path):
  import pickle  # pylint: disable=g-import-not-at-top
  from tapir import safe_pickle  # pylint: disable=g-import-not-at-top
  marker = tmp_path / 'payload_ran'
  evil = tmp_path / 'tapvid_davis.pkl'
  video = np.zeros((2, 8, 8, 3), np.uint8)
  with open(evil, 'wb') as f:
    pickle.dump({'clip': {'video': video, 'points': np.zeros((1, 2, 2)), 'occluded': np.zeros((1, 2), bool),
                          'extra': _Payload(marker)}}, f)
  with pytest.raises(safe_pickle.UnsafePickleError, match=r'tapvid_davis\.pkl: refusing to load .*open'):
    list(tapvid.open_dataset('davis', evil, 'first'))
  assert not marker.exists()
