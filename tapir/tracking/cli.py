"""Track points through a video file and paint them: the library behind `python -m experiments.track`.

    video, fps = track_video.read_video('in.mp4')                          # uint8 [t, h, w, 3]
    tracker = track_video.load_tracker('tapir_checkpoint_panning.npy', preset='tapir')
    queries = track_video.grid_points(video.shape[1:3], 16)                # [256, 3] (t, y, x)
    tracks, visible = track_video.track_video(video, tracker, queries)     # [n, t, 2] (x, y), [n, t]

`track_file` does all of it from paths to a painted video and an optional `.npz`, streaming: online it holds one
frame at a time; offline it keeps only the video resized to the model's input, then reads the file again to paint
and write one frame at a time (`tapir.video`). Coordinates are pixels of the input video throughout (raster
convention of `tapir.conventions`); the trackers handle resizing.
"""

import collections
import contextlib
import json
import os
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

from absl import logging
import numpy as np
import tqdm

from tapir import checkpoint as checkpoint_lib
from tapir import conventions
from tapir import video as video_io
from tapir.models import tapir as tapir_lib
from tapir.tracking import online as online_lib
from tapir.tracking import paint
from tapir.tracking import queries as queries_lib
from tapir.tracking import tapnet as tapnet_lib
from tapir.tracking import tracker as tracker_lib
from tapir.tracking.queries import grid_points, load_mask, make_query_points, parse_points  # pylint: disable=unused-import (CLI API)

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

AnyTracker = tracker_lib.Tracker | online_lib.OnlineTracker | tapnet_lib.TAPNetTracker
TAPNET = 'tapnet'  # --preset for a TAP-Net checkpoint (the baseline; offline only)


class TrackResult(NamedTuple):
  tracks: np.ndarray  # [n, t, 2] (x, y) pixels of the input video
  visible: np.ndarray  # [n, t] bool
  query_points: np.ndarray  # [n, 3] (t, y, x) pixels of the input video
  fps: float  # frame rate of the input (and of the painted output)


class FrameTracks(NamedTuple):
  """One frame of a stream and the points' positions in it."""
  index: int
  frame: np.ndarray  # [h, w, 3] uint8
  tracks: np.ndarray  # [n, 2] (x, y) pixels of the frame
  visible: np.ndarray  # [n] bool


# ---------------------------------------------------------------------------------------------------------------
# Video and query input.


ensure_ffmpeg = video_io.ensure_ffmpeg
read_video = video_io.read_video  # (path) -> uint8 [t, h, w, 3], fps
write_video = video_io.write_video  # (path, uint8 [t, h, w, 3], fps)


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


def model_kwargs_for(stored: Mapping[str, Any] | None, preset: str | None = None, params=None,
                     **overrides) -> dict[str, Any]:
  """The architecture, by `tapir.checkpoint.resolve_model_kwargs`: settings stored in the checkpoint win (a
  contradicting preset or override is an error), else the preset's with `overrides`, else the one preset the
  parameter layout implies. Random weights (`params` None, nothing stored) default to preset 'tapir'."""
  if stored is None and params is None and preset is None:
    preset = 'tapir'
  return checkpoint_lib.resolve_model_kwargs(stored, preset, params, overrides)


def load_weights(checkpoint: str | None, preset: str | None = None, random_weights: bool = False,
                 **overrides) -> tuple[Any, Any, dict[str, Any]]:
  """(params, state, model_kwargs) from one read of `checkpoint`, or random weights for the preset.

  Raises ValueError with `NEED_WEIGHTS` when there is no checkpoint and `random_weights` is off.
  """
  if preset == TAPNET:  # TAP-Net has no TAPIR settings: its layout is fixed (`tapnet_lib.TAPNetTracker`)
    if checkpoint is None or overrides:
      raise ValueError('--preset tapnet needs --checkpoint (the released tapnet_checkpoint.npy) and no overrides')
    contents = checkpoint_lib.read_checkpoint(checkpoint)
    return contents.params, contents.state, {}
  if checkpoint is None:
    if not random_weights:
      raise ValueError(NEED_WEIGHTS)
    logging.warning('RANDOM weights: the tracks are meaningless (for testing only)')
    model_kwargs = model_kwargs_for(None, preset, **overrides)
    return (*tracker_lib.init_params(model_kwargs), model_kwargs)
  if not os.path.exists(checkpoint):
    raise FileNotFoundError(f'checkpoint {checkpoint} does not exist. {NEED_WEIGHTS}')
  contents = checkpoint_lib.read_checkpoint(checkpoint)
  return contents.params, contents.state, model_kwargs_for(contents.model_kwargs, preset, contents.params,
                                                           **overrides)


