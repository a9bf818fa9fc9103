"""Track points through a video file and paint them: the library behind `python -m experiments.track`.

    video, fps = track_video.read_video('in.mp4')                          # uint8 [t, h, w, 3]
    tracker = track_video.load_tracker('tapir_checkpoint_panning.npy', preset='tapir')
    queries = track_video.grid_points(video.shape[1:3], 16)                # [256, 3] (t, y, x)
    tracks, visible = track_video.track_video(video, tracker, queries)     # [n, t, 2] (x, y), [n, t]

`track_file` does all of it from paths to a painted video and an optional `.npz`. Coordinates are pixels of
the input video throughout (raster convention of `tapir.conventions`); the trackers handle resizing.
"""

import json
import os
import shutil
from typing import Any, Mapping, NamedTuple, Sequence

from absl import logging
import mediapy
import numpy as np
from PIL import Image
import tqdm

from tapir import checkpoint as checkpoint_lib
from tapir import inference
from tapir import online as online_lib
from tapir import viz
from tapir.models import tapir as tapir_lib

NEED_WEIGHTS = ('tracking needs trained weights: pass --checkpoint PATH to a released .npy checkpoint. Download '
                'them with `bash scripts/download_checkpoints.sh checkpoints` (tapir_checkpoint_panning.npy for '
                '--preset tapir, bootstapir_checkpoint_v2.npy for bootstapir, causal_tapir_checkpoint.npy and '
                'causal_bootstapir_checkpoint.npy for the causal presets and --online). --random_weights runs '
                'untrained weights, for testing only.')
CHECKPOINT_FOR_PRESET = {
    'tapir': 'tapir_checkpoint_panning.npy',
    'bootstapir': 'bootstapir_checkpoint_v2.npy',
    'causal_tapir': 'causal_tapir_checkpoint.npy',
    'causal_bootstapir': 'causal_bootstapir_checkpoint.npy',
}
_POINTS_ACROSS = 32  # mask queries: about this many grid points across the frame's short side

AnyTracker = inference.Tracker | online_lib.OnlineTracker


class TrackResult(NamedTuple):
  tracks: np.ndarray  # [n, t, 2] (x, y) pixels of the input video
  visible: np.ndarray  # [n, t] bool
  query_points: np.ndarray  # [n, 3] (t, y, x) pixels of the input video
  painted: np.ndarray  # [t, h, w, 3] uint8, the input video with the tracks drawn on it


# ---------------------------------------------------------------------------------------------------------------
# Video and query input.


def ensure_ffmpeg() -> None:
  """Points mediapy at imageio-ffmpeg's bundled binary when no `ffmpeg` is on PATH."""
  if shutil.which('ffmpeg') is not None:
    return
  try:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('no ffmpeg on PATH and imageio-ffmpeg is not installed: video I/O will fail '
                    '(pip install imageio-ffmpeg, or install ffmpeg)')
    return
  mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
  """Reads a video file. Returns uint8 [t, h, w, 3] and its frame rate (frames per second)."""
  if not os.path.isfile(path):
    raise ValueError(f'video not found: {path}')
  ensure_ffmpeg()
  try:
    video = mediapy.read_video(path)
  except Exception as e:  # ffmpeg failures surface as several exception types
    hint = ''
    if "'vsync'" in str(e):
      hint = ('\n(this ffmpeg is too new for mediapy: ffmpeg >= 8 dropped -vsync; use ffmpeg 7 or '
              'pip install "imageio-ffmpeg<0.8")')
    raise ValueError(f'cannot read video {path}: {e}{hint}') from e
  if video.ndim != 4 or video.shape[0] == 0:
    raise ValueError(f'cannot read video {path}: decoded {video.shape}, expected [frames, height, width, 3]')
  fps = video.metadata.fps if video.metadata is not None else None
  return np.asarray(video, np.uint8), float(fps or 30.0)


def write_video(path: str | os.PathLike, video: np.ndarray, fps: float) -> None:
  """Writes uint8 [t, h, w, 3] as an H.264 video (frames padded to even sizes, as H.264 needs)."""
  ensure_ffmpeg()
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  _, h, w, _ = video.shape
  video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
  mediapy.write_video(path, video, fps=fps)


