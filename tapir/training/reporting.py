"""What a training run reports: the log line, the JSON histories, TensorBoard, evaluation images, timings.

Only process 0 writes (`Reporter(..., is_chief)`). The log line and `train_history.json` carry whatever metrics
the objective's step returns (`tapir.training.task`), plus 'learning_rate', 'steps_per_second',
'data_wait_fraction' and 'skipped_examples' (bad training examples skipped so far, each listed with its step in
`skipped_examples.json`: `tapir.data.bad_examples`); evaluation values that are uint8 [h, w, 3] arrays are
images, written to TensorBoard and to `workdir/summaries/<key>_<step>.png`, the rest to `eval_history.json`.
"""

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from tapir.tracking import paint

SKIPPED_FILE = 'skipped_examples.json'  # one JSON row per skipped training example: step, source, reason


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
  export: float = 0.0  # waiting for the last checkpoint write, the final export

  def overhead_fraction(self) -> float:
    """Share of the wall time not spent in steady-state train steps."""
    return 1.0 - self.steps / max(self.total, 1e-9)

  def summary(self) -> str:
    parts = ', '.join(f'{k.replace("_", " ")} {v:.1f} s ({100 * v / max(self.total, 1e-9):.1f}%)'
                      for k, v in dataclasses.asdict(self).items() if k != 'total')
    return f'{self.total:.1f} s in all: {parts}'


def format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def summary_writer(directory: str):
  """A TensorBoard event-file writer (tensorboardX), or None if it is not installed."""
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('tensorboardX is not installed: no TensorBoard summaries (pip install tensorboardX)')
    return None
  return tensorboardX.SummaryWriter(directory)


def host_metrics(metrics) -> dict[str, float]:
  """Device metrics (replicated: [devices] arrays) as floats of the first device."""
  return {k: float(np.asarray(v)[0]) for k, v in metrics.items()}


def log_line(step: int, total: int, metrics: Mapping[str, float], eta_seconds: float) -> str:
  """'step 20/1000  loss 0.41  position_loss 1.2 ...  1.70 steps/s  0.0% waiting for data  ETA 0:09:24': every
  metric without a '/' (per-estimate terms go to the history only), in the order the step returned them."""
  rates = ('learning_rate', 'steps_per_second', 'data_wait_fraction')
  terms = '  '.join(f'{k} {v:.4g}' for k, v in metrics.items() if '/' not in k and k not in rates)
  return (f'step {step}/{total}  {terms}  lr {metrics["learning_rate"]:.3g}  {metrics["steps_per_second"]:.2f} '
          f'steps/s  {100 * metrics["data_wait_fraction"]:.1f}% waiting for data  ETA {format_seconds(eta_seconds)}')


class Reporter:
  """The run's sinks: absl log, `train_history.json` / `eval_history.json` rows, TensorBoard, PNG strips."""

  def __init__(self, workdir: str, is_chief: bool):
    self.workdir = workdir
    self.is_chief = is_chief
    self.writer = summary_writer(os.path.join(workdir, 'summaries')) if is_chief else None

  def _append(self, name: str, row: Mapping[str, Any]) -> None:
    with open(os.path.join(self.workdir, name), 'a') as f:  # one JSON row per report
      f.write(json.dumps(row) + '\n')

  def train(self, step: int, total: int, metrics: Mapping[str, float], eta_seconds: float) -> None:
    if not self.is_chief:
      return
    logging.info('%s', log_line(step, total, metrics, eta_seconds))
    self._append('train_history.json', {'step': step, **metrics})
    if self.writer:
      for key, value in metrics.items():
        self.writer.add_scalar(f'train/{key}', value, step)

  def skipped(self, step: int, bad: Sequence[Any]) -> None:
    """Lists the bad examples skipped in the batch of `step` (`tapir.data.bad_examples.BadExample`s) in
    `skipped_examples.json`, one row each (the stream has already warned about each)."""
    if self.is_chief:
      for b in bad:
        self._append(SKIPPED_FILE, {'step': step, 'source': b.source, 'reason': b.reason})

  def skipped_count(self) -> int:
    """Rows in `skipped_examples.json`: the bad examples of the steps done (0 off the chief)."""
    path = os.path.join(self.workdir, SKIPPED_FILE)
    if not self.is_chief or not os.path.exists(path):
      return 0
    with open(path) as f:
      return sum(1 for line in f if line.strip())

  def evaluation(self, step: int, evaluated: Mapping[str, Any]) -> dict[str, Any]:
    """Writes an evaluation's numbers and images; returns the numbers."""
    images = {k: v for k, v in evaluated.items() if isinstance(v, np.ndarray) and v.ndim == 3}
    numbers = {k: v for k, v in evaluated.items() if k not in images}
    if not self.is_chief:
      return numbers
    logging.info('step %d evaluation: %s', step, json.dumps(numbers, sort_keys=True))
    self._append('eval_history.json', {'step': step, **numbers})
    for key, image in images.items():
      paint.save_image(os.path.join(self.workdir, 'summaries', f'{key}_{step:07d}.png'), image)
    if self.writer:
      for key, value in numbers.items():
        if isinstance(value, (int, float)):
          self.writer.add_scalar(f'eval/{key}', value, step)
      for key, image in images.items():
        self.writer.add_image(f'eval/{key}', image, step, dataformats='HWC')
    return numbers

  def close(self, timings: Timings) -> None:
    if self.writer:
      self.writer.close()
    if self.is_chief:
      logging.info('time: %s; outside steady-state train steps: %.1f%%', timings.summary(),
                   100 * timings.overhead_fraction())


class RateMeter:
  """Steps/s and the data-wait share of train steps between two log lines (evaluation, checkpoints and the
  first step's compilation are reported apart, in the final `Timings`)."""

  def __init__(self, start_step: int):
    self.start_step = start_step
    self.window = (0.0, 0.0, 0)  # (step seconds, data wait, steps counted) at the last log line

  def rates(self, step: int, timings: Timings, waited: float) -> dict[str, float]:
    counted = step - self.start_step - 1
    busy = timings.steps + waited - self.window[0] - self.window[1]
    out = dict(steps_per_second=((counted - self.window[2]) / busy if counted > self.window[2]
                                 else 1 / max(timings.first_step, 1e-9)),
               data_wait_fraction=(waited - self.window[1]) / busy if busy > 0 else 0.0)
    self.window = (timings.steps, waited, counted)
    return out
