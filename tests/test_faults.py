"""Faults a long training run must survive: pre-emption (SIGTERM / SIGINT), broken checkpoints, failed writes.

The runs are the tiny config on fixed random batches (`tests.test_training._fixed_batch`, seed = step), in
subprocesses where signals or several devices / processes are involved. A pre-empted run's batch stream waits
at step 4 until the test has sent its signal, so the stop step is known (4) and nothing depends on timing.
"""

import ctypes
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import chex
import numpy as np
import pytest

from tapir.training import checkpointing
from tapir.training import loop as trainer
from tapir.training import preemption
from tests.conftest import REPO
from tests.conftest import two_cpu_devices_env
from tests.test_training import _free_port
from tests.test_training import _tiny
from tests.test_training import _tiny_batches

_RUN = textwrap.dedent('''
    import itertools, json, os, sys, time
    import jax, numpy as np
    from tests.test_training import _tiny, _fixed_batch
    from tapir.training import loop as trainer
    workdir, steps, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    config = _tiny(**{'training_steps': steps, 'checkpoint_every_steps': 100, 'eval.every_steps': 100,
                      **overrides})
    def batches(start_step):
      for step in itertools.count(start_step + 1):
        while step > 3 and not os.path.exists(os.path.join(workdir, 'release')):  # the test signals first
          time.sleep(0.05)
        yield _fixed_batch(config, devices=jax.local_device_count(), seed=step)
    result = trainer.train_and_evaluate(config, workdir, train_data=batches, evaluate_fn=lambda *a: {})
    np.savez(os.path.join(workdir, f'params_{jax.process_index()}.npz'),
             *jax.tree_util.tree_leaves(result['state'].params))
    print('RESULT', json.dumps(dict(step=result['step'], stopped_by=result['stopped_by'])))
''')
_TWO_DEVICES = two_cpu_devices_env()
_TIMEOUT = 600


def _start(workdir, steps: int, env=None, **overrides) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-c', _RUN, str(workdir), str(steps), json.dumps(overrides)], cwd=REPO,
                          env=env or dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _history_steps(workdir, name='train_history.json') -> list[int]:
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)['step'] for line in f if line.endswith('\n')]


def _wait_for_step(workdir, step: int, procs) -> None:
  deadline = time.monotonic() + _TIMEOUT
  while not _history_steps(workdir) or _history_steps(workdir)[-1] < step:
    for p in procs:
      if p.poll() is not None:
        pytest.fail(f'exited with {p.returncode} before step {step}: {p.stderr.read()[-3000:]}')
    assert time.monotonic() < deadline, f'step {step} not reached in {_TIMEOUT} s'
    time.sleep(0.1)


def _finish(proc) -> tuple[dict, str]:
  out, err = proc.communicate(timeout=_TIMEOUT)
  assert proc.returncode == 0, err[-4000:]
  return json.loads(out.split('RESULT', 1)[1]), err


def _params(path) -> list[np.ndarray]:
  with np.load(path) as f:
    return [f[k] for k in f.files]


def _step_dirs(workdir) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


def test_sigterm_checkpoints_the_step_in_flight_and_the_resumed_run_is_bit_identical(tmp_path):
  """2 devices, one process: SIGTERM after step 3 -> step 4 checkpointed, exit 0; resumed = uninterrupted."""
  straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
  straight.mkdir()
  stopped.mkdir()
  (straight / 'release').touch()
  reference = _start(straight, 8, env=_TWO_DEVICES)
  run = _start(stopped, 8, env=_TWO_DEVICES)
  _wait_for_step(stopped, 3, [run])
  run.send_signal(signal.SIGTERM)
  (stopped / 'release').touch()
  result, log = _finish(run)
  assert result == dict(step=4, stopped_by='SIGTERM')
  assert 'SIGTERM: stopped at step 4 of 8; checkpoint 4 is complete in ' in log
  assert str(stopped / 'checkpoints') in log
  assert _step_dirs(stopped) == ['4']  # checkpoint_every_steps=100: only the pre-emption's checkpoint
  assert _history_steps(stopped) == [1, 2, 3, 4]
  resumed, _ = _finish(_start(stopped, 8, env=_TWO_DEVICES))
  assert resumed == dict(step=8, stopped_by=None)
  _finish(reference)
  assert _history_steps(stopped) == list(range(1, 9))  # every step once: none repeated, none lost
  assert _history_steps(stopped, 'eval_history.json') == [8]
  a, b = _params(straight / 'params_0.npz'), _params(stopped / 'params_0.npz')
  assert len(a) == len(b) > 10
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
  port = _free_port()
  procs = [_start(tmp_path, 8, **{'distributed.initialize': True, 'distributed.coordinator_address':
                                  f'localhost:{port}', 'distributed.num_processes': 2,
                                  'distributed.process_id': rank, 'distributed.cpu_collectives': 'gloo'})
           for rank in range(2)]
  _wait_for_step(tmp_path, 3, procs)  # process 0 writes the history
  procs[1].send_signal(signal.SIGTERM)
  (tmp_path / 'release').touch()
  for p in procs:
    result, _ = _finish(p)
    assert result == dict(step=4, stopped_by='SIGTERM')
  assert _step_dirs(tmp_path) == ['4']
  assert _history_steps(tmp_path) == [1, 2, 3, 4]
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  restored = ocp.StandardCheckpointer().restore(tmp_path / 'checkpoints' / '4' / 'default')
  assert int(restored['step']) == 4  # complete: every array reads back
  for x, y in zip(_params(tmp_path / 'params_0.npz'), _params(tmp_path / 'params_1.npz')):
    np.testing.assert_array_equal(x, y)


