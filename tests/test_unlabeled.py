"""Unlabelled clip sources (`tapir.data.unlabeled`) over tiny videos written here, and the built-in realpix clips.

Frame k of a test video is a uniform grey of level `_BASE + _STEP * k` with a small white square moving over it, so
the median of any crop of a decoded frame tells which source frame it came from, whatever the (lossy) codec.
"""

import logging
import os
import subprocess

import numpy as np
import pytest

from tapir import video as video_io
from tapir.data import realpix
from tapir.data import unlabeled

_BASE, _STEP = 8, 6


def _frame_indices(clip: np.ndarray) -> np.ndarray:  # [t, h, w, 3] -> [t] source frame indices
  return np.round((np.median(clip, axis=(1, 2, 3)) - _BASE) / _STEP).astype(int)


def _start(clip) -> int:
  return int(clip['name'].rsplit('#', 1)[1])


def _write(path, num_frames: int, tint: int = 0) -> None:
  video = np.zeros((num_frames, 48, 64, 3), np.uint8)
  for k in range(num_frames):
    video[k] = _BASE + _STEP * k
    video[k, ..., 2] = np.clip(_BASE + _STEP * k + tint, 0, 255)
    y, x = (2 * k) % 40, (3 * k) % 56
    video[k, y:y + 6, x:x + 6] = 255
  video_io.write_video(path, video, fps=30)


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  """{'good': [40-frame a.mp4, 30-frame b.mkv], 'corrupt': random bytes .mp4, 'empty': 0-byte .mp4, 'dir': ...}."""
  root = tmp_path_factory.mktemp('videos')
  (root / 'sub').mkdir()
  good = [str(root / 'a.mp4'), str(root / 'sub' / 'b.mp4')]
  _write(good[0], 40)
  _write(good[1], 30, tint=20)
  corrupt, empty = root / 'corrupt.mp4', root / 'empty.mp4'
  corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
  empty.write_bytes(b'')
  (root / 'notes.txt').write_text('not a video')
  return {'good': good, 'corrupt': str(corrupt), 'empty': str(empty), 'dir': str(root)}


def _clips(source, count):
  return [next(source) for _ in range(count)]


def _same(clips_a, clips_b) -> bool:
  return len(clips_a) == len(clips_b) and all(
      a['name'] == b['name'] and np.array_equal(a['video'], b['video']) for a, b in zip(clips_a, clips_b))


# ---------------------------------------------------------------------------------------------------------------
# video_files


def test_video_files_from_a_directory_recursively_and_from_a_glob(videos):
  root = videos['dir']
  assert unlabeled.video_files(root) == sorted(videos['good'] + [videos['corrupt'], videos['empty']])
  assert unlabeled.video_files(os.path.join(root, '*.mp4')) == sorted(
      [videos['good'][0], videos['corrupt'], videos['empty']])
  assert unlabeled.video_files(os.path.join(root, '**', 'b.mp4')) == [videos['good'][1]]
  assert unlabeled.video_files(os.path.join(root, '*.txt')) == [os.path.join(root, 'notes.txt')]  # a glob is explicit


def test_video_files_errors_name_the_source(tmp_path):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'text').mkdir()
  (tmp_path / 'text' / 'a.txt').write_text('x')
  for source in (str(tmp_path / 'empty'), str(tmp_path / 'text'), str(tmp_path / 'missing'),
                 str(tmp_path / 'missing.mp4'), str(tmp_path / '*.mp4')):
    with pytest.raises(ValueError, match='source') as error:
      unlabeled.video_files(source)
    assert repr(source) in str(error.value)
  with pytest.raises(ValueError, match='source'):
    unlabeled.video_files('')


# ---------------------------------------------------------------------------------------------------------------
# VideoClips over good files


def test_clips_shape_dtype_determinism_and_variety(videos):
  clips = _clips(unlabeled.VideoClips(videos['good'], 8, (24, 32), seed=0), 6)
  for clip in clips:
    assert clip['video'].shape == (8, 24, 32, 3) and clip['video'].dtype == np.uint8
    assert clip['name'].rsplit('#', 1)[0] in videos['good']
  assert _same(clips, _clips(unlabeled.VideoClips(videos['good'], 8, (24, 32), seed=0), 6))
  assert {c['name'].rsplit('#', 1)[0] for c in clips} == set(videos['good'])  # both files drawn
  assert len({c['video'].tobytes() for c in clips}) == 6
  other_seed = _clips(unlabeled.VideoClips(videos['good'], 8, (24, 32), seed=1), 6)
  assert not _same(clips, other_seed)


