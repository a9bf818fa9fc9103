r"""Soak test of the online tracker: a long generated stream, resident memory and per-frame time at start and end.

    python scripts/soak.py --json /tmp/soak.json                   # 10,000 frames, causal_tapir, 256x256 input
    python scripts/soak.py --resize 128 --model_overrides '{"initial_resolution": [128, 128]}'  # 128x128 input
    python scripts/soak.py --frames 400 --resize 32 --window 100 --model_overrides '{"blocks_per_group": [1, 1, 1, 1],
        "num_mixer_blocks": 1, "mixer_hidden_dim": 32, "initial_resolution": [32, 32], "pyramid_level": 0}'

`tapir.OnlineTracker` (random weights: time and memory do not depend on the values) follows `--points` query
points through a stream generated on the fly (no video is held in memory): a photograph drifting, turning and
zooming smoothly. The backbone runs at the model's `initial_resolution` (256x256 for the released models) whatever
`--resize`, so a smaller input needs that setting lowered too, as in the second line. The stream does what a live
session does: every `--replace_every` frames `--replace_count` points are replaced (`replace_queries`), and once,
at `--add_at`, `--add_points` points are added (`add_queries`).

Warm-up covers every first-time shape: the first step, the add (a new number of points may compile the step
once more) and the first replace after it. From then on ("steady phase") the stream must be flat: no compilation at all
(every XLA backend compilation in the process is counted, through `jax.monitoring`), and resident memory (VmRSS,
sampled every `--sample_every` frames) without growth beyond noise. Reported: RSS at the start and end of the
steady phase, its max and least-squares slope (MB per 1000 frames); the time of `step` (median, p90) over its
first and last `--window` frames; frames per second over the whole steady phase (frame generation, replaces and
steps). The script exits with status 1 when `--max_recompiles` or `--max_rss_growth_mb` (end minus start) is
exceeded, so it can serve as a check.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Iterator

from absl import logging
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python scripts/soak.py`
  sys.path.insert(0, REPO)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

import tapir  # pylint: disable=g-import-not-at-top,wrong-import-position

COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'  # jax._src.dispatch.BACKEND_COMPILE_EVENT


def moving_frames(num_frames: int, hw: tuple[int, int], seed: int = 0) -> Iterator[np.ndarray]:
  """Yields `num_frames` uint8 [h, w, 3] frames of `skimage.data.astronaut()` moving smoothly, one at a time.

  Each frame samples the photograph (bilinear, wrapping at its edges) through a similarity transform whose shift
  (up to 15% of the photograph), rotation (up to 10 degrees) and zoom (up to 10%) follow slow sinusoids, so a
  point moves at most a few pixels per frame. `seed` sets the sinusoids' phases.
  """
  import skimage.data  # pylint: disable=g-import-not-at-top  (lazy: only the soak needs it)
  source = skimage.data.astronaut().astype(np.float32)  # [512, 512, 3]
  src_h, src_w = source.shape[:2]
  h, w = hw
  phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, 4)
  ys, xs = np.meshgrid(np.arange(h, dtype=np.float32) - (h - 1) / 2, np.arange(w, dtype=np.float32) - (w - 1) / 2,
                       indexing='ij')
  scale = 0.6 * min(src_h, src_w) / max(h, w)  # the frame shows 60% of the photograph
  for t in range(num_frames):
    angle = np.deg2rad(10) * np.sin(2 * np.pi * t / 600 + phases[0])
    zoom = scale * (1 + 0.1 * np.sin(2 * np.pi * t / 900 + phases[1]))
    cy = src_h / 2 + 0.15 * src_h * np.sin(2 * np.pi * t / 450 + phases[2])
    cx = src_w / 2 + 0.15 * src_w * np.sin(2 * np.pi * t / 700 + phases[3])
    cos, sin = zoom * np.cos(angle), zoom * np.sin(angle)
    sy, sx = cy + cos * ys + sin * xs, cx - sin * ys + cos * xs
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    y0, x0 = y0.astype(np.int64) % src_h, x0.astype(np.int64) % src_w
    y1, x1 = (y0 + 1) % src_h, (x0 + 1) % src_w
    top = source[y0, x0] * (1 - fx) + source[y0, x1] * fx
    bottom = source[y1, x0] * (1 - fx) + source[y1, x1] * fx
    yield np.clip(top * (1 - fy) + bottom * fy + 0.5, 0, 255).astype(np.uint8)


def rss_mb() -> float:
  """This process's resident set size now (VmRSS), in MB (2^20 bytes)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024  # the kernel reports kB
  raise OSError('/proc/self/status has no VmRSS line')


