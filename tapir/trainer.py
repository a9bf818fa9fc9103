"""The training loop as an importable function: `train_and_evaluate(config, workdir)`.

Resume order: the newest checkpoint in `workdir/checkpoints` (auto-resume), else `config.init_from` (an official
.npy checkpoint, e.g. for fine-tuning), else a fresh initialisation. Checkpoints hold the whole train state
(params, Haiku state, optimiser state, step, RNG), are written atomically by orbax and the last
`config.keep_checkpoints` are kept. Only process 0 logs and writes summaries; every process takes part in
checkpointing (orbax coordinates them). At the end, `workdir/tapir_checkpoint.npy` holds the parameters in the
official format.
"""

import json
import os
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tapir import checkpoint as checkpoint_lib
from tapir import training
from tapir import viz

Batch = Mapping[str, np.ndarray]


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  kwargs = config.model.to_dict()
  for key in ('blocks_per_group', 'initial_resolution'):
    kwargs[key] = tuple(kwargs[key])
  return kwargs


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize` when asked (on TPU pods the arguments are discovered automatically)."""
  d = config.distributed
  if not d.initialize:
    return
  if d.cpu_collectives:
    jax.config.update('jax_cpu_collectives_implementation', d.cpu_collectives)
  kwargs = {}
  if d.coordinator_address:
    kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                  process_id=d.process_id)
  jax.distributed.initialize(**kwargs)
  logging.info('process %d of %d, %d local / %d global devices', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


class _Checkpointer:
  """Orbax manager for the (unreplicated) train state."""

  def __init__(self, directory: str, keep: int):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self._ocp = ocp
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: training.TrainState) -> None:
    self._manager.save(step, args=self._ocp.args.StandardSave(state._asdict()))
    self._manager.wait_until_finished()

  def restore(self, step: int, like: training.TrainState) -> training.TrainState:
    restored = self._manager.restore(step, args=self._ocp.args.StandardRestore(like._asdict()))
    return training.TrainState(**restored)

  def close(self):
    self._manager.close()


def _replicate(tree):
  """One copy per local device, stacked on a leading axis (what pmap takes)."""
  n = jax.local_device_count()
  return jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * n), tree)


def _host_metrics(metrics) -> dict[str, float]:
  return {k: float(np.asarray(v)[0]) for k, v in jax.device_get(metrics).items()}


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    train_data: Callable[[int], Iterator[Batch]] | None = None,
    evaluate_fn: Callable[[Any, Any, int], Mapping[str, float]] | None = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
  """Trains `config.training_steps` steps (resuming if `workdir` has checkpoints).

  Args:
    config: a configs/tapir.py config.
    workdir: checkpoints, summaries and the exported .npy go here.
    train_data: `start_step -> iterator of batches` ([local_devices, per_device_batch, ...] arrays); default
      from `config.data` (`tapir.data.sources.train_batches`).
    evaluate_fn: `(params, state, step) -> metrics`; default `tapir.data.sources.make_evaluator(config)`.
      Values that are uint8 [h, w, 3] arrays are images: written to TensorBoard and to
      `workdir/summaries/<key>_<step>.png`.
    stop_at: stop after this step as if pre-empted (checkpointing it); calling again resumes.
  Returns:
    a summary: final step, last logged metrics, last evaluation metrics, path of the exported .npy.
  """
  from tapir.data import sources  # pylint: disable=g-import-not-at-top

  maybe_initialize_distributed(config)
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  kwargs = model_kwargs(config)
  model = training.make_model(kwargs, config.train_chunk_size)
  optimizer = training.make_optimizer(config.optimizer, jax.device_count())
  train_data = train_data or (lambda start: sources.train_batches(config, start))
  evaluate_fn = evaluate_fn if evaluate_fn is not None else sources.make_evaluator(config)
  writer = sources.summary_writer(os.path.join(workdir, 'summaries')) if is_chief else None

  checkpointer = _Checkpointer(os.path.join(workdir, 'checkpoints'), config.keep_checkpoints)
  start_step = checkpointer.latest_step() or 0
  batches = train_data(start_step)
  first_batch = next(batches)

  init = jax.pmap(training.make_init(model, optimizer), axis_name=training.AXIS)
  rng = jax.random.PRNGKey(config.seed)
  state = init(_replicate(rng), first_batch)  # same key on every device: identical replicas
  if start_step:
    state = _replicate(checkpointer.restore(start_step, training.unreplicate(state)))
    logging.info('resumed from %s at step %d', workdir, start_step)
  elif config.init_from:
    params, hk_state = checkpoint_lib.load_checkpoint(config.init_from)
    checkpoint_lib.check_params(params, kwargs)
    host = training.unreplicate(state)
    host = host._replace(params=params, state=hk_state or host.state, opt_state=optimizer.init(params))
    state = _replicate(host)
    logging.info('initialised from %s', config.init_from)

  step_fn = jax.pmap(training.make_train_step(model, optimizer, config.loss), axis_name=training.AXIS,
                     donate_argnums=(0,))
  metrics = {}
  eval_metrics = {}
  batch = first_batch
  step = start_step
  started = time.time()
  last_step = config.training_steps if stop_at is None else min(stop_at, config.training_steps)
  while step < last_step:
    state, device_metrics = step_fn(state, batch)
    step += 1
    if step % config.log_every_steps == 0 or step == config.training_steps:
      metrics = _host_metrics(device_metrics)
      metrics['learning_rate'] = float(training.learning_rate_schedule(config.optimizer)(step - 1))
      if not np.isfinite(metrics['loss']):
        logging.warning('step %d: non-finite loss (update skipped; %d skipped so far)', step,
                        int(metrics['nonfinite_updates']))
      elapsed = time.time() - started
      rate = (step - start_step) / elapsed
      if is_chief:
        logging.info('step %d/%d  loss %.4f  (position %.4f  occlusion %.4f  uncertainty %.4f)  %.2f steps/s  '
                     'ETA %s', step, config.training_steps, metrics['loss'], metrics['position_loss'],
                     metrics['occlusion_loss'], metrics['uncertainty_loss'], rate,
                     _format_seconds((config.training_steps - step) / max(rate, 1e-9)))
        with open(os.path.join(workdir, 'train_history.json'), 'a') as f:  # one JSON row per log line
          f.write(json.dumps({'step': step, **metrics}) + '\n')
        if writer:
          for key, value in metrics.items():
            writer.add_scalar(f'train/{key}', value, step)
    if step % config.checkpoint_every_steps == 0 or step == last_step:
      checkpointer.save(step, training.unreplicate(state))
    if evaluate_fn is not None and (step % config.eval.every_steps == 0 or step == config.training_steps):
      host = training.unreplicate(state)
      evaluated = dict(evaluate_fn(host.params, host.state, step))
      images = {k: v for k, v in evaluated.items() if isinstance(v, np.ndarray) and v.ndim == 3}
      eval_metrics = {k: v for k, v in evaluated.items() if k not in images}
      if is_chief:
        logging.info('step %d evaluation: %s', step, json.dumps(eval_metrics, sort_keys=True))
        with open(os.path.join(workdir, 'eval_history.json'), 'a') as f:
          f.write(json.dumps({'step': step, **eval_metrics}) + '\n')
        for key, image in images.items():
          viz.save_image(os.path.join(workdir, 'summaries', f'{key}_{step:07d}.png'), image)
        if writer:
          for key, value in eval_metrics.items():
            if isinstance(value, (int, float)):
              writer.add_scalar(f'eval/{key}', value, step)
          for key, image in images.items():
            writer.add_image(f'eval/{key}', image, step, dataformats='HWC')
    if step < last_step:
      batch = next(batches)

  checkpointer.close()
  host = training.unreplicate(state)
  exported = None
  if config.export_npy and is_chief and step == config.training_steps:
    exported = os.path.join(workdir, 'tapir_checkpoint.npy')
    checkpoint_lib.save_checkpoint(exported, host.params, host.state, global_step=step,
                                   **{checkpoint_lib.MODEL_KWARGS_KEY: kwargs})
  if writer:
    writer.close()
  return dict(step=step, metrics=metrics, eval=eval_metrics, exported=exported, state=host)


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
