"""Track points through a video file and paint them: the library behind `python -m experiments.track`.

    video, fps = tapir.video.read_video('in.mp4')                          # uint8 [t, h, w, 3]
    tracker = tapir.load_tracker('tapir_checkpoint_panning.npy', preset='tapir')
    queries = tapir.grid_query_points(video.shape[1:3], stride=16)         # [n, 3] (t, y, x)
    tracks, visible = cli.track_video(video, tracker, queries)             # [n, t, 2] (x, y), [n, t]

`track_file` does all of it from paths to a painted video and an optional `.npz`, streaming: online it holds one
frame at a time; offline it keeps only the video resized to the model's input, then reads the file again to paint
and write one frame at a time (`tapir.video`). Coordinates are pixels of the input video throughout (raster
convention of `tapir.conventions`); the trackers handle resizing (`tapir.tracking.core`).
"""

import contextlib
import json
import os
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

from absl import logging
import numpy as np
import tqdm

from tapir import checkpoint_io
from tapir import conventions
from tapir import video as video_io
from tapir.models import precision
from tapir.tracking import core
from tapir.tracking import loader
from tapir.tracking import online as online_lib
from tapir.tracking import paint
from tapir.tracking import queries as queries_lib
from tapir.tracking import rainbow

STYLES = ('trails', 'rainbow')  # how `track_file` paints: image-space trails, or camera-compensated ones


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


def parse_model_overrides(text: str | None) -> dict[str, Any]:
  """JSON object of constructor arguments -> kwargs (JSON lists become tuples)."""
  if not text:
    return {}
  try:
    overrides = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'model_overrides is not valid JSON: {e}') from e
  if not isinstance(overrides, dict):
    raise ValueError(f'model_overrides must be a JSON object of constructor arguments; got {text!r}')
  return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def stream_online(tracker: online_lib.OnlineTracker, frames: Iterable[np.ndarray],
                  query_points: np.ndarray) -> Iterator[FrameTracks]:
  """Tracks through a stream of uint8 frames, one at a time; each query starts at its own (integer) frame.

  `query_points` [n, 3] (t, y, x), already checked against the video. Before its query frame a point has no
  estimate: it is reported at its query position, not visible.
  """
  frames_of = query_points[:, 0]
  if not np.all(frames_of == np.round(frames_of)):
    raise ValueError('online tracking needs whole frame indices t in the query points')
  frames_of = frames_of.astype(int)
  waiting = conventions.xy_of_tyx(query_points).copy()
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


