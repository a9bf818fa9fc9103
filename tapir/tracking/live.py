"""Live tracking: frames from a camera, a stream, a file or a pipe in; the same frames with tracks painted out.

    source = live.open_source('-', width=320, height=240)        # or '0' (camera), 'rtsp://...', 'in.mp4'
    stats = live.run_live(tracker, source, script=live.parse_script('10:120,64;40:clear'), out_path='out.mp4')
    print(stats.report())

A reader thread (`FrameGrabber`) keeps only the newest frame in a one-frame buffer: when the model is slower than
the source, the waiting frame is replaced and counted as dropped, so nothing queues (latency about one step, memory
bounded). The loop tracks it with an `OnlineTracker` (new points fill free slots: no recompilation once warmed up),
paints bounded trails and an overlay (fps, latency, points, dropped) with `tapir.tracking.paint`, and writes a video
(`tapir.video`, frame by frame) and/or shows an OpenCV `Window` (left click adds a point, right click or `c`
clears, `q` quits). OpenCV is imported only for the window and camera / URL sources; stdin and files need none.
Frame numbers count the source's frames, dropped ones included; scripted events apply at the first processed frame
at or after theirs. Latency runs from a frame's arrival in the buffer to its painted output; the output video
holds the processed frames only.
"""

import collections
import contextlib
import dataclasses
import os
import threading
import time
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple, Sequence

from absl import logging
import numpy as np

from tapir import video as video_io
from tapir.tracking import paint
from tapir.tracking import queries as queries_lib

LATENCY_WINDOW = 10_000  # the p90 latency is taken over the last this many processed frames (bounded memory)
_FPS_WINDOW = 30  # frames the overlay's processing rate is averaged over


class Grabbed(NamedTuple):  # a frame as the grabber holds it
  index: int  # frame number in the source (dropped frames included)
  frame: np.ndarray  # [h, w, 3] uint8
  arrival: float  # time.monotonic() when it was read


class Event(NamedTuple):
  kind: str  # 'add' | 'clear' | 'quit'
  point_yx: tuple[float, float] | None = None  # (y, x) pixels of the frame, for 'add'


class Source(NamedTuple):
  """Frames of one size, read one at a time (`open_source`)."""
  name: str
  height: int
  width: int
  fps: float | None  # None: unknown
  frames: Iterator[np.ndarray]  # uint8 [height, width, 3]; ends with the source
  close: Callable[[], None]


def raw_frames(stream: BinaryIO, height: int, width: int, fps: float | None = None, name: str = 'stdin') -> Source:
  """Raw RGB uint8 frames, row-major, back to back on a binary stream (`ffmpeg -f rawvideo -pix_fmt rgb24 -`)."""
  if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in (height, width)):
    raise ValueError(f'raw frames need height and width (integers >= 1: --height, --width); got {height!r}, {width!r}')
  size = int(height) * int(width) * 3

  def frames():
    while True:
      data = b''
      while len(data) < size and (piece := stream.read(size - len(data))):  # a pipe may deliver it in pieces
        data += piece
      if data and len(data) < size:
        logging.warning('%s ended inside a frame (%d of %d bytes): it is ignored', name, len(data), size)
      if len(data) < size:
        return
      yield np.frombuffer(data, np.uint8).reshape(height, width, 3)

  return Source(name, int(height), int(width), fps, frames(), lambda: None)


def file_frames(path: str, realtime: bool = True) -> Source:
  """A video file (`tapir.video.FrameReader`); with `realtime` its frames come at its frame rate, as a camera's
  would (else as fast as they decode)."""
  reader = video_io.FrameReader(path).__enter__()  # ValueError naming the file

  def frames():
    start = time.monotonic()
    for count, frame in enumerate(reader):
      if realtime:
        time.sleep(max(0.0, start + count / reader.info.fps - time.monotonic()))
      yield frame

  info = reader.info
  return Source(path, info.height, info.width, info.fps, frames(), lambda: reader.__exit__(None, None, None))


