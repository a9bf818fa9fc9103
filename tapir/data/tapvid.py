"""TAP-Vid evaluation datasets: readers and the `TapVidExample` container.

Every reader streams one `TapVidExample` per video, its queries sampled by `tapir.data.query_sampling`. Videos are uint8 [t, h, w, 3], resized to `resolution`
(height, width; default 256x256) with `mediapy.resize_video` (PIL Lanczos per frame) only if the stored size
differs, or left at their native size with `resolution=None`. Datasets store points normalised to [0, 1]; readers
multiply them by the (w, h) of the video they emit, so all coordinates are raster pixels of `example.video`
(`tapir.conventions`). Scores are computed at 256x256: rescale full-resolution outputs with
`rescale_to_metric_resolution`. Convert frames for the model with `tapir.conventions.frames_to_model_input`.

On-disk formats (spec section 4.2; `points` are normalised (x, y), `occluded` True = occluded):
  davis / robotap  one pickle: dict video_name -> {'video': uint8 [T, H, W, 3], 'points': float [N, T, 2],
                   'occluded': bool [N, T]}, read in dict order.
  rgb_stacking     one pickle: a list of such dicts (named rgb_stacking_0000, ...).
  kinetics         a directory of pickle shards `*_of_0010.pkl` (sorted), each a list (or dict) of such dicts whose
                   'video' may also be a sequence of JPEG-encoded frames (bytes).
  csv              rows `video_id, x, y, occ, x, y, occ, ...` (one row per track, no header, occluded iff occ > 0)
                   and videos `<video_dir>/<video_id>` (.mp4 appended if missing); the annotation is truncated to the
                   video's length and videos are split into ceil(T / 1000) parts evaluated separately.
  npz              our own format: one `<video_name>.npz` per video with 'video' uint8 [T, H, W, 3], 'points'
                   float [N, T, 2] normalised (x, y) in [0, 1] and 'occluded' bool [N, T]
                   (`write_npz_example` writes it); a path to one file or to a directory of them (sorted).
  kubric           a TFDS data directory holding MOVi-E (`movi_e/256x256`, or `panning_movi_e/256x256`); its
                   `validation` split goes through the training track pipeline (`read_kubric`; needs the
                   `data` extra).

Pickles are read with `tapir.safe_pickle`: containers, strings, numbers and numpy arrays only, never code.
Query modes: 'first' and 'strided' (spec 4.3).
"""

import csv
import glob
import io
import math
import os
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from tapir import conventions
from tapir import safe_pickle
from tapir import video as video_lib
from tapir.data import kubric_eval
from tapir.data.query_sampling import (DEFAULT_STRIDE, rescale_to_metric_resolution,  # pylint: disable=unused-import
                                       sample_queries_first, sample_queries_strided)
from tapir.conventions import QUERY_MODES

# Visible points may lie slightly outside [0, 1]: the Kinetics shards shift points by half an original pixel
# and annotations sit on frame borders. Anything further out is taken for pixel coordinates (a format error).
NORMALISED_TOLERANCE = 0.05
CSV_MAX_FRAMES = 1000  # csv videos longer than this are split into ceil(T / 1000) parts
_ARRAYS_FORMAT = ("{'video': uint8 [T, H, W, 3], 'points': float [N, T, 2] (x, y) normalised to [0, 1], "
                  "'occluded': bool [N, T]}")
FORMATS = {
    'davis': f'a pickle of a dict video_name -> {_ARRAYS_FORMAT}',
    'robotap': f'a pickle of a dict video_name -> {_ARRAYS_FORMAT}',
    'rgb_stacking': f'a pickle of a list of {_ARRAYS_FORMAT}',
    'kinetics': ('a directory of pickle shards *_of_0010.pkl, each a list (or dict) of '
                 f'{_ARRAYS_FORMAT} where video may also be a list of JPEG-encoded frames (bytes)'),
    'csv': 'a csv with rows `video_id, x, y, occ, x, y, occ, ...` (x, y normalised; no header)',
    'npz': f'an .npz file (or a directory of them) with arrays {_ARRAYS_FORMAT}',
    'kubric': 'a TFDS data directory holding a prepared MOVi-E dataset (e.g. movi_e/256x256)',
}