class CompileCounter:
  """Counts XLA backend compilations (any function, any shape) while active; a context manager.

  Listens to the event JAX records around every backend compilation (also when the persistent compilation cache
  answers), so both a jitted function's retrace for new shapes and the op-by-op compilation of eager operations
  count. `names` lists the compiled functions in order.
  """

  def __init__(self):
    self.names: list[str] = []

  @property
  def count(self) -> int:
    return len(self.names)

  def _listen(self, event: str, duration_secs: float, **kwargs) -> None:
    del duration_secs
    if event == COMPILE_EVENT:
      self.names.append(str(kwargs.get('fun_name', '?')))

  def __enter__(self) -> 'CompileCounter':
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listen)


@dataclasses.dataclass(frozen=True)
class SoakConfig:
  """The settings of one soak run; `check_config` validates them (the flags have the same names)."""
  frames: int = 10_000
  points: int = 8
  height: int = 256  # of the generated frames
  width: int = 256
  resize: int | None = 256  # square model input; None: the frames' own size
  preset: str = 'causal_tapir'
  model_overrides: dict = dataclasses.field(default_factory=dict)
  replace_every: int = 100  # frames between replaces; 0: never
  replace_count: int = 2  # points replaced each time (cycling through the points)
  add_points: int = 2  # points added once; 0: never
  add_at: int = 20  # frame of the add
  warmup: int = 50  # frames before the steady phase at least (it starts after the first-time shapes)
  window: int = 500  # frames in the first and last timing windows
  sample_every: int = 100  # frames between RSS samples
  seed: int = 0
  max_recompiles: int = 0  # in the steady phase
  max_rss_growth_mb: float | None = 64.0  # RSS end minus start of the steady phase; None: no check
  log_every: int = 1000  # frames between progress lines; 0: none