def capture_frames(spec: str) -> Source:
  """A camera (by index) or a network stream (rtsp://, http://, ...) through `cv2.VideoCapture`."""
  cv2 = _cv2('camera and URL sources')
  name = f'camera {spec}' if spec.isdigit() else spec
  capture = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
  ok, first = capture.read() if capture.isOpened() else (False, None)
  if not ok or first is None:
    capture.release()
    raise ValueError(f'cannot open source {name}: OpenCV could not open it or read a frame from it')

  def frames():
    frame = first
    while frame is not None:
      if frame.shape != first.shape:
        raise ValueError(f'{name} changed its frame size from {first.shape[:2]} to {frame.shape[:2]}')
      yield np.ascontiguousarray(frame[..., ::-1])  # BGR -> RGB
      ok, frame = capture.read()
      frame = frame if ok else None

  return Source(name, first.shape[0], first.shape[1], capture.get(cv2.CAP_PROP_FPS) or None, frames(), capture.release)


def open_source(spec: str, width: int | None = None, height: int | None = None, fps: float | None = None,
                realtime: bool = True, stdin: BinaryIO | None = None) -> Source:
  """'-' raw RGB frames on `stdin` (`width` x `height` needed), a camera index ('0'), a URL ('rtsp://...',
  'http://...') or a video file. Raises ValueError naming the source when it cannot be opened."""
  if not isinstance(spec, str) or not spec:
    raise ValueError(f'source must be "-", a camera index, a URL or a video file; got {spec!r}')
  if spec == '-':
    return raw_frames(stdin, height, width, fps)
  if spec.isdigit() or '://' in spec:
    return capture_frames(spec)
  if not os.path.isfile(spec):
    raise ValueError(f'cannot open source {spec}: no such file (a camera is an index such as 0, a stream a URL '
                     'such as rtsp://host/path, raw frames on stdin "-")')
  try:
    return file_frames(spec, realtime)
  except ValueError as e:
    raise ValueError(f'cannot open source {spec}: {e}') from e


def _cv2(what: str) -> Any:
  try:
    import cv2  # pylint: disable=g-import-not-at-top  (optional: only the window and camera / URL sources)
  except ImportError as e:
    raise ValueError(f'OpenCV is needed for {what}: pip install opencv-python (stdin and files need none)') from e
  return cv2


class FrameGrabber:
  """Reads a source on its own thread (from construction on) into a one-frame buffer.

  With `drop` (live), a frame not yet taken when the next arrives is replaced by it and counted in `dropped`;
  without, the reader waits for the consumer (every frame is processed; the source is slowed down instead).
  """

  def __init__(self, source: Source, drop: bool = True):
    self.source, self.drop = source, drop
    self.frames_read, self.dropped, self.end = 0, 0, ''  # end: why the source ended, once it has
    self._slot, self._done, self._stop = None, False, False  # the one-frame buffer (a Grabbed or None)
    self._cond = threading.Condition()
    self._thread = threading.Thread(target=self._run, name='frame-grabber', daemon=True)
    self._thread.start()

  def _run(self) -> None:
    end = f'{self.source.name} ended'
    try:
      for frame in self.source.frames:
        if self._stop:
          break
        with self._cond:
          while not self.drop and self._slot is not None and not self._stop:
            self._cond.wait()
          self.dropped += self._slot is not None
          self._slot = Grabbed(self.frames_read, frame, time.monotonic())
          self.frames_read += 1
          self._cond.notify_all()
    except Exception as e:  # pylint: disable=broad-except  (any failure of the source ends the stream)
      end = f'{self.source.name} failed: {e}'
    with self._cond:
      self.end, self._done = end + f' after {self.frames_read} frames', True
      self._cond.notify_all()

  @property
  def ended(self) -> bool:
    """True once the source has ended and its last frame was taken."""
    with self._cond:
      return self._done and self._slot is None

  def get(self, timeout: float | None = None) -> Grabbed | None:
    """The newest frame (waiting up to `timeout` seconds; None: wait until one comes); None if none came."""
    with self._cond:
      self._cond.wait_for(lambda: self._slot is not None or self._done, timeout)
      item, self._slot = self._slot, None
      self._cond.notify_all()
      return item

  def stop(self, timeout: float = 2.0) -> None:
    """Stops reading; waits up to `timeout` s for the reader (a read blocked on a silent pipe is left behind)."""
    with self._cond:
      self._stop = True
      self._cond.notify_all()
    if self._thread.is_alive():
      self._thread.join(timeout)


