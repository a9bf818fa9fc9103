"""The training loop as an importable function: `train_and_evaluate(config, workdir)`, for any objective.

The objective is `config.task` (`tapir.training.tasks`): it gives the init and update functions, the batches,
the evaluation predictor and the export; this module only orchestrates (`tapir.training.task`).

Resume order: the newest checkpoint in `workdir/checkpoints` (auto-resume), else `config.init_from` (a checkpoint
in any format of `tapir.checkpoint`, e.g. a released one for fine-tuning), else a fresh initialisation.
Checkpoints hold the whole train state (params, Haiku state, optimiser state, step, RNG, the objective's extra
state), are written atomically by orbax and the last `config.keep_checkpoints` are kept
(`tapir.training.checkpointing`). Only process 0 logs and writes summaries (`tapir.training.reporting`); every
process takes part in checkpointing. At the end, `workdir/<family>_checkpoint.npz` holds the weights in our
pickle-free format with the model family and settings.
"""

import contextlib
import os
import time
from typing import Any, Callable, Iterator, Mapping

from absl import logging
import jax
import ml_collections
import numpy as np

from tapir import config_fields
from tapir.data import streams
from tapir.training import checkpointing
from tapir.training import evaluator as evaluator_lib
from tapir.training import reporting
from tapir.training import state as training
from tapir.training import tasks
from tapir.training.state import model_kwargs  # pylint: disable=unused-import  (the config's model settings)

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


def _stop_nonfinite(checkpointer, state, step: int, nonfinite: int, workdir: str, limit: int) -> None:
  """Checkpoints the last good state (skipped updates left it as it was) and raises FloatingPointError."""
  host = training.unreplicate(state)
  host = host._replace(opt_state=host.opt_state._replace(
      notfinite_count=np.zeros_like(host.opt_state.notfinite_count)))
  checkpointer.save(step, host)
  checkpointer.wait()
  raise FloatingPointError(
      f'steps {step - nonfinite + 1}..{step}: {nonfinite} non-finite losses or gradients in a row '
      f'(optimizer.max_consecutive_nonfinite={limit}); stopped at step {step}. The parameters of '
      f'step {step - nonfinite}, the last finite one, are checkpointed as step {step} in {workdir}.')


