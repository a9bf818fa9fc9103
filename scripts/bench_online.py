r"""The online step as a live session pays for it, beside the backbone alone on the same frame, timed interleaved.

    python scripts/bench_online.py --repeats 20 --out online.md        # or through scripts/benchmark.py --suite online

Cases (released causal architecture, `preset='causal_tapir'`, random weights: speed does not depend on them):
one step of `tapir.OnlineTracker.step` through the public API (frame in as uint8, tracks out as NumPy: everything a
live loop pays) at 256² with 8, 64 and 256 points and at 480² with 8 points, and the backbone's feature grids of
one frame of each size (`TAPIR.get_feature_grids`, jitted, what the step must compute at least). The frames are
already at the model input size (`resize_to=None`), so no host resize is timed. Every case is compiled and warmed
up first (the trackers' slot buckets included), then the cases take turns, one call each per round, for
`--repeats` rounds, so a noisy neighbour slows them alike; medians are reported, with each step's ratio to the
backbone of its frame size.

With few points the refinement does little arithmetic, but each of its `num_pips_iter` iterations runs every
mixer block, so the step must touch all the mixer's weights (103.5 MB in float32 for the released architecture,
more than a CPU's last-level cache) once per iteration whatever the number of points. The last rows time just
that, interleaved with the rest: a jitted sum over the mixer's weights, `num_pips_iter` times (`weights_floor`;
an optimisation barrier keeps the reads apart). Backbone + that read is what an f32 step would cost if the
mixer's products ran at read bandwidth; on XLA:CPU the 8-row products run well below it (README Performance).

Every backbone and step row also carries its arithmetic (`gflop`, `scripts/flops.py`'s count of the one XLA call,
each scan trip counted) and `flop_ratio`, its FLOPs over those of the backbone of its frame: a step can cost no
less than that ratio times the backbone unless its extra work runs faster per FLOP than the backbone does.
`extra_gflop_per_s_needed` says how fast, for the step to meet `--target` (1.1) times its backbone: the step's
FLOPs beyond the backbone's, over the time the target leaves them.
"""

import argparse
import json
import os
import sys
import time

SETTINGS = ((256, 8), (256, 64), (256, 256), (480, 8))  # (frame size, points)


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2]


