"""MOVi-E from TFDS -> training batches `[local_devices, per_device_batch, ...]` (TensorFlow imported lazily).

    batches = movi_e_dataset(data_dir='gs://bucket/tfds', name='panning_movi_e/256x256', per_device_batch=8)

Steps: TFDS (file shuffling on, with the run's seed; each process reads its own shard, `jax.process_index()` of
`jax.process_count()`; videos still PNG-encoded) -> repeat -> shuffle (seeded) -> skip the examples of steps
already trained -> numpy -> decode the videos and Kubric track conversion (`tapir.data.kubric`, in a thread pool;
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
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np

from tapir.data import bad_examples
from tapir.data import kubric
from tapir.data import validation

EXAMPLE_KEYS = validation.EXAMPLE_KEYS
SKIPPED_KEY = 'skipped_examples'  # a batch's bad examples (host side: a tuple of BadExample), when it had any


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


def _name(example: Any, index: int) -> str:
  """How a bad example is named: its TFDS record id when the reader adds one, else its index in the stream."""
  tfds_id = example.get('tfds_id') if isinstance(example, Mapping) else None
  if tfds_id is None:
    return f'example {index} of the stream'
  value = np.asarray(tfds_id).item()
  return f'record {value.decode() if isinstance(value, bytes) else value}'


def batches_from_examples(examples: Iterable[Mapping[str, np.ndarray] | bad_examples.BadExample],
                          per_device_batch: int, tracks_to_sample: int = 256, train_size=(256, 256),
                          random_crop: bool = True, color_augmentation: bool = True, seed: int = 0,
                          num_workers: int = 4, local_devices: int | None = None, start_index: int = 0,
                          snap_to_occluder: bool = False, decode: Callable[[dict], dict] | None = None,
                          skip_budget: bad_examples.SkipBudget | None = None) -> Iterator[dict[str, np.ndarray]]:
  """MOVi-E example dicts (flat or nested) -> batches [local_devices, per_device_batch, ...].

  The first example is example `start_index` of this process's stream: its random choices (crop, queries,
  colour augmentation) are drawn from (seed, start_index), those of the next from (seed, start_index + 1), ...
  `decode` (flat example -> example, e.g. the PNG frames decoded) runs in the worker threads before the track
  conversion. An example that fails there (or arrives as a `BadExample`) is skipped (`tapir.data.bad_examples`:
  its slot filled from the batch, the batch lists it under SKIPPED_KEY) and counted against `skip_budget`
  (default: stop at the first).
  """
  if start_index < 0:
    raise ValueError(f'start_index must be >= 0, got {start_index}')
  devices = local_devices or jax.local_device_count()
  size = devices * per_device_batch
  base = seed * 1_000_003 + jax.process_index()
  budget = skip_budget or bad_examples.SkipBudget(0.0, 1, 'MOVi-E')

  def work(index, example):
    if isinstance(example, bad_examples.BadExample):
      return example
    try:
      flat = flatten(example)
      flat = decode(flat) if decode is not None else flat
      return convert(flat, base + index * jax.process_count(), tracks_to_sample, train_size, random_crop,
                     color_augmentation, snap_to_occluder)
    except Exception as e:  # pylint: disable=broad-except  # any failure of one example: skipped and counted
      return bad_examples.BadExample(_name(example, index), f'{type(e).__name__}: {e}')

  # `Executor.map` would drain an endless (repeated) dataset up front; keep a bounded window of work in flight.
  with futures.ThreadPoolExecutor(num_workers) as pool:
    in_flight = collections.deque()
    source = enumerate(examples, start_index)
    while True:
      for index, example in itertools.islice(source, 2 * max(num_workers, size) - len(in_flight)):
        in_flight.append(pool.submit(work, index, example))
      if len(in_flight) < size:
        return
      clips, bad = bad_examples.fill_batch([in_flight.popleft().result() for _ in range(size)])
      budget.add(size, bad)
      batch = stack_clips(clips, devices, per_device_batch)
      if bad:
        batch[SKIPPED_KEY] = tuple(bad)
      yield batch


def tf_dataset_examples(dataset, shuffle_buffer: int, seed: int, repeat: bool = True, skip: int = 0,
                        decode=None) -> Iterator[dict | bad_examples.BadExample]:
  """A tf.data dataset of MOVi-E examples -> numpy dicts: repeated, shuffled (seeded), `skip` examples dropped.

  `decode` (example -> example, TensorFlow ops) runs after the skip, so skipped examples are never decoded.
  The pipeline is deterministic: the same dataset, seed and skip give the same examples in the same order.
  An error reading a record (e.g. a corrupted one: tf.errors.DataLossError) comes out as a `BadExample` in its
  place, and reading goes on.
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
  return _record_errors_as_bad(dataset.prefetch(2).as_numpy_iterator(), tf.errors.OpError)


def _record_errors_as_bad(iterator, errors) -> Iterator[dict | bad_examples.BadExample]:
  read = 0
  while True:
    try:
      example = next(iterator)
    except StopIteration:
      return
    except errors as e:
      reason = f'{type(e).__name__}: {getattr(e, "message", e)}'  # tf errors: the message without the op trace
      example = bad_examples.BadExample(f'the record after {read} read', reason)
    read += 1
    yield example


def movi_e_dataset(data_dir: str | None = None, name: str = 'movi_e/256x256', split: str = 'train',
                   per_device_batch: int = 8, tracks_to_sample: int = 256, train_size=(256, 256),
                   shuffle_buffer: int = 128, random_crop: bool = True, color_augmentation: bool = True,
                   seed: int = 0, num_workers: int = 8, start_batch: int = 0,
                   snap_to_occluder: bool = False,
                   skip_budget: bad_examples.SkipBudget | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Training batches from a TFDS MOVi-E dataset (`name` may be e.g. 'panning_movi_e/256x256').

  The stream starts at batch `start_batch` of the stream of `seed` (a run resumed at step k passes k). Bad
  records (undecodable PNG frames, corrupted records, examples the track conversion rejects) are skipped, named
  by their TFDS record id, and counted against `skip_budget` (`tapir.data.bad_examples`; default: stop at the
  first).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if start_batch < 0:
    raise ValueError(f'start_batch must be >= 0, got {start_batch}')
  tf.config.set_visible_devices([], 'GPU')  # keep TensorFlow off the accelerators JAX uses
  read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False, add_tfds_id=True,
                                input_context=tf.distribute.InputContext(
                                    num_input_pipelines=jax.process_count(), input_pipeline_id=jax.process_index()))
  features = tfds.builder(name, data_dir=data_dir).info.features
  videos = [k for k, f in features.items() if isinstance(f, tfds.features.Video)]
  dataset = tfds.load(name, data_dir=data_dir, split=split, shuffle_files=True, read_config=read_config,
                      decoders={k: tfds.decode.SkipDecoding() for k in videos})  # PNG frames decoded after the skip

  # Decoded in the worker threads, one example at a time, so an undecodable one is caught and named.
  decoders = {k: tf.function(features[k].decode_example) for k in videos}

  def decode(example):
    return {**example, **{k: decoders[k](example[k]).numpy() for k in videos}}

  skip = start_batch * jax.local_device_count() * per_device_batch
  examples = tf_dataset_examples(dataset, shuffle_buffer, seed, skip=skip)
  return batches_from_examples(examples, per_device_batch, tracks_to_sample, train_size, random_crop,
                               color_augmentation, seed, num_workers, start_index=skip,
                               snap_to_occluder=snap_to_occluder, decode=decode, skip_budget=skip_budget)
