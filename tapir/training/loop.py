"""The training loop as an importable function: `train_and_evaluate(config, workdir)`.

Resume order: the newest checkpoint in `workdir/checkpoints` (auto-resume), else `config.init_from` (a checkpoint
in either format of `tapir.checkpoint`, e.g. a released one for fine-tuning), else a fresh initialisation. Checkpoints hold the whole train state
(params, Haiku state, optimiser state, step, RNG), are written atomically by orbax and the last
`config.keep_checkpoints` are kept. Only process 0 logs and writes summaries; every process takes part in
checkpointing (orbax coordinates them). At the end, `workdir/tapir_checkpoint.npz` (or `tapnet_checkpoint.npz`)
holds the parameters in our pickle-free format, with the model settings.
"""

import dataclasses
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
from tapir.data import streams
from tapir.models import tapnet
from tapir.tracking import paint
from tapir.training import evaluator as evaluator_lib
from tapir.training import state as training
from tapir.training.state import model_kwargs

Batch = Mapping[str, np.ndarray]


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
    """Starts writing `state` (host arrays) in the background; `wait()` or `close()` waits for it."""
    self._manager.save(step, args=self._ocp.args.StandardSave(state._asdict()))

  def wait(self) -> None:
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


def _consecutive_nonfinite(state: training.TrainState) -> int:
  """Non-finite updates in a row up to this step (optax.apply_if_finite's counter; 0 after a finite one)."""
  return int(np.max(jax.device_get(state.opt_state.notfinite_count)))


HISTORY_FILES = ('train_history.json', 'eval_history.json')


