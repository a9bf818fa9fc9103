r"""Soak test of the live demo's headless mode: `tapir.tracking.live.run_live` over a long generated stream.

    python scripts/soak_live.py --frames 10000 --resize 128 --model_overrides '{"initial_resolution": [128, 128]}'

The stream is `scripts/soak.py`'s moving photograph, handed to `run_live` as a `live.Source` (no window, no output
video: what is measured is the loop itself). Every frame is processed (`drop=False`, so the run is the same on a
fast or a slow machine; a live session drops frames instead, which only lowers the load). The script adds
`--points` points at frame 0 and every `--cycle` frames clears them and adds a fresh set, as a user clicking would,
so the slots fill and empty all the time. The tracker is compiled for `--points` first (`OnlineTracker.warm_up`;
`--warm_up_points` fewer shows what a stream pays when it is not).
Measured as the stream is read (in the reader thread): resident memory every `--sample_every` frames, and XLA
compilations counted from frame `--steady_from` on (none allowed by default); reported: RSS at the start and end of
the steady part, its max and slope, and the loop's statistics (latency mean / p90 / max, fps). Exit status 1 when a
threshold (`--max_recompiles`, `--max_rss_growth_mb`) is passed.
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Iterator

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python scripts/soak_live.py`
  sys.path.insert(0, REPO)

# pylint: disable-next=wrong-import-position
from scripts.soak import CompileCounter, exit_status, machine_info, moving_frames, rss_mb
import tapir  # pylint: disable=g-import-not-at-top,wrong-import-position
from tapir.tracking import live  # pylint: disable=g-import-not-at-top,wrong-import-position


@dataclasses.dataclass(frozen=True)
class LiveSoakConfig:
  frames: int = 10_000
  height: int = 256
  width: int = 256
  resize: int = 256  # the model's input size (0: the frames' own)
  points: int = 8
  warm_up_points: int = 0  # points the tracker is compiled for before the stream (0: --points)
  cycle: int = 200  # every this many frames the points are cleared and a fresh set is added
  steady_from: int = 300
  sample_every: int = 100
  preset: str = 'causal_tapir'
  model_overrides: dict = dataclasses.field(default_factory=dict)
  max_recompiles: int = 0
  max_rss_growth_mb: float = 64.0
  seed: int = 0


def _script(config: LiveSoakConfig) -> list[tuple[int, live.Event]]:
  """Points at frame 0; at every multiple of `cycle`, a clear and a fresh set (the inner 80% of the frame)."""
  rng = np.random.default_rng(config.seed)
  events = []
  for start in range(0, config.frames, config.cycle):
    if start:
      events.append((start, live.Event('clear')))
    yx = rng.uniform(0.1, 0.9, (config.points, 2)) * (config.height, config.width)
    events.extend((start, live.Event('add', (float(y), float(x)))) for y, x in yx)
  return events


def run(config: LiveSoakConfig) -> dict[str, Any]:
  """Runs the headless live loop over the stream of `config`; returns the measurements (module docstring)."""
  for name in ('frames', 'height', 'width', 'points', 'cycle', 'sample_every'):
    if getattr(config, name) < 1:
      raise ValueError(f'--{name} must be >= 1; got {getattr(config, name)}')
  if not 0 <= config.steady_from < config.frames - config.sample_every:
    raise ValueError(f'--steady_from must lie in [0, frames - sample_every); got {config.steady_from}')
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model_overrides.items()}
  resize = (config.resize, config.resize) if config.resize else None
  tracker = tapir.OnlineTracker.random_init(config.preset, seed=config.seed, resize_to=resize, **overrides)
  hw = (config.height, config.width)
  tracker.warm_up(np.zeros(hw + (3,), np.uint8), config.warm_up_points or config.points)
  samples, counter, marks = [], CompileCounter(), {}

  def frames() -> Iterator[np.ndarray]:
    for t, frame in enumerate(moving_frames(config.frames, hw, config.seed)):
      if t == config.steady_from:
        marks['compiles'] = counter.count
      if t >= config.steady_from and (t - config.steady_from) % config.sample_every == 0:
        samples.append([t, rss_mb()])
      yield frame

  source = live.Source('generated', config.height, config.width, 30.0, frames(), lambda: None)
  with counter:
    stats = live.run_live(tracker, source, script=_script(config), drop=False, overlay=True)
  samples.append([config.frames, rss_mb()])
  rss = np.asarray(samples)
  return dict(config=dataclasses.asdict(config), stats=dataclasses.asdict(stats),
              compiles_warmup=marks['compiles'], compiles_steady=counter.count - marks['compiles'],
              compiled_steady=counter.names[marks['compiles']:], rss_start_mb=float(rss[0, 1]),
              rss_end_mb=float(rss[-1, 1]), rss_max_mb=float(rss[:, 1].max()),
              rss_growth_mb=float(rss[-1, 1] - rss[0, 1]),
              rss_slope_mb_per_1000=float(np.polyfit(rss[:, 0], rss[:, 1], 1)[0] * 1000), machine=machine_info())


def failures(result: dict[str, Any]) -> list[str]:
  config, problems = result['config'], []
  if result['compiles_steady'] > config['max_recompiles']:
    problems.append(f'{result["compiles_steady"]} compilations after frame {config["steady_from"]} '
                    f'(--max_recompiles={config["max_recompiles"]}): {result["compiled_steady"][:5]}')
  if config['max_rss_growth_mb'] >= 0 and result['rss_growth_mb'] > config['max_rss_growth_mb']:
    problems.append(f'RSS grew {result["rss_growth_mb"]:.1f} MB (--max_rss_growth_mb={config["max_rss_growth_mb"]})')
  if result['stats']['frames_processed'] != config['frames']:
    problems.append(f'{result["stats"]["frames_processed"]} of {config["frames"]} frames processed')
  return problems


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  for field in dataclasses.fields(LiveSoakConfig):
    if field.name == 'model_overrides':
      parser.add_argument('--model_overrides', default='{}', help='JSON settings on top of the preset')
    else:
      parser.add_argument(f'--{field.name}', type=type(field.default), default=field.default)
  parser.add_argument('--json', help='write the measurements here')
  args = vars(parser.parse_args(argv))
  out = args.pop('json')
  try:
    args['model_overrides'] = json.loads(args['model_overrides'])
    result = run(LiveSoakConfig(**args))
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps({k: v for k, v in result.items() if k != 'compiled_steady'}, indent=1))
  if out:
    with open(out, 'w') as f:
      json.dump(result, f, indent=1)
  return exit_status(failures(result))


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
