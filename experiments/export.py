r"""Export weights: our .npz, the official .npy, the PyTorch port's .safetensors, or a compiled jax artifact.

    python -m experiments.export --checkpoint checkpoints/tapir_checkpoint_panning.npy --preset tapir \
        --to torch --out tapir.safetensors
    python -m experiments.export --checkpoint ours.npz --to official --out tapir.npy
    python -m experiments.export --checkpoint checkpoints/tapir_checkpoint_panning.npy --preset tapir \
        --to jax --out tapir_256.jaxexport                     # frames and points symbolic, 256x256 frames
    python -m experiments.export --checkpoint checkpoints/causal_tapir_checkpoint.npy --preset causal_tapir \
        --to jax --artifact online --num_points 64 --out causal.jaxexport

The model flags are those of `experiments.track`. A jax artifact runs with `jax` alone (`tapir.export.jax_artifact`
says how). The work happens in `tapir.export.command.export_model`.
"""

import sys

from absl import app
from absl import flags
from absl import logging

import tapir
from tapir.export import command
from tapir.tracking import cli
from tapir.tracking import loader

_OUT = flags.DEFINE_string('out', None, 'file to write (torch: also <out minus suffix>.json)', required=True)
_TO = flags.DEFINE_string('to', None, 'format: ' + ', '.join(command.FORMATS), required=True)
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'checkpoint: released .npy (scripts/download_checkpoints.sh) '
                                  'or one of ours')
_PRESET = flags.DEFINE_enum('preset', None, sorted(tapir.PRESETS), 'architecture of a released checkpoint '
                            '(settings stored in the checkpoint win; a contradicting preset is an error)')
_RANDOM = flags.DEFINE_bool('random_weights', False, 'export untrained weights when no --checkpoint (testing only)')
_OVERRIDES = flags.DEFINE_string('model_overrides', None,
                                 'JSON object of TAPIR arguments on top of the preset, e.g. {"num_mixer_blocks": 1}')
_ARTIFACT = flags.DEFINE_string('artifact', None, 'jax only: offline (default; the whole video at once) or online '
                                '(start and step functions; causal presets)')
_FRAMES = flags.DEFINE_integer('frames', None, 'jax only: fix the number of frames (default: symbolic)')
_HEIGHT = flags.DEFINE_integer('height', None, 'jax only: frame height (default: the model\'s initial_resolution)')
_WIDTH = flags.DEFINE_integer('width', None, 'jax only: frame width (default: the model\'s initial_resolution)')
_NUM_POINTS = flags.DEFINE_integer('num_points', None, 'jax only: fix the number of query points (default: symbolic)')
_CHUNK = flags.DEFINE_integer('query_chunk_size', 64, 'jax offline: queries per refinement pass')
_PLATFORMS = flags.DEFINE_list('platforms', None, 'jax only: platforms to lower for, e.g. cpu,cuda (default: this '
                               'machine\'s JAX backend)')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CHECKPOINT.value is None and not _RANDOM.value:
    sys.exit(f'error: {loader.NEED_WEIGHTS} (flags: --checkpoint PATH, or --random_weights)')
  try:
    written = command.export_model(
        _OUT.value, _TO.value, _CHECKPOINT.value, _PRESET.value, random_weights=_RANDOM.value,
        model_overrides=cli.parse_model_overrides(_OVERRIDES.value), artifact=_ARTIFACT.value, frames=_FRAMES.value,
        height=_HEIGHT.value, width=_WIDTH.value, num_points=_NUM_POINTS.value, query_chunk_size=_CHUNK.value,
        platforms=_PLATFORMS.value)
  except (ValueError, FileNotFoundError) as e:  # bad inputs: name the problem without a traceback
    sys.exit(f'error: {e}')
  for path, size in zip(written.paths, written.sizes):
    logging.info('wrote %s (%.1f MB, %s format)', path, size / 1e6, written.format)


if __name__ == '__main__':
  app.run(main)