class TapVidExample(NamedTuple):
  """One evaluation video with its queries; coordinates are raster pixels of `video`."""
  video: np.ndarray  # [t, h, w, 3] uint8
  query_points: np.ndarray  # [q, 3] float32 (t, y, x)
  target_points: np.ndarray  # [q, t, 2] float32 (x, y)
  occluded: np.ndarray  # [q, t] bool, True = occluded
  video_name: str
  trackgroup: np.ndarray | None = None  # [q] int32 source track of each query (strided mode), else None

  def to_model_batch(self) -> dict[str, np.ndarray]:
    """The spec 4.1 batch: leading axis of 1 and the video as float32 in [-1, 1]."""
    batch = {'video': conventions.frames_to_model_input(self.video)[None],  # [1, t, h, w, 3]
             'query_points': self.query_points[None], 'target_points': self.target_points[None],
             'occluded': self.occluded[None]}
    if self.trackgroup is not None:
      batch['trackgroup'] = self.trackgroup[None]
    return batch


# ---------------------------------------------------------------------------------------------------------------
# Building examples from the stored arrays.


def _format_error(source: str, fmt: str, problem: str) -> ValueError:
  return ValueError(f'{source}: {problem}; expected {FORMATS[fmt]}')


def _check_arrays(video: Any, points: Any, occluded: Any, source: str, fmt: str) -> tuple:
  """Validates the stored arrays; returns them as numpy (points float64, occluded bool)."""
  if not (isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3):
    desc = f'{video.dtype} {video.shape}' if isinstance(video, np.ndarray) else type(video).__name__
    raise _format_error(source, fmt, f"'video' must be uint8 [T, H, W, 3], got {desc}")
  if min(video.shape[:3]) < 1:
    raise _format_error(source, fmt, f"'video' must have at least one frame, row and column, got {video.shape}")
  points, occluded = np.asarray(points), np.asarray(occluded)
  if not np.issubdtype(points.dtype, np.floating) or points.ndim != 3 or points.shape[-1] != 2:
    raise _format_error(source, fmt, f"'points' must be float [N, T, 2], got {points.dtype} {points.shape}")
  if occluded.dtype != bool and not (np.issubdtype(occluded.dtype, np.integer) and np.isin(occluded, (0, 1)).all()):
    raise _format_error(source, fmt, f"'occluded' must be bool [N, T], got {occluded.dtype}")
  occluded = occluded.astype(bool)
  if occluded.shape != points.shape[:2]:
    raise _format_error(source, fmt, f"'occluded' {occluded.shape} does not match 'points' {points.shape}")
  if points.shape[1] != video.shape[0]:
    raise _format_error(source, fmt, f"'points' have {points.shape[1]} frames but 'video' has {video.shape[0]}")
  finite = np.isfinite(points).all(axis=-1)  # [N, T]
  if not finite.all():
    n, t = np.argwhere(~finite)[0]
    raise _format_error(source, fmt, f"'points' must be finite: {int((~finite).sum())} NaN/inf coordinate "
                        f'pair(s), the first at track {n}, frame {t}')
  visible_points = points.astype(np.float64)[~occluded]
  if visible_points.size and (visible_points.min() < -NORMALISED_TOLERANCE
                              or visible_points.max() > 1 + NORMALISED_TOLERANCE):
    raise _format_error(source, fmt, f"visible 'points' range over [{visible_points.min():.4g}, "
                        f'{visible_points.max():.4g}]: they look like pixels, not normalised coordinates')
  return video, points.astype(np.float64), occluded


def make_example(
    video: np.ndarray,  # [T, H, W, 3] uint8
    points: np.ndarray,  # [N, T, 2] normalised (x, y)
    occluded: np.ndarray,  # [N, T] bool
    video_name: str,
    query_mode: str,
    resolution: Sequence[int] | None = (256, 256),
    source: str = '<arrays>',
    fmt: str = 'npz',
) -> TapVidExample:
  """Validates stored arrays, resizes the video, scales points to its pixels and samples the queries.

  `resolution` is (height, width), or None to keep the stored size; `source` and `fmt` (a key of `FORMATS`) only
  word the error messages.
  """
  if query_mode not in QUERY_MODES:
    raise ValueError(f'query_mode must be one of {QUERY_MODES}, got {query_mode!r}')
  video, points, occluded = _check_arrays(video, points, occluded, source, fmt)
  if resolution is not None:
    video = video_lib.resize_video(video, tuple(resolution))
  h, w = video.shape[1:3]
  tracks = (points * np.array([w, h], np.float64)).astype(np.float32)  # [N, T, 2] pixels of the emitted video
  trackgroup = None
  if query_mode == 'first':
    query_points, tracks, occluded = sample_queries_first(occluded, tracks)
  else:
    query_points, tracks, occluded, trackgroup = sample_queries_strided(occluded, tracks)
  return TapVidExample(video, query_points, tracks, occluded, video_name, trackgroup)