@contextlib.contextmanager
def _timed(timings: reporting.Timings, field: str):
  """Adds the seconds spent in the `with` block to `timings.<field>`."""
  started = time.perf_counter()
  try:
    yield
  finally:
    setattr(timings, field, getattr(timings, field) + time.perf_counter() - started)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    train_data: Callable[[int], Iterator[Batch]] | None = None,
    evaluate_fn: Callable[[Any, Any, int], Mapping[str, Any]] | None = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
  """Trains `config.training_steps` steps of `config.task` (resuming if `workdir` has checkpoints).

  Args:
    config: a configs/tapir.py (or tapnet.py, ...) config.
    workdir: checkpoints, summaries, histories and the exported weights go here.
    train_data: `start_step -> iterator of batches` ([local_devices, per_device_batch, ...] arrays); default
      the task's (`Task.train_batches`).
    evaluate_fn: `(params, state, step) -> metrics`; default `tapir.training.evaluator.make_evaluator`. Values
      that are uint8 [h, w, 3] arrays are images (`tapir.training.reporting.Reporter.evaluation`).
    stop_at: stop after this step as if pre-empted (checkpointing it); calling again resumes.
  Returns:
    a summary: final step, last logged metrics, last evaluation metrics, path of the export, state, timings.
  """
  timings = reporting.Timings()
  run_started = time.perf_counter()
  config_fields.reject_renamed(config, config_fields.TRAINING_RENAMES)
  maybe_initialize_distributed(config)
  os.makedirs(workdir, exist_ok=True)
  task = tasks.get_task(config)
  optimizer = training.make_optimizer(config.optimizer, jax.device_count())
  evaluate_fn = evaluate_fn if evaluate_fn is not None else evaluator_lib.make_evaluator(config, task)
  reporter = reporting.Reporter(workdir, jax.process_index() == 0)
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), config.keep_checkpoints)
  start_step = checkpointer.latest_step() or 0
  if reporter.is_chief:  # rows after the restored step were logged by a run that did not checkpoint them
    checkpointing.truncate_histories(workdir, start_step)
  # Batches are made and put on the devices in a background thread, a few steps ahead of the step.
  batches = streams.Prefetcher((train_data or task.train_batches)(start_step), config.data.get('prefetch', 2),
                               transform=streams.put_on_devices)
  batch = next(batches)
  state = jax.pmap(task.make_init(optimizer), axis_name=training.AXIS)(
      training.replicate(jax.random.PRNGKey(config.seed)), batch)  # same key on every device: identical replicas
  if start_step:
    state = training.replicate(checkpointer.restore(start_step, training.unreplicate(state)))
    logging.info('resumed from %s at step %d', workdir, start_step)
  elif config.init_from:
    state = training.replicate(task.init_from(training.unreplicate(state), config.init_from, optimizer))
    logging.info('initialised from %s', config.init_from)
  step_fn = jax.pmap(training.make_step(task.make_update(optimizer)), axis_name=training.AXIS, donate_argnums=(0,))
  metrics, eval_metrics, step = {}, {}, start_step
  last_step = config.training_steps if stop_at is None else min(stop_at, config.training_steps)
  limit = config.optimizer.max_consecutive_nonfinite
  setup_wait, meter = batches.wait_seconds, reporting.RateMeter(start_step)
  loop_started = time.perf_counter()
  timings.setup = loop_started - run_started
  try:
    while step < last_step:
      started = time.perf_counter()
      state, device_metrics = step_fn(state, batch)
      step += 1
      nonfinite = training.consecutive_nonfinite(state.opt_state)  # waits for the step (4 bytes): no extra cost
      if step == start_step + 1:
        timings.first_step = time.perf_counter() - started
      else:
        timings.steps += time.perf_counter() - started
      if nonfinite:
        logging.warning('step %d: non-finite loss or gradients, update skipped (%d in a row; the run stops at %d)',
                        step, nonfinite, limit)
      if nonfinite >= limit:
        _stop_nonfinite(checkpointer, state, step, nonfinite, workdir, limit)
      if step % config.log_every_steps == 0 or step == config.training_steps:
        metrics = reporting.host_metrics(jax.device_get(device_metrics))
        metrics['learning_rate'] = float(training.learning_rate_schedule(config.optimizer)(step - 1))
        metrics.update(meter.rates(step, timings, batches.wait_seconds - setup_wait))
        rate = (step - start_step) / (time.perf_counter() - loop_started)  # everything included, for the ETA
        reporter.train(step, config.training_steps, metrics, (config.training_steps - step) / max(rate, 1e-9))
      if step % config.checkpoint_every_steps == 0 or step == last_step:
        with _timed(timings, 'checkpoints'):
          checkpointer.save(step, training.unreplicate(state))  # written in the background
      if evaluate_fn is not None and (step % config.eval.every_steps == 0 or step == config.training_steps):
        with _timed(timings, 'evaluation'):
          host = training.unreplicate(state)
          eval_metrics = reporter.evaluation(step, evaluate_fn(host.params, host.state, step))
      if step < last_step:
        batch = next(batches)
  finally:
    batches.close()
    timings.data_wait = batches.wait_seconds - setup_wait

  with _timed(timings, 'export'):
    checkpointer.close()
    host = training.unreplicate(state)
    exported = None
    if config.export_weights and reporter.is_chief and step == config.training_steps:
      exported = os.path.join(workdir, f'{task.family}_checkpoint.npz')
      task.export(host, exported, step)
  timings.total = time.perf_counter() - run_started
  reporter.close(timings)
  return dict(step=step, metrics=metrics, eval=eval_metrics, exported=exported, state=host, timings=timings)
