"""`tapir.training.cpu_devices`: the warning for several CPU devices on too small an XLA:CPU pool."""

import collections
import os
import sys

import pytest

from tapir.training import cpu_devices

Device = collections.namedtuple('Device', 'platform')
CPU2 = [Device('cpu'), Device('cpu')]


@pytest.mark.parametrize('environ, threads', [
    ({'PJRT_NPROC': '6'}, 6), ({'NPROC': '3'}, 3), ({'PJRT_NPROC': '5', 'NPROC': '1'}, 5),
    ({'PJRT_NPROC': ' 7 '}, 7), ({'PJRT_NPROC': '-2'}, 2), ({'PJRT_NPROC': '1'}, 2),  # never below the devices
])
def test_pool_size_follows_xla_s_variables_in_xla_s_order(environ, threads):
  assert cpu_devices.pool_threads(2, environ) == threads


def test_without_the_variables_the_pool_has_a_thread_per_usable_core():
  cores = len(os.sched_getaffinity(0))
  assert cpu_devices.pool_threads(1, {}) == cores
  assert cpu_devices.pool_threads(1, {'PJRT_NPROC': 'many'}) == cores  # not an integer: XLA ignores it too
  assert cpu_devices.pool_threads(cores + 3, {}) == cores + 3


def test_two_cpu_devices_on_two_threads_are_warned_about_with_the_fix():
  for environ in ({'PJRT_NPROC': '2'}, {'PJRT_NPROC': '1'}):  # XLA gives each device a thread at least
    message = cpu_devices.thread_pool_warning(CPU2, environ)
    assert message is not None and '2 CPU devices' in message and 'pool of 2 threads' in message
    assert 'PJRT_NPROC=4' in message


@pytest.mark.parametrize('devices, environ', [
    (CPU2, {'PJRT_NPROC': '4'}),                         # two threads per device
    ([Device('cpu')], {'PJRT_NPROC': '1'}),              # one device: no collective waits on another
    ([Device('gpu'), Device('gpu')], {'PJRT_NPROC': '1'}),  # accelerators have their own streams
    ([], {}),
])
def test_no_warning_where_the_pool_is_large_enough_or_not_involved(devices, environ):
  assert cpu_devices.thread_pool_warning(devices, environ) is None


def test_jax_s_own_cpu_devices_are_recognised():
  import jax  # pylint: disable=g-import-not-at-top
  cpu = jax.devices('cpu')[0]
  assert cpu_devices.thread_pool_warning([cpu, cpu], {'PJRT_NPROC': '3'}) is not None
  assert cpu_devices.thread_pool_warning([cpu, cpu], {'PJRT_NPROC': '4'}) is None


def test_the_two_device_runner_reruns_only_xla_s_collective_abort(tmp_path, recwarn):
  from tests.conftest import XLA_COLLECTIVE_ABORT, run_on_two_cpu_devices  # pylint: disable=g-import-not-at-top
  counter = tmp_path / 'attempts'
  script = (f'import pathlib, sys; p = pathlib.Path({str(counter)!r}); n = len(p.read_text()) if p.exists() else 0; '
            f'p.write_text("x" * (n + 1)); sys.stderr.write({XLA_COLLECTIVE_ABORT!r} if n == 0 else ""); '
            f'sys.exit(1 if n == 0 else int(sys.argv[1]))')
  assert run_on_two_cpu_devices([sys.executable, '-c', script, '0']).returncode == 0
  assert counter.read_text() == 'xx' and any('running it again' in str(w.message) for w in recwarn)
  counter.unlink()
  assert run_on_two_cpu_devices([sys.executable, '-c', script, '3']).returncode == 3  # the rerun's own failure
  counter.unlink()
  other = f'import pathlib, sys; p = pathlib.Path({str(counter)!r}); p.write_text(p.read_text() + "x"); sys.exit(2)'
  counter.write_text('')
  assert run_on_two_cpu_devices([sys.executable, '-c', other]).returncode == 2
  assert counter.read_text() == 'x'  # any other failure: not run again
