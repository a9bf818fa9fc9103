"""Stopping a run cleanly on SIGTERM or SIGINT (pre-emption, Ctrl-C), at a step every process agrees on.

Schedulers (Kubernetes, Slurm, spot VMs, Borg) ask a job to stop with SIGTERM and kill it a grace period later.
While `StopSignals` is active either signal only sets a flag; the loop (`tapir.training.loop`) finishes the step
in flight, checkpoints that step, waits for the write and returns normally. A second SIGINT raises
KeyboardInterrupt at once (an operator who does not want to wait); a second SIGTERM is only logged.

Multi-process: a scheduler may signal one host only, and a host that stops alone leaves the others waiting in the
next collective forever. So after every step each process votes (the signal it got, else 0) and all take the
maximum, a pmapped `lax.pmax` over every device: about 0.4 ms per step with gloo on two busy CPU cores (measured
2026-12-01; `multihost_utils.process_allgather` took 3.3 ms). Everyone gets the same answer after the same step.
With one process there is no collective: the flag is read directly (free). JAX's own preemption service
(`jax.distributed.initialize` installs a native SIGTERM notifier; `multihost_utils.reached_preemption_sync_point`)
votes too, so a SIGTERM that its notifier caught before our handler was installed still stops the run. Its sync
point alone is not used for the decision: it is computed in a background thread and a fast step can pass it.

The handlers are installed for the `with` block only (from the main thread; elsewhere signals are not caught, with
a warning) and the previous ones are restored after, including a native handler Python does not know of, such as
JAX's notifier: `signal.signal` alone would reset it to the default, which kills the process.
"""

import ctypes
import signal
import threading
from typing import Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SIGACTION_BYTES = 1024  # more than any libc's `struct sigaction` (152 bytes on glibc x86-64); copied opaquely
_VOTE_AXIS = 'processes'


def _libc():
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc if hasattr(libc, 'sigaction') else None
  except OSError:
    return None


def _native_action(signum: int) -> bytes | None:
  """The process's current `sigaction` for `signum` as opaque bytes; None where libc's is not reachable."""
  libc = _libc()
  if libc is None:
    return None
  buffer = ctypes.create_string_buffer(_SIGACTION_BYTES)
  return buffer.raw if libc.sigaction(signum, None, buffer) == 0 else None


def _set_native_action(signum: int, action: bytes) -> None:
  libc = _libc()
  if libc is not None and libc.sigaction(signum, ctypes.create_string_buffer(action, len(action)), None) != 0:
    logging.warning('could not restore the native handler of %s (errno %d)', signal.Signals(signum).name,
                    ctypes.get_errno())


def _jax_preemption_noticed(step: int) -> bool:
  """True at the step JAX's preemption service chose (False without jax.distributed or with the service off)."""
  try:
    return multihost_utils.reached_preemption_sync_point(step)
  except RuntimeError:  # the service is disabled (jax_enable_preemption_service=False)
    return False


class StopSignals:
  """Catches SIGTERM / SIGINT inside a `with` block; `agreed(step)` says, identically on every process, whether
  to stop after `step`.

      with StopSignals() as signals:
        for step in ...:
          train_step()
          if stop := signals.agreed(step):  # 'SIGTERM', 'SIGINT' or ''
            checkpoint(step); break
  """

  def __init__(self, signals: tuple[int, ...] = SIGNALS):
    self._signals = signals
    self._previous: dict[int, tuple[object, bytes | None]] = {}
    self._vote_fn: Callable[[np.ndarray], jax.Array] | None = None
    self.received = 0  # the first signal caught in this process, 0 if none
    self.stopped_at: int | None = None  # the step `agreed` returned a signal for

  def __enter__(self) -> 'StopSignals':
    if threading.current_thread() is not threading.main_thread():
      logging.warning('train_and_evaluate runs outside the main thread: %s are not caught, a pre-emption kills '
                      'the run without a checkpoint', '/'.join(signal.Signals(s).name for s in self._signals))
      return self
    for signum in self._signals:
      native = _native_action(signum)
      self._previous[signum] = (signal.signal(signum, self._handle), native)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, (handler, native) in self._previous.items():
      if handler is not None:  # None: installed outside Python; the native action below restores it
        signal.signal(signum, handler)
      if native is not None:
        _set_native_action(signum, native)
    self._previous = {}
    if self.received and self.stopped_at is None and exc_info[0] is None:
      logging.warning('%s arrived after the last step; the run finished normally', signal.Signals(self.received).name)

  def _handle(self, signum: int, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.received:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt(f'second {name}: stopping without waiting for the checkpoint')
      logging.warning('%s again: still finishing the step and its checkpoint', name)
      return
    self.received = signum
    logging.warning('%s received: finishing the step in flight, checkpointing it, then stopping (a second SIGINT '
                    'stops at once)', name)

  def _vote(self, vote: int) -> int:
    """The largest vote of all processes (a collective: every process must call it, after the same step)."""
    if self._vote_fn is None:
      self._vote_fn = jax.pmap(lambda v: jax.lax.pmax(v, _VOTE_AXIS), axis_name=_VOTE_AXIS)
    return int(self._vote_fn(np.full((jax.local_device_count(),), vote, np.int32))[0])

  def agreed(self, step: int) -> str:
    """'' to go on after `step`, else the name of a signal some process got; the same on every process.

    Multi-process this is a collective: call it after every step, on every process.
    """
    stop = self.received or (signal.SIGTERM if _jax_preemption_noticed(step) else 0)
    if jax.process_count() > 1:
      stop = self._vote(stop)
    if not stop:
      return ''
    self.stopped_at = step
    name = signal.Signals(stop).name
    if not self.received:
      logging.warning('%s received by another process: stopping after step %d with it', name, step)
    return name
