r"""Train TAPIR. Thin runner over `tapir.training.loop.train_and_evaluate`.

    python -m experiments.train --config configs/tapir.py:cpu --workdir /tmp/tapir_cpu
    python -m experiments.train --config configs/tapir.py --workdir gs://... --config.data.data_dir=gs://...

Each config file's docstring gives its command and what to expect. `--config.<field>=<value>` overrides a
field; a mistyped field is an error. Multi-host: pass --config.distributed.initialize=True (TPU pods discover
the rest; elsewhere also set coordinator_address, num_processes and process_id).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from tapir.training import loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/<file>.py[:preset]', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'checkpoints, summaries and the exported <family>_checkpoint.npz go here')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
