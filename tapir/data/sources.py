"""Where training and evaluation data come from, chosen by a config (`configs/tapir.py`'s `data` and `eval`).

Training sources (`config.data.source`), all yielding batches `[local_devices, per_device_batch, ...]`:
  'synthetic'  built-in procedural scenes (`tapir.data.synthetic`) -> Kubric track conversion. Example i of the
               run is a pure function of (seed, i), so a resumed run sees exactly the data it would have seen.
  'movi_e'     MOVi-E (or panning MOVi-E) from TFDS through the tf.data pipeline (`tapir.data.pipeline`).
  'custom'     any iterable of example dicts (`custom_factory = 'package.module:function'`, called with the
               config, returning the iterable), checked with `tapir.data.validation.validate_example`.
Each process reads its own shard: example indices are interleaved by `jax.process_index()`.

Evaluation (`config.eval`): the held-out synthetic set (`synthetic.EVAL_SEEDS`), or a TAP-Vid reader by name.
"""

import importlib
import itertools
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Mapping

from absl import logging
import jax
import numpy as np

from tapir.data import validation

Batch = dict[str, np.ndarray]
EXAMPLE_KEYS = validation.EXAMPLE_KEYS


def scene_config(config, size=None):
  """The synthetic SceneConfig matching the training clips (at `size` (h, w) if given)."""
  from tapir.data import synthetic  # pylint: disable=g-import-not-at-top
  h, w = size or config.data.train_size
  return synthetic.SceneConfig(height=h, width=w, num_frames=config.data.num_frames,
                               num_static_objects=tuple(config.data.synthetic_static_objects),
                               num_dynamic_objects=tuple(config.data.synthetic_dynamic_objects))


def _track_example(scene: Mapping[str, np.ndarray], seed: int, tracks: int, random_crop: bool,
                   augment: bool) -> dict[str, np.ndarray]:
  """Kubric track conversion of one scene at its own size; the random choices are drawn from `seed`."""
  from tapir.data import pipeline  # pylint: disable=g-import-not-at-top
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


def _batches(examples: Iterator[Mapping[str, np.ndarray]], config, validate: bool) -> Iterator[Batch]:
  devices = jax.local_device_count()
  per_device = config.data.per_device_batch
  while True:
    clips = []
    for _ in range(devices * per_device):
      example = next(examples)
      if validate:
        validation.validate_example(example, num_frames=config.data.num_frames)
      clips.append(example)
    yield {k: np.stack([c[k] for c in clips]).reshape((devices, per_device) + np.shape(clips[0][k]))
           for k in EXAMPLE_KEYS}


def prefetch(iterator: Iterator[Any], size: int = 2) -> Iterator[Any]:
  """Runs `iterator` in a background thread, `size` items ahead (data generation overlaps the train step)."""
  items: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def work():
    try:
      for item in iterator:
        items.put(item)
    except BaseException as e:  # re-raised in the consumer, with its traceback
      items.put(e)
    items.put(done)

  threading.Thread(target=work, daemon=True).start()
  while True:
    item = items.get()
    if item is done:
      return
    if isinstance(item, BaseException):
      raise item
    yield item


def train_batches(config, start_step: int = 0) -> Iterator[Batch]:
  """Batches for steps `start_step`, `start_step + 1`, ... of the run described by `config`."""
  source = config.data.source
  global_batch = jax.device_count() * config.data.per_device_batch
  local_batch = jax.local_device_count() * config.data.per_device_batch
  if source == 'synthetic':
    return prefetch(_batches(synthetic_examples(config, start_step * local_batch), config, validate=False))
  if source == 'custom':
    examples = iter(custom_examples(config))
    skipped = start_step * local_batch
    if skipped:
      logging.info('resuming custom data: skipping %d examples', skipped)
      examples = itertools.islice(examples, skipped, None)
    return prefetch(_batches(examples, config, validate=True))
  if source == 'movi_e':
    from tapir.data import pipeline  # pylint: disable=g-import-not-at-top
    del global_batch
    return pipeline.movi_e_dataset(
        data_dir=config.data.data_dir or None, name=config.data.tfds_name, split='train',
        per_device_batch=config.data.per_device_batch, tracks_to_sample=config.data.tracks_per_clip,
        train_size=tuple(config.data.train_size), shuffle_buffer=config.data.shuffle_buffer,
        random_crop=config.data.random_crop, color_augmentation=config.data.color_augmentation,
        seed=config.seed + start_step)
  raise ValueError(f"unknown data.source {source!r}: use 'synthetic', 'movi_e' or 'custom'")


# --------------------------------------------------------------------------------------------------------
# Evaluation


