"""TAP-Vid-Kubric videos: a TFDS MOVi-E split through the training track pipeline, as the reference evaluates.

    for v in kubric_eval.read_videos('/data/tfds', vflip=True):   # KubricVideo, one per scene
      v.video, v.query_points, v.target_points, v.occluded

`tapir.data.tapvid.open_dataset('kubric', ...)` wraps this into `TapVidExample`s. TensorFlow and TFDS (the `data`
extra) are imported when `read_videos` is called, not when this module is.
"""

import os
from typing import Iterator, NamedTuple

import numpy as np

from tapir.data import kubric
from tapir.data import pipeline

DATASET = 'movi_e/256x256'  # or 'panning_movi_e/256x256'
SPLIT = 'validation'
TRACKS = 256  # queries per video, as in training


class KubricVideo(NamedTuple):
  video: np.ndarray  # [t, h, w, 3] uint8, the dataset's own size
  query_points: np.ndarray  # [n, 3] float32 (t, y, x) raster pixels of `video`
  target_points: np.ndarray  # [n, t, 2] float32 (x, y)
  occluded: np.ndarray  # [n, t] bool
  name: str  # '<split>_<index:04d>'


def read_videos(data_dir: str | os.PathLike, dataset: str = DATASET, split: str = SPLIT, vflip: bool = False,
                seed: int = 0, tracks_to_sample: int = TRACKS, num_videos: int | None = None) -> Iterator[KubricVideo]:
  """Scenes of `dataset` / `split` in stored order (no shuffling) -> tracks, as spec 4.2 "Kubric".

  Each scene goes through `kubric.make_training_example` without random crop, at its own size, with a generator
  seeded by `(seed, scene index)`: the same queries come back on every run (the reference's are unseeded). The
  `tracks_to_sample` queries are the training sampler's (integer pixels on random grid frames, padded rows
  repeated), not the TAP-Vid query modes'.

  `vflip` flips the video's rows and mirrors every y to `h - y`, so the labels stay on the flipped pixels. (The
  reference negates y instead, `make_training_example(vflip=True)`, which puts every query outside the frame;
  `tapir.Tracker` rejects such queries.)
  """
  if tracks_to_sample < 1:
    raise ValueError(f'tracks_to_sample must be >= 1, got {tracks_to_sample}')
  if num_videos is not None and num_videos < 1:
    raise ValueError(f'num_videos must be >= 1 or None, got {num_videos}')
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'the Kubric reader needs TensorFlow and TFDS: pip install "tapir[data]" ({e})') from e
  tf.config.set_visible_devices([], 'GPU')  # keep TensorFlow off the accelerators JAX uses
  try:
    records = tfds.load(dataset, data_dir=os.fspath(data_dir), split=split, shuffle_files=False)
  except Exception as e:  # TFDS raises several types for a missing dataset or split
    raise FileNotFoundError(f'cannot load TFDS dataset {dataset!r} split {split!r} from {data_dir}: {e}') from e

  def generate():
    for index, record in enumerate(tfds.as_numpy(records)):
      if num_videos is not None and index >= num_videos:
        return
      example = pipeline.flatten(record)
      video = np.asarray(example['video'])  # uint8 [t, h, w, 3]
      h, w = video.shape[1:3]
      out = kubric.make_training_example(example, np.random.default_rng([seed, index]), tracks_to_sample,
                                         random_crop=False, train_size=(h, w))
      # No crop, no resize: out['video'] is `video` mapped to [-1, 1]; keep the exact uint8 frames.
      query_points, target_points = out['query_points'], out['target_points']
      if vflip:
        video = np.ascontiguousarray(video[:, ::-1])
        query_points = query_points * np.float32([1, -1, 1]) + np.float32([0, h, 0])
        target_points = target_points * np.float32([1, -1]) + np.float32([0, h])
      yield KubricVideo(video, query_points.astype(np.float32), target_points.astype(np.float32),
                        out['occluded'], f'{split}_{index:04d}')
  return generate()
