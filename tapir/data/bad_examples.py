"""What a training source does with an example it cannot use: skip it, say which, count it, and stop past a cap.

    budget = SkipBudget(max_share=0.01, min_examples=1000, source='custom data')
    clips, bad = fill_batch(results)        # results: one example dict or BadExample per slot of the batch
    budget.add(len(results), bad)           # warns naming each; raises TooManyBadExamples past the cap

A bad example (an undecodable video, a corrupted record, an example that fails
`tapir.data.validation.validate_example`) becomes a `BadExample` naming it (its record id, file or index) and
the reason. Its slot in the batch is filled with another example of the same batch (`fill_batch`: the good
ones in turn), so every batch still holds `per_device_batch` examples per device and batch k stays a function of
(seed, k): a resumed run sees exactly the batches, and the bad examples, of an uninterrupted one. The trainer
records each in `workdir/skipped_examples.json` and the running count as `skipped_examples` in the log and
`train_history.json` (`tapir.training.loop`).

The cap: the run stops with `TooManyBadExamples` once the skipped examples exceed `max_share` of those seen, the
share taken over at least `min_examples` (so with 0.01 and 1000, up to 10 bad examples are tolerated among the
first 1000). `max_share=0` stops at the first bad example. A batch with no usable example at all stops too:
there is nothing to fill it with.
"""

from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from absl import logging


class BadExample(NamedTuple):
  """An example a source could not use: which one (record id, file, index) and why."""
  source: str
  reason: str


class TooManyBadExamples(RuntimeError):
  """The share of skipped examples passed the configured cap (the message names the last ones)."""


def check_share(max_share: Any, min_examples: Any) -> tuple[float, int]:
  """Validated (max_share in [0, 1], min_examples >= 1); else ValueError naming the config field."""
  if isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or not 0 <= max_share <= 1:
    raise ValueError(f'data.max_skipped_share must be a number in [0, 1]; got {max_share!r}')
  if isinstance(min_examples, bool) or not isinstance(min_examples, int) or min_examples < 1:
    raise ValueError(f'data.skipped_share_min_examples must be an integer >= 1; got {min_examples!r}')
  return float(max_share), int(min_examples)


class SkipBudget:
  """Counts the examples a stream has seen and skipped, and enforces the cap (module docstring)."""

  def __init__(self, max_share: float, min_examples: int, source: str):
    self.max_share, self.min_examples = check_share(max_share, min_examples)
    self.source = source
    self.seen = 0
    self.skipped: list[BadExample] = []

  def add(self, seen: int, bad: Sequence[BadExample]) -> None:
    """Records a batch of `seen` examples of which `bad` were skipped: a warning per bad one, and
    TooManyBadExamples once the cap is passed."""
    self.seen += seen
    for b in bad:
      logging.warning('%s: skipped bad example %s: %s', self.source, b.source, b.reason)
    self.skipped.extend(bad)
    limit = self.max_share * max(self.seen, self.min_examples)
    if bad and (len(self.skipped) > limit or len(bad) == seen):
      last = '; '.join(f'{b.source}: {b.reason}' for b in self.skipped[-3:])
      why = ('every example of a batch was bad' if len(bad) == seen else
             f'more than data.max_skipped_share={self.max_share:g} of them (counted over at least '
             f'data.skipped_share_min_examples={self.min_examples})')
      raise TooManyBadExamples(
          f'{self.source}: {len(self.skipped)} of {self.seen} examples were bad and skipped, {why}. The last: {last}')


def fill_batch(results: Sequence[Mapping[str, Any] | BadExample]) -> tuple[list[Mapping[str, Any]], list[BadExample]]:
  """One batch's slots (example dicts or BadExample) -> (examples, the bad ones): the bad slots take the batch's
  good examples in turn (first, second, ..., first again). With no good example the list of examples is empty."""
  good = [r for r in results if not isinstance(r, BadExample)]
  bad = [r for r in results if isinstance(r, BadExample)]
  if not good:
    return [], bad
  filled, spare = [], iter(_cycle(good))
  for r in results:
    filled.append(next(spare) if isinstance(r, BadExample) else r)
  return filled, bad


def _cycle(items: Sequence[Any]) -> Iterable[Any]:
  while True:
    yield from items