def _truncate_history(path: str, step: int) -> None:
  """Drops the rows of steps after `step` (logged by a run that stopped before checkpointing them)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if json.loads(line)['step'] <= step]
  if len(kept) == len(lines):
    return
  logging.info('%s: dropping %d rows after the restored step %d', path, len(lines) - len(kept), step)
  with open(path + '.tmp', 'w') as f:
    f.writelines(kept)
  os.replace(path + '.tmp', path)


@dataclasses.dataclass
class Timings:
  """Where a run's wall-clock time went, in seconds (returned and logged by `train_and_evaluate`)."""
  total: float = 0.0  # the whole call
  setup: float = 0.0  # building, initialising or restoring the state, the first batch
  first_step: float = 0.0  # the first train step, compilation included
  steps: float = 0.0  # the other train steps, from dispatch to finished
  data_wait: float = 0.0  # the step waited for a batch the prefetcher had not finished
  evaluation: float = 0.0
  checkpoints: float = 0.0
  export: float = 0.0  # waiting for the last checkpoint write, the final .npy export

  def overhead_fraction(self) -> float:
    """Share of the wall time not spent in steady-state train steps."""
    return 1.0 - self.steps / max(self.total, 1e-9)

  def summary(self) -> str:
    parts = ', '.join(f'{k.replace("_", " ")} {v:.1f} s ({100 * v / max(self.total, 1e-9):.1f}%)'
                      for k, v in dataclasses.asdict(self).items() if k != 'total')
    return f'{self.total:.1f} s in all: {parts}'


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
      from `config.data` (`tapir.data.streams.train_batches`).
    evaluate_fn: `(params, state, step) -> metrics`; default `tapir.data.evaluator_lib.make_evaluator(config)`.
      Values that are uint8 [h, w, 3] arrays are images: written to TensorBoard and to
      `workdir/summaries/<key>_<step>.png`.
    stop_at: stop after this step as if pre-empted (checkpointing it); calling again resumes.
  Returns:
    a summary: final step, last logged metrics, last evaluation metrics, path of the exported .npy.
  """

  run_started = time.perf_counter()
  maybe_initialize_distributed(config)
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  kwargs = model_kwargs(config)
  kind = training.model_kind(config)
  model = training.make_model(kwargs, config.train_chunk_size, kind)
  optimizer = training.make_optimizer(config.optimizer, jax.device_count())
  train_data = train_data or (lambda start: streams.train_batches(config, start))
  evaluate_fn = evaluate_fn if evaluate_fn is not None else evaluator_lib.make_evaluator(config)
  writer = evaluator_lib.summary_writer(os.path.join(workdir, 'summaries')) if is_chief else None

  checkpointer = _Checkpointer(os.path.join(workdir, 'checkpoints'), config.keep_checkpoints)
  start_step = checkpointer.latest_step() or 0
  if is_chief:  # rows after the restored step were logged by a run that did not checkpoint them
    for name in HISTORY_FILES:
      _truncate_history(os.path.join(workdir, name), start_step)
  # Batches are made and put on the devices in a background thread, a few steps ahead of the step.
  batches = streams.Prefetcher(train_data(start_step), config.data.get('prefetch', 2), transform=streams.put_on_devices)
  first_batch = next(batches)

  init = jax.pmap(training.make_init(model, optimizer), axis_name=training.AXIS)
  rng = jax.random.PRNGKey(config.seed)
  state = init(_replicate(rng), first_batch)  # same key on every device: identical replicas
  if start_step:
    state = _replicate(checkpointer.restore(start_step, training.unreplicate(state)))
    logging.info('resumed from %s at step %d', workdir, start_step)
  elif config.init_from:
    contents = checkpoint_lib.read_checkpoint(config.init_from)
    params, hk_state = contents.params, contents.state
    if kind == 'tapnet':
      tapnet.check_params(params, hk_state, kwargs)
    else:
      # The one architecture rule: settings stored in the checkpoint must agree with the config's model.
      checkpoint_lib.resolve_model_kwargs(contents.model_kwargs, kwargs, params)
      checkpoint_lib.check_params(params, kwargs)
    host = training.unreplicate(state)
    host = host._replace(params=params, state=hk_state or host.state, opt_state=optimizer.init(params))
    state = _replicate(host)
    logging.info('initialised from %s', config.init_from)

  step_fn = jax.pmap(training.make_train_step(model, optimizer, config.loss, kind), axis_name=training.AXIS,
                     donate_argnums=(0,))
  metrics = {}
  eval_metrics = {}
  batch = first_batch
  step = start_step
  last_step = config.training_steps if stop_at is None else min(stop_at, config.training_steps)
  max_nonfinite = config.optimizer.max_consecutive_nonfinite
  timings = Timings()
  setup_wait = batches.wait_seconds
  loop_started = time.perf_counter()
  timings.setup = loop_started - run_started
  window = (0.0, 0.0, 0)  # (timings.steps, data wait, steps) at the last log line
  try:
    while step < last_step:
      started = time.perf_counter()
      state, device_metrics = step_fn(state, batch)
      step += 1
      nonfinite = _consecutive_nonfinite(state)  # every step: waits for the step (4 bytes), so no extra cost
      if step == start_step + 1:
        timings.first_step = time.perf_counter() - started
      else:
        timings.steps += time.perf_counter() - started
      if nonfinite:
        logging.warning('step %d: non-finite loss or gradients, update skipped (%d in a row; the run stops at %d)',
                        step, nonfinite, max_nonfinite)
      if nonfinite >= max_nonfinite:
        # Skipped updates leave parameters and optimiser moments as they were: this is the last good state.
        host = training.unreplicate(state)
        host = host._replace(opt_state=host.opt_state._replace(
            notfinite_count=np.zeros_like(host.opt_state.notfinite_count)))
        checkpointer.save(step, host)
        checkpointer.wait()
        raise FloatingPointError(
            f'steps {step - nonfinite + 1}..{step}: {nonfinite} non-finite losses or gradients in a row '
            f'(optimizer.max_consecutive_nonfinite={max_nonfinite}); stopped at step {step}. The parameters of '
            f'step {step - nonfinite}, the last finite one, are checkpointed as step {step} in {workdir}.')
      if step % config.log_every_steps == 0 or step == config.training_steps:
        metrics = _host_metrics(device_metrics)
        metrics['learning_rate'] = float(training.learning_rate_schedule(config.optimizer)(step - 1))
        # Train steps only (evaluation, checkpoints and compilation are reported apart, in the final timings).
        waited = batches.wait_seconds - setup_wait
        counted = step - start_step - 1
        busy = timings.steps + waited - window[0] - window[1]
        metrics['steps_per_second'] = ((counted - window[2]) / busy if counted > window[2]
                                       else 1 / max(timings.first_step, 1e-9))
        metrics['data_wait_fraction'] = (waited - window[1]) / busy if busy > 0 else 0.0
        window = (timings.steps, waited, counted)
        rate = (step - start_step) / (time.perf_counter() - loop_started)  # everything included, for the ETA
        if is_chief:
          logging.info('step %d/%d  loss %.4f  (position %.4f  occlusion %.4f  uncertainty %.4f)  %.2f steps/s  '
                       '%.1f%% waiting for data  ETA %s', step, config.training_steps, metrics['loss'],
                       metrics['position_loss'], metrics['occlusion_loss'], metrics['uncertainty_loss'],
                       metrics['steps_per_second'], 100 * metrics['data_wait_fraction'],
                       _format_seconds((config.training_steps - step) / max(rate, 1e-9)))
          with open(os.path.join(workdir, 'train_history.json'), 'a') as f:  # one JSON row per log line
            f.write(json.dumps({'step': step, **metrics}) + '\n')
          if writer:
            for key, value in metrics.items():
              writer.add_scalar(f'train/{key}', value, step)
      if step % config.checkpoint_every_steps == 0 or step == last_step:
        started = time.perf_counter()
        checkpointer.save(step, training.unreplicate(state))  # written in the background
        timings.checkpoints += time.perf_counter() - started
      if evaluate_fn is not None and (step % config.eval.every_steps == 0 or step == config.training_steps):
        started = time.perf_counter()
        host = training.unreplicate(state)
        evaluated = dict(evaluate_fn(host.params, host.state, step))
        images = {k: v for k, v in evaluated.items() if isinstance(v, np.ndarray) and v.ndim == 3}
        eval_metrics = {k: v for k, v in evaluated.items() if k not in images}
        if is_chief:
          logging.info('step %d evaluation: %s', step, json.dumps(eval_metrics, sort_keys=True))
          with open(os.path.join(workdir, 'eval_history.json'), 'a') as f:
            f.write(json.dumps({'step': step, **eval_metrics}) + '\n')
          for key, image in images.items():
            paint.save_image(os.path.join(workdir, 'summaries', f'{key}_{step:07d}.png'), image)
          if writer:
            for key, value in eval_metrics.items():
              if isinstance(value, (int, float)):
                writer.add_scalar(f'eval/{key}', value, step)
            for key, image in images.items():
              writer.add_image(f'eval/{key}', image, step, dataformats='HWC')
        timings.evaluation += time.perf_counter() - started
      if step < last_step:
        batch = next(batches)
  finally:
    batches.close()
    timings.data_wait = batches.wait_seconds - setup_wait

  started = time.perf_counter()
  checkpointer.close()
  host = training.unreplicate(state)
  exported = None
  if config.export_weights and is_chief and step == config.training_steps:
    # Our pickle-free format (`tapir.checkpoint`), self-describing for TAPIR: its settings are stored, so every
    # entry point runs it with the architecture it was trained with. TAP-Net's settings are not TAPIR's: none stored.
    exported = os.path.join(workdir, f'{kind}_checkpoint.npz')
    checkpoint_lib.save_checkpoint(exported, host.params, host.state, global_step=step,
                                   model_kwargs=None if kind == 'tapnet' else kwargs)
  if writer:
    writer.close()
  timings.export = time.perf_counter() - started
  timings.total = time.perf_counter() - run_started
  if is_chief:
    logging.info('time: %s; outside steady-state train steps: %.1f%%', timings.summary(),
                 100 * timings.overhead_fraction())
  return dict(step=step, metrics=metrics, eval=eval_metrics, exported=exported, state=host, timings=timings)


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
