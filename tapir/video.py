"""Video files in and out, whole or one frame at a time (mediapy over ffmpeg).

    info = video_io.probe('in.mp4')                           # VideoInfo(num_frames, height, width, fps)
    with video_io.FrameReader('in.mp4') as reader:            # streams uint8 [h, w, 3] frames
      with video_io.FrameWriter('out.mp4', reader.info.height, reader.info.width, reader.info.fps) as writer:
        for frame in reader:
          writer.write(frame)

`FrameReader` and `FrameWriter` hold one frame at a time, so memory does not depend on the video's length.
mediapy (which imports matplotlib) is imported here, lazily, on the first video operation: `import tapir` stays
light. mediapy needs an ffmpeg binary; without one on PATH, the imageio-ffmpeg wheel's is used.
"""

import os
import shutil
from typing import Any, Iterator, NamedTuple, Sequence

from absl import logging
import numpy as np

_FFMPEG_TOO_NEW = ('\n(this ffmpeg is too new for mediapy: ffmpeg >= 8 dropped -vsync; use ffmpeg 7 or '
                   'pip install "imageio-ffmpeg<0.8")')


class VideoInfo(NamedTuple):
  num_frames: int  # counted by ffmpeg when the file is opened
  height: int
  width: int
  fps: float  # frames per second (30 when the file does not say)


def mediapy_module() -> Any:
  """mediapy, imported on first use with its ffmpeg binary set up (`ensure_ffmpeg`)."""
  import mediapy  # pylint: disable=g-import-not-at-top  (imports matplotlib: keep it out of `import tapir`)
  _ensure_ffmpeg(mediapy)
  return mediapy


def _ensure_ffmpeg(mediapy) -> None:
  if shutil.which('ffmpeg') is not None:
    return
  try:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('no ffmpeg on PATH and imageio-ffmpeg is not installed: video I/O will fail '
                    '(pip install imageio-ffmpeg, or install ffmpeg)')
    return
  mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())


def ensure_ffmpeg() -> None:
  """Points mediapy at imageio-ffmpeg's bundled binary when no `ffmpeg` is on PATH."""
  mediapy_module()


def _read_error(path, e: Exception) -> ValueError:
  hint = _FFMPEG_TOO_NEW if "'vsync'" in str(e) else ''
  return ValueError(f'cannot read video {path}: {e}{hint}')


def _check_exists(path) -> str:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f'video not found: {path}')
  return path


class FrameReader:
  """Context manager that streams a video's frames (uint8 [h, w, 3]); `info` is known once it is entered.

  Errors (missing file, undecodable data) are ValueErrors naming the file.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = _check_exists(path)
    self._reader = None
    self.info: VideoInfo | None = None

  def __enter__(self) -> 'FrameReader':
    mediapy = mediapy_module()
    reader = mediapy.VideoReader(self.path)
    try:
      reader.__enter__()
    except Exception as e:  # ffmpeg failures surface as several exception types
      raise _read_error(self.path, e) from e
    self._reader = reader
    h, w = reader.shape
    if reader.num_images <= 0 or h <= 0 or w <= 0:
      self.__exit__(None, None, None)
      raise ValueError(f'cannot read video {self.path}: decoded {reader.num_images} frames of {h}x{w}')
    self.info = VideoInfo(int(reader.num_images), int(h), int(w), float(reader.fps or 30.0))
    return self

  def __exit__(self, *exc) -> None:
    if self._reader is not None:
      self._reader.__exit__(*exc)
      self._reader = None

  def __iter__(self) -> Iterator[np.ndarray]:
    if self._reader is None:
      raise ValueError('use FrameReader in a `with` block before iterating over it')
    try:
      for frame in self._reader:
        yield np.asarray(frame, np.uint8)
    except RuntimeError as e:
      raise _read_error(self.path, e) from e


def probe(path: str | os.PathLike) -> VideoInfo:
  """Frame count, size and frame rate of a video file, without keeping any frame."""
  with FrameReader(path) as reader:
    return reader.info


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
  """Reads a whole video file: uint8 [t, h, w, 3] and its frame rate (frames per second)."""
  path = _check_exists(path)
  mediapy = mediapy_module()
  try:
    video = mediapy.read_video(path)
  except Exception as e:  # ffmpeg failures surface as several exception types
    raise _read_error(path, e) from e
  if video.ndim != 4 or video.shape[0] == 0:
    raise ValueError(f'cannot read video {path}: decoded {video.shape}, expected [frames, height, width, 3]')
  fps = video.metadata.fps if video.metadata is not None else None
  return np.asarray(video, np.uint8), float(fps or 30.0)


class FrameWriter:
  """Context manager that writes uint8 [h, w, 3] frames one at a time as H.264.

  Odd heights and widths are padded by one edge row / column, as H.264 needs even sizes.
  """

  def __init__(self, path: str | os.PathLike, height: int, width: int, fps: float):
    if height < 1 or width < 1:
      raise ValueError(f'height and width must be >= 1; got {height}x{width}')
    if not fps > 0:
      raise ValueError(f'fps must be > 0; got {fps}')
    self.path, self.height, self.width, self.fps = os.fspath(path), int(height), int(width), float(fps)
    self._writer = None
    self.frames_written = 0

  def __enter__(self) -> 'FrameWriter':
    mediapy = mediapy_module()
    parent = os.path.dirname(self.path)
    if parent:
      os.makedirs(parent, exist_ok=True)
    shape = (self.height + self.height % 2, self.width + self.width % 2)
    self._writer = mediapy.VideoWriter(self.path, shape, fps=self.fps)
    self._writer.__enter__()
    return self

  def write(self, frame: np.ndarray) -> None:
    if self._writer is None:
      raise ValueError('use FrameWriter in a `with` block before writing to it')
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.shape != (self.height, self.width, 3):
      raise ValueError(f'frame must be uint8 [{self.height}, {self.width}, 3]; got {frame.dtype} {frame.shape}')
    frame = np.pad(frame, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode='edge')
    self._writer.add_image(frame)
    self.frames_written += 1

  def __exit__(self, *exc) -> None:
    if self._writer is not None:
      self._writer.__exit__(*exc)
      self._writer = None


def write_video(path: str | os.PathLike, video: np.ndarray, fps: float) -> None:
  """Writes uint8 [t, h, w, 3] as an H.264 video (frames padded to even sizes, as H.264 needs)."""
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or not video.shape[0]:
    raise ValueError(f'video must be uint8 [t, h, w, 3] with t >= 1; got {video.dtype} {video.shape}')
  with FrameWriter(path, video.shape[1], video.shape[2], fps) as writer:
    for frame in video:
      writer.write(frame)


def check_video(video: np.ndarray) -> None:
  if not isinstance(video, np.ndarray) or video.dtype != np.uint8:
    raise ValueError(f'video must be a uint8 numpy array [frames, height, width, 3]; got '
                     f'{getattr(video, "dtype", type(video))}')
  if video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f'video must be [frames, height, width, 3] RGB; got shape {video.shape}')
  if min(video.shape[:3]) < 1:
    raise ValueError(f'video must have at least one frame, row and column; got shape {video.shape}')


def resize_video(video: np.ndarray, hw: Sequence[int]) -> np.ndarray:
  """uint8 [t, h, w, 3] -> uint8 [t, *hw, 3] with PIL Lanczos per frame (identity if the size matches)."""
  if tuple(video.shape[1:3]) == tuple(hw):
    return video
  import mediapy  # pylint: disable=g-import-not-at-top  (lazy: it imports matplotlib)
  return np.asarray(mediapy.resize_video(video, tuple(hw)))
