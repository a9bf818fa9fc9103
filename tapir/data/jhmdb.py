"""JHMDB keypoint propagation (split 1 test videos): 15 joints queried on frame 0, tracked, scored with PCK.

On-disk layout (the dataset's own; spec section 4.2):
  <root>/splits/<class>_test_split1.txt                        lines `<video>.avi 1|2` (2 = test)
  <root>/joint_positions/<class>/<video>/joint_positions.mat   key `pos_img`: [2, 15, T] pixel (x, y)
  <root>/Rename_Images/<class>/<video>/*.png                   frames, in sorted order

Videos come in sorted order (class, then split-file order; the reference shuffles unseeded). A joint outside the
image at frame 0 (`0 <= x < W`, `0 <= y < H` fails) is invalid for the whole clip: it gets no query and is not
scored. Queries are the valid joints at frame 0, rescaled to the resized video (the reference forgets this
rescaling). The video is truncated to the pose length. Scoring: `tapir.metrics.PckAccumulator`,
`tapir.evaluation.loop.evaluate_jhmdb`. Reading the `.mat` files needs scipy.
"""

import glob
import os
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from tapir import conventions

NUM_JOINTS = 15


class JhmdbVideo(NamedTuple):
  video: np.ndarray  # [t, h, w, 3] uint8, resized to the reader's resolution
  query_points: np.ndarray  # [v, 3] float32 (0, y, x): the valid joints at frame 0, pixels of `video`
  joints: np.ndarray  # [15, t, 2] float32 (x, y) ground truth in pixels of the original frames
  valid: np.ndarray  # [15] bool: inside the image at frame 0 (queried and scored)
  image_hw: tuple[int, int]  # (height, width) of the original frames
  video_name: str  # '<class>/<video>'


def _resize(video: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """PIL Lanczos per frame, as the TAP-Vid readers (identity if the size matches)."""
  if video.shape[1:3] == hw:
    return video
  import mediapy  # pylint: disable=g-import-not-at-top  (lazy: it imports matplotlib)
  return np.asarray(mediapy.resize_video(video, hw))


def _read_frame(path: str) -> np.ndarray:  # [h, w, 3] uint8
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except Exception as e:  # PIL raises many types for damaged images
    raise ValueError(f'cannot read JHMDB frame {path} ({type(e).__name__}: {e})') from e


def split_test_videos(root: str | os.PathLike) -> list[tuple[str, str]]:
  """(class, video) of every split-1 test video, classes sorted, videos in split-file order."""
  root = os.fspath(root)
  files = sorted(glob.glob(os.path.join(root, 'splits', '*_test_split1.txt')))
  if not files:
    raise FileNotFoundError(f'no JHMDB split files {root}/splits/*_test_split1.txt')
  videos = []
  for path in files:
    action = os.path.basename(path)[:-len('_test_split1.txt')]
    try:
      with open(path) as f:
        lines = f.readlines()
    except UnicodeDecodeError as e:
      raise ValueError(f'{path}: not a text file of "<video>.avi 1|2" lines ({e})') from e
    for line_no, line in enumerate(lines, start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 2 or fields[1] not in ('1', '2'):
        raise ValueError(f'{path} line {line_no}: expected "<video>.avi 1|2", got {line.strip()!r}')
      if fields[1] == '2':
        videos.append((action, os.path.splitext(fields[0])[0]))
  return videos


def load_video(root: str | os.PathLike, action: str, name: str,
               resolution: Sequence[int] | None = (256, 256)) -> JhmdbVideo:
  """One JHMDB video: frames, joints, validity and frame-0 queries (module docstring)."""
  import scipy.io  # pylint: disable=g-import-not-at-top  (only the JHMDB reader needs scipy)
  root = os.fspath(root)
  mat_path = os.path.join(root, 'joint_positions', action, name, 'joint_positions.mat')
  frame_paths = sorted(glob.glob(os.path.join(root, 'Rename_Images', action, name, '*.png')))
  if not os.path.isfile(mat_path):
    raise FileNotFoundError(f'JHMDB joints not found: {mat_path}')
  if not frame_paths:
    raise FileNotFoundError(f'no JHMDB frames {root}/Rename_Images/{action}/{name}/*.png')
  try:
    pos_img = np.asarray(scipy.io.loadmat(mat_path).get('pos_img', np.zeros(0)))
  except Exception as e:  # scipy raises many types for a damaged file
    raise ValueError(f'{mat_path}: cannot read it as a .mat file ({type(e).__name__}: {e})') from e
  if pos_img.dtype.kind not in 'biuf' or pos_img.ndim != 3 or pos_img.shape[:2] != (2, NUM_JOINTS) or (
      pos_img.shape[2] < 1):
    raise ValueError(f'{mat_path}: pos_img must be real [2, {NUM_JOINTS}, T >= 1] pixel (x, y), got '
                     f'{pos_img.dtype} {pos_img.shape}')
  joints = np.transpose(pos_img, (1, 2, 0)).astype(np.float32)  # [15, T, 2]
  num_frames = min(joints.shape[1], len(frame_paths))
  frames = [_read_frame(p) for p in frame_paths[:num_frames]]
  for path, frame in zip(frame_paths, frames):
    if frame.shape != frames[0].shape:
      raise ValueError(f'JHMDB frame {path} is {frame.shape[:2]} (h, w) but {frame_paths[0]} is {frames[0].shape[:2]}')
  video = np.stack(frames)
  joints = joints[:, :num_frames]
  h, w = video.shape[1:3]
  x0, y0 = joints[:, 0, 0], joints[:, 0, 1]
  valid = (x0 >= 0) & (x0 < w) & (y0 >= 0) & (y0 < h)
  if resolution is not None:
    video = _resize(video, tuple(resolution))
  queries = np.stack([np.zeros_like(x0), y0, x0], -1)[valid]  # [v, 3] (0, y, x) original pixels
  queries = conventions.convert_grid_coordinates(queries, (1, h, w), (1,) + video.shape[1:3]).astype(np.float32)
  return JhmdbVideo(video, queries, joints, valid, (h, w), f'{action}/{name}')


def read_jhmdb(root: str | os.PathLike, resolution: Sequence[int] | None = (256, 256)) -> Iterator[JhmdbVideo]:
  """Every split-1 test video of the JHMDB directory `root` (module docstring), one at a time."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f'JHMDB data not found: {root} (expected a directory)')
  videos = split_test_videos(root)
  return (load_video(root, action, name, resolution) for action, name in videos)
