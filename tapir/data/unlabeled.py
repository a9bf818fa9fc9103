"""Unlabelled video clips for self-supervised training (the BootsTAP stage): user videos or built-in clips.

    clips = unlabeled.clip_source('/data/videos', num_frames=24, hw=(256, 256), seed=0)   # or '' / 'realpix'
    clip = next(clips)            # {'video': uint8 [t, h, w, 3], 'name': '/data/videos/a.mp4#120'}

Shapes: t = num_frames, (h, w) = hw, c = 3 (RGB).

Clip i of a run is a pure function of (seed, i) (and, for user videos, of the files' contents): it goes to process
i % process_count, and a source started at `start_index` k gives this process's clips from its k-th on, so a
resumed or re-sharded run sees exactly the clips an uninterrupted one would have (the synthetic stream's rule,
`tapir.data.streams`).

User videos (`VideoClips`). For clip i an rng seeded by (seed, i) picks a file (uniformly over the files, not over
their frames), a start frame, and a crop with the output's aspect ratio covering a random share of the largest such
crop's area; one ffmpeg run seeks to the start, decodes only the clip's frames, crops and resizes them (an area
filter when shrinking) and pipes out raw RGB at the output size. Nothing else of the video is held in memory.
Each file is probed once, when first drawn: its frame timestamps are read from the container without decoding (a
packet copy to ffmpeg's framecrc muxer) and its first frame is decoded, which gives the displayed size (after
rotation) and proves the file decodes. Seeks go to the midpoint between the timestamps of the frame before the start
and the start frame, so they are exact for variable frame rates too. Frame k is the k-th frame in presentation
order.

Unusable files (not a video, corrupt, empty, or shorter than a clip) are skipped with a warning naming them,
remembered and never opened again; the rng then draws another file, so which clip i is depends only on which files
are usable, not on what this process happened to open before. `attempted` counts the files opened, `skipped` those
found unusable; once `min_attempts` files (or all of them) were opened, more than `max_skipped_fraction` skipped
raises a RuntimeError naming them. A clip that fails to decode from a usable file (a damaged stretch) is skipped
with a warning and counted in `failed_clips`, and another draw is made for the same clip.

Built-in clips (`builtin_clips`): `tapir.data.realpix` clips from its training seeds (`TRAIN_SEED_OFFSET` upwards,
never `EVAL_SEEDS`), video only. Note that they show the realpix evaluation photographs, under other motions.

Decoding uses imageio-ffmpeg's ffmpeg binary (ffmpeg >= 5.1 for `-fps_mode`; `IMAGEIO_FFMPEG_EXE` overrides it).
"""

import dataclasses
import fractions
import glob
import math
import os
import subprocess
from typing import Iterator, Sequence

from absl import logging
import numpy as np

from tapir.data import realpix

VIDEO_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv', '.webm', '.avi', '.mpg', '.mpeg', '.ts', '.wmv', '.flv',
                    '.gif')
BUILTIN_SOURCES = ('', 'realpix')
CROP_AREA = (0.6, 1.0)  # share of the largest crop with the output's aspect: a mild random zoom
_RNG_TAG = 0x554e4c42  # 'UNLB': keeps these draws apart from other users of (seed, i)
_MAX_DRAWS_PER_CLIP = 1000  # draws of (file, start) for one clip before giving up: only with nearly all files bad
_FFMPEG_TIMEOUT_S = 300  # a probe or a clip decode that takes longer counts as a failure
_PACKET_DISCARD = 0x4  # AV_PKT_FLAG_DISCARD: a packet the decoder drops (e.g. before an mp4 edit list's start)

Clip = dict  # {'video': uint8 [t, h, w, 3], 'name': str}


