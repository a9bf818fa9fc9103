"""Live tracking (`tapir.tracking.live`, `experiments.live`): the newest frame wins and drops are counted, points added
mid-stream are painted, sources that cannot be opened or that stop end cleanly; the runner on a pipe with a tiny model.

The loop's own tests use a stand-in tracker (points stay where they were added), so what is painted where is exact;
the runner test runs the real `OnlineTracker` with tiny random weights. The windowed test needs OpenCV with a GUI and
Xvfb and xdotool (real X input); it is skipped, with the reason, where one is missing.
"""

import collections
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import tapir
from tapir import video as video_io
from tapir.tracking import live
from tapir.tracking import paint

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = json.dumps(dict(blocks_per_group=[1, 1, 1, 1], num_mixer_blocks=1, mixer_hidden_dim=32,
                       initial_resolution=[32, 32], pyramid_level=0))
GREY = 100


class _StillTracker:
  """The live loop's view of an `OnlineTracker`: points keep the lowest free index and stay where they were added,
  visible. `step` calls `on_step(number of steps so far)` first (a model slower than the source)."""

  def __init__(self, capacity=None, on_step=None):
    self.capacity, self.on_step, self.points, self.steps, self.added = capacity, on_step, {}, 0, []

  def start(self, frame, query_points_yx):
    del frame, query_points_yx
    self.points = {}

  def add_queries(self, frame, query_points_yx):
    del frame
    new = []
    for point in np.asarray(query_points_yx):
      new.append(min(set(range(len(self.points) + 1)) - set(self.points)))
      self.points[new[-1]] = point
      self.added.append(tuple(point.tolist()))
    return np.asarray(new)

  def clear(self):
    self.points = {}

  @property
  def num_points(self):
    return len(self.points)

  @property
  def indices(self):
    return np.asarray(sorted(self.points), np.int64)

  def step(self, frame):
    del frame
    if self.on_step is not None:
      self.on_step(self.steps)
    self.steps += 1
    yx = np.asarray([self.points[i] for i in self.indices], np.float32).reshape(-1, 2)
    n = len(yx)
    return tapir.OnlineOutput(tracks=yx[:, ::-1], visible=np.ones(n, bool), occlusion=np.zeros(n, np.float32),
                              expected_dist=np.zeros(n, np.float32))


class _RecordingWindow:
  """`live.Window`'s interface without OpenCV: keeps the shown frames; `clicks` maps a frame count to a click."""

  def __init__(self, clicks=None):
    self.pending, self.shown, self.clicks, self.closed = collections.deque(), [], clicks or {}, False

  def show(self, frame=None):
    if frame is not None:
      self.shown.append(frame)
      if len(self.shown) in self.clicks:
        self.pending.append(live.Event('add', self.clicks[len(self.shown)]))

  def close(self):
    self.closed = True


def _grey_source(num_frames, hw=(32, 32), between=None):
  """Uniform grey frames, frame t's value in the blue channel (so a shown frame says which it was)."""

  def frames():
    for t in range(num_frames):
      frame = np.full(hw + (3,), GREY, np.uint8)
      frame[..., 2] = t
      yield frame
      if between is not None:
        between(t)

  return live.Source('grey', hw[0], hw[1], 25.0, frames(), lambda: None)


def _painted(frame, yx, radius=1):
  """Whether the pixels around raster point (y, x) differ from the grey input."""
  y, x = int(yx[0]), int(yx[1])
  patch = frame[y - radius:y + radius + 1, x - radius:x + radius + 1, :2].astype(int)
  return bool(np.abs(patch - GREY).max() > 20)