def test_resuming_and_sharding_give_the_same_clips(videos):
  args = (videos['good'], 4, (16, 16), 3)
  whole = _clips(unlabeled.VideoClips(*args), 6)
  assert _same(_clips(unlabeled.VideoClips(*args, start_index=4), 2), whole[4:])
  first = _clips(unlabeled.VideoClips(*args, process_index=0, process_count=2), 3)
  second = _clips(unlabeled.VideoClips(*args, process_index=1, process_count=2), 3)
  assert _same(first, whole[0::2]) and _same(second, whole[1::2])
  # Resuming a shard: process 1's 2nd clip on is clip 1 * 2 + 1 = 3 of the run on.
  assert _same(_clips(unlabeled.VideoClips(*args, start_index=1, process_index=1, process_count=2), 2),
               whole[3::2])
  source = unlabeled.VideoClips(*args)
  assert _same([source.clip(5), source.clip(2)], [whole[5], whole[2]])  # random access, in any order


@pytest.mark.parametrize('stride', [1, 2])
def test_clips_are_the_source_frames_from_the_start_frame(videos, stride):
  for clip in _clips(unlabeled.VideoClips(videos['good'], 8, (20, 20), 0, frame_stride=stride), 5):
    start = _start(clip)
    np.testing.assert_array_equal(_frame_indices(clip['video']), start + stride * np.arange(8))


def test_an_uncropped_clip_at_the_native_size_is_the_decoded_video(videos):
  source = unlabeled.VideoClips(videos['good'], 6, (48, 64), 0, frame_stride=2, crop_area=(1.0, 1.0))
  decoded = {path: video_io.read_video(path)[0] for path in videos['good']}
  for clip in _clips(source, 3):
    path, start = clip['name'].rsplit('#', 1)[0], _start(clip)
    np.testing.assert_array_equal(clip['video'], decoded[path][int(start):int(start) + 11:2])


def test_seeking_is_exact_in_a_file_whose_timestamps_do_not_start_at_zero(videos, tmp_path):
  shifted = str(tmp_path / 'shifted.mkv')
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-v', 'error', '-i', videos['good'][0], '-c', 'copy',
                  '-output_ts_offset', '2.5', shifted], check=True)
  for clip in _clips(unlabeled.VideoClips([shifted], 6, (16, 16), 0), 3):
    np.testing.assert_array_equal(_frame_indices(clip['video']), _start(clip) + np.arange(6))


# ---------------------------------------------------------------------------------------------------------------
# Unusable files


def test_bad_and_short_files_are_skipped_named_counted_and_not_retried(videos, caplog, monkeypatch):
  probes = []
  probe = unlabeled._probe  # pylint: disable=protected-access
  monkeypatch.setattr(unlabeled, '_probe', lambda path: probes.append(path) or probe(path))
  files = videos['good'] + [videos['corrupt'], videos['empty']]
  # 16 frames at stride 2 span 31 frames: the 30-frame b.mp4 is too short.
  source = unlabeled.VideoClips(files, 16, (16, 16), 0, frame_stride=2, max_skipped_fraction=0.8)
  with caplog.at_level(logging.WARNING):
    clips = [next(source) for _ in range(30)]
  assert source.attempted == 4 and source.skipped == 3
  assert sorted(probes) == sorted(files)  # each opened once
  assert set(source.skipped_files) == {videos['corrupt'], videos['empty'], videos['good'][1]}
  assert 'empty file' in source.skipped_files[videos['empty']]
  assert 'fewer than the 31' in source.skipped_files[videos['good'][1]]
  for path in source.skipped_files:
    assert path in caplog.text
  assert {c['name'].rsplit('#', 1)[0] for c in clips} == {videos['good'][0]}
  assert source.stats() == {'clips': 30, 'files_attempted': 4, 'files_skipped': 3, 'skipped_fraction': 0.75,
                            'failed_clips': 0}
  # A clip does not depend on which bad files were known before: a fresh source, asked in another order.
  fresh = unlabeled.VideoClips(files, 16, (16, 16), 0, frame_stride=2, max_skipped_fraction=0.8)
  assert _same([fresh.clip(i) for i in (5, 2, 0, 1)], [clips[i] for i in (5, 2, 0, 1)])


def test_too_many_bad_files_raise_after_min_attempts(tmp_path, caplog):
  for k in range(12):
    (tmp_path / f'bad{k:02d}.mp4').write_bytes(b'' if k % 3 == 0 else os.urandom(300))
  source = unlabeled.clip_source(str(tmp_path), 4, (16, 16), seed=0)
  with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError) as error:
    next(source)
  assert source.attempted == 10  # the default min_attempts
  message = str(error.value)
  assert 'fraction 1.000' in message and 'max_skipped_fraction=0.1' in message
  assert all(path in message for path in source.skipped_files)


