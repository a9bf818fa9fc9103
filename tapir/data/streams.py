"""Where training and evaluation data come from, chosen by a config (`configs/tapir.py`'s `data` and `eval`).

Training sources (`config.data.source`), all yielding batches `[local_devices, per_device_batch, ...]`:
  'synthetic'  built-in scenes (`tapir.data.synthetic`, kind `data.synthetic_kind`) -> Kubric track conversion.
               Example i of the
               run is a pure function of (seed, i), so a resumed run sees exactly the data it would have seen.
  'movi_e'     MOVi-E (or panning MOVi-E) from TFDS through the tf.data pipeline (`tapir.data.pipeline`).
  'custom'     any iterable of example dicts (`custom_factory = 'package.module:function'`, called with the
               config, returning the iterable), checked with `tapir.data.validation.validate_example`.
Bad examples (MOVi-E: an undecodable video or corrupted record; custom: one that fails the checks) are skipped,
named and counted, and the run stops past `data.max_skipped_share` (`tapir.data.bad_examples`).
Each process reads its own shard: example indices are interleaved by `jax.process_index()`. Every source's batch k
is a function of (seed, k), so a run resumed at step k sees the batches an uninterrupted run would have seen.
The trainer runs the stream in a background thread a few batches ahead (`Prefetcher`).

Evaluation (`config.eval.dataset`): 'synthetic', the held-out synthetic set (`synthetic.EVAL_SEEDS`; rendered
once per process and kept in memory, see `synthetic_evaluation_set`); 'realpix', real photographs moved by known
maps (`tapir.data.realpix`, its `EVAL_SEEDS`, 24 frames at `eval.synthetic_hw`, also kept in memory); or a
TAP-Vid reader by name.
"""

import importlib
import itertools
import functools
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from absl import logging
import jax
import numpy as np

from tapir.data import bad_examples
from tapir.data import pipeline
from tapir.data import validation

Batch = dict[str, np.ndarray]
SKIPPED_KEY = pipeline.SKIPPED_KEY  # a batch's bad examples (host side: a tuple of BadExample), when it had any


def scene_config(config, size=None, kind=None):
  """The synthetic SceneConfig matching the training clips (at `size` (h, w) and of scene kind `kind` if given;
  by default `config.data.synthetic_kind`)."""
  from tapir.data import synthetic  # pylint: disable=g-import-not-at-top
  from tapir.data.synthetic import cards  # pylint: disable=g-import-not-at-top
  h, w = size or config.data.train_hw
  return synthetic.SceneConfig.of_kind(kind or config.data.synthetic_kind, height=h, width=w,
                                       num_frames=config.data.num_frames,
                                       num_static_objects=tuple(config.data.synthetic_static_objects),
                                       num_dynamic_objects=tuple(config.data.synthetic_dynamic_objects),
                                       cards=cards.Cards(probability=config.data.synthetic_cards))


def _track_example(scene: Mapping[str, np.ndarray], seed: int, tracks: int, random_crop: bool,
                   augment: bool) -> dict[str, np.ndarray]:
  """Kubric track conversion of one scene at its own size; the random choices are drawn from `seed`."""
  return pipeline.convert(scene, seed, tracks, scene['video'].shape[1:3], random_crop, augment)


