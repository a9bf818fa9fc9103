"""Train-state checkpoints (orbax) and the histories that must agree with them.

`Checkpointer` saves and restores the whole unreplicated `TrainState` (params, Haiku state, optimiser state,
step, RNG, the objective's extra state) in `workdir/checkpoints`, keeping the last `keep`; writes run in the
background. `truncate_histories` drops log rows of steps after the restored one, which a run that stopped
before checkpointing them had written, so a resumed run's histories have every step once.

Faults:
  * A write is atomic: orbax writes `<step>.orbax-checkpoint-tmp`, renamed to `<step>` once complete, so a
    process killed mid-write (kill -9, power loss) leaves a tmp folder that is never read (and is replaced when
    that step is written again) and the previous checkpoints as they were.
  * A broken checkpoint (a file of it truncated or deleted, or other damage) is skipped on restore:
    `restore_latest` tries the newest first and, once an older one restores, moves each newer one that failed
    aside to `<step>.broken` (kept for inspection, never read again; delete it by hand) with a warning naming
    it. If checkpoints exist and none restores, it raises `CheckpointRestoreError` naming the directory and each
    problem and moves nothing: that is more often a config that does not match them than damage, and the run
    must never silently restart from scratch.
  * A failed write (disk full, read-only or vanished directory, ...) raises `CheckpointWriteError`, naming the
    step, the cause and the newest intact checkpoint. Checkpoints are dropped only after a newer one is
    complete, so the previous ones are untouched and a restart resumes from the newest. The error is raised
    where it is found: writes run in the background, so when the next write starts, at `wait()` or at
    `close()`, at most `checkpoint_every_steps` later. Stopping, rather than warning and going on, is deliberate:
    a run that goes on without checkpoints risks every step since the last one, and a warning is easily missed.
"""

import json
import os
from typing import NoReturn

from absl import logging
import jax
from jax.experimental import multihost_utils

from tapir.training import reporting
from tapir.training import state as training

HISTORY_FILES = ('train_history.json', 'eval_history.json', reporting.SKIPPED_FILE)
BROKEN_SUFFIX = '.broken'


class CheckpointRestoreError(RuntimeError):
  """Checkpoints exist but none of them can be restored."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (the previous ones are intact)."""


class Checkpointer:
  """Orbax manager for the (unreplicated) train state, with the fault handling of the module docstring."""

  def __init__(self, directory: str, keep: int):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (heavy; only the trainer needs it)
    self._ocp = ocp
    self.directory = os.path.abspath(directory)
    self._keep = keep
    self._writing: int | None = None  # the step whose background write has not been checked yet
    self._manager = self._open()

  def _open(self):
    return self._ocp.CheckpointManager(
        self.directory, options=self._ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True))

  def _reopen(self) -> None:
    """A fresh manager: one that failed to restore can fail on the next, good, checkpoint too."""
    try:
      self._manager.close()
    except Exception:  # pylint: disable=broad-except  # it is being replaced because it is in a bad state
      logging.exception('closing the checkpoint manager of %s', self.directory)
    self._manager = self._open()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: training.TrainState) -> None:
    """Starts writing `state` (host arrays) in the background; `wait()` or `close()` waits for it.

    Raises:
      CheckpointWriteError: this write, or the previous one (found now), failed; or a checkpoint of `step` or a
        later step is already in the directory (orbax would skip the write without a word).
    """
    self.wait()
    try:
      saved = self._manager.save(step, args=self._ocp.args.StandardSave(state._asdict()))
    except Exception as e:  # pylint: disable=broad-except  # re-raised, named
      self._failed(step, e)
    if not saved:
      raise CheckpointWriteError(
          f'checkpoint {step} was not written to {self.directory}: it already holds steps {self.all_steps()}, '
          'and orbax writes only steps after the newest')
    self._writing = step

  def wait(self) -> None:
    """Waits for the background write; raises CheckpointWriteError if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  # re-raised, named
      self._failed(self._writing, e)
    self._writing = None

  def _failed(self, step: int | None, error: Exception) -> NoReturn:
    self._writing = None
    self._manager.reload()  # orbax dropped steps from its list in anticipation of the write
    intact = self.latest_step()
    raise CheckpointWriteError(
        f'writing checkpoint {step} to {self.directory} failed: {type(error).__name__}: {error}. '
        + (f'The newest intact checkpoint is step {intact} (untouched); running again resumes from it.'
           if intact is not None else 'There is no earlier checkpoint.')) from error

  def restore(self, step: int, like: training.TrainState) -> training.TrainState:
    restored = self._manager.restore(step, args=self._ocp.args.StandardRestore(like._asdict()))
    return training.TrainState(**restored)

  def restore_latest(self, like: training.TrainState) -> tuple[int, training.TrainState] | None:
    """The newest checkpoint that restores, as (step, state); None if there are none.

    Newer ones that fail are moved aside to `<step>.broken` with a warning (module docstring). Every process
    must call it (multi-process: they check that they agree on the step).

    Raises:
      CheckpointRestoreError: checkpoints exist and none restores (nothing is moved), or processes disagree.
    """
    steps = self.all_steps()
    problems = []
    for step in reversed(steps):
      try:
        state = self.restore(step, like)
      except Exception as e:  # pylint: disable=broad-except  # any damage shows differently; all are reported
        problems.append((step, e))
        logging.warning('checkpoint %s does not restore (%s: %s); trying an older one',
                        os.path.join(self.directory, str(step)), type(e).__name__, e)
        self._reopen()
        continue
      self._agree(step)
      if problems:
        self._set_aside([s for s, _ in problems], step)
      return step, state
    if problems:
      listed = '\n'.join(f'  step {s}: {type(e).__name__}: {e}' for s, e in problems)
      raise CheckpointRestoreError(
          f'none of the checkpoints in {self.directory} (steps {steps}) can be restored; the run stops rather '
          f'than start again from scratch. Nothing was moved or deleted. Problems:\n{listed}\nIf the config '
          'changed, use the one they were written with; if they are damaged, move them away to start afresh.')
    return None

  def _agree(self, step: int) -> None:
    if jax.process_count() > 1:
      multihost_utils.assert_equal(step, f'processes restored different checkpoints of {self.directory}')

  def _set_aside(self, broken: list[int], restored: int) -> None:
    """Renames each broken step folder to `<step>.broken` (process 0, once every process is done reading)."""
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('tapir.checkpointing: restored')
    if jax.process_index() == 0:
      for step in broken:
        source = os.path.join(self.directory, str(step))
        target, n = source + BROKEN_SUFFIX, 1
        while os.path.exists(target):
          target, n = f'{source}{BROKEN_SUFFIX}.{n}', n + 1
        try:
          os.rename(source, target)
        except OSError as e:
          raise CheckpointRestoreError(
              f'checkpoint {source} is broken and could not be moved aside to {target}: {e}. Move or delete it '
              'by hand; orbax would not write steps before it') from e
        logging.warning('checkpoint %s is broken: moved it to %s and resumed from step %d (the newest that '
                        'restores); delete it once inspected', source, target, restored)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('tapir.checkpointing: set aside')
    self._manager.reload()

  def close(self) -> None:
    """Waits for the background write (CheckpointWriteError if it failed) and closes the manager."""
    self.wait()
    self._manager.close()


def truncate_history(path: str, step: int) -> None:
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


def truncate_histories(workdir: str, step: int) -> None:
  for name in HISTORY_FILES:
    truncate_history(os.path.join(workdir, name), step)