# ---------------------------------------------------------------------------------------------------------------
# Readers. Each checks its arguments and paths when called and returns a generator over the videos.


def _check_call(path: str | os.PathLike, query_mode: str, kind: str = 'file') -> str:
  if query_mode not in QUERY_MODES:
    raise ValueError(f'query_mode must be one of {QUERY_MODES}, got {query_mode!r}')
  path = os.fspath(path)
  exists, what = {'file': (os.path.isfile, 'a file'), 'dir': (os.path.isdir, 'a directory'),
                  'any': (os.path.exists, 'a file or directory')}[kind]
  if not exists(path):
    raise FileNotFoundError(f'TAP-Vid data not found: {path} (expected {what})')
  return path


def _load_pickle(path: str, fmt: str) -> Any:
  try:
    with open(path, 'rb') as f:
      return safe_pickle.load(f)  # arrays and containers only: a crafted file cannot run code
  except safe_pickle.UnsafePickleError as e:
    raise safe_pickle.UnsafePickleError(f'{path}: {e}') from None
  except Exception as e:  # unpickling fails with many exception types
    raise _format_error(path, fmt, f'cannot unpickle ({type(e).__name__}: {e})') from e


def _entry_arrays(entry: Any, source: str, fmt: str) -> tuple[Any, Any, Any]:
  missing = ({'video', 'points', 'occluded'} - set(entry)) if isinstance(entry, dict) else None
  if missing is None or missing:
    problem = f'missing keys {sorted(missing)}' if missing else f'entry is a {type(entry).__name__}, not a dict'
    raise _format_error(source, fmt, problem)
  return entry['video'], entry['points'], entry['occluded']


def _read_named_pickle(path, query_mode, resolution, fmt) -> Iterator[TapVidExample]:
  data = _load_pickle(path, fmt)
  if not isinstance(data, dict):
    raise _format_error(path, fmt, f'the pickle holds a {type(data).__name__}, not a dict')
  for name, entry in data.items():
    arrays = _entry_arrays(entry, f'{path} [{name!r}]', fmt)
    yield make_example(*arrays, str(name), query_mode, resolution, f'{path} [{name!r}]', fmt)


def read_davis(pickle_path, query_mode: str, resolution=(256, 256)) -> Iterator[TapVidExample]:
  """TAP-Vid-DAVIS: one pickle, dict video_name -> arrays (module docstring), in dict order."""
  path = _check_call(pickle_path, query_mode)
  return _read_named_pickle(path, query_mode, resolution, 'davis')


def read_robotap(pickle_path, query_mode: str, resolution=(256, 256)) -> Iterator[TapVidExample]:
  """RoboTAP distributed as a DAVIS-format pickle. For the CSV + mp4 layout use `read_csv_dataset`."""
  path = _check_call(pickle_path, query_mode)
  return _read_named_pickle(path, query_mode, resolution, 'robotap')


def read_rgb_stacking(pickle_path, query_mode: str, resolution=(256, 256)) -> Iterator[TapVidExample]:
  """TAP-Vid-RGB-Stacking: one pickle holding a list of arrays dicts; videos named rgb_stacking_0000, ..."""
  path = _check_call(pickle_path, query_mode)

  def generate():
    data = _load_pickle(path, 'rgb_stacking')
    if not isinstance(data, (list, tuple)):
      raise _format_error(path, 'rgb_stacking', f'the pickle holds a {type(data).__name__}, not a list')
    for i, entry in enumerate(data):
      source = f'{path} [{i}]'
      arrays = _entry_arrays(entry, source, 'rgb_stacking')
      yield make_example(*arrays, f'rgb_stacking_{i:04d}', query_mode, resolution, source, 'rgb_stacking')
  return generate()


def _decode_frames(video: Any, source: str) -> Any:
  """uint8 arrays pass through; a sequence of JPEG bytes is decoded with PIL to uint8 RGB [T, H, W, 3]."""
  if isinstance(video, np.ndarray) and video.dtype == np.uint8:
    return video
  is_sequence = isinstance(video, (list, tuple)) or isinstance(video, np.ndarray) and video.ndim == 1
  is_jpeg_list = is_sequence and len(video) > 0 and all(
      isinstance(f, (bytes, np.bytes_)) for f in video)
  if not is_jpeg_list:
    return video  # _check_arrays reports the format error
  try:
    return np.stack([np.asarray(Image.open(io.BytesIO(f)).convert('RGB')) for f in video])
  except Exception as e:  # PIL raises several types for undecodable bytes
    raise _format_error(source, 'kinetics', f'cannot decode the JPEG frames ({e})') from e


