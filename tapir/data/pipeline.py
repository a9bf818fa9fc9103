"""MOVi-E from TFDS -> training batches `[local_devices, per_device_batch, ...]` (TensorFlow imported lazily).

    batches = movi_e_dataset(data_dir='gs://bucket/tfds', name='panning_movi_e/256x256', per_device_batch=8)

Steps: TFDS (file shuffling on; each process reads its own shard, `jax.process_index()` of
`jax.process_count()`) -> repeat -> shuffle -> numpy -> Kubric track conversion (`tapir.data.kubric`, in a
thread pool) -> colour augmentation -> batches of `jax.local_device_count() x per_device_batch` -> prefetch.
The MOVi-E builders live in the Kubric repository, not in TFDS itself: point `data_dir` at a directory (or bucket)
that holds the prepared `movi_e` / `panning_movi_e` datasets.
"""

import collections
from concurrent import futures
import itertools
from typing import Any, Iterable, Iterator, Mapping

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
            color_augmentation: bool) -> dict[str, np.ndarray]:
  """One MOVi-E example -> a training example (the random choices drawn from `seed`)."""
  rng = np.random.default_rng(seed)
  out = kubric.make_training_example(example, rng, tracks_to_sample=tracks_to_sample, random_crop=random_crop,
                                     train_size=tuple(train_size))
  out = {k: out[k] for k in EXAMPLE_KEYS}
  if color_augmentation:
    out['video'] = kubric.color_augment(out['video'], rng)
  return out


def batches_from_examples(examples: Iterable[Mapping[str, np.ndarray]], per_device_batch: int,
                          tracks_to_sample: int = 256, train_size=(256, 256), random_crop: bool = True,
                          color_augmentation: bool = True, seed: int = 0, num_workers: int = 4,
                          local_devices: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """MOVi-E example dicts (flat or nested) -> batches [local_devices, per_device_batch, ...]."""
  devices = local_devices or jax.local_device_count()
  size = devices * per_device_batch
  base = seed * 1_000_003 + jax.process_index()

  def work(index, example):
    return convert(flatten(example), base + index * jax.process_count(), tracks_to_sample, train_size, random_crop,
                   color_augmentation)

  # `Executor.map` would drain an endless (repeated) dataset up front; keep a bounded window of work in flight.
  with futures.ThreadPoolExecutor(num_workers) as pool:
    in_flight = collections.deque()
    source = enumerate(examples)
    while True:
      for index, example in itertools.islice(source, 2 * max(num_workers, size) - len(in_flight)):
        in_flight.append(pool.submit(work, index, example))
      if len(in_flight) < size:
        return
      clips = [in_flight.popleft().result() for _ in range(size)]
      yield {k: np.stack([c[k] for c in clips]).reshape((devices, per_device_batch) + clips[0][k].shape)
             for k in EXAMPLE_KEYS}


def tf_dataset_examples(dataset, shuffle_buffer: int, seed: int, repeat: bool = True) -> Iterator[dict]:
  """A tf.data dataset of MOVi-E examples -> numpy dicts, repeated and shuffled."""
  if repeat:
    dataset = dataset.repeat()
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)
  return dataset.prefetch(2).as_numpy_iterator()


def movi_e_dataset(data_dir: str | None = None, name: str = 'movi_e/256x256', split: str = 'train',
                   per_device_batch: int = 8, tracks_to_sample: int = 256, train_size=(256, 256),
                   shuffle_buffer: int = 128, random_crop: bool = True, color_augmentation: bool = True,
                   seed: int = 0, num_workers: int = 8) -> Iterator[dict[str, np.ndarray]]:
  """Training batches from a TFDS MOVi-E dataset (`name` may be e.g. 'panning_movi_e/256x256')."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # keep TensorFlow off the accelerators JAX uses
  read_config = tfds.ReadConfig(shuffle_seed=seed, input_context=tf.distribute.InputContext(
      num_input_pipelines=jax.process_count(), input_pipeline_id=jax.process_index()))
  dataset = tfds.load(name, data_dir=data_dir, split=split, shuffle_files=True, read_config=read_config)
  examples = tf_dataset_examples(dataset, shuffle_buffer, seed)
  return batches_from_examples(examples, per_device_batch, tracks_to_sample, train_size, random_crop,
                               color_augmentation, seed, num_workers)
