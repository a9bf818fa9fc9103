"""The training loop as an importable function: `train_and_evaluate(config, workdir)`, for any objective.

The objective is `config.task` (`tapir.training.tasks`): it gives the init and update functions, the batches,
the evaluation predictor and the export; this module only orchestrates (`tapir.training.task`).

Resume order: the newest checkpoint in `workdir/checkpoints` that restores (auto-resume; newer broken ones are
moved aside to `<step>.broken`; if none restores, the run stops with an error), else `config.init_from` (a
checkpoint in any format of `tapir.checkpoint`, e.g. a released one for fine-tuning), else a fresh initialisation.
Checkpoints hold the whole train state (params, Haiku state, optimiser state, step, RNG, the objective's extra
state), are written atomically by orbax and the last `config.keep_checkpoints` are kept
(`tapir.training.checkpointing`, which also says what happens to broken checkpoints and failed writes).
SIGTERM / SIGINT stop the run after a checkpoint of the step in flight (`tapir.training.preemption`). Several
CPU devices with too few XLA threads for them get a warning (`tapir.training.cpu_devices`). Bad
training examples are skipped by the stream (`tapir.data.bad_examples`): each is listed in
`workdir/skipped_examples.json` with its step, and the log's `skipped_examples` counts them. Only
process 0 logs and writes summaries (`tapir.training.reporting`); every process takes part in checkpointing. At
the end, `workdir/<family>_checkpoint.npz` holds the weights in our pickle-free format with the model family and
settings.
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
from tapir.data import bad_examples
from tapir.data import streams
from tapir.training import checkpointing
from tapir.training import cpu_devices
from tapir.training import evaluator as evaluator_lib
from tapir.training import preemption
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


def _split(batch) -> tuple[dict, tuple]:
  """A stream's batch -> (the arrays for the step, its skipped examples: `tapir.data.bad_examples`)."""
  batch = dict(batch)
  return batch, tuple(batch.pop(streams.SKIPPED_KEY, ()))


