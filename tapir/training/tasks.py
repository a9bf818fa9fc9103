"""The registry of training objectives: `config.task` names one, `get_task(config)` builds it.

Adding an objective is a module with a `tapir.training.task.Task` subclass and one line here; the loop
(`tapir.training.loop`) does not change.
"""

import ml_collections

from tapir.training import task
from tapir.training import task_bootstap
from tapir.training import task_tapir
from tapir.training import task_tapnet

TASKS: dict[str, type[task.Task]] = {
    'tapir': task_tapir.SupervisedTAPIR,
    'tapnet': task_tapnet.SupervisedTAPNet,
    'bootstap': task_bootstap.BootstapTAPIR,
}


def get_task(config: ml_collections.ConfigDict) -> task.Task:
  """The objective `config.task` names ('tapir' when the config has no such field)."""
  name = config.get('task', 'tapir')
  if name not in TASKS:
    raise ValueError(f'config.task must be one of {sorted(TASKS)}; got {name!r}')
  return TASKS[name](config)