def synthetic_evaluation_set(num_videos: int, query_mode: str, scenes=None, tracks: int = 256):
  """The fixed held-out synthetic videos (seeds 0 ..), as TAP-Vid examples with 'first' or 'strided' queries.

  `scenes` is a `synthetic.SceneConfig` (default: 24 frames at 256x256); `tracks` how many the sampler draws.
  """
  from tapir.data import synthetic  # pylint: disable=g-import-not-at-top
  from tapir.data import tapvid  # pylint: disable=g-import-not-at-top
  scenes = scenes or synthetic.SceneConfig()
  h, w = scenes.height, scenes.width
  for seed in list(synthetic.EVAL_SEEDS)[:num_videos]:
    scene = synthetic.generate_scene(seed, scenes)
    example = _track_example(scene, seed, tracks, random_crop=False, augment=False)
    video = np.round((example['video'] + 1) / 2 * 255).clip(0, 255).astype(np.uint8)
    # The sampler may draw a pixel twice or pad with repeats: score each track once.
    _, unique = np.unique(example['query_points'], axis=0, return_index=True)
    unique = np.sort(unique)
    points = example['target_points'][unique] / np.array([w, h], np.float32)  # normalised, as datasets store
    yield tapvid.make_example(video, points, example['occluded'][unique], f'synthetic_{seed:04d}', query_mode,
                              resolution=None, source=f'synthetic scene {seed}')


def evaluation_examples(config):
  """The examples `config.eval` names (a training config)."""
  if config.eval.dataset == 'synthetic':
    # Rendered at eval.synthetic_size (TAP-Vid scores at 256x256), the model runs at its own resolution.
    return synthetic_evaluation_set(config.eval.num_videos, config.eval.query_mode,
                                    scene_config(config, tuple(config.eval.synthetic_size)), config.eval.tracks)
  from tapir.data import tapvid  # pylint: disable=g-import-not-at-top
  return tapvid.open_dataset(config.eval.dataset, config.eval.path, config.eval.query_mode)


def model_predictor(params, state, model_kwargs: Mapping[str, Any], chunk_size: int = 64):
  """`predict(video uint8, queries) -> (tracks, occluded)` for `tapir.evaluation.evaluate`."""
  from tapir import inference  # pylint: disable=g-import-not-at-top
  tracker = inference.Tracker(params, state, model_kwargs, query_chunk_size=chunk_size)

  def predict(video, query_points):
    out = tracker.predict(video, query_points, resize_to=tracker.resolution)
    return out.tracks, ~out.visible

  return predict


def make_evaluator(config) -> Callable[[Any, Any, int], dict[str, Any]]:
  """`(params, state, step) -> mean metrics` on `config.eval`'s dataset, plus 'tracks_image'.

  Also reports the zero-motion baseline's AJ, occlusion accuracy and <delta^x_avg> on the same videos
  ('baseline_*'; computed once).

  'tracks_image' (uint8 [h, w, 3]) paints the first video's predicted and ground-truth tracks side by side
  (`tapir.viz.track_strip`); the trainer writes it to TensorBoard and the work directory.
  """
  from tapir import evaluation  # pylint: disable=g-import-not-at-top
  from tapir import trainer  # pylint: disable=g-import-not-at-top
  from tapir import viz  # pylint: disable=g-import-not-at-top

  baseline = {}

  def evaluate(params, state, step):
    del step
    predict = model_predictor(params, state, trainer.model_kwargs(config), config.eval.chunk_size)
    first = []  # (example, tracks, occluded) of the first video

    def remember(examples):
      for example in examples:
        if not first:
          first.append(example)
        yield example

    def predict_and_remember(video, query_points):
      tracks, occluded = predict(video, query_points)
      if len(first) == 1:
        first.extend([tracks, occluded])
      return tracks, occluded

    result = evaluation.evaluate(predict_and_remember, remember(evaluation_examples(config)),
                                 config.eval.query_mode, progress=False)
    out: dict[str, Any] = {k: float(v) for k, v in result.mean.items()}
    if not baseline:  # the zero-motion baseline on the same videos, once
      scored = evaluation.evaluate(evaluation.zero_motion_predictor, evaluation_examples(config),
                                   config.eval.query_mode, progress=False)
      baseline.update({'baseline_' + k: float(scored.mean[k]) for k in ('average_jaccard', 'occlusion_accuracy',
                                                                          'average_pts_within_thresh')})
    out.update(baseline)
    if len(first) == 3:
      example, tracks, occluded = first
      out['tracks_image'] = viz.track_strip(example.video, tracks, ~occluded, example.target_points,
                                            ~example.occluded)
    return out

  return evaluate


def summary_writer(directory: str):
  """A TensorBoard event-file writer (tensorboardX), or None if it is not installed."""
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('tensorboardX is not installed: no TensorBoard summaries (pip install tensorboardX)')
    return None
  return tensorboardX.SummaryWriter(directory)
