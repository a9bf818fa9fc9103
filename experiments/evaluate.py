r"""Evaluate a checkpoint on TAP-Vid or the built-in synthetic set. Thin runner over `tapir.evaluation.runner.run`.

    python -m experiments.evaluate --config configs/evaluate.py --workdir /tmp/tapir_eval
    python -m experiments.evaluate --config configs/evaluate.py:davis --workdir /tmp/tapir_eval \
        --config.checkpoint=checkpoints/tapir_checkpoint_panning.npy --config.path=tapvid/tapvid_davis.pkl

See configs/evaluate.py for every field and the numbers to expect.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from tapir.evaluation import runner

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/evaluate.py[:preset]', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'where per-video metrics and the results tables are written')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    runner.run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:  # bad inputs (e.g. an undetermined architecture): no traceback
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
