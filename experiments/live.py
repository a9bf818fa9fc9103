r"""Track points live: a camera, a stream, a file or raw frames on stdin, shown with the tracks painted on.

    python -m experiments.live --source 0 --checkpoint checkpoints/causal_tapir_checkpoint.npy \
        --preset causal_tapir                        # camera 0 in a window: left click adds, right click / c clears
    python -m experiments.live --source rtsp://host/stream --checkpoint ... --preset causal_tapir --grid 4
    ffmpeg -i in.mp4 -f rawvideo -pix_fmt rgb24 - | python -m experiments.live --source - --width 640 \
        --height 360 --headless --out tracked.mp4 --checkpoint ... --preset causal_tapir --add_points "10:120,64"

When the model is slower than the source, frames are dropped (the newest is tracked); the overlay shows the
processing rate, the latency, the points and the dropped frames, and a summary is printed at the end (and written
to --stats_json). --headless needs no OpenCV with --source - or a file. Model flags are those of experiments.track;
points come from --points ("t,y,x;...": added at source frame t), --grid (N x N at the first frame) and
--add_points ("frame:y,x;frame:clear;..."). The work happens in `tapir.tracking.live.run_live`.
"""

import dataclasses
import json
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

import tapir
from tapir.tracking import cli
from tapir.tracking import live
from tapir.tracking import loader
from tapir.tracking import online
from tapir.tracking import queries as queries_lib

_SOURCE = flags.DEFINE_string('source', None, 'camera index (0), URL (rtsp://, http://), video file, or - for raw '
                              'RGB uint8 frames on stdin (with --width, --height)', required=True)
_WIDTH = flags.DEFINE_integer('width', None, 'frame width of raw frames on stdin')
_HEIGHT = flags.DEFINE_integer('height', None, 'frame height of raw frames on stdin')
_FPS = flags.DEFINE_float('fps', None, 'frame rate of raw frames on stdin (for --out; default 30)')
_HEADLESS = flags.DEFINE_bool('headless', False, 'no window (servers, tests): write --out and/or the summary')
_OUT = flags.DEFINE_string('out', None, 'video of the processed frames with the tracks painted on')
_STATS = flags.DEFINE_string('stats_json', None, 'write the summary (frames read, processed, dropped, latency) here')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'causal checkpoint: released .npy or one of ours')
_PRESET = flags.DEFINE_enum('preset', None, sorted(tapir.PRESETS), 'architecture of a released checkpoint '
                            '(causal_tapir or causal_bootstapir); default with --random_weights: causal_tapir')
_RANDOM = flags.DEFINE_bool('random_weights', False, 'run untrained weights when no --checkpoint (testing only)')
_OVERRIDES = flags.DEFINE_string('model_overrides', None, 'JSON object of TAPIR arguments on top of the preset')
_RESIZE = flags.DEFINE_integer('resize', None, 'square size the model runs at; 0 = the frames\' own size; default: '
                               'the model\'s initial_resolution (256 for the released models)')
_GRID = flags.DEFINE_integer('grid', None, 'track an N x N grid of points from the first frame')
_POINTS = flags.DEFINE_string('points', None, 'query points "t,y,x;t,y,x": added at source frame t')
_ADD = flags.DEFINE_string('add_points', None, 'scripted events "frame:y,x;frame:clear" (source frame numbers)')
_MAX_POINTS = flags.DEFINE_integer('max_points', 32, 'most points tracked at once (the tracker\'s capacity)')
_WARM_UP = flags.DEFINE_bool('warm_up', True, 'compile every slot bucket up to --max_points before reading, so '
                             'adding points never stalls the stream')
_DROP = flags.DEFINE_bool('drop_frames', True, 'track only the newest frame; --nodrop_frames tracks every frame '
                          '(the source waits)')
_REALTIME = flags.DEFINE_bool('realtime', True, 'a video file plays at its frame rate, as a camera would')
_MAX_FRAMES = flags.DEFINE_integer('max_frames', None, 'stop after this many processed frames')
_TRAIL = flags.DEFINE_integer('trail', 8, 'frames of fading trail behind each point')
_OVERLAY = flags.DEFINE_bool('overlay', True, 'draw fps, latency, points and dropped frames on the frames')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CHECKPOINT.value is None and not _RANDOM.value:
    sys.exit(f'error: {loader.NEED_WEIGHTS} (flags: --checkpoint PATH, or --random_weights)')
  try:
    stats = _run()
  except (ValueError, FileNotFoundError) as e:  # bad inputs, a source that cannot be opened: no traceback
    sys.exit(f'error: {e}')
  print(stats.report())
  if _STATS.value:
    with open(_STATS.value, 'w') as f:
      json.dump(dataclasses.asdict(stats), f, indent=1)
  if not stats.frames_read:
    sys.exit(f'error: {stats.end}: the source delivered no frame')


def _run() -> live.LiveStats:
  if _RESIZE.value is not None and _RESIZE.value < 0:
    raise ValueError(f'--resize must be >= 1, or 0 for the frames\' own size; got {_RESIZE.value}')
  max_points = queries_lib.check_positive_int(_MAX_POINTS.value, '--max_points')
  window = None if _HEADLESS.value else live.Window()  # fails early without OpenCV
  source = live.open_source(_SOURCE.value, _WIDTH.value, _HEIGHT.value, _FPS.value, _REALTIME.value,
                            sys.stdin.buffer)
  try:
    hw = (source.height, source.width)
    items = [_ADD.value or '']  # every point, as scripted events "frame:y,x"
    if _POINTS.value:
      items += [f'{t:g}:{y!r},{x!r}' for t, y, x in queries_lib.parse_points(_POINTS.value).tolist()]
    if _GRID.value is not None and _GRID.value ** 2 > max_points:
      raise ValueError(f'--grid {_GRID.value} gives {_GRID.value ** 2} points, more than --max_points {max_points}')
    if _GRID.value is not None:
      items += [f'0:{y!r},{x!r}' for _, y, x in queries_lib.grid_points(hw, _GRID.value).tolist()]
    script = live.parse_script(';'.join(items), hw)
    preset = _PRESET.value or ('causal_tapir' if _RANDOM.value else None)
    model = loader.load_weights(_CHECKPOINT.value, preset, random_weights=_RANDOM.value,
                                **cli.parse_model_overrides(_OVERRIDES.value))
    if model.family != 'tapir':
      raise ValueError(f'live tracking needs a causal TAPIR (preset causal_tapir or causal_bootstapir); got a '
                       f'{model.family} model')
    resize = 'model' if _RESIZE.value is None else (_RESIZE.value,) * 2 if _RESIZE.value else None
    tracker = online.OnlineTracker(model.params, model.state, model.model_kwargs, resize_to=resize,
                                   capacity=max_points)
    if _WARM_UP.value:
      logging.info('warming up: compiling the step for up to %d points', max_points)
      tracker.warm_up(np.zeros(hw + (3,), np.uint8))
  except BaseException:
    source.close()
    if window is not None:
      window.close()
    raise
  logging.info('tracking %s (%dx%d)', source.name, *hw)
  return live.run_live(tracker, source, script=script, window=window, out_path=_OUT.value,
                       out_fps=_FPS.value or 30.0, trail=_TRAIL.value, overlay=_OVERLAY.value, drop=_DROP.value,
                       max_frames=_MAX_FRAMES.value)


if __name__ == '__main__':
  app.run(main)