def test_the_newest_frame_wins_and_the_others_are_dropped():
  stepping, exhausted = threading.Event(), threading.Event()

  def between(t):  # after frame 0, the source waits for the model to be busy; then it outruns it
    if t == 0:
      assert stepping.wait(30)
    if t == 49:
      exhausted.set()

  def on_step(count):
    if count == 0:
      stepping.set()
      assert exhausted.wait(30)

  window = _RecordingWindow()
  stats = live.run_live(_StillTracker(on_step=on_step), _grey_source(50, between=between), window=window)
  assert (stats.frames_read, stats.frames_processed, stats.frames_dropped) == (50, 2, 48)
  assert [int(f[-1, -1, 2]) for f in window.shown] == [0, 49]  # frame t carries t in blue (below the overlay)
  assert np.abs(window.shown[1][:8, :8, :2].astype(int) - GREY).max() > 20  # the overlay's box
  assert stats.end == 'grey ended after 50 frames' and window.closed
  assert stats.latency_max_ms >= stats.latency_p90_ms >= 0 and stats.busy_max_ms > 0


def test_points_added_mid_stream_are_painted_and_cleared(tmp_path):
  script = live.parse_script('2:8.5,8.5; 5:20.5,24.5; 8:clear', (32, 32))
  window = _RecordingWindow(clicks={11: (26.5, 6.5)})  # a click while frame 10 is shown
  tracker = _StillTracker()
  stats = live.run_live(tracker, _grey_source(14), script=script, window=window, out_path=str(tmp_path / 'o.mp4'),
                        overlay=False, drop=False, trail=3)
  assert (stats.frames_processed, stats.frames_dropped, stats.points_added) == (14, 0, 3)
  first, second, clicked = (8.5, 8.5), (20.5, 24.5), (26.5, 6.5)
  for t, frame in enumerate(window.shown):
    expect = [2 <= t < 8, 5 <= t < 8, t >= 11]
    assert [_painted(frame, p) for p in (first, second, clicked)] == expect, t
    if not any(expect):
      np.testing.assert_array_equal(frame[..., :2], GREY)  # nothing else is drawn
  assert tracker.added == [first, second, clicked]
  video, fps = video_io.read_video(tmp_path / 'o.mp4')
  assert video.shape == (14, 32, 32, 3) and fps == 25.0


def test_capacity_bounds_the_points_and_trails_are_bounded():
  script = live.parse_script(';'.join(f'1:{y}.5,4.5' for y in range(5)), (32, 32))
  stats = live.run_live(_StillTracker(capacity=3), _grey_source(3), script=script, drop=False)
  assert (stats.points_added, stats.points_ignored) == (3, 2)
  painter = paint.TrailPainter(trail=4)
  for _ in range(50):
    painter.paint(np.zeros((8, 8, 3), np.uint8), [0, 2], [[1.0, 1.0], [5.0, 5.0]], [True, False])
  assert {i: len(h) for i, h in painter.history.items()} == {0: 5, 2: 5}
  painter.paint(np.zeros((8, 8, 3), np.uint8), [2], [[5.0, 5.0]], [True])
  assert list(painter.history) == [2]


@pytest.mark.parametrize('spec, message', [
    ('3:1,2,3', 'cannot parse add_points item'),
    ('x:clear', 'cannot parse add_points item'),
    ('-1:2,2', 'cannot parse add_points item'),
    ('4:40,2', r'lies outside the 32x32 frames'),
    ('4:nan,2', r'lies outside'),
])
def test_bad_scripts_are_rejected(spec, message):
  with pytest.raises(ValueError, match=message):
    live.parse_script(spec, (32, 32))


def test_sources_that_cannot_be_opened(tmp_path):
  with pytest.raises(ValueError, match='cannot open source .*missing.mp4: no such file'):
    live.open_source(str(tmp_path / 'missing.mp4'))
  with pytest.raises(ValueError, match='raw frames need height and width'):
    live.open_source('-', stdin=sys.stdin)
  (tmp_path / 'junk.mp4').write_bytes(b'not a video')
  with pytest.raises(ValueError, match='cannot open source .*junk.mp4'):
    live.open_source(str(tmp_path / 'junk.mp4'))
  camera = 'cannot open source camera 97' if _has_cv2() else 'OpenCV is needed for camera and URL sources'
  with pytest.raises(ValueError, match=camera):
    live.open_source('97')