def video_files(source: str) -> list[str]:
  """The video files `source` names, sorted by path.

  Args:
    source: a directory (searched recursively for files whose extension, in any case, is one of
      `VIDEO_EXTENSIONS`) or a glob pattern (`**` recurses; every regular file it matches is taken, whatever its
      extension).

  Returns:
    The paths, sorted (directory entries are joined onto `source`).

  Raises:
    ValueError: naming `source` if the directory does not exist or holds no video, or the pattern matches no file.
  """
  if not isinstance(source, (str, os.PathLike)) or not os.fspath(source):
    raise ValueError(f'source must be a directory or a glob pattern, got {source!r}')
  source = os.fspath(source)
  if os.path.isdir(source):
    found = [os.path.join(root, name) for root, _, names in os.walk(source)
             for name in names if name.lower().endswith(VIDEO_EXTENSIONS)]
    if not found:
      raise ValueError(f'source {source!r}: the directory holds no video file ({", ".join(VIDEO_EXTENSIONS)})')
    return sorted(found)
  if not glob.has_magic(source):
    raise ValueError(f'source {source!r}: no such directory or file (give a directory or a glob pattern)')
  found = [path for path in glob.glob(source, recursive=True) if os.path.isfile(path)]
  if not found:
    raise ValueError(f'source {source!r}: the glob pattern matches no file')
  return sorted(found)


# ---------------------------------------------------------------------------------------------------------------
# ffmpeg: probing a file once, decoding one clip.


class _Unusable(Exception):
  """A file (or one clip of it) that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class _FileInfo:
  pts: np.ndarray  # [frames] int64 presentation timestamps, strictly increasing, in `time_base` units
  time_base: fractions.Fraction  # seconds per timestamp unit
  hw: tuple[int, int]  # decoded (displayed) frame size

  @property
  def num_frames(self) -> int:
    return len(self.pts)


def _ffmpeg() -> str:
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top  (lazy: only user videos need it)
  return imageio_ffmpeg.get_ffmpeg_exe()


def _run(args: list[str]) -> bytes:
  """ffmpeg `args` -> its stdout; _Unusable with the end of its stderr if it fails."""
  try:
    done = subprocess.run([_ffmpeg(), '-nostdin', '-hide_banner', '-loglevel', 'error', *args],
                          capture_output=True, timeout=_FFMPEG_TIMEOUT_S, check=False)
  except subprocess.TimeoutExpired as e:
    raise _Unusable(f'ffmpeg took over {_FFMPEG_TIMEOUT_S} s') from e
  if done.returncode:
    message = done.stderr.decode(errors='replace').strip().splitlines()[-3:]
    raise _Unusable(f'ffmpeg failed (exit status {done.returncode}): {" / ".join(message) or "no message"}')
  return done.stdout


def _probe(path: str) -> _FileInfo:
  """Frame timestamps (from the container, no decoding) and displayed size (by decoding the first frame)."""
  if not os.path.isfile(path):
    raise _Unusable('no such file')
  if os.path.getsize(path) == 0:
    raise _Unusable('empty file (0 bytes)')
  # -copyts keeps the input's own timestamps, the ones `-seek_timestamp` seeks to.
  listing = _run(['-i', path, '-map', '0:v:0', '-c', 'copy', '-copyts', '-f', 'framecrc', 'pipe:1'])
  listing = listing.decode(errors='replace')
  time_base, pts = None, []
  for line in listing.splitlines():
    if line.startswith('#tb 0:'):
      time_base = fractions.Fraction(line.split(':', 1)[1].strip())
    elif line and not line.startswith('#'):  # stream, dts, pts, duration, size, hash[, F=flags]
      fields = [f.strip() for f in line.split(',')]
      flags = int(fields[6][2:], 16) if len(fields) > 6 and fields[6].startswith('F=') else 0
      if not flags & _PACKET_DISCARD:
        pts.append(int(fields[2]))
  pts = np.sort(np.array(pts, np.int64))
  if time_base is None or not len(pts):
    raise _Unusable('no video frames')
  if np.any(np.diff(pts) <= 0):
    raise _Unusable('repeated frame timestamps (cannot seek to a frame exactly)')
  image = _run(['-i', path, '-map', '0:v:0', '-frames:v', '1', '-f', 'image2pipe', '-c:v', 'ppm', 'pipe:1'])
  header = image.split(maxsplit=3)  # P6, width, height, maxval
  if len(header) < 4 or header[0] != b'P6':
    raise _Unusable('the first frame does not decode')
  return _FileInfo(pts, time_base, (int(header[2]), int(header[1])))


def _decode(path: str, info: _FileInfo, start: int, count: int, box: tuple[int, int, int, int],
            hw: tuple[int, int]) -> np.ndarray:
  """Frames [start, start + count) of `path`, cropped to `box` (x, y, w, h) and resized to `hw`: uint8
  [count, h, w, 3]."""
  seek = []
  if start > 0:  # between the timestamps of frames start - 1 and start: ffmpeg drops every frame before it
    middle = (int(info.pts[start - 1]) + int(info.pts[start])) / 2 * info.time_base
    seek = ['-seek_timestamp', '1', '-ss', f'{float(middle):.6f}']
  x, y, w, h = box
  filters = f'crop={w}:{h}:{x}:{y}:exact=1,scale={hw[1]}:{hw[0]}:flags=area,format=rgb24'
  raw = _run([*seek, '-i', path, '-map', '0:v:0', '-an', '-sn', '-dn', '-vf', filters, '-fps_mode', 'passthrough',
              '-frames:v', str(count), '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:1'])
  frame_bytes = hw[0] * hw[1] * 3
  if len(raw) != count * frame_bytes:
    raise _Unusable(f'decoded {len(raw) // frame_bytes} of the {count} frames from frame {start}')
  return np.frombuffer(raw, np.uint8).reshape(count, hw[0], hw[1], 3).copy()


def _crop_box(rng: np.random.Generator, frame_hw: tuple[int, int], hw: tuple[int, int],
              area: tuple[float, float]) -> tuple[int, int, int, int]:
  """A random (x, y, w, h) pixel box with roughly the aspect of `hw`, covering a share in `area` of the largest one
  that fits the frame."""
  scale = min(frame_hw[0] / hw[0], frame_hw[1] / hw[1]) * math.sqrt(rng.uniform(*area))
  h = min(frame_hw[0], max(1, round(hw[0] * scale)))
  w = min(frame_hw[1], max(1, round(hw[1] * scale)))
  return int(rng.integers(frame_hw[1] - w + 1)), int(rng.integers(frame_hw[0] - h + 1)), w, h


# ---------------------------------------------------------------------------------------------------------------
# Argument checks, shared by both sources.


def _check_int(name: str, value, low: int) -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
    raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
  return int(value)


def _check_hw(hw) -> tuple[int, int]:
  if not (isinstance(hw, (tuple, list)) and len(hw) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in hw)):
    raise ValueError(f'hw must be a pair (height, width) of positive integers, got {hw!r}')
  return int(hw[0]), int(hw[1])


def _check_shard(start_index, process_index, process_count) -> tuple[int, int, int]:
  start_index = _check_int('start_index', start_index, 0)
  process_count = _check_int('process_count', process_count, 1)
  process_index = _check_int('process_index', process_index, 0)
  if process_index >= process_count:
    raise ValueError(f'process_index must be < process_count ({process_count}), got {process_index}')
  return start_index, process_index, process_count


def _clip_indices(start_index: int, process_index: int, process_count: int) -> Iterator[int]:
  """The run's clip indices of this process, from its `start_index`-th on (as `streams.synthetic_examples`)."""
  index = start_index * process_count + process_index
  while True:
    yield index
    index += process_count


