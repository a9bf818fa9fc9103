"""Shared test fixtures. Tests run on CPU with small configs; see README 'Tests'."""

import os
import pathlib
import subprocess
import warnings

import numpy as np
import pytest

# Compile fast: the tests' tiny models gain nothing from XLA's optimisation passes.
os.environ.setdefault('XLA_FLAGS', '')
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_disable_most_optimizations', True)

REPO = pathlib.Path(__file__).resolve().parents[1]


def with_overrides(config, overrides):
  """`config` with dotted-path fields set ({'eval.every_steps': 4, ...}), new fields allowed; returns it."""
  with config.unlocked():
    for key, value in overrides.items():
      target = config
      *path, last = key.split('.')
      for p in path:
        target = target[p]
      target[last] = value
  return config
# Arrays produced by the official implementations, copied from ../shared/golden (see tests/fixtures/README.md):
# the tests need nothing outside the repository.
GOLDEN = REPO / 'tests' / 'fixtures'
# Two host CPU devices for a subprocess. XLA:CPU runs both devices' shares of a step on one thread pool of
# max(PJRT_NPROC, devices) threads (PJRT_NPROC's default: one per core), so on a 2-core machine there is one
# thread per device and none to spare, and a device waiting at a collective can hold the thread the other one
# needs: the step never ends (`tapir.training.cpu_devices`). Seen twice under CI as an abort after XLA's
# collective timeout; not reproduced here (32 runs of that test's script beside a CPU hog). Two threads per
# device remove the shortage; the longer collective timeout covers a loaded machine, where one device can reach
# a collective long after the other (a step takes ~10 s here).
TWO_CPU_DEVICES_XLA_FLAGS = ('--xla_force_host_platform_device_count=2 '
                             '--xla_cpu_collective_call_terminate_timeout_seconds=240')
# What XLA:CPU prints when it aborts a process at a collective some device never reached.
XLA_COLLECTIVE_ABORT = 'Termination timeout for'


def two_cpu_devices_env() -> dict[str, str]:
  """This process's environment for a subprocess with two host CPU devices, able to import the repository."""
  return dict(os.environ, XLA_FLAGS=TWO_CPU_DEVICES_XLA_FLAGS, PJRT_NPROC='4', PYTHONPATH=str(REPO))


def run_on_two_cpu_devices(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
  """`subprocess.run(args)` in `two_cpu_devices_env()`, run once more (with a warning in the test report, so it
  is seen) if XLA:CPU aborted it at a collective: the runtime hang above, not a failure of the code under test.
  Any other failure, or the same abort twice, is returned as it is."""
  run = lambda: subprocess.run(args, cwd=REPO, env=two_cpu_devices_env(), capture_output=True, text=True,
                               timeout=timeout)
  result = run()
  if result.returncode != 0 and XLA_COLLECTIVE_ABORT in result.stderr:
    warnings.warn(f'XLA:CPU aborted a run on two CPU devices at a collective; running it again. Its log ends:\n'
                  f'{result.stderr[-1500:]}')
    result = run()
  return result

# The small architecture of the golden checkpoint (../shared/golden/README.md).
SMALL_KWARGS = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=2, mixer_hidden_dim=128,
                    initial_resolution=(64, 64), pyramid_level=0)


def save_random_tapir(path: pathlib.Path, **overrides) -> str:
  """Random TAPIR weights (preset 'tapir' with `overrides`) saved at `path`: subprocesses load them instead of
  compiling an initialisation each."""
  import tapir  # pylint: disable=g-import-not-at-top
  tracker = tapir.Tracker.random_init(preset='tapir', **overrides)
  tapir.save_checkpoint(path, tracker.params, tracker.state)
  return str(path)


@pytest.fixture(scope='session')
def golden_dir() -> pathlib.Path:
  if not GOLDEN.is_dir():
    pytest.fail(f'golden fixtures not found at {GOLDEN}')
  return GOLDEN


@pytest.fixture(scope='session')
def small_checkpoint(golden_dir):
  import tapir  # pylint: disable=g-import-not-at-top
  return tapir.load_checkpoint(golden_dir / 'tapir_small_checkpoint.npy')


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(params=[False, True], ids=['fast-compile', 'optimised-xla'])
def xla_optimisations(request):
  """The suite compiles with `jax_disable_most_optimizations` (conftest); parity must hold with XLA's full
  optimisation pipeline too, which is what users run. Each test builds a new jitted function, so it compiles anew."""
  before = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', not request.param)
  yield request.param
  jax.config.update('jax_disable_most_optimizations', before)
