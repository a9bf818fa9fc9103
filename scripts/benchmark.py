r"""Speed and memory benchmark: offline forward, online step, training step. Writes a markdown table.

    python scripts/benchmark.py --out benchmark.md              # the default suite (full-size TAPIR, ~10 min on CPU)
    python scripts/benchmark.py --suite quick --out quick.md    # small settings, a few minutes
    python scripts/benchmark.py --suite tiny --repeats 1         # tiny models: checks the accounting, seconds
    python scripts/benchmark.py --cases 0,7,11,13                # some of the suite's cases (0-based indices)

The suites are in `scripts/bench_cases.py`; `--suite accelerator` holds the cases that matter on a GPU or TPU
(offline at 256² and 512² with 256 / 1024 points, gather against dense patches, the online step with 8 / 256
points, the paper recipe's train step at its per-device batch of 8, the gradient), and `--dry` runs any suite at
tiny sizes, to check it before a device is at hand (tests/test_bench_cases.py). The table's machine line names
the accelerator when there is one.

Each case runs in its own process, so "peak memory" is that process's peak resident set size (model, inputs,
XLA buffers and compilation included). Times are the median of `--repeats` runs after one warm-up (compile) run;
the compile time is reported separately. Random weights: speed does not depend on the values.

FLOPs (`scripts/flops.py`): each case's XLA call is counted on its jaxpr, every scan body once per trip (XLA's
`cost_analysis()` counts a loop body once: a third of the offline forward). The same process then measures the
peaks (`scripts.flops.measure_peaks`: a 2048^3 f32 matmul, a 3x3 conv of the backbone's first block group, a 512 MB
in-place update). Columns: GFLOP per run, GFLOP/s, their share of the matmul (and conv) peak, and the bound
(`scripts.flops.bound`): compute, memory traffic or Python/dispatch, whichever explains half of the time at those
peaks, else "other XLA work".

Training cases:
  train step, paper recipe      `configs/tapir.py` (batch norm, dense patches, chunk 32), one clip per step;
  train temporaries, paper      compile only: XLA's temporary buffers of that step at 24 x 256^2 x 256 tracks
                                (`memory_analysis().temp_size_in_bytes`), with and without `remat_refinement`;
  gradient, 4 frames            value and gradient of all outputs, full model, 4 x 256^2 x 256 queries, chunk 32,
                                is_training=True: the comparison point against the reference's training gradient
                                (compare it with the offline forward of 24 x 256^2 x 256 on the same machine);
  train step, cpu preset        `configs/tapir.py:cpu` on a fixed batch, and on the real built-in scene stream
                                (`tapir.data.streams.train_batches` behind the trainer's prefetcher).
  render, cpu batch             one `configs/tapir.py:cpu` batch of built-in scenes (photographic or procedural):
                                rendering and track conversion in one thread, as the prefetcher makes it;
  self-supervised step          `configs/bootstap.py:cpu_spec` on a fixed batch (teacher's two passes, student and
                                supervised branch, one update), beside the teacher's passes alone and one
                                inference forward of the same unlabeled batch.
Training uses the dense patch formulation (`bilinear_interp_with_depthwise_conv=True` in the configs): its
backward pass is matrix products, where the gather's is a scatter-add. Measured on XLA:CPU (2 cores, one suite
run, README, 2026-12-01): the `cpu` preset's train step 0.49 s dense against 0.76 s gather; at full size the two
are within 2% (gradient 3.10 s dense against 3.04 s gather, 24-frame forward 5.84 s against 5.91 s). The gather
stays the CPU default for inference.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python scripts/benchmark.py`
  sys.path.insert(0, REPO)

from scripts.bench_cases import CASES, TINY_MODEL, TINY_PEAKS, dry_run  # pylint: disable=wrong-import-position


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2]


def run_case(case: dict, repeats: int, profile_dir: str | None = None) -> dict:
  """Runs one case in this process and returns its measurements; with `profile_dir`, one more run is traced
  there with `jax.profiler` (scripts/profile_ops.py reads it)."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np

  import tapir
  from configs import tapir as tapir_configs  # the settings the trainer uses
  from tapir.models import precision
  from tapir.tracking import tracker as tracker_lib
  from tapir.training import state as training
  from scripts import flops  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  kind = case['kind']
  if kind == 'render_cpu_batch':  # one `cpu` batch of built-in scenes: rendering + track conversion, one thread
    from tapir.data import streams  # pylint: disable=g-import-not-at-top
    config = tapir_configs.get_config('cpu')
    config.data.synthetic_kind = case['scenes']
    batches = streams.train_batches(config, 0)
    run = lambda: next(batches)
    frames, size, points, batch = (config.data.num_frames, config.data.train_hw[0], config.data.tracks_per_clip,
                                   config.data.per_device_batch)
  elif kind in ('selfsup_cpu_preset', 'teacher_cpu_preset', 'inference_cpu_preset'):
    # `configs/bootstap.py:cpu_spec` (the spec's knobs): the self-supervised step (teacher's two passes, student, supervised batch), the
    # teacher's passes alone, and one inference forward of the same unlabeled batch.
    from configs import bootstap as bootstap_configs  # pylint: disable=g-import-not-at-top
    config = bootstap_configs.get_config('cpu_spec')
    frames, size, points, batch = (config.data.num_frames, config.data.train_hw[0], config.selfsup.num_queries,
                                   config.selfsup.per_device_batch)
    kwargs, chunk = training.model_kwargs(config), config.train_chunk_size
  elif kind == 'train_cpu_preset':
    config = tapir_configs.get_config('cpu')
    kwargs = dict(config.model)
    kwargs = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in kwargs.items()}
    if 'dense' in case:
      kwargs['bilinear_interp_with_depthwise_conv'] = case['dense']
    frames, size, points, batch = (config.data.num_frames, config.data.train_hw[0], config.data.tracks_per_clip,
                                   config.data.per_device_batch)
    chunk = config.train_chunk_size
  elif kind in ('train', 'train_memory', 'gradient'):  # the paper recipe's model and chunking
    config = tapir_configs.get_config()
    kwargs = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(config.model).items()}
    for key, name in (('dense', 'bilinear_interp_with_depthwise_conv'), ('remat', 'remat_refinement')):
      if key in case:
        kwargs[name] = case[key]
    frames, size, points, batch = case['frames'], case['size'], case['points'], case.get('batch', 1)
    chunk = case.get('chunk', config.train_chunk_size)
    kwargs.update(TINY_MODEL if case.get('model') == 'tiny' else {})
  else:
    kwargs = dict(pyramid_level=0, bilinear_interp_with_depthwise_conv=case.get('dense', False),
                  feature_extractor_chunk_size=case.get('feature_chunk'), use_causal_conv=kind == 'online')
    kwargs.update(TINY_MODEL if case.get('model') == 'tiny' else {})
    frames, size, points, batch = case['frames'], case['size'], case['points'], case.get('batch', 1)
    chunk = case.get('chunk', 64)

  video = jnp.asarray(rng.uniform(-1, 1, (batch, frames, size, size, 3)).astype(np.float32))  # unused by renders
  queries = np.stack([rng.integers(0, frames, (batch, points)), rng.uniform(0, size, (batch, points)),
                      rng.uniform(0, size, (batch, points))], -1).astype(np.float32)
  queries = jnp.asarray(queries)

  counted, separate = None, False  # the XLA call a run makes (fn, args); whether the run does more than that call
  if kind == 'render_cpu_batch':
    pass
  elif kind in ('selfsup_cpu_preset', 'teacher_cpu_preset', 'inference_cpu_preset'):
    run, counted = _selfsup_case(kind, config, kwargs, chunk, video, queries)
  elif kind == 'offline':
    params, state = tracker_lib.init_params(kwargs)
    def forward(v, q):
      with precision.compute_dtype(case.get('dtype', 'float32')):
        return tapir.TAPIR(**kwargs)(v, False, q, query_chunk_size=chunk)

    apply = jax.jit(hk.transform_with_state(forward).apply)
    run = lambda: apply(params, state, None, video, queries)[0]
    counted = apply, (params, state, None, video, queries)
  elif kind == 'online':
    tracker = tapir.OnlineTracker(*tracker_lib.init_params(kwargs), kwargs, resize_to=None,
                                  dtype=case.get('dtype', 'float32'))
    frames_u8 = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    tracker.start(frames_u8[0], np.asarray(queries[0, :, 1:]))
    run = lambda: tracker.step(frames_u8[1])
    # The step's one XLA call; the rest is host work (frame conversion, slot bookkeeping, outputs to NumPy).
    t = tracker
    # pylint: disable-next=protected-access
    counted = t._step, (t.params, t.state, None, t._prepare(frames_u8[1])[0], t._features, t._context)
    separate = True
  elif kind == 'gradient':
    # Value and gradient of all outputs; batch norm's local-batch statistics (no mapped axis here).
    kwargs['cross_replica_axis'] = None
    model = hk.transform_with_state(lambda v, q: tapir.TAPIR(**kwargs)(v, True, q, query_chunk_size=chunk))
    params, state = model.init(jax.random.PRNGKey(0), video, queries)
    total = lambda p: sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(
        model.apply(p, state, jax.random.PRNGKey(1), video, queries)[0]))
    grad = jax.jit(jax.value_and_grad(total))
    run = lambda: grad(params)
    counted = grad, (params,)
  else:
    model = training.make_model(kwargs, chunk)

    optimizer = training.make_optimizer(config.optimizer)  # the config's own optimiser and loss settings
    batch_arrays = dict(video=video[None], query_points=queries[None],
                        target_points=jnp.zeros((1, batch, points, frames, 2)),
                        occluded=jnp.zeros((1, batch, points, frames), bool))
    train_state = jax.pmap(training.make_init(model, optimizer), axis_name=training.AXIS)(
        jax.random.PRNGKey(0)[None], batch_arrays)
    step = jax.pmap(training.make_train_step(model, optimizer, config.loss), axis_name=training.AXIS)
    holder = [train_state]
    counted, separate = (step, (train_state, batch_arrays)), bool(case.get('data'))
    if kind == 'train_memory':  # compile only: XLA's temporaries of one step
      compiled = jax.jit(jax.vmap(training.make_train_step(model, optimizer, config.loss), axis_name=training.AXIS))
      start = time.perf_counter()
      memory = compiled.lower(train_state, batch_arrays).compile().memory_analysis()
      return dict(case=case, frames=frames, size=size, points=points, batch=batch, seconds=None,
                  compile_seconds=time.perf_counter() - start, peak_mb=memory.temp_size_in_bytes / 2**20,
                  **flops.account(flops.count(compiled, train_state, batch_arrays), None, None))
    batches = None
    if case.get('data'):  # the real built-in scene stream, made ahead in the trainer's prefetcher
      from tapir.data import streams  # pylint: disable=g-import-not-at-top
      batches = streams.Prefetcher(streams.train_batches(config, 0), config.data.get('prefetch', 2),
                                   transform=streams.put_on_devices)

    def run():
      holder[0], metrics = step(holder[0], batch_arrays if batches is None else next(batches))
      return metrics

  start = time.perf_counter()
  jax.block_until_ready(run())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  steady = _median(times)
  if profile_dir:
    jax.profiler.start_trace(profile_dir, create_perfetto_trace=True)
    jax.block_until_ready(run())
    jax.profiler.stop_trace()
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if kind == 'train_cpu_preset' and case.get('data'):
    batches.close()
  cost = device_seconds = None
  if counted is not None:
    fn, args = counted
    cost, device_seconds = flops.count(fn, *args), steady
    if separate:  # the XLA call alone, to tell its time from the host's
      device_seconds = flops.median_seconds(fn, *args, repeats=repeats)
  peaks = None if cost is None else flops.measure_peaks(**(TINY_PEAKS if case.get('peaks') == 'tiny' else {}))
  return dict(case=case, frames=frames, size=size, points=points, batch=batch, seconds=steady,
              compile_seconds=max(first - steady, 0.0), peak_mb=peak_mb, peaks=peaks,
              **flops.account(cost, steady, peaks, device_seconds))