def grid_points(frame_hw: Sequence[int], n: int, query_frame: int = 0) -> np.ndarray:  # [n * n, 3]
  """An n x n grid of queries at pixel centres, evenly spread over the frame (row-major, (t, y, x))."""
  h, w = frame_hw
  if n < 1 or n > min(h, w):
    raise ValueError(f'--grid must be in [1, {min(h, w)}] for {h}x{w} frames; got {n}')
  ys = np.floor((np.arange(n) + 0.5) * h / n) + 0.5
  xs = np.floor((np.arange(n) + 0.5) * w / n) + 0.5
  yy, xx = np.meshgrid(ys, xs, indexing='ij')
  return np.stack([np.full(yy.size, query_frame), yy.ravel(), xx.ravel()], -1).astype(np.float32)


def parse_points(spec: str) -> np.ndarray:  # [n, 3] float32 (t, y, x)
  """Parses "t,y,x;t,y,x;..." (frame index and raster pixels of the video) into query points."""
  rows = []
  for item in (s.strip() for s in spec.split(';')):
    if not item:
      continue
    try:
      row = [float(v) for v in item.split(',')]
    except ValueError:
      row = []
    if len(row) != 3 or not np.isfinite(row).all():
      raise ValueError(f'cannot parse point {item!r}: expected "t,y,x" (frame index, row, column in pixels)')
    rows.append(row)
  if not rows:
    raise ValueError(f'no points in {spec!r}: expected "t,y,x;t,y,x;..."')
  return np.asarray(rows, np.float32)


def load_mask(path: str | os.PathLike, frame_hw: Sequence[int]) -> np.ndarray:  # [h, w] bool
  """Reads a mask image (nonzero = inside; alpha or luminance) that must have the video's frame size."""
  try:
    image = Image.open(path)
    image.load()
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read mask {path}: {e}') from e
  if image.mode in ('RGBA', 'LA') and np.asarray(image.getchannel('A')).min() < 255:
    mask = np.asarray(image.getchannel('A')) > 0
  else:
    mask = np.asarray(image.convert('L')) > 0
  if mask.shape != tuple(frame_hw):
    raise ValueError(f'mask {path} is {mask.shape[0]}x{mask.shape[1]} (height x width) but the video frames are '
                     f'{frame_hw[0]}x{frame_hw[1]}')
  return mask


def make_query_points(video_shape: Sequence[int], grid: int | None = None, points: str | None = None,
                      mask: str | None = None, mask_frame: int = 0) -> np.ndarray:  # [n, 3] (t, y, x)
  """Query points from exactly one of `grid` (n x n on frame 0), `points` ("t,y,x;...") or a `mask` image."""
  t, h, w = video_shape[:3]
  if sum(x is not None for x in (grid, points, mask)) != 1:
    raise ValueError('give exactly one of --grid, --points and --mask')
  if grid is not None:
    queries = grid_points((h, w), grid)
  elif points is not None:
    queries = parse_points(points)
  else:
    if not 0 <= mask_frame < t:
      raise ValueError(f'--mask_frame {mask_frame} is outside the video (frames 0..{t - 1})')
    stride = max(1, min(h, w) // _POINTS_ACROSS)
    queries = inference.mask_query_points(load_mask(mask, (h, w)), mask_frame, stride=stride)
  tapir_lib.check_query_points(queries, (t, h, w, 3))
  return queries


# ---------------------------------------------------------------------------------------------------------------
# Trackers.


def parse_model_overrides(text: str | None) -> dict[str, Any]:
  """JSON object of TAPIR constructor arguments -> kwargs (JSON lists become tuples)."""
  if not text:
    return {}
  try:
    overrides = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'--model_overrides is not valid JSON: {e}') from e
  if not isinstance(overrides, dict):
    raise ValueError(f'--model_overrides must be a JSON object of TAPIR arguments; got {text!r}')
  return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def model_kwargs_for(stored: Mapping[str, Any] | None, preset: str = 'tapir', **overrides) -> dict[str, Any]:
  """The architecture: the settings a checkpoint from our trainer stores (`stored`; `preset` is then ignored),
  else the preset's; `overrides` on top."""
  if stored is None:
    return inference.preset_kwargs(preset, **overrides)
  logging.info('architecture read from the checkpoint (written by tapir\'s trainer); --preset not used')
  return {**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}, **overrides}