def test_absl_runner_exits_0_on_sigint(tmp_path):
  """The real runner on its own data: Ctrl-C stops it after a checkpoint of the step it was on, exit status 0."""
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.train', '--config', 'configs/tapir.py:tiny', '--workdir', str(tmp_path),
       '--config.training_steps=1000', '--config.checkpoint_every_steps=1000', '--config.eval.every_steps=1000'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_step(tmp_path, 2, [proc])
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=_TIMEOUT)
  assert proc.returncode == 0, err[-4000:]
  stopped = _history_steps(tmp_path)[-1]
  assert f'SIGINT: stopped at step {stopped} of 1000' in err
  assert _step_dirs(tmp_path) == [str(stopped)]
  assert not (tmp_path / 'tapir_checkpoint.npz').exists()  # exported only at the end of training


def test_stop_signals_restore_the_previous_handlers_python_and_native():
  def mine(signum, frame):
    pass

  libc = ctypes.CDLL(None)
  libc.signal.argtypes, libc.signal.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p
  before = signal.signal(signal.SIGINT, mine)
  libc.signal(signal.SIGTERM, 1)  # SIG_IGN behind Python's back, as jax.distributed installs its SIGTERM notifier
  try:
    with preemption.StopSignals() as signals:
      assert signal.getsignal(signal.SIGINT) == signals._handle  # pylint: disable=protected-access
      assert signals.agreed(1) == ''
      os.kill(os.getpid(), signal.SIGTERM)  # only noted
      time.sleep(0.01)
      assert signals.agreed(2) == 'SIGTERM' and signals.stopped_at == 2
      with pytest.raises(KeyboardInterrupt, match='second SIGINT'):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is mine
    native = preemption._native_action(signal.SIGTERM)  # pylint: disable=protected-access
    assert int.from_bytes(native[:ctypes.sizeof(ctypes.c_void_p)], sys.byteorder) == 1  # sa_handler: SIG_IGN again
  finally:
    signal.signal(signal.SIGINT, before)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# Broken checkpoints and failed writes: one 4-step run checkpointed at every step, copied for each test.


@pytest.fixture(scope='module')
def four_steps(tmp_path_factory):
  """(workdir with checkpoints 1..4 and histories 1..4, the state after step 4)."""
  workdir = tmp_path_factory.mktemp('four_steps')
  config = _four_step_config()
  result = trainer.train_and_evaluate(config, str(workdir), train_data=_tiny_batches(config),
                                      evaluate_fn=lambda params, state, step: {'evaluated_at': step})
  assert _step_dirs(workdir) == ['1', '2', '3', '4']
  return workdir, result['state']


def _four_step_config(**overrides):
  return _tiny(**{'training_steps': 4, 'checkpoint_every_steps': 1, 'keep_checkpoints': 4, 'eval.every_steps': 1,
                  'export_weights': False, **overrides})


def _copy(four_steps, tmp_path):
  workdir = tmp_path / 'work'
  shutil.copytree(four_steps[0], workdir)
  return workdir