def parse_script(spec: str | None, frame_hw: Sequence[int]) -> list[tuple[int, Event]]:
  """'frame:y,x;frame:clear;...' (source frame numbers; raster pixels of `frame_hw` frames, [0, h] x [0, w])
  -> [(frame, Event)] sorted by frame."""
  events, (h, w) = [], frame_hw
  for item in (s.strip() for s in (spec or '').split(';')):
    if not item:
      continue
    frame, _, what = item.partition(':')
    try:
      frame = int(frame)
      event = Event('clear') if what.strip() == 'clear' else Event('add', tuple(float(v) for v in what.split(',')))
    except ValueError:
      frame, event = -1, None
    if frame < 0 or event.kind == 'add' and len(event.point_yx) != 2:
      raise ValueError(f'cannot parse add_points item {item!r}: expected "frame:y,x" or "frame:clear" (frame >= 0)')
    if event.kind == 'add' and not (0 <= event.point_yx[0] <= h and 0 <= event.point_yx[1] <= w):
      raise ValueError(f'add_points item {item!r}: (y, x) lies outside the {h}x{w} frames')
    events.append((frame, event))
  return sorted(events, key=lambda e: e[0])


@dataclasses.dataclass
class LiveStats:
  frames_read: int = 0  # frames the source delivered
  frames_processed: int = 0  # tracked, painted and written / shown
  frames_dropped: int = 0  # replaced in the buffer by a newer frame before they were taken
  points_added: int = 0
  points_ignored: int = 0  # additions beyond the tracker's capacity
  latency_mean_ms: float = 0.0  # arrival in the buffer -> painted output
  latency_p90_ms: float = 0.0  # over the last LATENCY_WINDOW processed frames
  latency_max_ms: float = 0.0
  busy_max_ms: float = 0.0  # longest time the loop spent on one frame (events, step, paint, output)
  fps: float = 0.0  # processed frames per second, first to last processed frame
  end: str = ''  # why it ended

  def report(self) -> str:
    return (f'{self.end}: {self.frames_read} frames read, {self.frames_processed} processed, {self.frames_dropped} '
            f'dropped; {self.fps:.1f} fps; latency mean {self.latency_mean_ms:.1f} ms, p90 {self.latency_p90_ms:.1f} '
            f'ms, max {self.latency_max_ms:.1f} ms; {self.points_added} points added, {self.points_ignored} ignored')


class Window:
  """An OpenCV window that shows frames and turns input into events: left click adds a point there, right click
  or `c` clears, `q` / Esc / closing the window quits. `pending` is drained by the loop."""

  def __init__(self, title: str = 'tapir live'):
    self.cv2 = _cv2('the window (--headless runs without one)')
    self.title, self.shown = title, False  # shown: a frame was shown (before, some backends report it closed)
    self.pending: collections.deque[Event] = collections.deque(maxlen=256)  # bounded: clicks beyond are lost
    try:
      # GUI_NORMAL: no toolbar and, with Qt, no context menu on a right click (it would block the loop)
      self.cv2.namedWindow(title, self.cv2.WINDOW_AUTOSIZE | self.cv2.WINDOW_GUI_NORMAL)
    except self.cv2.error as e:  # no display, or a build without GUI (opencv-python-headless)
      raise ValueError(f'cannot open a window (use --headless without a display): {e}') from e
    self.cv2.setMouseCallback(title, self.on_mouse)

  def on_mouse(self, event: int, x: int, y: int, flags: int = 0, param: Any = None) -> None:
    del flags, param
    if event == self.cv2.EVENT_LBUTTONDOWN:
      self.pending.append(Event('add', (y + 0.5, x + 0.5)))  # the centre of the clicked pixel
    elif event == self.cv2.EVENT_RBUTTONDOWN:
      self.pending.append(Event('clear'))

  def show(self, frame: np.ndarray | None = None) -> None:
    """Shows `frame` (uint8 [h, w, 3] RGB; None: keeps the last) and handles the window's input."""
    if frame is not None:
      self.cv2.imshow(self.title, np.ascontiguousarray(frame[..., ::-1]))
    self.shown, key = self.shown or frame is not None, self.cv2.waitKey(1) & 0xFF
    if key in (ord('q'), 27) or self.shown and self.cv2.getWindowProperty(self.title, self.cv2.WND_PROP_VISIBLE) < 1:
      self.pending.append(Event('quit'))
    elif key == ord('c'):
      self.pending.append(Event('clear'))

  def close(self) -> None:
    self.cv2.destroyWindow(self.title)