# ---------------------------------------------------------------------------------------------------------------
# The sources.


class VideoClips:
  """An endless iterator of random clips of user videos: this process's share, from its `start_index`-th clip on.

  Attributes:
    attempted: files opened (probed) so far.
    skipped: of those, files found unusable (never opened again).
    failed_clips: clips that failed to decode from a usable file (redrawn).
    skipped_files: {path: reason} of the unusable files.
  """

  def __init__(self, files: Sequence[str], num_frames: int, hw: Sequence[int], seed: int, start_index: int = 0,
               process_index: int = 0, process_count: int = 1, frame_stride: int = 1,
               max_skipped_fraction: float = 0.1, min_attempts: int = 10,
               crop_area: tuple[float, float] = CROP_AREA):
    """Checks the arguments; opens no file.

    Args:
      files: video paths (see `video_files`), drawn from uniformly.
      num_frames: t, frames per clip.
      hw: (height, width) of the clips in pixels.
      seed: the run's seed (>= 0); clip i is a function of (seed, i).
      start_index: this process's first clip (its clips already used, when resuming).
      process_index: this process; it takes clips i with i % process_count == process_index.
      process_count: processes sharing the run's clips.
      frame_stride: a clip takes every `frame_stride`-th frame, spanning (num_frames - 1) * stride + 1 frames;
        shorter videos are skipped.
      max_skipped_fraction: largest share of unusable files tolerated, in [0, 1].
      min_attempts: files opened before that share is checked (all of them, if fewer).
      crop_area: (low, high) share of the largest crop with the clips' aspect ratio that a crop covers, in (0, 1].
    """
    if isinstance(files, str) or not len(files) or not all(isinstance(f, (str, os.PathLike)) for f in files):
      raise ValueError(f'files must be a non-empty sequence of paths (see video_files), got {files!r}')
    self._files = tuple(os.fspath(f) for f in files)
    self._num_frames = _check_int('num_frames', num_frames, 1)
    self._hw = _check_hw(hw)
    self._seed = _check_int('seed', seed, 0)
    self._start_index, self._process_index, self._process_count = _check_shard(start_index, process_index,
                                                                               process_count)
    self._stride = _check_int('frame_stride', frame_stride, 1)
    if not (isinstance(max_skipped_fraction, (int, float)) and 0 <= max_skipped_fraction <= 1):
      raise ValueError(f'max_skipped_fraction must be a number in [0, 1], got {max_skipped_fraction!r}')
    self._max_skipped_fraction = float(max_skipped_fraction)
    self._min_attempts = _check_int('min_attempts', min_attempts, 1)
    if not (isinstance(crop_area, (tuple, list)) and len(crop_area) == 2 and 0 < crop_area[0] <= crop_area[1] <= 1):
      raise ValueError(f'crop_area must be a pair (low, high) with 0 < low <= high <= 1, got {crop_area!r}')
    self._crop_area = (float(crop_area[0]), float(crop_area[1]))
    self._infos: dict[str, _FileInfo] = {}
    self.skipped_files: dict[str, str] = {}
    self.attempted = self.skipped = self.failed_clips = self.clips = 0
    self._indices = _clip_indices(self._start_index, self._process_index, self._process_count)

  @property
  def span(self) -> int:
    """Frames of the source video one clip covers."""
    return (self._num_frames - 1) * self._stride + 1

  def stats(self) -> dict[str, float]:
    """Counters for the training log."""
    return {'clips': self.clips, 'files_attempted': self.attempted, 'files_skipped': self.skipped,
            'skipped_fraction': self.skipped / max(self.attempted, 1), 'failed_clips': self.failed_clips}

  def __iter__(self) -> 'VideoClips':
    return self

  def __next__(self) -> Clip:
    clip = self.clip(next(self._indices))
    self.clips += 1
    return clip

  def clip(self, index: int) -> Clip:
    """Clip `index` of the whole run (whichever process it belongs to): {'video': uint8 [t, h, w, 3], 'name':
    '<file>#<start frame>'}."""
    rng = np.random.default_rng([_RNG_TAG, self._seed, _check_int('index', index, 0)])
    for _ in range(_MAX_DRAWS_PER_CLIP):
      path = self._files[int(rng.integers(len(self._files)))]
      info = self._info(path)
      if info is None:
        continue
      start = int(rng.integers(info.num_frames - self.span + 1))
      box = _crop_box(rng, info.hw, self._hw, self._crop_area)
      try:
        video = _decode(path, info, start, self.span, box, self._hw)[::self._stride]
      except _Unusable as e:
        self.failed_clips += 1
        logging.warning('unlabeled videos: skipping the clip of %s from frame %d: %s', path, start, e)
        continue
      return {'video': np.ascontiguousarray(video), 'name': f'{path}#{start}'}
    raise RuntimeError(f'unlabeled videos: no clip {index} after {_MAX_DRAWS_PER_CLIP} draws ({self.stats()}; '
                       f'skipped files: {self.skipped_files})')

  def _info(self, path: str) -> _FileInfo | None:
    """The file's probe, once per file; None (with a warning, the first time) if it is unusable."""
    if path in self._infos:
      return self._infos[path]
    if path in self.skipped_files:
      return None
    self.attempted += 1
    try:
      info = _probe(path)
      if info.num_frames < self.span:
        raise _Unusable(f'{info.num_frames} frames, fewer than the {self.span} a clip spans')
    except _Unusable as e:
      info = None
      self.skipped += 1
      self.skipped_files[path] = str(e)
      logging.warning('unlabeled videos: skipping %s: %s', path, e)
    else:
      self._infos[path] = info
    self._check_skipped()
    return info

  def _check_skipped(self) -> None:
    fraction = self.skipped / self.attempted
    if len(self.skipped_files) == len(self._files):
      reason = 'none is usable'
    elif self.attempted >= min(self._min_attempts, len(self._files)) and fraction > self._max_skipped_fraction:
      reason = f'more than max_skipped_fraction={self._max_skipped_fraction}'
    else:
      return
    raise RuntimeError(f'unlabeled videos: skipped {self.skipped} of the {self.attempted} files opened (fraction '
                       f'{fraction:.3f}, {reason}; {len(self._files)} files in all): {self.skipped_files}')