def track_video(video: np.ndarray, tracker: loader.AnyTracker, query_points: np.ndarray,
                resize_to: Sequence[int] | str | None = core.MODEL_RESOLUTION,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Tracks `query_points` [n, 3] (t, y, x) through uint8 `video` [t, h, w, 3] with any tracker.

  `resize_to` is the offline model's input size ('model': its own; None: the video's); an `OnlineTracker`
  carries its own. Returns tracks [n, t, 2] (x, y) and visible [n, t] bool, in the video's pixels.
  """
  video_io.check_video(video)
  query_points = core.check_queries(query_points, video.shape)
  if isinstance(tracker, online_lib.OnlineTracker):
    steps = list(stream_online(tracker, tqdm.tqdm(video, desc='frames', disable=not progress), query_points))
    return np.stack([s.tracks for s in steps], 1), np.stack([s.visible for s in steps], 1)
  out = tracker.predict(video, query_points, resize_to=resize_to, progress=progress)
  return out.tracks, out.visible


def save_tracks(path: str | os.PathLike, result: TrackResult, **settings: Any) -> None:
  """Writes `tracks`, `visible`, `query_points`, `fps` (float) and each setting (as a string) to an `.npz` file
  (`.npz` appended if `path` lacks it, as numpy does), atomically: a killed run leaves no partial file."""
  path = os.fspath(path)
  path = path if path.endswith('.npz') else path + '.npz'
  arrays = dict(tracks=result.tracks, visible=result.visible, query_points=result.query_points,
                fps=np.float64(result.fps), **{k: np.asarray(str(v)) for k, v in settings.items()})
  checkpoint_io.write_atomically(path, lambda f: np.savez(f, **arrays))  # a file object: nothing appended


def track_file(video_path: str, out_path: str | None, checkpoint: str | None = None, preset: str | None = None, *,
               grid: int | None = None, points: str | None = None, mask: str | None = None,
               mask_frame: int = 0, online: bool = False, resize: int | None = None, save_path: str | None = None,
               query_chunk_size: int = 64, random_weights: bool = False, model_overrides: str | None = None,
               trail: int = 8, progress: bool = True, style: str = 'trails', dtype: str = 'float32') -> TrackResult:
  """Reads `video_path`, tracks the queries, writes the painted video to `out_path` (at the input's size and
  frame rate) and, with `save_path`, the tracks to an `.npz`. `resize` is the square model input size, 0 for
  the video's own size, None for the model's own resolution (256 for the released models). Arguments
  mirror the flags of `experiments.track`; inputs are validated before any model is built. `style` is 'trails'
  (fading trails in image coordinates) or 'rainbow' (camera-compensated trails, `tapir.tracking.rainbow`; it
  needs the whole tracks, so it paints offline from the decoded video, holding it in memory).

  Video frames are streamed (module docstring): `online` holds O(1) frames; offline holds the video at the
  model's input size. Only the tracks, [n, t] per point, grow with the video's length.
  """
  precision.check_compute_dtype(dtype)
  if resize is not None and (isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 0):
    raise ValueError(f'resize must be an integer >= 1, or 0 for the video\'s own size; got {resize!r}')
  queries_lib.check_positive_int(query_chunk_size, 'query_chunk_size')
  if trail < 0:
    raise ValueError(f'trail must be >= 0; got {trail}')
  if style not in STYLES:
    raise ValueError(f'style must be one of {STYLES}; got {style!r}')
  if style == 'rainbow' and online:
    raise ValueError("style='rainbow' needs every frame's tracks before it paints: track offline (online=False)")
  info = video_io.probe(video_path)
  shape = (info.num_frames, info.height, info.width, 3)
  query_points = queries_lib.make_query_points(shape, grid, points, mask, mask_frame)  # checked against the video
  model = loader.load_weights(checkpoint, preset, random_weights=random_weights,
                              **parse_model_overrides(model_overrides))
  resize_to = core.MODEL_RESOLUTION if resize is None else (resize, resize) if resize else None
  tracker = loader.make_tracker(model, online, resize_to, query_chunk_size, dtype)
  if online:
    resize_to = tracker.resize_to
  elif resize is None:
    resize_to = tracker.resolution
  tracks, visible = track_and_paint(tracker, video_path, out_path if style == 'trails' else None, query_points,
                                    resize_to, trail, progress, info)
  if style == 'rainbow' and out_path:
    video, _ = video_io.read_video(video_path)
    video_io.write_video(out_path, rainbow.paint_rainbow(video[:tracks.shape[1]], tracks, visible, trail=trail),
                         info.fps)
  result = TrackResult(tracks=tracks, visible=visible, query_points=query_points, fps=info.fps)
  if out_path:
    logging.info('wrote %s (%d frames, %dx%d, %.3g fps)', out_path, tracks.shape[1], *shape[1:3], info.fps)
  if save_path:
    save_tracks(save_path, result, **loader.describe(model), online=online, video=video_path,
                resize='x'.join(map(str, resize_to)) if resize_to else 'native')
    logging.info('wrote %s', save_path)
  return result


def track_and_paint(tracker: loader.AnyTracker, video_path: str, out_path: str | None, query_points: np.ndarray,
                    resize_to: Sequence[int] | None = (256, 256), trail: int = 8,
                    progress: bool = True, info: video_io.VideoInfo | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The streaming core of `track_file`: tracks [n, t, 2] (x, y) and visible [n, t] in the video's pixels.

  An `OnlineTracker` reads, tracks, paints and writes one frame at a time (it is restarted with these queries).
  An offline tracker gets the video resized to `resize_to` (None: the video's own size) frame by frame as it is
  read, then the file is read again to paint and write one frame at a time. `out_path` None: nothing is
  painted. `info`: the file's `video_io.probe` if already known.
  """
  info = info or video_io.probe(video_path)
  shape = (info.num_frames, info.height, info.width, 3)
  query_points = np.asarray(query_points, np.float32)  # checked by the tracker (offline) or below (online)
  painter = paint.TrailPainter(trail, paint.rainbow_colors(query_points, shape[1:3]))
  indices = np.arange(len(query_points))
  frame_bar = lambda frames, desc: tqdm.tqdm(frames, desc=desc, total=info.num_frames, disable=not progress)
  if isinstance(tracker, online_lib.OnlineTracker):
    query_points = core.check_queries(query_points, shape)
    with contextlib.ExitStack() as stack:
      reader = stack.enter_context(video_io.FrameReader(video_path))
      writer = stack.enter_context(video_io.FrameWriter(out_path, *shape[1:3], info.fps)) if out_path else None
      columns = []  # per frame: ([n, 2] tracks, [n] visible); the frames themselves are not kept
      for step in stream_online(tracker, frame_bar(reader, 'tracking'), query_points):
        columns.append((step.tracks, step.visible))
        if writer is not None:
          writer.write(painter.paint(step.frame, indices, step.tracks, step.visible))
    tracks, visible = np.stack([c[0] for c in columns], 1), np.stack([c[1] for c in columns], 1)
  else:
    model_hw = resize_to or shape[1:3]
    with video_io.FrameReader(video_path) as reader:  # keep only the frames at the model's input size
      resized = np.stack([video_io.resize_video(f[None], model_hw)[0] for f in frame_bar(reader, 'reading')])
    logging.info('tracking %d points through %d frames offline (%d query chunks)', len(query_points),
                 resized.shape[0], -(-len(query_points) // tracker.query_chunk_size))
    out = tracker.predict(resized, query_points, progress=progress, source_hw=shape[1:3])
    tracks, visible = out.tracks, out.visible
    del resized
    if out_path:  # second pass: paint and write one frame at a time
      with video_io.FrameReader(video_path) as reader, \
           video_io.FrameWriter(out_path, *shape[1:3], info.fps) as writer:
        for f, frame in enumerate(frame_bar(reader, 'painting')):
          if f < tracks.shape[1]:
            writer.write(painter.paint(frame, indices, tracks[:, f], visible[:, f]))
  return tracks, visible