def _resume(checkpointer, state, start_step: int, make_batches, batches, batch):
  """Restores the newest checkpoint that restores into `state` (replicated); returns (step, state, batches, batch).

  `batches` / `batch` (its first) were made for `start_step`, the newest checkpoint's; when that one was broken
  and an older one restored (`Checkpointer.restore_latest`), they are made again for the restored step.
  """
  step, host = checkpointer.restore_latest(training.unreplicate(state))
  if step != start_step:
    batches.close()
    batches = make_batches(step)
    batch = _split(next(batches))
  logging.info('resumed from %s at step %d', checkpointer.directory, step)
  return step, training.replicate(host), batches, batch


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    train_data: Callable[[int], Iterator[Batch]] | None = None,
    evaluate_fn: Callable[[Any, Any, int], Mapping[str, Any]] | None = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
  """Trains `config.training_steps` steps of `config.task` (resuming if `workdir` has checkpoints).

  SIGTERM or SIGINT (pre-emption, Ctrl-C) stops the run cleanly: the step in flight is finished and
  checkpointed (and logged and evaluated if due), the write is waited for, and the call returns with
  `stopped_by` set; all processes stop after the same step (`tapir.training.preemption`). Calling again resumes.

  Args:
    config: a configs/tapir.py (or tapnet.py, ...) config.
    workdir: checkpoints, summaries, histories and the exported weights go here.
    train_data: `start_step -> iterator of batches` ([local_devices, per_device_batch, ...] arrays); default
      the task's (`Task.train_batches`).
    evaluate_fn: `(params, state, step) -> metrics`; default `tapir.training.evaluator.make_evaluator`. Values
      that are uint8 [h, w, 3] arrays are images (`tapir.training.reporting.Reporter.evaluation`).
    stop_at: stop after this step as if pre-empted (checkpointing it); calling again resumes.
  Returns:
    a summary: final step, last logged metrics, last evaluation metrics, path of the export, state, timings,
    `stopped_by` (the signal's name if a signal stopped the run, else None).
  Raises:
    FloatingPointError: too many non-finite steps in a row (the last good state is checkpointed first).
    tapir.training.checkpointing.CheckpointRestoreError: checkpoints exist and none restores.
    tapir.training.checkpointing.CheckpointWriteError: a checkpoint could not be written.
    tapir.data.bad_examples.TooManyBadExamples: the training data had more bad examples than
      `data.max_skipped_share` allows (the steps done are checkpointed first).
  """
  timings = reporting.Timings()
  run_started = time.perf_counter()
  config_fields.reject_renamed(config, config_fields.TRAINING_RENAMES)
  maybe_initialize_distributed(config)  # first: it installs JAX's native SIGTERM notifier, which we stack on
  if (pool_warning := cpu_devices.thread_pool_warning(jax.local_devices())) is not None:
    logging.warning('%s', pool_warning)
  with preemption.StopSignals() as signals:
    os.makedirs(workdir, exist_ok=True)
    task = tasks.get_task(config)
    optimizer = training.make_optimizer(config.optimizer, jax.device_count())
    evaluate_fn = evaluate_fn if evaluate_fn is not None else evaluator_lib.make_evaluator(config, task)
    reporter = reporting.Reporter(workdir, jax.process_index() == 0)
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), config.keep_checkpoints)
    start_step = checkpointer.latest_step() or 0
    # Batches are made and put on the devices in a background thread, a few steps ahead of the step.
    make_batches = lambda start: streams.Prefetcher((train_data or task.train_batches)(start),
                                                    config.data.get('prefetch', 2), transform=streams.put_on_devices)
    batches, setup_wait = make_batches(start_step), 0.0
    try:
      batch = _split(next(batches))  # (arrays, skipped examples)
      state = jax.pmap(task.make_init(optimizer), axis_name=training.AXIS)(
          training.replicate(jax.random.PRNGKey(config.seed)), batch[0])  # same key everywhere: identical replicas
      if start_step:
        start_step, state, batches, batch = _resume(checkpointer, state, start_step, make_batches, batches, batch)
      elif config.init_from:
        state = training.replicate(task.init_from(training.unreplicate(state), config.init_from, optimizer))
        logging.info('initialised from %s', config.init_from)
      if reporter.is_chief:  # rows after the restored step were logged by a run that did not checkpoint them
        checkpointing.truncate_histories(workdir, start_step)
      skipped = reporter.skipped_count()  # bad examples skipped in the steps done (process 0's)
      step_fn = jax.pmap(training.make_step(task.make_update(optimizer)), axis_name=training.AXIS,
                         donate_argnums=(0,))
      metrics, eval_metrics, step, stopped_by = {}, {}, start_step, None
      last_step = config.training_steps if stop_at is None else min(stop_at, config.training_steps)
      limit = config.optimizer.max_consecutive_nonfinite
      setup_wait, meter = batches.wait_seconds, reporting.RateMeter(start_step)
      loop_started = time.perf_counter()
      timings.setup = loop_started - run_started
      while step < last_step:
        started = time.perf_counter()
        state, device_metrics = step_fn(state, batch[0])
        step += 1
        if batch[1]:
          reporter.skipped(step, batch[1])
          skipped += len(batch[1])
        nonfinite = training.consecutive_nonfinite(state.opt_state)  # waits for the step (4 bytes): no extra cost
        if step == start_step + 1:
          timings.first_step = time.perf_counter() - started
        else:
          timings.steps += time.perf_counter() - started
        if step < last_step:  # multi-process a collective: every process calls it after the same steps
          stopped_by = signals.agreed(step) or None
        if nonfinite:
          logging.warning('step %d: non-finite loss or gradients, update skipped (%d in a row; the run stops at %d)',
                          step, nonfinite, limit)
        if nonfinite >= limit:
          _stop_nonfinite(checkpointer, state, step, nonfinite, workdir, limit)
        if step % config.log_every_steps == 0 or step == config.training_steps:
          metrics = reporting.host_metrics(jax.device_get(device_metrics))
          metrics['learning_rate'] = float(training.learning_rate_schedule(config.optimizer)(step - 1))
          metrics['skipped_examples'] = skipped
          metrics.update(meter.rates(step, timings, batches.wait_seconds - setup_wait))
          rate = (step - start_step) / (time.perf_counter() - loop_started)  # everything included, for the ETA
          reporter.train(step, config.training_steps, metrics, (config.training_steps - step) / max(rate, 1e-9))
        if step % config.checkpoint_every_steps == 0 or step == last_step or stopped_by:
          with _timed(timings, 'checkpoints'):
            checkpointer.save(step, training.unreplicate(state))  # written in the background
        if evaluate_fn is not None and (step % config.eval.every_steps == 0 or step == config.training_steps):
          with _timed(timings, 'evaluation'):  # overlaps the checkpoint write
            host = training.unreplicate(state)
            eval_metrics = reporter.evaluation(step, evaluate_fn(host.params, host.state, step))
        if stopped_by:
          with _timed(timings, 'checkpoints'):
            checkpointer.wait()
          logging.warning('%s: stopped at step %d of %d; checkpoint %d is complete in %s. Run again with the same '
                          'workdir to resume.', stopped_by, step, config.training_steps, step,
                          checkpointer.directory)
          break
        if step < last_step:
          try:
            batch = _split(next(batches))
          except bad_examples.TooManyBadExamples:
            with _timed(timings, 'checkpoints'):  # keep the steps done before stopping
              checkpointer.save(step, training.unreplicate(state))
              checkpointer.wait()
            raise
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
  return dict(step=step, metrics=metrics, eval=eval_metrics, exported=exported, state=host, timings=timings,
              stopped_by=stopped_by)
