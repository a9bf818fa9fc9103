"""A web page to try the tracker (Gradio): the library behind `python -m experiments.webapp`.

    demo = webapp.build_app('checkpoints', limits=webapp.Limits(max_upload_mb=50))
    webapp.serve(demo, port=7860)                    # http://127.0.0.1:7860

A visitor uploads a video (or takes the built-in clip), clicks points on any frame or asks for an N x N grid,
picks a checkpoint, preset and offline or online, and gets the painted video and a tracks `.npz` (`cli.save_tracks`).
The work is plain functions, tested without a browser: `check_upload` (size, a decodable video, frame count and
size), `add_point` / `grid_queries`, `TrackerCache` (one model per choice), `run_tracking`. `build_app` wires them
into a `gr.Blocks`, importing Gradio (the `demo` extra): importing this module, or `tapir`, does not. Bad input is
a ValueError naming the problem, shown on the page. Points are (t, y, x) in raster pixels (`tapir.conventions`):
a click on pixel (row j, column i) of a frame (shown enlarged, `display_scale`) queries (j + 0.5, i + 0.5).
"""

import dataclasses
import functools
import math
import os
import tempfile
import threading
from typing import Any, Callable, NamedTuple, Sequence

from absl import logging
import numpy as np

from tapir import checkpoint as checkpoint_lib
from tapir import video as video_io
from tapir.data import realpix
from tapir.tracking import cli
from tapir.tracking import core
from tapir.tracking import loader
from tapir.tracking import online as online_lib
from tapir.tracking import paint
from tapir.tracking import queries as queries_lib

RANDOM_WEIGHTS = 'random weights (demo)'  # the checkpoint choice for untrained weights
AUTO_PRESET = 'auto'  # a released file's preset, else the file's own settings; random weights: (causal_)tapir
MODES = ('offline', 'online')
CHECKPOINT_SUFFIXES = ('.npy', '.npz', '.safetensors', '.pt', '.pth')  # the formats `tapir.checkpoint` reads
BUILTIN_SEED = realpix.TRAIN_SEED_OFFSET + 7  # a training-range seed: never one of the evaluation clips
DISPLAY_SIDE = 512  # frames are enlarged by whole factors towards this many pixels on their longer side
Progress = Callable[[float, str], None]  # (fraction done in [0, 1], what is happening)


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the page accepts: uploads up to `max_upload_mb` megabytes (10**6 bytes), `max_frames` frames, `max_side`
  pixels on the longer side (a session holds its decoded video: 400 MB at most by default), `max_points` points."""
  max_upload_mb: float = 50.0
  max_frames: int = 200
  max_side: int = 960
  max_points: int = 256

  def __post_init__(self):
    mb = self.max_upload_mb
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not mb > 0:
      raise ValueError(f'max_upload_mb must be a number > 0; got {mb!r}')
    for name in ('max_frames', 'max_side', 'max_points'):
      queries_lib.check_positive_int(getattr(self, name), name)


class Clip(NamedTuple):
  video: np.ndarray  # [t, h, w, 3] uint8
  fps: float
  name: str  # stem of the output files


class DemoResult(NamedTuple):
  video_path: str  # the painted mp4 (input size and fps)
  tracks_path: str  # the `.npz` of `cli.save_tracks`
  result: cli.TrackResult


def check_upload(path: str | os.PathLike | None, limits: Limits) -> video_io.VideoInfo:
  """The upload's `VideoInfo`, or ValueError: no file, over the size limit, not a video, too long or too large."""
  if not isinstance(limits, Limits):
    raise ValueError(f'limits must be a webapp.Limits; got {type(limits).__name__}')
  if path is None or not os.path.isfile(path):
    raise ValueError(f'video: no uploaded file found (got {path!r})')
  name, size_mb = os.path.basename(path), os.path.getsize(path) / 1e6
  if size_mb > limits.max_upload_mb:
    raise ValueError(f'{name} is {size_mb:.3g} MB: uploads are limited to {limits.max_upload_mb:g} MB (max_upload_mb)')
  try:
    info = video_io.probe(path)
  except ValueError as e:
    logging.info('refused upload %s: %s', path, e)
    raise ValueError(f'{name} is not a video this page can read (ffmpeg cannot decode it)') from e
  if info.num_frames > limits.max_frames:
    raise ValueError(f'{name} has {info.num_frames} frames: videos are limited to {limits.max_frames} (max_frames); '
                     'cut it shorter')
  if max(info.height, info.width) > limits.max_side:
    raise ValueError(f'{name} is {info.width}x{info.height} pixels: the longer side is limited to {limits.max_side} '
                     '(max_side); scale it down')
  return info