def test_a_video_file_plays_through(tmp_path):
  video = np.random.default_rng(0).integers(0, 256, (6, 16, 24, 3), dtype=np.uint8)
  video_io.write_video(tmp_path / 'in.mp4', video, 12.0)
  source = live.open_source(str(tmp_path / 'in.mp4'), realtime=False)
  assert (source.height, source.width, source.fps) == (16, 24, 12.0)
  stats = live.run_live(_StillTracker(), source, drop=False)
  assert stats.frames_processed == 6 and stats.end == f'{tmp_path / "in.mp4"} ended after 6 frames'


def test_a_url_source_reads_through_opencv(tmp_path):
  if not _has_cv2():
    pytest.skip('OpenCV is not installed: URL and camera sources need it')
  video = np.random.default_rng(0).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
  video_io.write_video(tmp_path / 'in.mp4', video, 10.0)
  source = live.open_source(f'file://{tmp_path / "in.mp4"}')
  assert (source.height, source.width) == (16, 24)
  stats = live.run_live(_StillTracker(), source, drop=False)
  assert stats.frames_processed == 5


def test_a_failing_source_ends_the_stream_with_its_reason():
  def frames():
    yield np.zeros((8, 8, 3), np.uint8)
    raise OSError('device unplugged')

  stats = live.run_live(_StillTracker(), live.Source('cam', 8, 8, None, frames(), lambda: None), drop=False)
  assert stats.frames_processed == 1 and stats.end == 'cam failed: device unplugged after 1 frames'


def _has_cv2():
  try:
    import cv2  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _runner(*flags, **kwargs):
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}
  return subprocess.Popen([sys.executable, '-m', 'experiments.live', *flags], cwd=REPO, env=env, **kwargs)


def test_runner_headless_on_a_pipe_drops_frames_and_paints(tmp_path):
  h, w, bursts, burst = 48, 64, 12, 10
  out, stats_path = tmp_path / 'tracked.mp4', tmp_path / 'stats.json'
  with open(tmp_path / 'stdout', 'w') as stdout, open(tmp_path / 'stderr', 'w') as stderr:
    proc = _runner('--source', '-', '--width', str(w), '--height', str(h), '--fps', '20', '--headless',
                   '--out', str(out), '--stats_json', str(stats_path), '--random_weights', '--model_overrides', TINY,
                   '--resize', '32', '--max_points', '4', '--points', '30,24.5,32.5',
                   '--add_points', '15:10,10;45:20.5,40', stdin=subprocess.PIPE, stdout=stdout, stderr=stderr)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for b in range(bursts):  # bursts much faster than any model, with pauses it can catch up in
      proc.stdin.write(b''.join(np.roll(base, b * burst + i, axis=1).tobytes() for i in range(burst)))
      proc.stdin.flush()
      time.sleep(0.1)
    proc.stdin.write(base.tobytes()[:1000])  # the stream stops inside a frame
    proc.stdin.close()
    assert proc.wait(timeout=300) == 0, (tmp_path / 'stderr').read_text()
  stats = json.loads(stats_path.read_text())
  assert stats['frames_read'] == bursts * burst and stats['end'] == f'stdin ended after {bursts * burst} frames'
  assert stats['frames_dropped'] > 0 and stats['frames_processed'] + stats['frames_dropped'] == bursts * burst
  assert stats['points_added'] == 3 and stats['points_ignored'] == 0
  # No queue: a frame waits at most for the step before it, then takes its own.
  assert stats['latency_max_ms'] <= 2 * stats['busy_max_ms'] + 250
  assert 'ended inside a frame' in (tmp_path / 'stderr').read_text()
  assert (tmp_path / 'stdout').read_text().startswith(f'stdin ended after {bursts * burst} frames: ')
  video, _ = video_io.read_video(out)
  assert video.shape == (stats['frames_processed'], h, w, 3)
  assert np.abs(video[-1, :8, :40].astype(int) - np.roll(base, bursts * burst - 1, axis=1)[:8, :40]).mean() > 30


