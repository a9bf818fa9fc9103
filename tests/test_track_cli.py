"""`tapir.tracking.cli.track_video` and the `experiments.track` runner on a tiny generated video with tiny random
models."""

import json
import os
import pathlib
import subprocess
import sys
import tracemalloc

import numpy as np
from PIL import Image
import pytest

import tapir
from tapir.tracking import cli as track_video
from tapir import video as video_io
from tapir.tracking import queries as queries_lib
from tests.conftest import save_random_tapir

REPO = pathlib.Path(__file__).resolve().parents[1]

# A tiny architecture: random weights, saved as an official-format checkpoint.
TINY = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32, initial_resolution=(32, 32))
TINY_JSON = json.dumps(TINY)
T, H, W = 6, 48, 64


@pytest.fixture(scope='module')
def video_path(tmp_path_factory):
  rng = np.random.default_rng(0)
  coarse = rng.integers(0, 256, (T, H // 8, W // 8, 3), dtype=np.uint8)
  video = np.kron(coarse, np.ones((1, 8, 8, 1), np.uint8))  # blocky, survives compression
  path = tmp_path_factory.mktemp('video') / 'in.mp4'
  video_io.write_video(path, video, fps=12)
  return str(path)


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  return save_random_tapir(tmp_path_factory.mktemp('ckpt') / 'tiny_tapir.npy', **TINY)


@pytest.fixture(scope='module')
def online_tracker():
  return tapir.OnlineTracker.random_init(preset='causal_tapir', resize_to=(32, 32), **TINY)


def _run_file(video_path, checkpoint, tmp_path, **kwargs):
  kwargs = {'grid': 3, 'resize': 32, 'model_overrides': TINY_JSON, 'progress': False, **kwargs}
  return track_video.track_file(video_path, str(tmp_path / 'out.mp4'), checkpoint,
                                save_path=str(tmp_path / 'tracks.npz'), **kwargs)


def test_read_video_keeps_size_and_fps(video_path):
  video, fps = video_io.read_video(video_path)
  assert video.shape == (T, H, W, 3) and video.dtype == np.uint8
  assert fps == pytest.approx(12)


def test_grid_points_cover_the_frame():
  q = queries_lib.grid_points((H, W), 4)
  assert q.shape == (16, 3) and (q[:, 0] == 0).all()
  assert ((q[:, 1:] % 1) == 0.5).all()  # pixel centres
  assert (q[:, 1] > 0).all() and (q[:, 1] < H).all() and (q[:, 2] > 0).all() and (q[:, 2] < W).all()
  assert len(np.unique(q[:, 1])) == 4 and len(np.unique(q[:, 2])) == 4


def test_parse_points():
  np.testing.assert_array_equal(queries_lib.parse_points('0,1.5,2; 3,4,5.25;'), [[0, 1.5, 2], [3, 4, 5.25]])
  for bad in ('1,2', 'a,b,c', '', '0,1,nan'):
    with pytest.raises(ValueError):
      queries_lib.parse_points(bad)


def test_mask_queries_lie_inside_the_mask(tmp_path):
  mask = np.zeros((H, W), np.uint8)
  mask[10:30, 20:50] = 255
  Image.fromarray(mask).save(tmp_path / 'mask.png')
  q = queries_lib.make_query_points((T, H, W), mask=str(tmp_path / 'mask.png'), mask_frame=2)
  assert (q[:, 0] == 2).all()
  assert mask[q[:, 1].astype(int), q[:, 2].astype(int)].all()


def test_track_file_offline(video_path, tiny_checkpoint, tmp_path):
  result = _run_file(video_path, tiny_checkpoint, tmp_path)
  out, _ = video_io.read_video(tmp_path / 'out.mp4')
  assert out.shape == (T, H, W, 3)
  saved = np.load(tmp_path / 'tracks.npz')
  assert saved['tracks'].shape == (9, T, 2) and saved['visible'].shape == (9, T)
  assert saved['visible'].dtype == bool and saved['query_points'].shape == (9, 3)
  assert np.isfinite(saved['tracks']).all()
  assert (str(saved['preset']), str(saved['resize']), str(saved['online'])) == ('tapir', '32x32', 'False')
  assert str(saved['checkpoint']) == tiny_checkpoint
  np.testing.assert_array_equal(saved['tracks'], result.tracks)
  # The tracks are the model's, mapped back from the 32x32 model input to the video's pixels.
  video, _ = video_io.read_video(video_path)
  tracker = tapir.Tracker.from_checkpoint(tiny_checkpoint, preset='tapir', **TINY)
  expected = tracker.predict(video, result.query_points, resize_to=(32, 32))
  np.testing.assert_allclose(result.tracks, expected.tracks, atol=1e-4)
  np.testing.assert_array_equal(result.visible, expected.visible)


def test_track_online_starts_points_at_their_frame(video_path, online_tracker):
  video, _ = video_io.read_video(video_path)
  tracker = online_tracker
  queries = np.array([[0, 10.5, 20.5], [2, 30.5, 40.5]], np.float32)
  tracks, visible = track_video.track_video(video, tracker, queries, progress=False)
  assert tracks.shape == (2, T, 2) and visible.shape == (2, T)
  assert np.isfinite(tracks).all()
  np.testing.assert_array_equal(tracks[1, :2], [[40.5, 30.5], [40.5, 30.5]])  # before its frame: the query
  assert not visible[1, :2].any()
  with pytest.raises(ValueError, match='whole frame'):
    track_video.track_video(video, tracker, np.array([[0.5, 10, 10]]), progress=False)


def test_unreadable_video(tmp_path, tiny_checkpoint):
  bad = tmp_path / 'bad.mp4'
  bad.write_bytes(b'not a video at all')
  with pytest.raises(ValueError, match='cannot read video'):
    _run_file(str(bad), tiny_checkpoint, tmp_path)
  with pytest.raises(ValueError, match='video not found'):
    _run_file(str(tmp_path / 'missing.mp4'), tiny_checkpoint, tmp_path)


def test_mask_of_wrong_size(video_path, tiny_checkpoint, tmp_path):
  Image.fromarray(np.full((30, 40), 255, np.uint8)).save(tmp_path / 'mask.png')
  with pytest.raises(ValueError, match=r'30x40.*48x64'):
    _run_file(video_path, tiny_checkpoint, tmp_path, grid=None, mask=str(tmp_path / 'mask.png'))


@pytest.mark.parametrize('points', ['0,10,70', '0,-1,5', '6,10,10'])
def test_points_outside_the_video(video_path, tiny_checkpoint, tmp_path, points):
  with pytest.raises(ValueError, match='outside the video'):
    _run_file(video_path, tiny_checkpoint, tmp_path, grid=None, points=points)


def test_checkpoint_for_another_preset(video_path, tiny_checkpoint, tmp_path):
  with pytest.raises(ValueError, match=r"does not fit preset 'bootstapir'(.|\n)*missing: tapir/~/extra_convs"):
    _run_file(video_path, tiny_checkpoint, tmp_path, preset='bootstapir')


def test_online_needs_a_causal_preset(video_path, tiny_checkpoint, tmp_path):
  with pytest.raises(ValueError, match='online=True needs a causal TAPIR'):
    _run_file(video_path, tiny_checkpoint, tmp_path, online=True)


def test_missing_checkpoint_explains_how_to_get_weights(video_path, tmp_path):
  with pytest.raises(ValueError, match='download_checkpoints.sh'):
    _run_file(video_path, None, tmp_path)


def _runner(*flags):
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  return subprocess.run([sys.executable, '-m', 'experiments.track', *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_runner_end_to_end(video_path, tiny_checkpoint, tmp_path):
  out, npz = tmp_path / 'painted.mp4', tmp_path / 'tracks.npz'
  proc = _runner('--video', video_path, '--checkpoint', tiny_checkpoint, '--points', '0,10.5,20.5;3,30,40',
                 '--resize', '32', '--model_overrides', TINY_JSON, '--out', str(out), '--save', str(npz))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert video_io.read_video(out)[0].shape == (T, H, W, 3)
  assert np.load(npz)['tracks'].shape == (2, T, 2)


def test_runner_without_checkpoint(video_path, tmp_path):
  proc = _runner('--video', video_path, '--grid', '2', '--out', str(tmp_path / 'o.mp4'))
  assert proc.returncode != 0
  assert 'download_checkpoints.sh' in proc.stderr and '--random_weights' in proc.stderr


def test_checkpoint_from_our_trainer_carries_its_architecture(video_path, tmp_path):
  """A checkpoint with stored settings runs without --preset/--model_overrides, at its own resolution."""
  tracker = tapir.Tracker.random_init(preset='tapir', **TINY)
  path = tmp_path / 'trained.npy'
  tapir.save_checkpoint(path, tracker.params, tracker.state,
                        **{tapir.checkpoint.MODEL_KWARGS_KEY: {**tapir.PRESETS['tapir'], **TINY}})
  with pytest.raises(ValueError, match="preset 'bootstapir' contradicts the settings stored"):  # issue 12
    track_video.track_file(video_path, None, str(path), preset='bootstapir', grid=2, progress=False)
  result = track_video.track_file(video_path, None, str(path), grid=2, progress=False,
                                  save_path=str(tmp_path / 'tracks.npz'))
  assert str(np.load(tmp_path / 'tracks.npz')['resize']) == '32x32'  # TINY's initial_resolution
  video, _ = video_io.read_video(video_path)
  expected = tracker.predict(video, result.query_points, resize_to=(32, 32))
  np.testing.assert_allclose(result.tracks, expected.tracks, atol=1e-4)


def _write_long_video(path, num_frames, hw=(64, 64)):
  """A blocky random video written frame by frame (nothing of its length is held in memory)."""
  rng = np.random.default_rng(num_frames)
  with video_io.FrameWriter(path, *hw, fps=25) as writer:
    for _ in range(num_frames):
      coarse = rng.integers(0, 256, (hw[0] // 8, hw[1] // 8, 3), dtype=np.uint8)
      writer.write(np.kron(coarse, np.ones((8, 8, 1), np.uint8)))
  return str(path)


def test_online_tracking_memory_does_not_grow_with_the_video(tmp_path, online_tracker):
  """--online streams: tracking 400 frames peaks at the memory of 100 (the frames alone would add 3.7 MB)."""
  tracker = online_tracker
  queries = queries_lib.grid_points((64, 64), 2)
  warm_up = _write_long_video(tmp_path / 'short.mp4', 3)  # compile outside the measurement
  track_video.track_and_paint(tracker, warm_up, str(tmp_path / 'short_out.mp4'), queries, progress=False)
  peaks = {}
  for num_frames in (100, 400):
    path = _write_long_video(tmp_path / f'long_{num_frames}.mp4', num_frames)
    tracemalloc.start()
    tracks, _ = track_video.track_and_paint(tracker, path, str(tmp_path / f'out_{num_frames}.mp4'), queries,
                                            progress=False)
    peaks[num_frames] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert tracks.shape == (4, num_frames, 2) and np.isfinite(tracks).all()
    assert video_io.probe(tmp_path / f'out_{num_frames}.mp4').num_frames == num_frames
  extra_frames_bytes = 300 * 64 * 64 * 3
  assert peaks[400] - peaks[100] < extra_frames_bytes / 4, peaks


def test_offline_progress_bar_counts_query_chunks(video_path, tiny_checkpoint, tmp_path, capsys):
  _run_file(video_path, tiny_checkpoint, tmp_path, grid=3, query_chunk_size=4, progress=True)
  err = capsys.readouterr().err
  assert 'query chunks' in err and '3/3' in err  # 9 queries in chunks of 4


def test_import_tapir_is_light():
  """`import tapir` imports neither TensorFlow nor matplotlib (mediapy is imported where video I/O happens)."""
  code = ('import sys, time; t = time.perf_counter(); import tapir; t = time.perf_counter() - t; '
          "bad = [m for m in ('matplotlib', 'mediapy', 'tensorflow') if m in sys.modules]; "
          "assert not bad, bad; print(f'{t:.3f}')")
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env={**os.environ, 'PYTHONPATH': str(REPO)},
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_tapnet_preset_tracks_a_file_offline(video_path, tmp_path):
  checkpoint = str(REPO / 'tests' / 'fixtures' / 'tapnet_checkpoint_small.npy')
  result = track_video.track_file(video_path, str(tmp_path / 'out.mp4'), checkpoint, 'tapnet', grid=3,
                                  resize=32, progress=False, save_path=str(tmp_path / 'tracks.npz'))
  assert result.tracks.shape == (9, T, 2) and result.visible.shape == (9, T)
  np.testing.assert_allclose(result.tracks[:, 0], result.query_points[:, 2:0:-1], atol=1e-3)  # query frame
  assert str(np.load(tmp_path / 'tracks.npz')['preset']) == 'tapnet'
  assert video_io.read_video(tmp_path / 'out.mp4')[0].shape == (T, H, W, 3)
  with pytest.raises(ValueError, match='online=True needs a causal TAPIR.*tapnet model'):
    track_video.track_file(video_path, None, checkpoint, 'tapnet', grid=3, online=True, progress=False)


def test_rainbow_style_paints_the_whole_video_offline(video_path, tiny_checkpoint, tmp_path):
  result = _run_file(video_path, tiny_checkpoint, tmp_path, grid=3, style='rainbow')
  painted, _ = video_io.read_video(tmp_path / 'out.mp4')
  assert painted.shape == (T, H, W, 3) and result.tracks.shape == (9, T, 2)
  with pytest.raises(ValueError, match="style='rainbow' needs every frame"):
    _run_file(video_path, tiny_checkpoint, tmp_path, style='rainbow', online=True)
  with pytest.raises(ValueError, match='style must be one of'):
    _run_file(video_path, tiny_checkpoint, tmp_path, style='sparkles')
