"""scripts/soak_live.py: the live demo's headless loop over a generated stream, points cleared and re-added."""

import pytest

from scripts import soak_live

TINY = {'blocks_per_group': [1, 1, 1, 1], 'num_mixer_blocks': 1, 'mixer_hidden_dim': 32,
        'initial_resolution': [32, 32], 'pyramid_level': 0}


def test_live_loop_runs_flat_with_points_cleared_and_added():
  config = soak_live.LiveSoakConfig(frames=200, height=48, width=48, resize=32, points=3, cycle=40, steady_from=50,
                                    sample_every=25, model_overrides=TINY, max_rss_growth_mb=50)
  result = soak_live.run(config)
  assert result['stats']['frames_processed'] == 200 and result['stats']['frames_dropped'] == 0
  assert result['stats']['points_added'] == 3 * 5  # a fresh set of 3 every 40 frames
  assert result['compiles_steady'] == 0, result['compiled_steady']
  assert soak_live.failures(result) == []
  assert result['rss_growth_mb'] < 50


def test_the_checks_fail_when_they_should():
  config = soak_live.LiveSoakConfig(frames=120, height=48, width=48, resize=32, points=9, warm_up_points=1,
                                    cycle=40, steady_from=0, sample_every=20, model_overrides=TINY,
                                    max_rss_growth_mb=-1)
  result = soak_live.run(config)  # compiled for 8 slots only: the 9th point needs the 16-slot step
  assert result['compiles_steady'] > 0
  assert any('--max_recompiles=0' in p for p in soak_live.failures(result))
  with pytest.raises(ValueError, match='steady_from'):
    soak_live.run(soak_live.LiveSoakConfig(frames=100, steady_from=100, model_overrides=TINY))