def load_weights(checkpoint: str | None, preset: str = 'tapir', random_weights: bool = False,
                 **overrides) -> tuple[Any, Any, dict[str, Any]]:
  """(params, state, model_kwargs) from one read of `checkpoint`, or random weights for the preset.

  Raises ValueError with `NEED_WEIGHTS` when there is no checkpoint and `random_weights` is off.
  """
  if checkpoint is None:
    if not random_weights:
      raise ValueError(NEED_WEIGHTS)
    logging.warning('RANDOM weights: the tracks are meaningless (for testing only)')
    model_kwargs = model_kwargs_for(None, preset, **overrides)
    return (*inference.init_params(model_kwargs), model_kwargs)
  if not os.path.exists(checkpoint):
    raise FileNotFoundError(f'checkpoint {checkpoint} does not exist. {NEED_WEIGHTS}')
  contents = checkpoint_lib.read_checkpoint(checkpoint)
  return contents.params, contents.state, model_kwargs_for(contents.model_kwargs, preset, **overrides)


def load_tracker(checkpoint: str | None, preset: str = 'tapir', online: bool = False,
                 resize_to: Sequence[int] | None = (256, 256), query_chunk_size: int = 64,
                 random_weights: bool = False, **overrides) -> AnyTracker:
  """An offline `tapir.Tracker`, or with `online` a `tapir.OnlineTracker`, for `checkpoint` and `preset`.

  A checkpoint written by our trainer carries its architecture, which then replaces the preset's.
  `resize_to` only matters for the online tracker (the offline one takes it per call). Errors as
  `load_weights` and `make_tracker`.
  """
  weights = load_weights(checkpoint, preset, random_weights, **overrides)
  return make_tracker(*weights, checkpoint=checkpoint, preset=preset, online=online, resize_to=resize_to,
                      query_chunk_size=query_chunk_size)


def make_tracker(params, state, model_kwargs: Mapping[str, Any], *, checkpoint: str | None, preset: str,
                 online: bool = False, resize_to: Sequence[int] | None = (256, 256),
                 query_chunk_size: int = 64) -> AnyTracker:
  """The tracker for loaded weights. Raises ValueError when `online` is asked of a non-causal model, and with
  `check_params`' diagnosis when the weights do not fit the architecture."""
  if online and not model_kwargs.get('use_causal_conv'):
    raise ValueError(f'--online needs a causal preset (causal_tapir or causal_bootstapir); got {preset!r}')
  try:
    if online:
      return online_lib.OnlineTracker(params, state, model_kwargs, resize_to=resize_to)
    return inference.Tracker(params, state, model_kwargs, query_chunk_size=query_chunk_size)
  except ValueError as e:
    if checkpoint is None or not str(e).startswith('checkpoint does not fit'):
      raise
    expected = CHECKPOINT_FOR_PRESET.get(preset, '?')
    raise ValueError(f'{checkpoint} does not fit --preset {preset} (whose released checkpoint is {expected}); '
                     f'is it a checkpoint for another preset?\n{e}') from e


