"""Several host CPU devices in one process: does XLA:CPU have the threads a pmapped step needs?

XLA:CPU runs every device's share of a launch, and the dispatch of the next launch, on one thread pool of
max(`PJRT_NPROC`, devices) threads; `PJRT_NPROC` (else `NPROC`) is read once, when the CPU client starts, and
defaults to the cores the process may run on (the pool's size measured by counting its threads, jax 0.10.2). A
device that reaches a collective (the gradients' mean) waits there, holding its thread, until every device
arrives. With one thread per device and none to spare, the thread another device's share needs may be that one,
and the step never ends: XLA aborts the process when its collective timeout runs out. Seen with two forced host
devices (`--xla_force_host_platform_device_count=2`) on a 2-core machine; two threads per device leave room.
Accelerators (one stream per device) are not affected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

THREADS_PER_DEVICE = 2


def pool_threads(num_devices: int, environ: Mapping[str, str] | None = None) -> int:
  """The size of XLA:CPU's thread pool for `num_devices` CPU devices in a process started with `environ`
  (default: this one's)."""
  environ = os.environ if environ is None else environ
  for name in ('PJRT_NPROC', 'NPROC'):  # XLA's own order; a value that is not an integer is ignored, as there
    value = environ.get(name, '').strip()
    if value.lstrip('-').isdigit():
      return max(int(value), num_devices)
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
  return max(cores, num_devices)


def thread_pool_warning(devices: Sequence, environ: Mapping[str, str] | None = None) -> str | None:
  """A warning if `devices` (the run's local devices) are two or more CPU devices sharing a pool with fewer
  than `THREADS_PER_DEVICE` threads each; None otherwise."""
  cpu = [d for d in devices if getattr(d, 'platform', None) == 'cpu']
  if len(cpu) < 2:
    return None
  threads, wanted = pool_threads(len(cpu), environ), THREADS_PER_DEVICE * len(cpu)
  if threads >= wanted:
    return None
  return (f'{len(cpu)} CPU devices share XLA:CPU\'s pool of {threads} threads: a pmapped step can wait forever '
          f'at a collective (XLA then aborts after its collective timeout). Start the process with '
          f'PJRT_NPROC={wanted} in the environment (it is read when JAX starts its CPU client).')