def _selfsup_case(kind, config, kwargs, chunk, video, queries):
  """The run function of a self-supervised case on a fixed batch (identity views; the cost does not depend on them)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from tapir.training import selfsup  # pylint: disable=g-import-not-at-top
  from tapir.training import state as training
  from tapir.training import tasks
  b, t = video.shape[:2]
  n = config.data.tracks_per_clip
  identity = jnp.broadcast_to(jnp.array([[1.0, 0, 0], [0, 1.0, 0]]), (b, t, 2, 3))
  unlabeled = dict(video=video, student_video=video, affines=identity, query_points=queries,
                   skipped_videos=jnp.zeros([], jnp.int32))
  if kind == 'selfsup_cpu_preset':
    supervised = dict(video=video, query_points=queries[:, :1].repeat(n, 1),
                      target_points=jnp.zeros((b, n, t, 2)), occluded=jnp.zeros((b, n, t), bool))
    task = tasks.get_task(config)
    optimizer = training.make_optimizer(config.optimizer)
    add = lambda tree: jax.tree_util.tree_map(lambda x: x[None], tree)
    batch = add(dict(supervised=supervised, unlabeled=unlabeled))
    holder = [jax.pmap(task.make_init(optimizer), axis_name=training.AXIS)(jax.random.PRNGKey(0)[None], batch)]
    step = jax.pmap(training.make_step(task.make_update(optimizer)), axis_name=training.AXIS)

    def run():
      holder[0], metrics = step(holder[0], batch)
      return metrics
    return run, (step, (holder[0], batch))
  model = training.make_model(kwargs, chunk)
  params, state = model.init(jax.random.PRNGKey(0), video, queries)
  if kind == 'teacher_cpu_preset':
    teacher = selfsup.make_teacher(kwargs, chunk)
    apply = jax.jit(lambda p, s, r: teacher.apply(p, s, r, video, queries, lambda tracks, visible: visible)[0])
  else:
    apply = jax.jit(lambda p, s, r: model.apply(p, s, r, video, queries, is_training=False)[0])
  return lambda: apply(params, state, jax.random.PRNGKey(1)), (apply, (params, state, jax.random.PRNGKey(1)))


def describe_machine() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  device = jax.devices()[0]
  accelerator = '' if device.platform == 'cpu' else f', {jax.device_count()} × {device.device_kind}'
  return (f'{cpu}, {os.cpu_count()} cores{accelerator}, jax {jax.__version__} on {jax.default_backend()}, '
          f'python {platform.python_version()}')


def _label(r) -> str:
  return _case_label(r['case']) + (' (tiny model)' if r['case'].get('model') == 'tiny' else '')


def _case_label(c) -> str:
  kind = c['kind']
  if kind == 'render_cpu_batch':
    return f"render one `configs/tapir.py:cpu` batch ({c['scenes']} scenes, one thread)"
  if kind.endswith('_cpu_preset') and kind != 'train_cpu_preset':
    return {'selfsup_cpu_preset': 'self-supervised step, `configs/bootstap.py:cpu_spec` (+ its supervised batch)',
            'teacher_cpu_preset': "the teacher's two passes (inference, shared feature grids)",
            'inference_cpu_preset': 'one inference forward, same unlabeled batch'}[kind]
  if kind == 'train_cpu_preset':
    return 'train step, `configs/tapir.py:cpu`' + (' (gather patches)' if c.get('dense') is False else '') + (
        ' (built-in scene stream)' if c.get('data') else ' (fixed batch)')
  if kind == 'train_memory':
    return 'train step temporaries, paper recipe' + (' (remat_refinement)' if c.get('remat') else ' (no remat)')
  if kind in ('train', 'gradient'):
    what = ('train step, paper recipe' if kind == 'train' else
            f'gradient of all outputs, paper model, chunk {c.get("chunk", 32)}')
    return what + (' (gather patches)' if c.get('dense') is False else '')
  extra = []
  if c.get('dense'):
    extra.append('dense patches')
  if c.get('feature_chunk'):
    extra.append(f'feature chunks of {c["feature_chunk"]}')
  if c.get('dtype', 'float32') != 'float32':
    extra.append(f'{c["dtype"]} compute')
  what = {'offline': 'offline forward', 'online': 'online step (1 frame)', 'train': 'train step'}[kind]
  return what + (f' ({", ".join(extra)})' if extra else '')


def to_markdown(results, machine: str) -> str:
  from scripts import flops  # pylint: disable=g-import-not-at-top
  lines = [f'Machine: {machine}', '', flops.peaks_line([r['peaks'] for r in results if r.get('peaks')]), '',
           '| case | batch × frames × size² × points | time (s) | compile (s) | peak memory (GB) | GFLOP | GFLOP/s '
           '| share of peak: matmul (conv) | bound by |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in results:
    if 'error' in r:
      lines.append(f'| {r["case"]} | | failed: {r["error"][:80]} | | | | | | |')
      continue
    seconds = 'compile only' if r['seconds'] is None else f'{r["seconds"]:.2f}'
    memory = f'{r["peak_mb"] / 1024:.1f}' + (' (XLA temporaries)' if r['case']['kind'] == 'train_memory' else '')
    lines.append(f'| {_label(r)} | {r["batch"]} × {r["frames"]} × {r["size"]}² × {r["points"]} | '
                 f'{seconds} | {r["compile_seconds"]:.1f} | {memory} |' + flops.table_cells(r))
  return '\n'.join(lines) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--suite', default='default', choices=sorted(CASES) + ['online'],
                      help='online: the live-session cases, interleaved in one process (scripts/bench_online.py)')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default='benchmark.md')
  parser.add_argument('--cases', help='comma-separated 0-based indices of the suite\'s cases to run (default: all)')
  parser.add_argument('--dry', action='store_true', help='every case at tiny sizes (checks the suite runs; the '
                      'numbers mean nothing)')
  parser.add_argument('--single', help=argparse.SUPPRESS)  # internal: run one case, print JSON
  args = parser.parse_args()
  if args.single:
    print('RESULT ' + json.dumps(run_case(json.loads(args.single), args.repeats)))
    return
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  if args.suite == 'online':
    subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'bench_online.py'), '--repeats',
                    str(args.repeats), '--out', args.out], env=env, cwd=REPO, check=True)
    return
  results = []
  cases = CASES[args.suite]
  cases = [cases[int(i)] for i in args.cases.split(',')] if args.cases else cases
  for case in [dry_run(c) for c in cases] if args.dry else cases:
    proc = subprocess.run([sys.executable, __file__, '--single', json.dumps(case), '--repeats', str(args.repeats)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    line = next((l for l in proc.stdout.splitlines() if l.startswith('RESULT ')), None)
    result = json.loads(line[7:]) if line else dict(case=case, error=proc.stderr.strip().splitlines()[-1:])
    results.append(result)
    print(json.dumps(result), flush=True)
  table = to_markdown(results, describe_machine())
  with open(args.out, 'w') as f:
    f.write(table)
  print(table)


if __name__ == '__main__':
  main()