def load_tracker(checkpoint: str | None, preset: str | None = None, online: bool = False,
                 resize_to: Sequence[int] | str | None = tracker_lib.MODEL_RESOLUTION, query_chunk_size: int = 64,
                 random_weights: bool = False, **overrides) -> AnyTracker:
  """An offline `tapir.Tracker`, or with `online` a `tapir.OnlineTracker`, for `checkpoint` and `preset`.

  A checkpoint written by our trainer carries its architecture, which then replaces the preset's.
  `resize_to` only matters for the online tracker (the offline one takes it per call). Errors as
  `load_weights` and `make_tracker`.
  """
  weights = load_weights(checkpoint, preset, random_weights, **overrides)
  return make_tracker(*weights, checkpoint=checkpoint, preset=preset, online=online, resize_to=resize_to,
                      query_chunk_size=query_chunk_size)


def make_tracker(params, state, model_kwargs: Mapping[str, Any], *, checkpoint: str | None, preset: str | None,
                 online: bool = False, resize_to: Sequence[int] | str | None = tracker_lib.MODEL_RESOLUTION,
                 query_chunk_size: int = 64) -> AnyTracker:
  """The tracker for loaded weights. Raises ValueError when `online` is asked of a non-causal model, and with
  `check_params`' diagnosis when the weights do not fit the architecture."""
  if preset == TAPNET:
    if online:
      raise ValueError('--online needs a causal TAPIR preset; TAP-Net tracks offline only')
    return tapnet_lib.TAPNetTracker(params, state, query_chunk_size=query_chunk_size)
  if online and not model_kwargs.get('use_causal_conv'):
    raise ValueError(f'--online needs a causal preset (causal_tapir or causal_bootstapir); got {preset!r}')
  try:
    if online:
      return online_lib.OnlineTracker(params, state, model_kwargs, resize_to=resize_to)
    return tracker_lib.Tracker(params, state, model_kwargs, query_chunk_size=query_chunk_size)
  except ValueError as e:
    if checkpoint is None or preset is None or not str(e).startswith('checkpoint does not fit'):
      raise
    expected = CHECKPOINT_FOR_PRESET.get(preset, '?')
    raise ValueError(f'{checkpoint} does not fit --preset {preset} (whose released checkpoint is {expected}); '
                     f'is it a checkpoint for another preset?\n{e}') from e