def steady_start(config: SoakConfig) -> int:
  """The first frame of the steady phase: after `warmup` frames, the add and the first replace after it."""
  first_time = [0]
  if config.add_points:
    first_time.append(config.add_at)
  if config.replace_every:
    after = config.add_at if config.add_points else 1
    first_time.append(-(-max(after, 1) // config.replace_every) * config.replace_every)
  return max(config.warmup, max(first_time) + 1)


def check_config(config: SoakConfig) -> None:
  """Raises ValueError naming the flag of the first bad setting."""
  for name in ('frames', 'points', 'height', 'width', 'window', 'sample_every'):
    if not isinstance(getattr(config, name), int) or getattr(config, name) < 1:
      raise ValueError(f'--{name} must be a positive integer; got {getattr(config, name)!r}')
  for name in ('replace_every', 'replace_count', 'add_points', 'add_at', 'warmup', 'max_recompiles', 'log_every'):
    if not isinstance(getattr(config, name), int) or getattr(config, name) < 0:
      raise ValueError(f'--{name} must be a non-negative integer; got {getattr(config, name)!r}')
  if config.resize is not None and (not isinstance(config.resize, int) or config.resize < 1):
    raise ValueError(f'--resize must be a positive integer (0 on the command line: no resize); got {config.resize!r}')
  if config.replace_every and not 1 <= config.replace_count <= config.points:
    raise ValueError(f'--replace_count must lie in [1, --points={config.points}] when replacing; '
                     f'got {config.replace_count}')
  if config.add_points and config.add_at >= config.frames:
    raise ValueError(f'--add_at must lie before the last frame ({config.frames}); got {config.add_at}')
  if config.max_rss_growth_mb is not None and not config.max_rss_growth_mb >= 0:
    raise ValueError(f'--max_rss_growth_mb must be >= 0; got {config.max_rss_growth_mb!r}')
  if not isinstance(config.model_overrides, dict):
    raise ValueError(f'--model_overrides must be a JSON object; got {config.model_overrides!r}')
  steady = config.frames - steady_start(config)
  if 2 * config.window > steady:
    raise ValueError(f'--window={config.window}: the first and last windows must fit in the steady phase of '
                     f'{steady} frames (frames {steady_start(config)}..{config.frames - 1}); lower --window or '
                     'raise --frames')


@dataclasses.dataclass
class SoakResult:
  """What one soak measured. Frames are counted from 0; RSS in MB (2^20 bytes), times in milliseconds."""
  config: dict
  steady_start: int  # first frame of the steady phase
  num_points_end: int
  compiles_warmup: int
  compiles_steady: int
  compiled_steady: list  # names of the functions compiled in the steady phase (should be empty)
  rss_samples: list  # [frame, MB] pairs, steady phase
  rss_start_mb: float
  rss_end_mb: float
  rss_max_mb: float
  rss_growth_mb: float  # end minus start
  rss_slope_mb_per_1000: float  # least squares over the samples
  first_window: dict  # frames, median_ms, p90_ms of `step`
  last_window: dict
  fps: float  # steady phase, everything included
  replaces: int
  nonfinite_frames: int  # frames whose tracks had NaN or Inf


def _window(times_ms: np.ndarray, first: int) -> dict:
  return dict(frames=[first, first + len(times_ms) - 1], median_ms=float(np.median(times_ms)),
              p90_ms=float(np.percentile(times_ms, 90)))


def _points(rng: np.random.Generator, n: int, hw: tuple[int, int]) -> np.ndarray:  # [n, 2] (y, x), inner 80%
  return (rng.uniform(0.1, 0.9, (n, 2)) * np.asarray(hw, np.float32)).astype(np.float32)


def run_soak(config: SoakConfig) -> SoakResult:
  """Runs the stream of `config` through a randomly initialised `tapir.OnlineTracker`; see the module docstring."""
  check_config(config)
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model_overrides.items()}
  resize = (config.resize, config.resize) if config.resize else None
  tracker = tapir.OnlineTracker.random_init(config.preset, seed=config.seed, resize_to=resize, **overrides)
  rng = np.random.default_rng(config.seed)
  hw = (config.height, config.width)
  start = steady_start(config)
  times_ms = np.zeros(config.frames)
  samples, nonfinite, replaces = [], 0, 0
  counter = CompileCounter()
  with counter:
    for t, frame in enumerate(moving_frames(config.frames, hw, config.seed)):
      if t == start:
        compiles_warmup, steady_t0 = counter.count, time.perf_counter()
      if t == 0:
        tracker.start(frame, _points(rng, config.points, hw))
      if config.add_points and t == config.add_at:
        tracker.add_queries(frame, _points(rng, config.add_points, hw))
      if config.replace_every and t and t % config.replace_every == 0:
        n = tracker.num_points
        indices = (replaces * config.replace_count + np.arange(config.replace_count)) % n
        tracker.replace_queries(frame, _points(rng, config.replace_count, hw), indices)
        replaces += 1
      t0 = time.perf_counter()
      out = tracker.step(frame)
      times_ms[t] = 1000 * (time.perf_counter() - t0)
      nonfinite += int(not np.isfinite(out.tracks).all())
      if t >= start and ((t - start) % config.sample_every == 0 or t == config.frames - 1):
        samples.append([t, rss_mb()])
      if config.log_every and (t + 1) % config.log_every == 0:
        logging.info('frame %d: step %.1f ms (median of the last %d), RSS %.1f MB, %d compilations', t + 1,
                     np.median(times_ms[t + 1 - config.log_every:t + 1]), config.log_every, rss_mb(), counter.count)
    steady_seconds = time.perf_counter() - steady_t0
  rss = np.asarray(samples)
  slope = float(np.polyfit(rss[:, 0], rss[:, 1], 1)[0] * 1000) if len(rss) > 1 else 0.0
  last = config.frames - config.window
  return SoakResult(
      config=dataclasses.asdict(config), steady_start=start, num_points_end=tracker.num_points,
      compiles_warmup=compiles_warmup, compiles_steady=counter.count - compiles_warmup,
      compiled_steady=counter.names[compiles_warmup:], rss_samples=samples, rss_start_mb=float(rss[0, 1]),
      rss_end_mb=float(rss[-1, 1]), rss_max_mb=float(rss[:, 1].max()), rss_growth_mb=float(rss[-1, 1] - rss[0, 1]),
      rss_slope_mb_per_1000=slope, first_window=_window(times_ms[start:start + config.window], start),
      last_window=_window(times_ms[last:], last), fps=(config.frames - start) / steady_seconds, replaces=replaces,
      nonfinite_frames=nonfinite)


def failures(result: SoakResult) -> list[str]:
  """The thresholds of `result.config` that `result` exceeds, as messages (empty: it passed)."""
  config, problems = result.config, []
  if result.compiles_steady > config['max_recompiles']:
    problems.append(f'{result.compiles_steady} compilations in the steady phase (frames {result.steady_start}..'
                    f'{config["frames"] - 1}) exceed --max_recompiles={config["max_recompiles"]}: '
                    f'{result.compiled_steady[:10]}')
  if config['max_rss_growth_mb'] is not None and result.rss_growth_mb > config['max_rss_growth_mb']:
    problems.append(f'RSS grew {result.rss_growth_mb:.1f} MB over the steady phase ({result.rss_start_mb:.1f} -> '
                    f'{result.rss_end_mb:.1f} MB), above --max_rss_growth_mb={config["max_rss_growth_mb"]}')
  return problems


def machine_info() -> dict[str, Any]:
  """Platform, CPU, jax version and backend, date and git commit (best-effort)."""
  info = dict(platform=platform.platform(), python=platform.python_version(), cpu_count=os.cpu_count(),
              cpu=platform.processor() or platform.machine(), jax=jax.__version__, backend=jax.default_backend(),
              date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'), git_commit=None)
  try:
    with open('/proc/cpuinfo') as f:
      info['cpu'] = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  try:
    info['git_commit'] = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True,
                                        check=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return info


def format_table(result: SoakResult, machine: dict[str, Any]) -> str:
  c, first, last = result.config, result.first_window, result.last_window
  model = f'{c["preset"]}' + (f' + {json.dumps(c["model_overrides"])}' if c['model_overrides'] else '')
  rows = [
      ('setting', f'{model}, random weights; {c["height"]}x{c["width"]} frames -> '
                  f'{c["resize"] or "no"} resize; {c["points"]} points (+{c["add_points"]} at frame {c["add_at"]}), '
                  f'{c["replace_count"]} replaced every {c["replace_every"]} frames'),
      ('frames', f'{c["frames"]} (steady phase from {result.steady_start}; {result.replaces} replaces; '
                 f'{result.num_points_end} points at the end)'),
      ('compilations', f'{result.compiles_warmup} in warm-up, {result.compiles_steady} in the steady phase'),
      ('RSS start / end / max', f'{result.rss_start_mb:.1f} / {result.rss_end_mb:.1f} / {result.rss_max_mb:.1f} MB'),
      ('RSS growth, slope', f'{result.rss_growth_mb:+.1f} MB, {result.rss_slope_mb_per_1000:+.2f} MB per 1000 frames '
                            f'({len(result.rss_samples)} samples)'),
      ('step, first window', f'median {first["median_ms"]:.1f} ms, p90 {first["p90_ms"]:.1f} ms '
                             f'(frames {first["frames"][0]}..{first["frames"][1]})'),
      ('step, last window', f'median {last["median_ms"]:.1f} ms, p90 {last["p90_ms"]:.1f} ms '
                            f'(frames {last["frames"][0]}..{last["frames"][1]})'),
      ('throughput', f'{result.fps:.1f} frames/s over the steady phase (generation, replaces and steps)'),
      ('non-finite tracks', f'{result.nonfinite_frames} frames'),
      ('machine', f'{machine["cpu"]}, {machine["cpu_count"]} cores, jax {machine["jax"]} on {machine["backend"]}, '
                  f'{machine["date"]}, commit {(machine["git_commit"] or "unknown")[:7]}'),
  ]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k.ljust(width)}  {v}' for k, v in rows)


def parse_flags(argv: list[str]) -> tuple[SoakConfig, str | None]:
  """The command line (without the program name) as a checked SoakConfig and the `--json` path (or None).

  A bad value raises ValueError naming its flag (argparse itself rejects what is not a number)."""
  defaults = SoakConfig()
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  for field in dataclasses.fields(SoakConfig):
    if field.name in ('model_overrides', 'resize', 'max_rss_growth_mb'):
      continue
    parser.add_argument(f'--{field.name}', type=type(getattr(defaults, field.name)),
                        default=getattr(defaults, field.name))
  parser.add_argument('--resize', type=int, default=defaults.resize, help='square model input; 0: no resize')
  parser.add_argument('--model_overrides', default='{}', help='JSON object of model settings over the preset')
  parser.add_argument('--max_rss_growth_mb', type=float, default=defaults.max_rss_growth_mb,
                      help='negative: no check')
  parser.add_argument('--json', default=None, help='write all numbers and the machine here')
  args = vars(parser.parse_args(argv))
  try:
    args['model_overrides'] = json.loads(args['model_overrides'])
  except json.JSONDecodeError as e:
    raise ValueError(f'--model_overrides must be a JSON object; got {args["model_overrides"]!r} ({e})') from e
  if args['resize'] == 0:
    args['resize'] = None
  if args['max_rss_growth_mb'] is not None and args['max_rss_growth_mb'] < 0:
    args['max_rss_growth_mb'] = None
  json_path = args.pop('json')
  config = SoakConfig(**args)
  check_config(config)
  return config, json_path


def main(argv: list[str]) -> int:
  logging.set_verbosity(logging.INFO)
  try:
    config, path = parse_flags(argv)
  except ValueError as e:
    print(f'soak: {e}', file=sys.stderr)
    return 2
  machine = machine_info()  # before the run: its date and commit are the start's
  result = run_soak(config)
  print(format_table(result, machine))
  if path:
    with open(path, 'w') as f:
      json.dump(dict(result=dataclasses.asdict(result), machine=machine), f, indent=1)
  return exit_status(failures(result))


def exit_status(problems: list[str]) -> int:
  """Prints each failed check; 1 if any failed, else 0 (the soak scripts' exit status)."""
  for problem in problems:
    print(f'soak FAILED: {problem}', file=sys.stderr)
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