def read_kinetics(directory, query_mode: str, resolution=(256, 256)) -> Iterator[TapVidExample]:
  """TAP-Vid-Kinetics: shards `*_of_0010.pkl` in sorted order; videos named by dict key or `<shard>_<index>`."""
  path = _check_call(directory, query_mode, kind='dir')
  shards = sorted(glob.glob(os.path.join(path, '*_of_0010.pkl')))
  if not shards:
    raise FileNotFoundError(f'no Kinetics shards *_of_0010.pkl in {path}')

  def generate():
    for shard in shards:
      data = _load_pickle(shard, 'kinetics')
      if isinstance(data, dict):
        entries = [(str(k), v) for k, v in data.items()]
      elif isinstance(data, (list, tuple)):
        stem = os.path.basename(shard)[:-len('.pkl')]
        entries = [(f'{stem}_{i:04d}', v) for i, v in enumerate(data)]
      else:
        raise _format_error(shard, 'kinetics', f'the pickle holds a {type(data).__name__}, not a list or dict')
      for name, entry in entries:
        source = f'{shard} [{name!r}]'
        video, points, occluded = _entry_arrays(entry, source, 'kinetics')
        video = _decode_frames(video, source)
        yield make_example(video, points, occluded, name, query_mode, resolution, source, 'kinetics')
  return generate()