def track_offline(tracker: tracker_lib.Tracker, video: np.ndarray, query_points: np.ndarray,
                  resize_to: Sequence[int] | str | None = tracker_lib.MODEL_RESOLUTION, progress: bool = False,
                  frame_hw: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`tracker.predict` on the whole video: tracks [n, t, 2] (x, y) and visible [n, t] in the video's pixels.

  `frame_hw` says that `video` was already resized from frames of that (height, width) to the model's input:
  queries are then given, and tracks returned, in pixels of the original frames. `progress` shows a bar over
  the query chunks.
  """
  chunks = -(-len(query_points) // tracker.query_chunk_size)
  logging.info('tracking %d points through %d frames offline (%d query chunks)', len(query_points),
               video.shape[0], chunks)
  if frame_hw is None:
    out = tracker.predict(video, query_points, resize_to=resize_to, progress=progress)
    return out.tracks, out.visible
  t, model_h, model_w = video.shape[:3]
  (h, w) = frame_hw
  queries = conventions.convert_grid_coordinates(query_points, (t, h, w), (t, model_h, model_w))
  out = tracker.predict(video, queries, resize_to=None, progress=progress)
  return conventions.convert_grid_coordinates(out.tracks, (model_w, model_h), (w, h)), out.visible


def stream_online(tracker: online_lib.OnlineTracker, frames: Iterable[np.ndarray],
                  query_points: np.ndarray) -> Iterator[FrameTracks]:
  """Tracks through a stream of uint8 frames, one at a time; each query starts at its own (integer) frame.

  Before its query frame a point has no estimate: it is reported at its query position, not visible.
  """
  query_points = np.asarray(query_points, np.float32)
  frames_of = query_points[:, 0]
  if not np.all(frames_of == np.round(frames_of)):
    raise ValueError('--online needs whole frame indices t in the query points')
  frames_of = frames_of.astype(int)
  waiting = query_points[:, :0:-1].copy()  # (y, x) -> (x, y)
  slots = np.full(len(query_points), -1)  # the tracker's index of each query
  for f, frame in enumerate(frames):
    tracks, visible = waiting.copy(), np.zeros(len(query_points), bool)
    starting = np.nonzero(frames_of == f)[0]
    if starting.size and (slots < 0).all():  # the first points restart the tracker
      tracker.start(frame, query_points[starting, 1:])
      slots[starting] = np.arange(starting.size)
    elif starting.size:
      slots[starting] = tracker.add_queries(frame, query_points[starting, 1:])
    active = np.nonzero(slots >= 0)[0]
    if active.size:
      out = tracker.step(frame)
      tracks[active] = out.tracks[slots[active]]
      visible[active] = out.visible[slots[active]]
    yield FrameTracks(f, frame, tracks, visible)


def track_online(tracker: online_lib.OnlineTracker, video: np.ndarray, query_points: np.ndarray,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """`stream_online` over an in-memory video: tracks [n, t, 2] (x, y) and visible [n, t] in its pixels."""
  steps = list(stream_online(tracker, tqdm.tqdm(video, desc='frames', disable=not progress), query_points))
  return np.stack([s.tracks for s in steps], 1), np.stack([s.visible for s in steps], 1)


def track_video(video: np.ndarray, tracker: AnyTracker, query_points: np.ndarray,
                resize_to: Sequence[int] | None = (256, 256), progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Tracks `query_points` [n, 3] (t, y, x) through uint8 `video` [t, h, w, 3] with either kind of tracker.

  `resize_to` is the offline model's input size (None: the video's own); an `OnlineTracker` carries its own.
  Returns tracks [n, t, 2] (x, y) and visible [n, t] bool, in the video's pixels.
  """
  video_io.check_video(video)
  query_points = np.asarray(query_points, np.float32)
  tapir_lib.check_query_points(query_points, video.shape)
  if isinstance(tracker, online_lib.OnlineTracker):
    return track_online(tracker, video, query_points, progress)
  return track_offline(tracker, video, query_points, resize_to, progress)


# ---------------------------------------------------------------------------------------------------------------
# End to end.


def save_tracks(path: str | os.PathLike, result: TrackResult, **settings: Any) -> None:
  """Writes `tracks`, `visible`, `query_points` and each setting (as a string) to an `.npz` file."""
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  np.savez(path, tracks=result.tracks, visible=result.visible, query_points=result.query_points,
           **{k: np.asarray(str(v)) for k, v in settings.items()})


class _Painter:
  """Paints frames one at a time with the trail of the last `trail` frames (a bounded window of positions)."""

  def __init__(self, query_points: np.ndarray, frame_hw: Sequence[int], trail: int):
    self.colors = paint.rainbow_colors(query_points, frame_hw)
    self.trail = trail
    self.window = collections.deque(maxlen=trail + 1)

  def paint(self, frame: np.ndarray, tracks: np.ndarray, visible: np.ndarray) -> np.ndarray:
    self.window.append((tracks, visible))
    return paint.paint_frame(frame, np.stack([w[0] for w in self.window], 1), np.stack([w[1] for w in self.window], 1),
                           self.colors, self.trail)


def track_file(video_path: str, out_path: str | None, checkpoint: str | None = None, preset: str | None = None, *,
               grid: int | None = None, points: str | None = None, mask: str | None = None,
               mask_frame: int = 0, online: bool = False, resize: int | None = None, save_path: str | None = None,
               query_chunk_size: int = 64, random_weights: bool = False, model_overrides: str | None = None,
               trail: int = 8, progress: bool = True) -> TrackResult:
  """Reads `video_path`, tracks the queries, writes the painted video to `out_path` (at the input's size and
  frame rate) and, with `save_path`, the tracks to an `.npz`. `resize` is the square model input size, 0 for
  the video's own size, None for the model's `initial_resolution` (256 for the released models). Arguments
  mirror the flags of `experiments.track`; inputs are validated before any model is built.

  Video frames are streamed (module docstring): `online` holds O(1) frames; offline holds the video at the
  model's input size. Only the tracks, [n, t] per point, grow with the video's length.
  """
  if resize is not None and (isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 0):
    raise ValueError(f'--resize must be an integer >= 1, or 0 for the video\'s own size; got {resize!r}')
  queries_lib.check_positive_int(query_chunk_size, '--query_chunk_size')
  info = video_io.probe(video_path)
  shape = (info.num_frames, info.height, info.width, 3)
  query_points = make_query_points(shape, grid, points, mask, mask_frame)
  if trail < 0:
    raise ValueError(f'--trail must be >= 0; got {trail}')
  params, state, model_kwargs = load_weights(checkpoint, preset, random_weights,
                                             **parse_model_overrides(model_overrides))
  if resize is None:
    resize_to = tracker_lib.model_resolution(model_kwargs)
  else:
    resize_to = (resize, resize) if resize else None
  tracker = make_tracker(params, state, model_kwargs, checkpoint=checkpoint, preset=preset, online=online,
                         resize_to=resize_to, query_chunk_size=query_chunk_size)
  tracks, visible = track_and_paint(tracker, video_path, out_path, query_points, resize_to, trail, progress, info)
  result = TrackResult(tracks=tracks, visible=visible, query_points=query_points, fps=info.fps)
  if out_path:
    logging.info('wrote %s (%d frames, %dx%d, %.3g fps)', out_path, tracks.shape[1], *shape[1:3], info.fps)
  if save_path:
    used_preset = preset or checkpoint_lib.preset_of(model_kwargs) or 'custom'  # the preset the rule resolved
    save_tracks(save_path, result, preset=used_preset, resize='x'.join(map(str, resize_to)) if resize_to else 'native',
                online=online, checkpoint=checkpoint or 'random', video=video_path)
    logging.info('wrote %s', save_path)
  return result


def track_and_paint(tracker: AnyTracker, video_path: str, out_path: str | None, query_points: np.ndarray,
                    resize_to: Sequence[int] | None = (256, 256), trail: int = 8,
                    progress: bool = True, info: video_io.VideoInfo | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The streaming core of `track_file`: tracks [n, t, 2] (x, y) and visible [n, t] in the video's pixels.

  An `OnlineTracker` reads, tracks, paints and writes one frame at a time (it is restarted with these queries).
  An offline `Tracker` keeps the video resized to `resize_to` (None: the video's own size) for the model, then
  reads the file again to paint and write one frame at a time. `out_path` None: nothing is painted. `info`:
  the file's `video_io.probe` if already known.
  """
  info = info or video_io.probe(video_path)
  shape = (info.num_frames, info.height, info.width, 3)
  query_points = np.asarray(query_points, np.float32)
  tapir_lib.check_query_points(query_points, shape)
  painter = _Painter(query_points, shape[1:3], trail)
  frame_bar = lambda frames, desc: tqdm.tqdm(frames, desc=desc, total=info.num_frames, disable=not progress)
  if isinstance(tracker, online_lib.OnlineTracker):
    with contextlib.ExitStack() as stack:
      reader = stack.enter_context(video_io.FrameReader(video_path))
      writer = stack.enter_context(video_io.FrameWriter(out_path, *shape[1:3], info.fps)) if out_path else None
      columns = []  # per frame: ([n, 2] tracks, [n] visible); the frames themselves are not kept
      for step in stream_online(tracker, frame_bar(reader, 'tracking'), query_points):
        columns.append((step.tracks, step.visible))
        if writer is not None:
          writer.write(painter.paint(step.frame, step.tracks, step.visible))
    tracks, visible = np.stack([c[0] for c in columns], 1), np.stack([c[1] for c in columns], 1)
  else:
    model_hw = resize_to or shape[1:3]
    with video_io.FrameReader(video_path) as reader:  # keep only the frames at the model's input size
      resized = np.stack([video_io.resize_video(f[None], model_hw)[0] for f in frame_bar(reader, 'reading')])
    tapir_lib.check_query_points(query_points, resized.shape[:1] + shape[1:])
    tracks, visible = track_offline(tracker, resized, query_points, progress=progress, frame_hw=shape[1:3])
    del resized
    if out_path:  # second pass: paint and write one frame at a time
      with video_io.FrameReader(video_path) as reader, \
           video_io.FrameWriter(out_path, *shape[1:3], info.fps) as writer:
        for f, frame in enumerate(frame_bar(reader, 'painting')):
          if f < tracks.shape[1]:
            writer.write(painter.paint(frame, tracks[:, f], visible[:, f]))
  return tracks, visible