def builtin_clips(num_frames: int, hw: Sequence[int], seed: int, start_index: int = 0, process_index: int = 0,
                  process_count: int = 1, config: realpix.RealPixConfig | None = None) -> Iterator[Clip]:
  """Endless built-in clips (no data needed): realpix training clips, video only, sharded as `VideoClips`.

  Clip i is `realpix.generate_clip(TRAIN_SEED_OFFSET + seed * 100_000_000 + i)`, named 'realpix_train_<that seed>'.

  Args:
    num_frames: t, frames per clip.
    hw: (height, width) of the clips, each >= 16.
    seed: the run's seed (>= 0).
    start_index: this process's first clip (its clips already used, when resuming).
    process_index: this process; it takes clips i with i % process_count == process_index.
    process_count: processes sharing the run's clips.
    config: the scenes' other parameters (default `RealPixConfig(tracks=1)`: tracks are dropped); its height,
      width and num_frames are replaced by `hw` and `num_frames`.

  Yields:
    {'video': uint8 [t, h, w, 3], 'name': str}.
  """
  num_frames = _check_int('num_frames', num_frames, 1)
  h, w = _check_hw(hw)
  seed = _check_int('seed', seed, 0)
  shard = _check_shard(start_index, process_index, process_count)
  if config is not None and not isinstance(config, realpix.RealPixConfig):
    raise ValueError(f'config must be a realpix.RealPixConfig or None, got {type(config).__name__}')
  config = dataclasses.replace(config or realpix.RealPixConfig(tracks=1), height=h, width=w, num_frames=num_frames)

  def generate():
    for i in _clip_indices(*shard):
      clip_seed = realpix.TRAIN_SEED_OFFSET + seed * 100_000_000 + i
      if clip_seed in realpix.EVAL_SEEDS:  # unreachable for seed, i >= 0; a guard should the offsets change
        raise RuntimeError(f'built-in clip seed {clip_seed} is an evaluation seed')
      yield {'video': realpix.generate_clip(clip_seed, config).video, 'name': f'realpix_train_{clip_seed}'}
  return generate()


def clip_source(source: str, num_frames: int, hw: Sequence[int], seed: int, start_index: int = 0,
                process_index: int = 0, process_count: int = 1, max_skipped_fraction: float = 0.1,
                frame_stride: int = 1) -> Iterator[Clip]:
  """The unlabelled clips `source` names: '' or 'realpix' the built-in clips (`builtin_clips`), otherwise a
  directory or glob pattern of videos (`video_files`, `VideoClips`). Arguments as theirs; yields {'video': uint8
  [t, h, w, 3], 'name': str}."""
  if not isinstance(source, str):
    raise ValueError(f"source must be a string ('', 'realpix', a directory or a glob pattern), got {source!r}")
  if source in BUILTIN_SOURCES:
    if frame_stride != 1:
      raise ValueError(f'frame_stride must be 1 for the built-in clips (source {source!r}), got {frame_stride!r}')
    return builtin_clips(num_frames, hw, seed, start_index, process_index, process_count)
  return VideoClips(video_files(source), num_frames, hw, seed, start_index, process_index, process_count,
                    frame_stride=frame_stride, max_skipped_fraction=max_skipped_fraction)