def _truncate_data(step_dir) -> None:
  """What a write cut short leaves where renames are not atomic: files of the arrays half written."""
  for name in os.listdir(step_dir / 'default' / 'd'):
    path = step_dir / 'default' / 'd' / name
    os.truncate(path, os.path.getsize(path) // 2)


# After a failed restore, a tensorstore callback of orbax finds its event loop closed ('Exception ignored'): noise.
_ORBAX_NOISE = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
_DAMAGE = {
    'truncated arrays': _truncate_data,
    'deleted manifest': lambda d: os.remove(d / 'default' / 'manifest.ocdbt'),
    'truncated metadata': lambda d: os.truncate(d / 'default' / '_METADATA', 100),
    'item folder deleted': lambda d: shutil.rmtree(d / 'default'),
}


@_ORBAX_NOISE
@pytest.mark.parametrize('damage', sorted(_DAMAGE))
def test_restore_skips_a_broken_latest_checkpoint_and_moves_it_aside(four_steps, tmp_path, damage, caplog):
  workdir = _copy(four_steps, tmp_path)
  directory = workdir / 'checkpoints'
  _DAMAGE[damage](directory / '4')
  like = four_steps[1]
  with caplog.at_level(logging.WARNING):
    step, state = checkpointing.Checkpointer(str(directory), 4).restore_latest(like)
  assert step == 3 and int(state.step) == 3
  assert f'checkpoint {directory / "4"} is broken: moved it to {directory / "4.broken"}' in caplog.text
  assert sorted(os.listdir(directory)) == ['1', '2', '3', '4.broken']  # kept for inspection, not deleted
  assert checkpointing.Checkpointer(str(directory), 4).all_steps() == [1, 2, 3]


def test_a_write_killed_midway_leaves_the_previous_checkpoints_as_they_were(four_steps, tmp_path):
  workdir = _copy(four_steps, tmp_path)
  directory = workdir / 'checkpoints'
  os.rename(directory / '4', directory / '4.orbax-checkpoint-tmp')  # what kill -9 during the write of 4 leaves
  checkpointer = checkpointing.Checkpointer(str(directory), 4)
  step, _ = checkpointer.restore_latest(four_steps[1])
  assert step == 3 and checkpointer.all_steps() == [1, 2, 3]
  checkpointer.save(4, four_steps[1])  # writing 4 again replaces the unfinished folder
  checkpointer.close()
  assert sorted(os.listdir(directory)) == ['1', '2', '3', '4']


@_ORBAX_NOISE
def test_resume_falls_back_past_a_broken_checkpoint_bit_identically(four_steps, tmp_path, caplog):
  workdir = _copy(four_steps, tmp_path)
  _truncate_data(workdir / 'checkpoints' / '4')
  config = _four_step_config()
  with caplog.at_level(logging.WARNING):
    result = trainer.train_and_evaluate(config, str(workdir), train_data=_tiny_batches(config),
                                        evaluate_fn=lambda params, state, step: {'evaluated_at': step})
  assert 'checkpoints/4 is broken' in caplog.text
  assert result['step'] == 4
  chex.assert_trees_all_equal(result['state'].params, four_steps[1].params)  # resumed from 3, step 4 redone
  # The rows of step 4 the first run logged were dropped at the restore and written again: each step once.
  assert _history_steps(workdir) == [1, 2, 3, 4]
  assert _history_steps(workdir, 'eval_history.json') == [1, 2, 3, 4]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1', '2', '3', '4', '4.broken']


@_ORBAX_NOISE
def test_no_restorable_checkpoint_stops_the_run_instead_of_starting_afresh(four_steps, tmp_path):
  workdir = _copy(four_steps, tmp_path)
  for step in ('1', '2', '3', '4'):
    _truncate_data(workdir / 'checkpoints' / step)
  config = _four_step_config(training_steps=6)
  with pytest.raises(checkpointing.CheckpointRestoreError) as raised:
    trainer.train_and_evaluate(config, str(workdir), train_data=_tiny_batches(config), evaluate_fn=lambda *a: {})
  message = str(raised.value)
  assert str(workdir / 'checkpoints') in message and 'steps [1, 2, 3, 4]' in message
  assert all(f'step {s}: ' in message for s in range(1, 5)) and 'OUT_OF_RANGE' in message
  assert _step_dirs(workdir) == ['1', '2', '3', '4']  # nothing moved
  assert _history_steps(workdir) == [1, 2, 3, 4]  # nor truncated


def _disk_full(monkeypatch) -> None:
  """Every file orbax writes at the commit of a checkpoint fails as on a full disk."""
  from orbax.checkpoint._src.path import async_path  # pylint: disable=g-import-not-at-top

  async def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(async_path, 'write_text', full)


def test_a_failed_write_raises_and_keeps_the_previous_checkpoint(four_steps, tmp_path, monkeypatch):
  directory = tmp_path / 'checkpoints'
  checkpointer = checkpointing.Checkpointer(str(directory), 1)  # keep 1: the write must not drop the only one
  checkpointer.save(1, four_steps[1])
  checkpointer.wait()
  _disk_full(monkeypatch)
  checkpointer.save(2, four_steps[1])
  with pytest.raises(checkpointing.CheckpointWriteError,
                     match=r'writing checkpoint 2 to .*checkpoints failed: OSError: .*No space left on device.*'
                           r'newest intact checkpoint is step 1'):
    checkpointer.wait()
  monkeypatch.undo()
  assert checkpointer.all_steps() == [1]
  step, _ = checkpointing.Checkpointer(str(directory), 1).restore_latest(four_steps[1])
  assert step == 1


def test_a_failed_write_stops_the_run_with_the_error(four_steps, tmp_path, monkeypatch):
  workdir = _copy(four_steps, tmp_path)
  config = _four_step_config(training_steps=6)
  _disk_full(monkeypatch)
  with pytest.raises(checkpointing.CheckpointWriteError, match='writing checkpoint 5 .*step 4 '):
    trainer.train_and_evaluate(config, str(workdir), train_data=_tiny_batches(config), evaluate_fn=lambda *a: {})
  monkeypatch.undo()
  assert _step_dirs(workdir)[:4] == ['1', '2', '3', '4']  # and 5's unfinished tmp folder, never read
  step, _ = checkpointing.Checkpointer(str(workdir / 'checkpoints'), 4).restore_latest(four_steps[1])
  assert step == 4
