"""Train-state checkpoints (orbax) and the histories that must agree with them.

`Checkpointer` saves and restores the whole unreplicated `TrainState` (params, Haiku state, optimiser state,
step, RNG, the objective's extra state) atomically in `workdir/checkpoints`, keeping the last `keep`; writes run
in the background. `truncate_histories` drops log rows of steps after the restored one, which a run that stopped
before checkpointing them had written, so a resumed run's histories have every step once.
"""

import json
import os

from absl import logging

from tapir.training import state as training

HISTORY_FILES = ('train_history.json', 'eval_history.json')


class Checkpointer:
  """Orbax manager for the (unreplicated) train state."""

  def __init__(self, directory: str, keep: int):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (heavy; only the trainer needs it)
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