def test_a_bad_share_over_the_threshold_raises_once_every_file_was_opened(videos):
  files = videos['good'][:1] + [videos['corrupt']]
  assert next(unlabeled.VideoClips(files, 4, (16, 16), 0, max_skipped_fraction=0.5))['video'].shape == (4, 16, 16, 3)
  source = unlabeled.VideoClips(files, 4, (16, 16), 0, max_skipped_fraction=0.4)
  with pytest.raises(RuntimeError, match=r'fraction 0\.500, more than max_skipped_fraction=0\.4'):
    for _ in range(20):
      next(source)
  assert source.attempted == 2
  source = unlabeled.VideoClips([videos['corrupt'], videos['empty']], 4, (16, 16), 0, max_skipped_fraction=1.0)
  with pytest.raises(RuntimeError, match=r'fraction 1\.000, none is usable'):
    next(source)


@pytest.mark.parametrize('kwargs, argument', [
    (dict(files=[]), 'files'), (dict(files='a.mp4'), 'files'), (dict(num_frames=0), 'num_frames'),
    (dict(hw=(16,)), 'hw'), (dict(hw=(0, 16)), 'hw'), (dict(seed=-1), 'seed'), (dict(start_index=-1), 'start_index'),
    (dict(process_index=2, process_count=2), 'process_index'), (dict(process_count=0), 'process_count'),
    (dict(frame_stride=0), 'frame_stride'), (dict(max_skipped_fraction=1.5), 'max_skipped_fraction'),
    (dict(min_attempts=0), 'min_attempts'), (dict(crop_area=(0.0, 1.0)), 'crop_area')])
def test_video_clips_argument_errors_name_the_argument(kwargs, argument):
  args = dict(files=['a.mp4'], num_frames=4, hw=(16, 16), seed=0) | kwargs
  with pytest.raises(ValueError, match=argument):
    unlabeled.VideoClips(**args)


# ---------------------------------------------------------------------------------------------------------------
# Built-in clips and clip_source


def test_builtin_clips_shape_determinism_sharding_and_training_seeds():
  clips = _clips(unlabeled.builtin_clips(3, (24, 32), seed=2), 4)
  for clip in clips:
    assert clip['video'].shape == (3, 24, 32, 3) and clip['video'].dtype == np.uint8
  assert _same(clips, _clips(unlabeled.builtin_clips(3, (24, 32), seed=2), 4))
  assert _same(_clips(unlabeled.builtin_clips(3, (24, 32), 2, process_index=1, process_count=2), 2), clips[1::2])
  assert _same(_clips(unlabeled.builtin_clips(3, (24, 32), 2, start_index=2), 2), clips[2:])
  assert len({c['video'].tobytes() for c in clips}) == 4
  seeds = [int(c['name'].removeprefix('realpix_train_')) for c in clips]
  assert seeds == [realpix.TRAIN_SEED_OFFSET + 2 * 100_000_000 + i for i in range(4)]
  assert not set(seeds) & set(realpix.EVAL_SEEDS)
  first = _clips(unlabeled.builtin_clips(3, (24, 32), seed=0), 1)[0]
  assert int(first['name'].removeprefix('realpix_train_')) not in realpix.EVAL_SEEDS
  with pytest.raises(ValueError, match='seed'):
    unlabeled.builtin_clips(3, (24, 32), seed=-1)


def test_clip_source_chooses_the_source(videos):
  for builtin in ('', 'realpix'):
    clip = next(unlabeled.clip_source(builtin, 2, (16, 16), seed=0))
    assert clip['name'].startswith('realpix_train_') and clip['video'].shape == (2, 16, 16, 3)
  source = unlabeled.clip_source(os.path.join(videos['dir'], '**', '*.mp4'), 2, (16, 16), seed=0,
                                 max_skipped_fraction=0.6)
  assert isinstance(source, unlabeled.VideoClips) and next(source)['video'].shape == (2, 16, 16, 3)
  with pytest.raises(ValueError, match='source'):
    unlabeled.clip_source(None, 2, (16, 16), seed=0)
  with pytest.raises(ValueError, match='source'):
    unlabeled.clip_source(os.path.join(videos['dir'], 'missing'), 2, (16, 16), seed=0)
  with pytest.raises(ValueError, match='frame_stride'):
    unlabeled.clip_source('realpix', 2, (16, 16), seed=0, frame_stride=2)