@pytest.mark.parametrize('flags, message', [
    (['--source', 'no/such/video.mp4', '--headless'], 'error: cannot open source no/such/video.mp4: no such file'),
    (['--source', '-', '--headless'], 'error: raw frames need height and width'),
    (['--source', '-', '--width', '8', '--height', '8', '--headless', '--nowarm_up', '--model_overrides', TINY],
     'error: stdin ended after 0 frames: the source delivered no frame'),
])
def test_runner_source_that_cannot_be_opened_or_is_empty(flags, message, tmp_path):
  with open(tmp_path / 'stderr', 'w') as stderr:
    proc = _runner(*flags, '--random_weights', stdin=subprocess.DEVNULL, stderr=stderr)
    assert proc.wait(timeout=120) != 0
  assert message in (tmp_path / 'stderr').read_text() and 'Traceback' not in (tmp_path / 'stderr').read_text()


def _has_gui(cv2):
  gui = re.search(r'GUI:\s*(\S+)', cv2.getBuildInformation())
  return gui is None or gui.group(1) != 'NONE'


def test_the_window_without_opencv_or_its_gui_is_a_clear_error():
  if _has_cv2():
    import cv2  # pylint: disable=g-import-not-at-top
    if _has_gui(cv2):
      pytest.skip('this OpenCV has a GUI (the windowed test covers it; without a display it may abort the process)')
  with pytest.raises(ValueError, match='OpenCV is needed for the window|cannot open a window'):
    live.Window()


@pytest.fixture
def virtual_display():
  if not _has_cv2():
    pytest.skip('OpenCV is not installed (pip install opencv-python): the windowed mode needs it')
  import cv2  # pylint: disable=g-import-not-at-top
  if not _has_gui(cv2):
    pytest.skip('this OpenCV has no GUI (opencv-python-headless): the windowed mode needs opencv-python')
  for tool in ('Xvfb', 'xdotool'):
    if shutil.which(tool) is None:
      pytest.skip(f'no {tool} on this machine: the windowed test needs a virtual X display (Debian: xvfb) and '
                  'injected input (Debian: xdotool)')
  display = f':{90 + os.getpid() % 100}'
  server = subprocess.Popen(['Xvfb', display, '-screen', '0', '640x480x24'], stderr=subprocess.DEVNULL)
  before = os.environ.get('DISPLAY')
  os.environ['DISPLAY'] = display
  time.sleep(1.0)  # the server takes a moment to accept clients
  yield cv2
  server.terminate()
  server.wait(timeout=10)
  if before is None:
    os.environ.pop('DISPLAY', None)
  else:
    os.environ['DISPLAY'] = before


def _xdotool(*args):
  return subprocess.run(['xdotool', *args], capture_output=True, text=True, timeout=10, check=True).stdout


def test_windowed_mode_takes_real_clicks_and_keys(virtual_display):
  """X input injected into the OpenCV window: a left click adds a point at the clicked pixel, a right click
  clears, `c` clears, `q` quits; the frames shown are the painted ones."""
  del virtual_display
  title = 'tapir live test'
  window = live.Window(title)
  shown = []
  window_show = window.show
  window.show = lambda frame=None: (shown.append(frame is not None), window_show(frame))[1]
  tracker, clears = _StillTracker(), []
  tracker_clear = tracker.clear
  tracker.clear = lambda: (clears.append(len(tracker.points)), tracker_clear())[1]

  def inject(t):  # from the reader thread, while the loop shows frames (drop=False: one frame each)
    time.sleep(0.02)  # let the loop show and handle events between frames
    if t == 5:
      win = _xdotool('search', '--sync', '--onlyvisible', '--name', title).split()[0]
      _xdotool('mousemove', '--window', win, '12', '8', 'click', '1')  # x, y in the window's pixels
    elif t == 25:
      _xdotool('click', '3')
    elif t == 45:
      _xdotool('mousemove', '--window', _xdotool('search', '--name', title).split()[0], '30', '20', 'click', '1')
    elif t == 65:
      _xdotool('key', 'c')
    elif t == 85:
      _xdotool('key', 'q')

  stats = live.run_live(tracker, _grey_source(400, hw=(120, 160), between=inject), window=window, drop=False)
  assert stats.end == 'quit' and 85 < stats.frames_processed < 400
  assert tracker.added == [(8.5, 12.5), (20.5, 30.5)]  # the clicked pixels' centres, (y, x)
  assert stats.points_added == 2 and clears == [1, 1]
  assert sum(shown) == stats.frames_processed