def run_live(tracker, source: Source, *, script: Sequence[tuple[int, Event]] = (), window: Window | None = None,
             out_path: str | None = None, out_fps: float = 30.0, trail: int = 8, overlay: bool = True,
             drop: bool = True, max_frames: int | None = None) -> LiveStats:
  """Tracks `source` live with `tracker` (an `OnlineTracker`, fresh or warmed up) until the source ends, the
  window quits, `max_frames` frames are processed or Ctrl-C. Closes the source; returns the statistics.

  `script`: (frame, Event) from `parse_script`; `out_path`: painted video at the source's frame rate (else
  `out_fps`); `drop`: keep only the newest frame (live) or process every frame (`FrameGrabber`).
  """
  if max_frames is not None:
    queries_lib.check_positive_int(max_frames, 'max_frames')
  painter, stats = paint.TrailPainter(trail), LiveStats()
  script = collections.deque(script)
  latencies, recent = collections.deque(maxlen=LATENCY_WINDOW), collections.deque(maxlen=_FPS_WINDOW)  # seconds
  latency_sum, first_done = 0.0, None
  with contextlib.ExitStack() as stack:
    stack.callback(source.close)
    if window is not None:
      stack.callback(window.close)
    writer = None
    if out_path:
      writer = stack.enter_context(video_io.FrameWriter(out_path, source.height, source.width, source.fps or out_fps))
    tracker.start(np.zeros((source.height, source.width, 3), np.uint8), np.zeros((0, 2), np.float32))
    grabber = FrameGrabber(source, drop)
    stack.callback(grabber.stop)
    try:
      while not (max_frames and stats.frames_processed >= max_frames):
        item = grabber.get(timeout=0.03 if window is not None else None)
        if item is None and grabber.ended:
          stats.end = grabber.end
          break
        events = []
        while script and script[0][0] <= (item.index if item is not None else -1):
          events.append(script.popleft()[1])
        if window is not None:
          events += [window.pending.popleft() for _ in range(len(window.pending))]
        if any(e.kind == 'quit' for e in events):
          stats.end = 'quit'
          break
        if item is None:  # no new frame yet: keep the window responsive, queue its events for the next frame
          window.pending.extendleft(reversed(events))
          window.show()
          continue
        began = time.monotonic()
        if _apply(tracker, item.frame, events, stats):
          painter.history.clear()  # a cleared point's index may come back as a new point
        out = tracker.step(item.frame)
        rate = (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9) if len(recent) > 1 else 0.0
        text = (f'{rate:.1f} fps  {latencies[-1] * 1e3 if latencies else 0:.0f} ms  {tracker.num_points} points  '
                f'{grabber.dropped} dropped') if overlay else None
        image = painter.paint(item.frame, tracker.indices, out.tracks, out.visible, text)
        if writer is not None:
          writer.write(image)
        if window is not None:
          window.show(image)
        done = time.monotonic()
        recent.append(done)
        first_done, latency = first_done or done, done - item.arrival
        latencies.append(latency)
        latency_sum, stats.frames_processed = latency_sum + latency, stats.frames_processed + 1
        stats.latency_max_ms = max(stats.latency_max_ms, latency * 1e3)
        stats.busy_max_ms = max(stats.busy_max_ms, (done - began) * 1e3)
      else:
        stats.end = f'stopped after max_frames={max_frames} processed frames'
    except KeyboardInterrupt:
      stats.end = 'interrupted'
  stats.frames_read, stats.frames_dropped = grabber.frames_read, grabber.dropped
  if latencies:
    stats.latency_mean_ms = latency_sum / stats.frames_processed * 1e3
    stats.latency_p90_ms = float(np.percentile(latencies, 90)) * 1e3
  if stats.frames_processed > 1:
    stats.fps = (stats.frames_processed - 1) / max(recent[-1] - first_done, 1e-9)
  return stats


def _apply(tracker, frame: np.ndarray, events: Sequence[Event], stats: LiveStats) -> bool:
  """Applies point events in order (a clear drops the additions before it; the rest go in with one call);
  returns whether the points were cleared."""
  adds, cleared = [], False
  for event in events:
    if event.kind == 'clear':
      tracker.clear()
      adds, cleared = [], True
    elif event.kind == 'add':
      adds.append(event.point_yx)
  room = len(adds) if tracker.capacity is None else max(0, tracker.capacity - tracker.num_points)
  if len(adds) > room:
    logging.warning('ignoring %d new points: the tracker holds at most %d (--max_points)', len(adds) - room,
                    tracker.capacity)
    stats.points_ignored += len(adds) - room
  if adds[:room]:
    points = np.clip(np.asarray(adds[:room], np.float32), 0, frame.shape[:2])  # (y, x) inside the frame
    stats.points_added += len(tracker.add_queries(frame, points))
  return cleared