def load_upload(path: str | os.PathLike | None, limits: Limits) -> Clip:
  """Checks (`check_upload`: ffmpeg counts the frames) and decodes an uploaded video."""
  check_upload(path, limits)
  video, fps = video_io.read_video(path)
  return Clip(video[:limits.max_frames], fps, os.path.splitext(os.path.basename(path))[0])


@functools.lru_cache(maxsize=2)
def builtin_clip(height: int = 256, width: int = 256, num_frames: int = 24) -> Clip:
  """The built-in clip: real photographs moved by known motion (`tapir.data.realpix`), at 12 fps."""
  for name, value in (('height', height), ('width', width), ('num_frames', num_frames)):
    queries_lib.check_positive_int(value, name)
  config = realpix.RealPixConfig(height=height, width=width, num_frames=num_frames)
  return Clip(realpix.generate_clip(BUILTIN_SEED, config).video, 12.0, 'builtin')


def _check_shape(video_shape: Sequence[int]) -> tuple[int, int, int]:
  if len(video_shape) < 3:
    raise ValueError(f'video_shape must be [t, h, w, ...]; got {video_shape!r}')
  return tuple(queries_lib.check_positive_int(s, 'video_shape') for s in video_shape[:3])


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
  top = math.inf if high is None else high
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= top:
    bounds = f'>= {low}' if high is None else f'in [{low}, {high}]'
    raise ValueError(f'{name} must be an integer {bounds}; got {value!r}')
  return int(value)