def synthetic_examples(config, start_index: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of the training stream, from example `start_index` of the whole run on."""
  from tapir.data import synthetic  # pylint: disable=g-import-not-at-top
  scenes = scene_config(config)
  for i in itertools.count(start_index * jax.process_count() + jax.process_index(), jax.process_count()):
    seed = synthetic.TRAIN_SEED_OFFSET + config.seed * 100_000_000 + i
    scene = synthetic.generate_scene(seed, scenes)
    yield _track_example(scene, seed, config.data.tracks_per_clip, config.data.random_crop,
                         config.data.color_augmentation)


def custom_examples(config) -> Iterable[Mapping[str, np.ndarray]]:
  spec = config.data.custom_factory
  if ':' not in spec:
    raise ValueError(f"data.custom_factory must be 'package.module:function'; got {spec!r}")
  module, function = spec.split(':', 1)
  return getattr(importlib.import_module(module), function)(config)


def skip_budget(config, source: str) -> bad_examples.SkipBudget:
  """The cap on skipped examples that `config.data` sets (`tapir.data.bad_examples`)."""
  return bad_examples.SkipBudget(config.data.get('max_skipped_share', 0.01),
                                 config.data.get('skipped_share_min_examples', 1000), source)


def _checked(example: Any, index: int, num_frames: int) -> Mapping[str, np.ndarray] | bad_examples.BadExample:
  try:
    validation.validate_example(example, num_frames=num_frames)
  except ValueError as e:
    name = example.get('name') if isinstance(example, Mapping) else None
    return bad_examples.BadExample(f'custom example {index}' + (f' ({name})' if isinstance(name, str) else ''),
                                   str(e))
  return example


def _batches(examples: Iterator[Mapping[str, np.ndarray]], config, validate: bool,
             start_index: int = 0) -> Iterator[Batch]:
  """Batches of `examples` (the first is example `start_index` of the run); with `validate`, examples that fail
  `validate_example` are skipped and counted (`tapir.data.bad_examples`), listed under SKIPPED_KEY."""
  devices = jax.local_device_count()
  per_device = config.data.per_device_batch
  budget = skip_budget(config, 'custom data')
  index = start_index
  while True:
    clips = []
    for _ in range(devices * per_device):
      example = next(examples)
      clips.append(_checked(example, index, config.data.num_frames) if validate else example)
      index += 1
    clips, bad = bad_examples.fill_batch(clips)
    budget.add(devices * per_device, bad)
    batch = pipeline.stack_clips(clips, devices, per_device)
    if bad:
      batch[SKIPPED_KEY] = tuple(bad)
    yield batch


class Prefetcher:
  """Runs `iterator` in a background thread, `size` items ahead, applying `transform` there (e.g. a device put).

  Iterating yields exactly the items of `iterator`, in order (an exception it raises is re-raised here, with its
  traceback). `wait_seconds` adds up the time `next` blocked because the next item was not ready yet: the time
  the consumer waited for data. The thread only works while the queue has room, so closing (or leaving) a
  half-read stream costs at most `size` items; `close()` stops it.
  """

  _DONE = object()

  def __init__(self, iterator: Iterable[Any], size: int = 2, transform: Callable[[Any], Any] | None = None):
    if size < 1:
      raise ValueError(f'prefetch size must be >= 1, got {size}')
    self._items: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._finished = False
    self.wait_seconds = 0.0
    self._thread = threading.Thread(target=self._work, args=(iter(iterator), transform), daemon=True,
                                    name='tapir-prefetch')
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _work(self, iterator, transform):
    try:
      for item in iterator:
        if not self._put(transform(item) if transform else item):
          return
    except BaseException as e:  # pylint: disable=broad-except  # re-raised in the consumer
      self._put(e)
    self._put(self._DONE)

  def __iter__(self):
    return self

  def __next__(self):
    if self._finished:
      raise StopIteration
    started = time.perf_counter()
    item = self._items.get()
    self.wait_seconds += time.perf_counter() - started
    if item is self._DONE:
      self._finished = True
      raise StopIteration
    if isinstance(item, BaseException):
      self._finished = True
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=60)


def put_on_devices(batch: Batch) -> Batch:
  """Host batch [local_devices, ...] -> one shard per local device, as pmap takes it (done ahead, in the
  prefetcher). SKIPPED_KEY, if present, stays on the host as it is (the trainer pops it)."""
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ('devices',))
  arrays = {k: v for k, v in batch.items() if k != SKIPPED_KEY}
  placed = jax.device_put(arrays, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('devices')))
  return {**placed, SKIPPED_KEY: batch[SKIPPED_KEY]} if SKIPPED_KEY in batch else placed


def train_batches(config, start_step: int = 0) -> Iterator[Batch]:
  """Batches for steps `start_step`, `start_step + 1`, ... of the run described by `config`.

  Made in the calling thread: wrap the stream in a `Prefetcher` to overlap it with training (the trainer does).
  """
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  source = config.data.source
  local_batch = jax.local_device_count() * config.data.per_device_batch
  if source == 'synthetic':
    return _batches(synthetic_examples(config, start_step * local_batch), config, validate=False)
  if source == 'custom':
    examples = iter(custom_examples(config))
    done = start_step * local_batch
    if done:
      logging.info('resuming custom data: passing over the %d examples of the steps done', done)
      examples = itertools.islice(examples, done, None)
    return _batches(examples, config, validate=True, start_index=done)
  if source == 'movi_e':
      return pipeline.movi_e_dataset(
        data_dir=config.data.data_dir or None, name=config.data.tfds_name, split='train',
        per_device_batch=config.data.per_device_batch, tracks_to_sample=config.data.tracks_per_clip,
        train_size=tuple(config.data.train_hw), shuffle_buffer=config.data.shuffle_buffer,
        random_crop=config.data.random_crop, color_augmentation=config.data.color_augmentation,
        seed=config.seed, start_batch=start_step, snap_to_occluder=config.data.get('snap_to_occluder', False),
        skip_budget=skip_budget(config, f'MOVi-E {config.data.tfds_name}'))
  raise ValueError(f"unknown data.source {source!r}: use 'synthetic', 'movi_e' or 'custom'")


# --------------------------------------------------------------------------------------------------------
# Evaluation


def _rendered_evaluation_scene(seed: int, scenes, tracks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Held-out scene `seed` as (video uint8 [t, h, w, 3], normalised points [n, t, 2], occluded [n, t]), read-only."""
  from tapir.data import synthetic  # pylint: disable=g-import-not-at-top
  h, w = scenes.height, scenes.width
  scene = synthetic.generate_scene(seed, scenes)
  example = _track_example(scene, seed, tracks, random_crop=False, augment=False)
  video = np.round((example['video'] + 1) / 2 * 255).clip(0, 255).astype(np.uint8)
  # The sampler may draw a pixel twice or pad with repeats: score each track once.
  _, unique = np.unique(example['query_points'], axis=0, return_index=True)
  unique = np.sort(unique)
  points = example['target_points'][unique] / np.array([w, h], np.float32)  # normalised, as datasets store
  arrays = (video, points, example['occluded'][unique])
  for a in arrays:
    a.flags.writeable = False
  return arrays


@functools.lru_cache(maxsize=1)  # one evaluation set per process: every evaluation, predictor and query mode
def _rendered_evaluation_set(num_videos: int, scenes, tracks: int) -> tuple[tuple[np.ndarray, ...], ...]:
  from tapir.data import synthetic  # pylint: disable=g-import-not-at-top
  return tuple(_rendered_evaluation_scene(seed, scenes, tracks)
               for seed in list(synthetic.EVAL_SEEDS)[:num_videos])


def synthetic_evaluation_set(num_videos: int, query_mode: str, scenes=None, tracks: int = 256):
  """The fixed held-out synthetic videos (seeds 0 ..), as TAP-Vid examples with 'first' or 'strided' queries.

  `scenes` is a `synthetic.SceneConfig` (default: 24 frames at 256x256); `tracks` how many the sampler draws.
  The videos are rendered once per process and kept in memory (the most recent set; 20 videos of 24 x 256² take
  94 MB), so repeated evaluations, predictors and query modes reuse them.
  """
  from tapir.data import synthetic  # pylint: disable=g-import-not-at-top
  from tapir.data import tapvid  # pylint: disable=g-import-not-at-top
  scenes = scenes or synthetic.SceneConfig()
  rendered = _rendered_evaluation_set(num_videos, scenes, tracks)
  for seed, (video, points, occluded) in zip(synthetic.EVAL_SEEDS, rendered):
    yield tapvid.make_example(video, points, occluded, f'synthetic_{seed:04d}', query_mode,
                              resolution=None, source=f'synthetic scene {seed}')


def evaluation_examples(config, query_mode: str):
  """The examples `config.eval` names (a training config), with `query_mode` queries."""
  if config.eval.dataset == 'synthetic':
    # Rendered at eval.synthetic_hw (TAP-Vid scores at 256x256), the model runs at its own resolution.
    return synthetic_evaluation_set(config.eval.num_videos, query_mode,
                                    scene_config(config, tuple(config.eval.synthetic_hw), config.eval.synthetic_kind),
                                    config.eval.tracks)
  if config.eval.dataset == 'realpix':
    from tapir.data import realpix  # pylint: disable=g-import-not-at-top
    h, w = config.eval.synthetic_hw
    clips = realpix.RealPixConfig(height=h, width=w, tracks=config.eval.tracks)
    return realpix.evaluation_examples(config.eval.num_videos, query_mode, clips)
  from tapir.data import tapvid  # pylint: disable=g-import-not-at-top
  return tapvid.open_dataset(config.eval.dataset, config.eval.path, query_mode)
