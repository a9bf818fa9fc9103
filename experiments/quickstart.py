r"""Quickstart: track a grid of points through a built-in video with TAPIR, no download needed.

    python -m experiments.quickstart                                  # random weights: shows the API only
    python -m experiments.quickstart --checkpoint tapir_checkpoint_panning.npy --preset tapir

The built-in video is a textured image panning at a constant velocity, so the true motion is known and the
script reports the mean end-point error of the visible tracks: large with random weights, small with trained ones
(try the checkpoint of the README's training command, `--checkpoint /tmp/tapir_cpu/tapir_checkpoint.npz`).
"""

from absl import app
from absl import flags
from absl import logging
import numpy as np

import tapir

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'checkpoint (either format); random weights if unset')
_PRESET = flags.DEFINE_enum('preset', None, sorted(tapir.PRESETS),
                             'architecture of a released checkpoint (random weights: tapir); settings stored in '
                             'the checkpoint win')
_FRAMES = flags.DEFINE_integer('frames', 8, 'frames of the built-in video')
_SIZE = flags.DEFINE_integer('size', 128, 'height and width of the built-in video')


def panning_video(frames: int, size: int, velocity=(1.5, -1.0), seed: int = 0) -> np.ndarray:
  """uint8 [frames, size, size, 3]: a smooth random texture translated by `velocity` (x, y) px per frame."""
  rng = np.random.default_rng(seed)
  big = size * 2
  coarse = rng.uniform(0, 255, size=(big // 8, big // 8, 3))
  texture = np.kron(coarse, np.ones((8, 8, 1)))  # blocky texture, rich in corners
  out = []
  for t in range(frames):
    dx, dy = int(round(velocity[0] * t)), int(round(velocity[1] * t))
    out.append(texture[size // 2 - dy:size // 2 - dy + size, size // 2 - dx:size // 2 - dx + size])
  return np.stack(out).astype(np.uint8)


def main(argv):
  del argv
  video = panning_video(_FRAMES.value, _SIZE.value)
  if not _CHECKPOINT.value:
    logging.warning('No --checkpoint given: using RANDOM weights (shows the API; the tracks are meaningless).')
  # A checkpoint from our trainer carries its architecture; a released one needs the right --preset.
  tracker = tapir.load_tracker(_CHECKPOINT.value, _PRESET.value, random_weights=not _CHECKPOINT.value)
  queries = tapir.grid_query_points(video.shape[1:3], stride=_SIZE.value // 4)
  tracks, visible = tracker.track(video, queries, resize_to=tracker.resolution)
  t = np.arange(video.shape[0])
  velocity = np.array([1.5, -1.0])
  truth = tapir.conventions.xy_of_tyx(queries)[:, None] + np.round(velocity * t[:, None])[None]
  error = np.linalg.norm(tracks - truth, axis=-1)
  logging.info('tracked %d points through %d frames: tracks %s, visible %s', len(queries), len(t), tracks.shape,
               visible.shape)
  print(f'mean end-point error {error.mean():.2f} px; {visible.mean() * 100:.0f}% predicted visible')


if __name__ == '__main__':
  app.run(main)