def display_scale(frame_hw: Sequence[int]) -> int:
  """The whole factor frames of `frame_hw` are shown enlarged by (1 when the longer side reaches DISPLAY_SIDE)."""
  h, w = (queries_lib.check_positive_int(s, 'frame_hw') for s in frame_hw)
  return max(1, DISPLAY_SIDE // max(h, w))


def click_to_yx(index: Sequence[int], scale: int) -> tuple[float, float]:
  """A click on pixel `index` = (column, row) of a frame shown `scale` times enlarged -> (y, x) of the video pixel's
  centre (Gradio's `SelectData.index` for an image is (x, y) in its pixels)."""
  scale = queries_lib.check_positive_int(scale, 'scale')
  if not isinstance(index, (list, tuple)) or len(index) != 2:
    raise ValueError(f'index must be (column, row) pixel integers; got {index!r}')
  col, row = (_check_int(v, 'index (column, row)', 0) for v in index)
  return row // scale + 0.5, col // scale + 0.5


def add_point(points: Sequence[Sequence[float]], t: int, y: float, x: float, video_shape: Sequence[int],
              max_points: int) -> list[list[float]]:
  """`points` (a list of (t, y, x)) with one more, checked against the video [t, h, w, 3] and `max_points`."""
  frames, h, w = _check_shape(video_shape)
  max_points = queries_lib.check_positive_int(max_points, 'max_points')
  t = _check_int(t, 't (the frame)', 0, frames - 1)
  if not (0 <= y < h and 0 <= x < w):
    raise ValueError(f'(y, x) must lie in the {h}x{w} frame; got ({y}, {x})')
  if len(points) >= max_points:
    raise ValueError(f'too many points: at most {max_points} (max_points); clear them to start again')
  return [list(map(float, p)) for p in points] + [[float(t), float(y), float(x)]]


def grid_queries(video_shape: Sequence[int], n: int, frame: int, max_points: int,
                 existing: int = 0) -> list[list[float]]:
  """An n x n grid of (t, y, x) pixel centres on `frame` (as `experiments.track --grid`), refused when it would
  take the points beyond `max_points` (with `existing` points already chosen)."""
  frames, h, w = _check_shape(video_shape)
  n, frame = _check_int(n, 'n (the grid size)', 1, min(h, w)), _check_int(frame, 'frame', 0, frames - 1)
  existing = _check_int(existing, 'existing', 0)
  if existing + n * n > queries_lib.check_positive_int(max_points, 'max_points'):
    raise ValueError(f'too many points: {existing} + a {n} x {n} grid of {n * n}, at most {max_points} (max_points)')
  return queries_lib.grid_points((h, w), n, frame).tolist()


def preview_frame(video: np.ndarray, frame: int, points: Sequence[Sequence[float]]) -> np.ndarray:
  """Frame `frame` of `video` [t, h, w, 3] enlarged by `display_scale`, with the points queried on it drawn in
  the colours the painted video gives them. Returns uint8 [h * s, w * s, 3]."""
  video_io.check_video(video)
  t, h, w, _ = video.shape
  frame = _check_int(frame, 'frame', 0, t - 1)
  s = display_scale((h, w))
  image = np.repeat(np.repeat(video[frame], s, axis=0), s, axis=1)
  queries = np.asarray(points, np.float64).reshape(-1, 3)
  if not len(queries):
    return image
  xy = (queries[:, [2, 1]] * s)[:, None]  # [n, 1, 2] (x, y) of the enlarged frame
  return paint.paint_frame(image, xy, (queries[:, 0] == frame)[:, None], paint.rainbow_colors(queries, (h, w)),
                           trail=0, radius=max(4, min(h, w) * s // 80))


def describe_points(points: Sequence[Sequence[float]]) -> str:
  """One line for the page: how many points, on which frames."""
  if not len(points):
    return 'No points yet: click on the frame, or add a grid.'
  frames = sorted({int(p[0]) for p in points})
  return f'{len(points)} point(s) on frame(s) ' + ', '.join(map(str, frames[:8])) + (', ...' if len(frames) > 8 else '')


class TrackerCache:
  """The models the page offers, each loaded once per (checkpoint, preset, online) choice; the last `size` kept.

  Checkpoints are the files in `checkpoint_dir` (CHECKPOINT_SUFFIXES), plus RANDOM_WEIGHTS when `random_weights`
  or when there are none. Only offered choices load: a name from the browser never becomes another path.
  """

  def __init__(self, checkpoint_dir: str | os.PathLike = 'checkpoints', random_weights: bool = False,
               model_overrides: dict[str, Any] | None = None, size: int = 2):
    if not isinstance(random_weights, bool):
      raise ValueError(f'random_weights must be a bool; got {random_weights!r}')
    if model_overrides is not None and not isinstance(model_overrides, dict):
      raise ValueError(f'model_overrides must be a dict of TAPIR arguments; got {type(model_overrides).__name__}')
    self.checkpoint_dir, self.random_weights = os.fspath(checkpoint_dir), random_weights
    self.model_overrides = dict(model_overrides or {})
    self.size = queries_lib.check_positive_int(size, 'size')
    self._trackers: dict[tuple[str, str, bool], loader.AnyTracker] = {}  # insertion order = age
    self._lock = threading.Lock()

  def choices(self) -> list[str]:
    """The checkpoint file names offered, sorted, then RANDOM_WEIGHTS (when allowed or nothing else is there)."""
    folder = self.checkpoint_dir
    names = sorted(f for f in os.listdir(folder) if f.endswith(CHECKPOINT_SUFFIXES)
                   and os.path.isfile(os.path.join(folder, f))) if os.path.isdir(folder) else []
    return names + [RANDOM_WEIGHTS] if self.random_weights or not names else names

  def resolve(self, checkpoint: str, preset: str, online: bool) -> tuple[str | None, str | None]:
    """(checkpoint path or None for random weights, preset or None) of a choice made on the page."""
    if checkpoint not in self.choices():
      raise ValueError(f'checkpoint must be one of {self.choices()}; got {checkpoint!r}')
    if preset != AUTO_PRESET and preset not in checkpoint_lib.PRESETS:
      raise ValueError(f'preset must be {AUTO_PRESET!r} or one of {sorted(checkpoint_lib.PRESETS)}; got {preset!r}')
    if checkpoint == RANDOM_WEIGHTS:
      return None, ('causal_tapir' if online else 'tapir') if preset == AUTO_PRESET else preset
    released = {f: p for p, f in loader.RELEASED_CHECKPOINTS.items()}
    return os.path.join(self.checkpoint_dir, checkpoint), released.get(checkpoint) if preset == AUTO_PRESET else preset

  def get(self, checkpoint: str, preset: str = AUTO_PRESET, online: bool = False) -> loader.AnyTracker:
    """The tracker for a choice, loaded on first use (ValueError naming what does not fit)."""
    if not isinstance(online, bool):
      raise ValueError(f'online must be a bool; got {online!r}')
    path, resolved = self.resolve(checkpoint, preset, online)
    key = (checkpoint, preset, online)
    with self._lock:  # one load at a time: two sessions asking for one model load it once
      if key not in self._trackers:
        while len(self._trackers) >= self.size:
          self._trackers.pop(next(iter(self._trackers)))
        try:
          self._trackers[key] = loader.load_tracker(path, resolved, online, random_weights=path is None,
                                                    **self.model_overrides)
        except (ValueError, FileNotFoundError) as e:
          raise ValueError(f'{e} (choose it under Preset)' if 'name the preset' in str(e) else str(e)) from e
      return self._trackers[key]


def run_tracking(clip: Clip, points: Sequence[Sequence[float]], tracker: loader.AnyTracker, out_dir: str,
                 progress: Progress | None = None, trail: int = 8, **settings: Any) -> DemoResult:
  """Tracks `points` ((t, y, x) pixels) through the clip offline, or frame by frame with an `OnlineTracker`;
  writes `<name>_tracked.mp4` (`paint.paint_tracks`) and `<name>_tracks.npz` (`cli.save_tracks`, with `settings`)
  into `out_dir`. `progress(fraction, text)` hears each stage (and each frame, online)."""
  if not isinstance(clip, Clip):
    raise ValueError(f'clip must be a webapp.Clip; got {type(clip).__name__}')
  video_io.check_video(clip.video)
  if not len(points):
    raise ValueError('points: no query points; click on the frame or add a grid first')
  _check_int(trail, 'trail', 0)
  if not isinstance(out_dir, (str, os.PathLike)) or not os.path.isdir(out_dir):
    raise ValueError(f'out_dir must be an existing folder; got {out_dir!r}')
  report = progress or (lambda fraction, text: None)
  queries = core.check_queries(np.asarray(points, np.float32), clip.video.shape)
  t, h, w, _ = clip.video.shape
  online = isinstance(tracker, online_lib.OnlineTracker)
  if online:
    steps = []
    for step in cli.stream_online(tracker, clip.video, queries):
      steps.append(step)
      report(0.85 * (step.index + 1) / t, f'tracking online: frame {step.index + 1} of {t}')
    tracks, visible = np.stack([s.tracks for s in steps], 1), np.stack([s.visible for s in steps], 1)
  else:
    report(0.05, f'tracking {len(queries)} points offline through {t} frames')
    tracks, visible = tracker.track(clip.video, queries)
  report(0.9, 'painting the tracks')
  painted = paint.paint_tracks(clip.video, tracks, visible, paint.rainbow_colors(queries, (h, w)), trail=trail)
  video_path = os.path.join(out_dir, f'{clip.name}_tracked.mp4')
  tracks_path = os.path.join(out_dir, f'{clip.name}_tracks.npz')
  video_io.write_video(video_path, painted, clip.fps)
  result = cli.TrackResult(tracks=tracks, visible=visible, query_points=queries, fps=clip.fps)
  cli.save_tracks(tracks_path, result, online=online, video=clip.name, **settings)
  report(1.0, 'done')
  return DemoResult(video_path, tracks_path, result)


def build_app(checkpoint_dir: str | os.PathLike = 'checkpoints', *, limits: Limits = Limits(),
              random_weights: bool = False, model_overrides: dict[str, Any] | None = None,
              builtin_shape: Sequence[int] = (24, 256, 256), trackers: TrackerCache | None = None,
              work_dir: str | None = None):
  """The page as a `gr.Blocks` (module docstring), for `serve`. `builtin_shape`: the built-in clip's (frames,
  height, width); `trackers`: a cache to share (default: one over `checkpoint_dir`, `random_weights`,
  `model_overrides`); outputs go under `work_dir` (default: a new temporary folder). Components carry `elem_id`s
  tapir-<name>: video, builtin, frame, frame-image, points, grid-size, grid, clear, checkpoint, preset, mode, run,
  status, result, tracks."""
  import gradio as gr  # pylint: disable=g-import-not-at-top  (the optional `demo` extra; never on `import tapir`)
  if not isinstance(limits, Limits):
    raise ValueError(f'limits must be a webapp.Limits; got {type(limits).__name__}')
  builtin_t, builtin_h, builtin_w = _check_shape(builtin_shape)
  trackers = trackers or TrackerCache(checkpoint_dir, random_weights, model_overrides)
  work_dir = work_dir or tempfile.mkdtemp(prefix='tapir-webapp-')
  os.makedirs(work_dir, exist_ok=True)
  choices = trackers.choices()

  def shown(clip, points, frame, status):  # the outputs after a new clip or new points
    return (points, preview_frame(clip.video, frame, points) if clip else None, describe_points(points), status)

  def new_clip(clip):
    status = f'**{clip.name}**: {clip.video.shape[0]} frames of {clip.video.shape[2]}x{clip.video.shape[1]} pixels'
    return (clip, gr.Slider(minimum=0, maximum=clip.video.shape[0] - 1, value=0, step=1)) + shown(clip, [], 0, status)

  def guarded(fn, outputs, first=gr.skip(), needs_clip=True):  # ValueError: a toast and the status (last output)
    @functools.wraps(fn)  # Gradio reads the signature (progress, event data) through `__wrapped__`
    def handler(*args):
      try:
        if needs_clip and args[0] is None:
          raise ValueError('upload a video or take the built-in clip first')
        return fn(*args)
      except ValueError as e:
        gr.Warning(str(e))
        return (first,) + (gr.skip(),) * (outputs - 2) + (f'**Error:** {e}',)
    return handler

  def on_upload(path):
    return (gr.skip(),) + new_clip(load_upload(path, limits))

  def on_builtin():
    clip = builtin_clip(builtin_h, builtin_w, builtin_t)
    path = os.path.join(work_dir, 'builtin.mp4')
    if not os.path.exists(path):
      video_io.write_video(path, clip.video, clip.fps)
    return (path,) + new_clip(clip)

  def on_click(clip, points, frame, evt: gr.SelectData):
    y, x = click_to_yx(evt.index, display_scale(clip.video.shape[1:3]))
    return shown(clip, add_point(points, int(frame), y, x, clip.video.shape, limits.max_points), int(frame), '')

  def on_grid(clip, points, frame, n):
    grid = grid_queries(clip.video.shape, int(n), int(frame), limits.max_points, existing=len(points))
    return shown(clip, points + grid, int(frame), '')

  def on_run(clip, points, checkpoint, preset, mode, progress=gr.Progress()):
    progress(0.0, desc='loading the model (once per choice)')
    tracker = trackers.get(checkpoint, preset, mode == 'online')
    done = run_tracking(clip, points, tracker, tempfile.mkdtemp(dir=work_dir), lambda f, text: progress(f, desc=text),
                        checkpoint=checkpoint, preset=preset)
    warning = ' (random weights: the tracks are meaningless)' if checkpoint == RANDOM_WEIGHTS else ''
    return done.video_path, done.tracks_path, f'Tracked {len(points)} points {mode}{warning}.'

  with gr.Blocks(title='TAPIR: track any point', analytics_enabled=False) as demo:
    gr.Markdown('# TAPIR: track any point\nUpload a video (or take the built-in clip), click points on any frame or '
                'add a grid, then **Track** for the painted video and a tracks file (`.npz`: tracks [n, t, 2] (x, y), '
                f'visible, query_points). At most {limits.max_upload_mb:g} MB, {limits.max_frames} frames, '
                f'{limits.max_side} px a side, {limits.max_points} points.')
    clip_state, points_state = gr.State(None), gr.State([])
    with gr.Row():
      with gr.Column():
        video_in = gr.Video(label='Video', sources=['upload'], elem_id='tapir-video')
        builtin_btn = gr.Button('Use the built-in clip', elem_id='tapir-builtin')
        frame = gr.Slider(0, 1, value=0, step=1, label='Frame', elem_id='tapir-frame')
        image = gr.Image(label='Click to add a point on this frame', type='numpy', format='png', interactive=False,
                         elem_id='tapir-frame-image')
        points_text = gr.Markdown(describe_points([]), elem_id='tapir-points')
        with gr.Row():
          grid_size = gr.Slider(1, 16, value=4, step=1, label='Grid (N x N)', elem_id='tapir-grid-size')
          grid_btn = gr.Button('Add a grid on this frame', elem_id='tapir-grid')
          clear_btn = gr.Button('Clear points', elem_id='tapir-clear')
      with gr.Column():
        checkpoint = gr.Dropdown(choices, value=choices[0], label=f'Checkpoint (in {trackers.checkpoint_dir})',
                                 elem_id='tapir-checkpoint')
        preset = gr.Dropdown([AUTO_PRESET] + sorted(checkpoint_lib.PRESETS), value=AUTO_PRESET, label='Preset',
                             elem_id='tapir-preset')
        mode = gr.Radio(list(MODES), value='offline', label='Mode (online needs a causal preset)', elem_id='tapir-mode')
        run_btn = gr.Button('Track', variant='primary', elem_id='tapir-run')
        status = gr.Markdown('', elem_id='tapir-status')
        result = gr.Video(label='Tracked', interactive=False, elem_id='tapir-result')
        tracks_file = gr.File(label='Tracks (.npz)', interactive=False, elem_id='tapir-tracks')
    loaded = [video_in, clip_state, frame, points_state, image, points_text, status]
    video_in.upload(guarded(on_upload, 7, first=None, needs_clip=False), video_in, loaded)  # a refused file is cleared
    builtin_btn.click(on_builtin, None, loaded)
    frame.change(lambda clip, points, f: preview_frame(clip.video, int(f), points) if clip else None,
                 [clip_state, points_state, frame], image)
    view = [points_state, image, points_text, status]
    image.select(guarded(on_click, 4), [clip_state, points_state, frame], view)
    grid_btn.click(guarded(on_grid, 4), [clip_state, points_state, frame, grid_size], view)
    clear_btn.click(lambda clip, f: shown(clip, [], int(f), ''), [clip_state, frame], view)
    run_btn.click(guarded(on_run, 3), [clip_state, points_state, checkpoint, preset, mode],
                  [result, tracks_file, status], concurrency_limit=1)  # one run at a time: the device is shared
  demo.tapir_serving = (work_dir, limits)  # for `serve`: Gradio may send the files under work_dir
  return demo


def serve(demo, host: str = '127.0.0.1', port: int | None = None, share: bool = False, block: bool = True) -> str:
  """Launches a `build_app` page on `host`:`port` (None: Gradio's first free from 7860); returns its local URL.
  `share` asks Gradio for a public link; `block` False returns at once (the server runs in a thread)."""
  if not hasattr(demo, 'tapir_serving'):
    raise ValueError('demo must come from webapp.build_app')
  port = None if port is None else _check_int(port, 'port', 1, 65535)
  work_dir, limits = demo.tapir_serving
  _, url, _ = demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                          max_file_size=int(limits.max_upload_mb * 1e6), allowed_paths=[work_dir], ssr_mode=False,
                          quiet=not block)
  return url