def _parse_csv(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """csv -> {video_id: (points [N, T, 2] normalised, occluded [N, T])}, in order of first appearance."""
  rows: dict[str, list[np.ndarray]] = {}
  try:
    with open(path, newline='') as f:
      for line, row in enumerate(csv.reader(f), start=1):
        if not row or not ''.join(row).strip():
          continue
        try:
          values = np.array([float(v) for v in row[1:]], np.float64)
        except ValueError as e:
          raise _format_error(f'{path} line {line}', 'csv', f'non-numeric value ({e})') from e
        if values.size == 0 or values.size % 3:
          raise _format_error(f'{path} line {line}', 'csv', f'{values.size} values is not a positive multiple of 3')
        rows.setdefault(row[0].strip(), []).append(values.reshape(-1, 3))
  except (UnicodeDecodeError, csv.Error) as e:  # binary data, NUL bytes, over-long fields
    raise _format_error(path, 'csv', f'not a readable text csv ({type(e).__name__}: {e})') from e
  if not rows:
    raise _format_error(path, 'csv', 'no rows')
  tracks = {}
  for video_id, triples in rows.items():
    if len({t.shape[0] for t in triples}) != 1:
      raise _format_error(path, 'csv', f'the rows of {video_id!r} have different frame counts')
    stacked = np.stack(triples)  # [N, T, 3]
    tracks[video_id] = (stacked[..., :2], stacked[..., 2] > 0)
  return tracks


def read_csv_dataset(csv_path, video_dir, query_mode: str, resolution=(256, 256)) -> Iterator[TapVidExample]:
  """RoboTAP / Perception Test layout: annotation csv plus one video file per `video_id` (module docstring).

  Annotations longer than the video are truncated to it (and a longer video to its annotation). Videos of T > 1000
  frames become ceil(T / 1000) consecutive parts named `<video_id>_part<i>`. Needs an ffmpeg binary for mediapy
  (on PATH, or the imageio-ffmpeg wheel).
  """
  path = _check_call(csv_path, query_mode)
  video_dir = _check_call(video_dir, query_mode, kind='dir')
  annotations = _parse_csv(path)

  def generate():
    for video_id, (points, occluded) in annotations.items():
      video_path = os.path.join(video_dir, video_id if video_id.endswith('.mp4') else video_id + '.mp4')
      if not os.path.isfile(video_path):
        raise FileNotFoundError(f'video for {video_id!r} of {path} not found: {video_path}')
      video, _ = video_lib.read_video(video_path)  # undecodable files: ValueError naming the video
      num_frames = min(video.shape[0], points.shape[1])
      video, points, occluded = video[:num_frames], points[:, :num_frames], occluded[:, :num_frames]
      parts = math.ceil(num_frames / CSV_MAX_FRAMES)
      for i in range(parts):
        start, end = i * num_frames // parts, (i + 1) * num_frames // parts
        name = video_id if parts == 1 else f'{video_id}_part{i}'
        yield make_example(video[start:end], points[:, start:end], occluded[:, start:end], name, query_mode,
                           resolution, f'{path} [{video_id!r}]', 'csv')
  return generate()


def _npz_arrays(file: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  keys = ('video', 'points', 'occluded')
  try:
    with open(file, 'rb') as f:  # our handle: numpy leaks its own when the zip is damaged
      data = np.load(f, allow_pickle=False)
      arrays = {k: data[k] for k in keys if k in data.files} if isinstance(data, np.lib.npyio.NpzFile) else None
  except Exception as e:  # BadZipFile, zlib.error, EOFError, OSError, ValueError (header, pickled arrays), ...
    raise _format_error(file, 'npz', f'cannot read it as an .npz archive ({type(e).__name__}: {e})') from e
  if arrays is None:
    raise _format_error(file, 'npz', 'it holds a single array, not an .npz archive')
  if len(arrays) < len(keys):
    raise _format_error(file, 'npz', f'missing arrays {sorted(set(keys) - set(arrays))}')
  return arrays['video'], arrays['points'], arrays['occluded']


def read_npz_dataset(path_or_dir, query_mode: str, resolution=(256, 256)) -> Iterator[TapVidExample]:
  """Our npz format (module docstring): one file, or every `*.npz` of a directory in sorted order."""
  path = _check_call(path_or_dir, query_mode, kind='any')
  files = sorted(glob.glob(os.path.join(path, '*.npz'))) if os.path.isdir(path) else [path]
  if not files:
    raise FileNotFoundError(f'no .npz files in {path}')

  def generate():
    for file in files:
      arrays = _npz_arrays(file)
      name = os.path.splitext(os.path.basename(file))[0]
      yield make_example(*arrays, name, query_mode, resolution, file, 'npz')
  return generate()


def read_kubric(data_dir, query_mode: str, resolution=(256, 256), **kwargs) -> Iterator[TapVidExample]:
  """TAP-Vid-Kubric: TFDS MOVi-E through the training track pipeline (`tapir.data.kubric_eval.read_videos`,
  whose keyword arguments `kwargs` are: dataset, split, vflip, seed, tracks_to_sample, num_videos).

  The queries are the training sampler's, so `query_mode` only selects which frames the metrics score.
  """
  path = _check_call(data_dir, query_mode, kind='dir')
  videos = kubric_eval.read_videos(path, **kwargs)

  def generate():
    for v in videos:
      video, query_points, tracks = v.video, v.query_points, v.target_points
      if resolution is not None and tuple(resolution) != video.shape[1:3]:
        query_points, tracks = rescale_to_metric_resolution(query_points, tracks, video.shape[1:3], resolution)
        video = video_lib.resize_video(video, tuple(resolution))
      yield TapVidExample(video, query_points.astype(np.float32), tracks.astype(np.float32), v.occluded, v.name)
  return generate()


def write_npz_example(path, video: np.ndarray, points: np.ndarray, occluded: np.ndarray) -> None:
  """Writes one video in our npz format: video uint8 [T, H, W, 3], points [N, T, 2] normalised (x, y), occluded."""
  path = os.fspath(path)
  video, points, occluded = _check_arrays(np.asarray(video), points, occluded, path, 'npz')
  np.savez_compressed(path, video=video, points=points.astype(np.float32), occluded=occluded)


_READERS: dict[str, Callable[..., Iterator[TapVidExample]]] = {
    'davis': read_davis, 'rgb_stacking': read_rgb_stacking, 'kinetics': read_kinetics, 'robotap': read_robotap,
    'csv': read_csv_dataset, 'npz': read_npz_dataset, 'kubric': read_kubric,
}


def open_dataset(name: str, path, query_mode: str, resolution=(256, 256), **kwargs) -> Iterator[TapVidExample]:
  """Dispatches to the reader for `name` (keys of `FORMATS`); `csv` needs `video_dir=...`; `kubric` takes
  `read_kubric`'s keyword arguments (`vflip`, `dataset`, `split`, ...); `jhmdb` is `tapir.data.jhmdb`."""
  if name not in _READERS:
    raise ValueError(f'unknown TAP-Vid dataset {name!r}; valid names: {sorted(_READERS)}')
  if name == 'csv':
    if 'video_dir' not in kwargs:
      raise ValueError("open_dataset('csv', ...) needs video_dir=<directory of the videos>")
    return read_csv_dataset(path, kwargs.pop('video_dir'), query_mode, resolution, **kwargs)
  return _READERS[name](path, query_mode, resolution, **kwargs)