def track_offline(tracker: inference.Tracker, video: np.ndarray, query_points: np.ndarray,
                  resize_to: Sequence[int] | None = (256, 256)) -> tuple[np.ndarray, np.ndarray]:
  """`tracker.predict` on the whole video: tracks [n, t, 2] (x, y) and visible [n, t] in the video's pixels."""
  chunks = -(-len(query_points) // tracker.query_chunk_size)
  logging.info('tracking %d points through %d frames offline (%d query chunks)', len(query_points),
               video.shape[0], chunks)
  out = tracker.predict(video, query_points, resize_to=resize_to)
  return out.tracks, out.visible


def track_online(tracker: online_lib.OnlineTracker, video: np.ndarray, query_points: np.ndarray,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Streams the video frame by frame; each query starts at its own (integer) frame.

  Before its query frame a point has no estimate: its track holds the query position, marked not visible.
  Returns tracks [n, t, 2] (x, y) and visible [n, t] in the video's pixels.
  """
  t = video.shape[0]
  frames_of = query_points[:, 0]
  if not np.all(frames_of == np.round(frames_of)):
    raise ValueError('--online needs whole frame indices t in the query points')
  frames_of = frames_of.astype(int)
  n = len(query_points)
  tracks = np.broadcast_to(query_points[:, None, :0:-1], (n, t, 2)).astype(np.float32)  # (y, x) -> (x, y)
  visible = np.zeros((n, t), bool)
  slots = np.full(n, -1)  # the tracker's index of each query
  for f in tqdm.trange(t, desc='frames', disable=not progress):
    starting = np.nonzero(frames_of == f)[0]
    if starting.size:
      slots[starting] = tracker.add_queries(video[f], query_points[starting, 1:])
    if not (slots >= 0).any():
      continue
    out = tracker.step(video[f])
    active = np.nonzero(slots >= 0)[0]
    tracks[active, f] = out.tracks[slots[active]]
    visible[active, f] = out.visible[slots[active]]
  return tracks, visible


def track_video(video: np.ndarray, tracker: AnyTracker, query_points: np.ndarray,
                resize_to: Sequence[int] | None = (256, 256), progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Tracks `query_points` [n, 3] (t, y, x) through uint8 `video` [t, h, w, 3] with either kind of tracker.

  `resize_to` is the offline model's input size (None: the video's own); an `OnlineTracker` carries its own.
  Returns tracks [n, t, 2] (x, y) and visible [n, t] bool, in the video's pixels.
  """
  inference.check_video(video)
  query_points = np.asarray(query_points, np.float32)
  tapir_lib.check_query_points(query_points, video.shape)
  if isinstance(tracker, online_lib.OnlineTracker):
    return track_online(tracker, video, query_points, progress)
  return track_offline(tracker, video, query_points, resize_to)


# ---------------------------------------------------------------------------------------------------------------
# End to end.


def save_tracks(path: str | os.PathLike, result: TrackResult, **settings: Any) -> None:
  """Writes `tracks`, `visible`, `query_points` and each setting (as a string) to an `.npz` file."""
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  np.savez(path, tracks=result.tracks, visible=result.visible, query_points=result.query_points,
           **{k: np.asarray(str(v)) for k, v in settings.items()})


def track_file(video_path: str, out_path: str | None, checkpoint: str | None = None, preset: str = 'tapir', *,
               grid: int | None = None, points: str | None = None, mask: str | None = None,
               mask_frame: int = 0, online: bool = False, resize: int | None = None, save_path: str | None = None,
               query_chunk_size: int = 64, random_weights: bool = False, model_overrides: str | None = None,
               trail: int = 8, progress: bool = True) -> TrackResult:
  """Reads `video_path`, tracks the queries, writes the painted video to `out_path` (at the input's size and
  frame rate) and, with `save_path`, the tracks to an `.npz`. `resize` is the square model input size, 0 for
  the video's own size, None for the model's `initial_resolution` (256 for the released models). Arguments
  mirror the flags of `experiments.track`; inputs are validated before any model is built.
  """
  video, fps = read_video(video_path)
  query_points = make_query_points(video.shape, grid, points, mask, mask_frame)
  params, state, model_kwargs = load_weights(checkpoint, preset, random_weights,
                                             **parse_model_overrides(model_overrides))
  if resize is None:
    resize_to = inference.model_resolution(model_kwargs)
  else:
    resize_to = (resize, resize) if resize else None
  tracker = make_tracker(params, state, model_kwargs, checkpoint=checkpoint, preset=preset, online=online,
                         resize_to=resize_to, query_chunk_size=query_chunk_size)
  tracks, visible = track_video(video, tracker, query_points, resize_to, progress)
  colors = viz.rainbow_colors(query_points, video.shape[1:3])
  painted = viz.paint_tracks(video, tracks, visible, colors, trail=trail)
  result = TrackResult(tracks=tracks, visible=visible, query_points=query_points, painted=painted)
  if out_path:
    write_video(out_path, painted, fps)
    logging.info('wrote %s (%d frames, %dx%d, %.3g fps)', out_path, *video.shape[:3], fps)
  if save_path:
    save_tracks(save_path, result, preset=preset, resize='x'.join(map(str, resize_to)) if resize_to else 'native',
                online=online, checkpoint=checkpoint or 'random', video=video_path)
    logging.info('wrote %s', save_path)
  return result
