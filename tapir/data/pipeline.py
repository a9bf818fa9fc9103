"""MOVi-E from TFDS -> training batches `[local_devices, per_device_batch, ...]` (TensorFlow imported lazily).

    batches = movi_e_dataset(data_dir='gs://bucket/tfds', name='panning_movi_e/256x256', per_device_batch=8)

Steps: TFDS (file shuffling on, with the run's seed; each process reads its own shard, `jax.process_index()` of
`jax.process_count()`; videos still PNG-encoded) -> repeat -> shuffle (seeded) -> skip the examples of steps
already trained -> decode the videos -> numpy -> Kubric track conversion (`tapir.data.kubric`, in a thread pool;
example i's random choices drawn from (seed, i)) -> colour augmentation -> batches of
`jax.local_device_count() x per_device_batch`. Every stage is deterministic, so batch k of the stream is a function
of (seed, k) only: a run resumed at step k sees the batches an uninterrupted run would have seen (the skipped
examples are read and shuffled but not decoded). The trainer prefetches the batches (`tapir.data.streams.Prefetcher`).
The MOVi-E builders live in the Kubric repository, not in TFDS itself: point `data_dir` at a directory (or bucket)
that holds the prepared `movi_e` / `panning_movi_e` datasets.
"""

import collections
from concurrent import futures
import itertools
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np

from tapir.data import kubric
from tapir.data import validation

EXAMPLE_KEYS = validation.EXAMPLE_KEYS


def flatten(example: Mapping[str, Any], prefix: str = '') -> dict[str, np.ndarray]:
  """TFDS's nested feature dicts -> MOVi-E keys joined by '/' ('camera/positions', ...)."""
  out = {}
  for key, value in example.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, prefix + key + '/'))
    else:
      out[prefix + key] = np.asarray(value)
  return out


def convert(example: Mapping[str, np.ndarray], seed: int, tracks_to_sample: int, train_size, random_crop: bool,
            color_augmentation: bool, snap_to_occluder: bool = False) -> dict[str, np.ndarray]:
  """One MOVi-E example -> a training example (the random choices drawn from `seed`; `snap_to_occluder` as in
  `tapir.data.kubric.make_training_example`)."""
  rng = np.random.default_rng(seed)
  out = kubric.make_training_example(example, rng, tracks_to_sample=tracks_to_sample, random_crop=random_crop,
                                     train_size=tuple(train_size), snap_to_occluder=snap_to_occluder)
  out = {k: out[k] for k in EXAMPLE_KEYS}
  if color_augmentation:
    out['video'] = kubric.color_augment(out['video'], rng)
  return out


def stack_clips(clips: Sequence[Mapping[str, np.ndarray]], devices: int, per_device_batch: int) -> dict:
  """devices * per_device_batch example dicts -> one batch, each field [devices, per_device_batch, ...]."""
  if len(clips) != devices * per_device_batch:
    raise ValueError(f'need devices * per_device_batch = {devices * per_device_batch} clips, got {len(clips)}')
  return {k: np.stack([c[k] for c in clips]).reshape((devices, per_device_batch) + np.shape(clips[0][k]))
          for k in EXAMPLE_KEYS}


def batches_from_examples(examples: Iterable[Mapping[str, np.ndarray]], per_device_batch: int,
                          tracks_to_sample: int = 256, train_size=(256, 256), random_crop: bool = True,
                          color_augmentation: bool = True, seed: int = 0, num_workers: int = 4,
                          local_devices: int | None = None, start_index: int = 0,
                          snap_to_occluder: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """MOVi-E example dicts (flat or nested) -> batches [local_devices, per_device_batch, ...].

  The first example is example `start_index` of this process's stream: its random choices (crop, queries,
  colour augmentation) are drawn from (seed, start_index), those of the next from (seed, start_index + 1), ...
  """
  if start_index < 0:
    raise ValueError(f'start_index must be >= 0, got {start_index}')
  devices = local_devices or jax.local_device_count()
  size = devices * per_device_batch
  base = seed * 1_000_003 + jax.process_index()

  def work(index, example):
    return convert(flatten(example), base + index * jax.process_count(), tracks_to_sample, train_size, random_crop,
                   color_augmentation, snap_to_occluder)

  # `Executor.map` would drain an endless (repeated) dataset up front; keep a bounded window of work in flight.
  with futures.ThreadPoolExecutor(num_workers) as pool:
    in_flight = collections.deque()
    source = enumerate(examples, start_index)
    while True:
      for index, example in itertools.islice(source, 2 * max(num_workers, size) - len(in_flight)):
        in_flight.append(pool.submit(work, index, example))
      if len(in_flight) < size:
        return
      yield stack_clips([in_flight.popleft().result() for _ in range(size)], devices, per_device_batch)


def tf_dataset_examples(dataset, shuffle_buffer: int, seed: int, repeat: bool = True, skip: int = 0,
                        decode=None) -> Iterator[dict]:
  """A tf.data dataset of MOVi-E examples -> numpy dicts: repeated, shuffled (seeded), `skip` examples dropped.

  `decode` (example -> example, TensorFlow ops) runs after the skip, so skipped examples are never decoded.
  The pipeline is deterministic: the same dataset, seed and skip give the same examples in the same order.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if skip < 0:
    raise ValueError(f'skip must be >= 0, got {skip}')
  options = tf.data.Options()
  options.deterministic = True
  dataset = dataset.with_options(options)
  if repeat:
    dataset = dataset.repeat()
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
  if skip:
    dataset = dataset.skip(skip)
  if decode is not None:
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.prefetch(2).as_numpy_iterator()


def movi_e_dataset(data_dir: str | None = None, name: str = 'movi_e/256x256', split: str = 'train',
                   per_device_batch: int = 8, tracks_to_sample: int = 256, train_size=(256, 256),
                   shuffle_buffer: int = 128, random_crop: bool = True, color_augmentation: bool = True,
                   seed: int = 0, num_workers: int = 8, start_batch: int = 0,
                   snap_to_occluder: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Training batches from a TFDS MOVi-E dataset (`name` may be e.g. 'panning_movi_e/256x256').

  The stream starts at batch `start_batch` of the stream of `seed` (a run resumed at step k passes k).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if start_batch < 0:
    raise ValueError(f'start_batch must be >= 0, got {start_batch}')
  tf.config.set_visible_devices([], 'GPU')  # keep TensorFlow off the accelerators JAX uses
  read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False,
                                input_context=tf.distribute.InputContext(
                                    num_input_pipelines=jax.process_count(), input_pipeline_id=jax.process_index()))
  features = tfds.builder(name, data_dir=data_dir).info.features
  videos = [k for k, f in features.items() if isinstance(f, tfds.features.Video)]
  dataset = tfds.load(name, data_dir=data_dir, split=split, shuffle_files=True, read_config=read_config,
                      decoders={k: tfds.decode.SkipDecoding() for k in videos})  # PNG frames decoded after the skip

  def decode(example):
    return {**example, **{k: features[k].decode_example(example[k]) for k in videos}}

  skip = start_batch * jax.local_device_count() * per_device_batch
  examples = tf_dataset_examples(dataset, shuffle_buffer, seed, skip=skip, decode=decode)
  return batches_from_examples(examples, per_device_batch, tracks_to_sample, train_size, random_crop,
                               color_augmentation, seed, num_workers, start_index=skip,
                               snap_to_occluder=snap_to_occluder)
