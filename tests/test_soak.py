"""The soak check (scripts/soak.py) on a tiny causal model: a short stream with an add and replaces compiles nothing
after warm-up and keeps resident memory bounded; the compile counter sees a forced recompilation; bad flags fail."""

import json
import mmap

import jax
import numpy as np
import pytest

from scripts import soak

TINY = dict(blocks_per_group=[1, 1, 1, 1], num_mixer_blocks=1, mixer_hidden_dim=32, initial_resolution=[32, 32],
            pyramid_level=0)
SHORT = soak.SoakConfig(frames=240, points=4, height=48, width=64, resize=32, model_overrides=TINY, replace_every=20,
                        replace_count=2, add_points=1, add_at=10, warmup=15, window=60, sample_every=10,
                        max_rss_growth_mb=50.0, log_every=0)


def test_short_soak_is_flat():
  result = soak.run_soak(SHORT)
  assert result.steady_start == 21  # after warm-up (15 frames), the add (frame 10) and the first replace after it (20)
  assert result.replaces == 11 and result.num_points_end == 5
  assert result.compiles_warmup > 0  # the counter is live during the soak: the first steps compiled
  assert result.compiles_steady == 0, result.compiled_steady
  assert len(result.rss_samples) == 23 and result.rss_samples[0][0] == 21 and result.rss_samples[-1][0] == 239
  assert result.rss_growth_mb < 50, result.rss_samples  # RSS is noisy; a leak of 250 kB per frame would fail
  assert abs(result.rss_slope_mb_per_1000) < 200
  assert result.first_window['frames'] == [21, 80] and result.last_window['frames'] == [180, 239]
  assert 0 < result.first_window['median_ms'] <= result.first_window['p90_ms']
  assert result.fps > 0 and result.nonfinite_frames == 0
  assert soak.failures(result) == []
  table = soak.format_table(result, soak.machine_info())
  assert '0 in the steady phase' in table
  json.dumps(result.__dict__)  # the --json file holds all of it


def test_compile_counter_sees_a_recompilation():
  double = jax.jit(lambda x: 2 * x)
  double(np.zeros(3, np.float32))
  with soak.CompileCounter() as counter:
    double(np.ones(3, np.float32))  # same shape: cached
    assert counter.count == 0, counter.names
    double(np.zeros(4, np.float32))  # a new shape compiles again
  assert counter.count == 1 and '<lambda>' in counter.names[0], counter.names
  double(np.zeros(5, np.float32))  # the counter has stopped listening
  assert counter.count == 1


def test_failures_names_the_exceeded_thresholds():
  result = soak.SoakResult(
      config=dict(frames=100, max_recompiles=0, max_rss_growth_mb=10.0), steady_start=20, num_points_end=4,
      compiles_warmup=5, compiles_steady=1, compiled_steady=['apply_fn'], rss_samples=[[20, 100.0], [99, 130.0]],
      rss_start_mb=100.0, rss_end_mb=130.0, rss_max_mb=130.0, rss_growth_mb=30.0, rss_slope_mb_per_1000=380.0,
      first_window={}, last_window={}, fps=1.0, replaces=0, nonfinite_frames=0)
  problems = soak.failures(result)
  assert len(problems) == 2
  assert '--max_recompiles=0' in problems[0] and 'apply_fn' in problems[0]
  assert '--max_rss_growth_mb=10.0' in problems[1]


def test_rss_sampler_sees_an_allocation():
  # Fresh anonymous pages, one byte touched per page: malloc could hand back memory the process already holds (a
  # test worker that has grown by gigabytes did), an mmap of its own cannot.
  held = mmap.mmap(-1, 64 * 2**20)
  before = soak.rss_mb()
  np.frombuffer(held, np.uint8)[::mmap.PAGESIZE] = 1
  assert soak.rss_mb() - before > 48
  held.close()


def test_moving_frames_move_smoothly():
  a, b = list(soak.moving_frames(2, (40, 56), seed=3))
  assert a.shape == (40, 56, 3) and a.dtype == np.uint8
  diff = np.abs(a.astype(int) - b).mean()
  assert 0 < diff < 20


def test_flags_parse_and_defaults():
  config, path = soak.parse_flags(['--frames', '2000', '--resize', '0', '--max_rss_growth_mb', '-1', '--json', 'x',
                                   '--model_overrides', '{"num_mixer_blocks": 1}'])
  assert (config.frames, config.resize, config.max_rss_growth_mb, path) == (2000, None, None, 'x')
  assert config.model_overrides == {'num_mixer_blocks': 1}
  config, path = soak.parse_flags([])
  assert (config.frames, config.points, config.max_recompiles, path) == (10_000, 8, 0, None)


@pytest.mark.parametrize('argv, flag', [
    (['--frames', '0'], '--frames'),
    (['--points', '-2'], '--points'),
    (['--resize', '-4'], '--resize'),
    (['--window', '0'], '--window'),
    (['--frames', '600'], '--window'),  # two windows of 500 do not fit in 550 steady frames
    (['--replace_count', '9'], '--replace_count'),  # more than the 8 points
    (['--add_at', '10000'], '--add_at'),
    (['--max_recompiles', '-1'], '--max_recompiles'),
    (['--model_overrides', '{num_mixer_blocks: 1}'], '--model_overrides'),
    (['--model_overrides', '[1, 2]'], '--model_overrides'),
])
def test_bad_flags_raise_naming_the_flag(argv, flag):
  with pytest.raises(ValueError, match=flag):
    soak.parse_flags(argv)


def test_main_reports_a_bad_flag_without_running(capsys):
  assert soak.main(['--frames', '-1']) == 2
  assert '--frames' in capsys.readouterr().err


def test_soak_counts_a_compilation_in_the_steady_phase(monkeypatch):
  """Moves the steady phase before the add: the step's compilation for the new number of points must show (4 + 5
  points: beyond the tracker's smallest bucket of slots, 8, too)."""
  monkeypatch.setattr(soak, 'steady_start', lambda config: 5)
  config = soak.SoakConfig(**{**SHORT.__dict__, 'frames': 40, 'window': 10, 'replace_every': 0, 'add_at': 10,
                              'add_points': 5})
  result = soak.run_soak(config)
  assert result.steady_start == 5 and result.compiles_steady >= 1, result.compiled_steady
  assert any('--max_recompiles=0' in p for p in soak.failures(result))