def run(repeats: int = 10, settings=SETTINGS, preset: str = 'causal_tapir', overrides=None,
        target: float = 1.1) -> list[dict]:
  """Times the cases of the module docstring; returns one row per case (backbones first, per frame size)."""
  import jax  # pylint: disable=g-import-not-at-top
  import haiku as hk
  import numpy as np
  import tapir
  from tapir.tracking import tracker as tracker_lib

  if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
    raise ValueError(f'repeats must be an integer >= 1; got {repeats!r}')
  if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 1:
    raise ValueError(f'target must be a number > 1 (a ratio to the backbone); got {target!r}')
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from scripts import flops  # pylint: disable=g-import-not-at-top
  kwargs = tapir.checkpoint.preset_kwargs(preset, **(overrides or {}))
  params, state = tracker_lib.init_params(kwargs)
  rng = np.random.default_rng(0)
  backbone = jax.jit(hk.transform_with_state(
      lambda frame: tapir.TAPIR(**kwargs).get_feature_grids(frame, is_training=False)).apply)
  mixer = [leaf for name, leaves in params.items() if 'pips_mlp_mixer' in name for leaf in leaves.values()]
  iterations = kwargs.get('num_pips_iter', 4)

  @jax.jit
  def read(leaves):  # the barrier keeps XLA from merging the identical reads into one
    total = 0.0
    for _ in range(iterations):
      leaves, total = jax.lax.optimization_barrier((leaves, total))
      total = total + sum(jax.numpy.sum(leaf) for leaf in leaves)
    return total
  calls = {}  # label -> (size, points, call)
  gflop = {}  # label -> GFLOP of the case's XLA call
  for size in sorted({s for s, _ in settings}):
    frame = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    model_frame = jax.device_put(tapir.conventions.frames_to_model_input(frame)[None, None])
    calls[f'backbone, one frame of {size}²'] = (size, 0, lambda f=model_frame: backbone(params, state, None, f)[0])
    gflop[f'backbone, one frame of {size}²'] = flops.count(backbone, params, state, None, model_frame).flops / 1e9
  for size, points in settings:
    tracker = tapir.OnlineTracker(params, state, kwargs, resize_to=None)
    frames = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    yx = np.stack([rng.uniform(0, size, points), rng.uniform(0, size, points)], -1).astype(np.float32)
    tracker.start(frames[0], yx)
    calls[f'online step, {points} points at {size}²'] = (size, points, lambda t=tracker, f=frames[1]: t.step(f))
    # The step's one XLA call, counted as scripts/benchmark.py counts it.
    # pylint: disable=protected-access
    step_args = (tracker.params, tracker.state, None, tracker._prepare(frames[1])[0], tracker._features,
                 tracker._context)
    gflop[f'online step, {points} points at {size}²'] = flops.count(tracker._step, *step_args).flops / 1e9
    # pylint: enable=protected-access
  mixer_mb = sum(leaf.size * leaf.dtype.itemsize for leaf in mixer) / 1e6
  floor_label = f'mixer weights read {iterations}× ({mixer_mb:.1f} MB each time)'
  calls[floor_label] = (0, 0, lambda: read(mixer))
  for _, _, call in calls.values():  # compile and warm up
    for _ in range(2):
      jax.block_until_ready(call())
  times = {label: [] for label in calls}
  for _ in range(repeats):
    for label, (_, _, call) in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[label].append(time.perf_counter() - start)
  medians = {label: _median(ts) for label, ts in times.items()}
  rows = []
  for label, (size, points, _) in calls.items():
    if label == floor_label:
      continue
    base = medians[f'backbone, one frame of {size}²']
    base_gflop = gflop[f'backbone, one frame of {size}²']
    row = dict(case=label, size=size, points=points, ms=1000 * medians[label], fps=1 / medians[label],
               ratio_to_backbone=medians[label] / base, repeats=repeats, gflop=gflop[label],
               flop_ratio=gflop[label] / base_gflop)
    if points:  # the rate the step's extra FLOPs would need for the step to take `target` x its backbone
      row['extra_gflop_per_s_needed'] = (gflop[label] - base_gflop) / ((target - 1) * base)
      row['backbone_gflop_per_s'] = base_gflop / base
    rows.append(row)
  for size in sorted({s for s, _ in settings}):  # the floor, against the smallest frame's backbone
    floor = medians[f'backbone, one frame of {size}²'] + medians[floor_label]
    rows.append(dict(case=f'backbone of {size}² + {floor_label}', size=size, points=0, ms=1000 * floor,
                     fps=1 / floor, ratio_to_backbone=floor / medians[f'backbone, one frame of {size}²'],
                     repeats=repeats, weights_floor=True, weights_read_ms=1000 * medians[floor_label]))
  return rows


def to_markdown(rows, machine: str, target: float = 1.1) -> str:
  lines = [f'Machine: {machine}; medians of {rows[0]["repeats"]} interleaved rounds.', '',
           '| case | ms per frame | frames/s | × the backbone of the same frame | GFLOP | × the backbone\'s FLOPs '
           f'| GFLOP/s its extra FLOPs need for {target:g}× |', '|---|---|---|---|---|---|---|']
  for r in rows:
    cells = [r['case'], f'{r["ms"]:.0f}', f'{r["fps"]:.1f}', f'{r["ratio_to_backbone"]:.2f}',
             f'{r["gflop"]:.2f}' if 'gflop' in r else '', f'{r["flop_ratio"]:.3f}' if 'gflop' in r else '']
    if 'extra_gflop_per_s_needed' in r:
      cells.append(f'{r["extra_gflop_per_s_needed"]:.0f} (backbone: {r["backbone_gflop_per_s"]:.0f})')
    else:
      cells.append('')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--target', type=float, default=1.1, help='the step / backbone ratio to size the FLOP rate for')
  parser.add_argument('--out', help='markdown table to write')
  parser.add_argument('--json', help='rows as JSON')
  parser.add_argument('--model_overrides', default='{}', help='JSON settings on top of the preset (tests: tiny)')
  parser.add_argument('--sizes_points', default=None, help='e.g. "64:8,64:32" (default: 256:8,256:64,256:256,480:8)')
  args = parser.parse_args()
  settings = SETTINGS
  if args.sizes_points:
    try:
      settings = tuple(tuple(int(v) for v in item.split(':')) for item in args.sizes_points.split(','))
    except ValueError:
      parser.error(f'--sizes_points must be "size:points,..."; got {args.sizes_points!r}')
  try:
    rows = run(args.repeats, settings, overrides=json.loads(args.model_overrides), target=args.target)
  except ValueError as e:
    sys.exit(f'error: {e}')
  from scripts import benchmark  # pylint: disable=g-import-not-at-top
  table = to_markdown(rows, benchmark.describe_machine(), args.target)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(table)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)
  print(table)


if __name__ == '__main__':
  main()
