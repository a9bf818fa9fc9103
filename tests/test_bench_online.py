"""scripts/bench_online.py on a tiny causal model: every case runs through the public API and is reported."""

import pytest

import tapir
from scripts import bench_online
from tapir.tracking import tracker as tracker_lib

TINY = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32, initial_resolution=(32, 32),
            pyramid_level=0)


def test_cases_are_timed_and_compared_with_the_backbone_of_their_frame_size():
  rows = bench_online.run(repeats=2, settings=((32, 2), (32, 9), (48, 2)), overrides=TINY)
  params, _ = tracker_lib.init_params(tapir.checkpoint.preset_kwargs('causal_tapir', **TINY))
  mixer_mb = sum(leaf.nbytes for name, leaves in params.items() if 'pips_mlp_mixer' in name
                 for leaf in leaves.values()) / 1e6
  read = f'mixer weights read 4× ({mixer_mb:.1f} MB each time)'
  assert [r['case'] for r in rows] == ['backbone, one frame of 32²', 'backbone, one frame of 48²',
                                       'online step, 2 points at 32²', 'online step, 9 points at 32²',
                                       'online step, 2 points at 48²', f'backbone of 32² + {read}',
                                       f'backbone of 48² + {read}']
  assert all(r['ms'] > 0 and r['fps'] == pytest.approx(1000 / r['ms']) for r in rows)
  assert [r['ratio_to_backbone'] for r in rows[:2]] == [1.0, 1.0]
  for floor, backbone in zip(rows[-2:], rows[:2]):  # the floor: the backbone plus the weights' read
    assert floor['weights_floor'] and floor['weights_read_ms'] > 0
    assert floor['ms'] == pytest.approx(backbone['ms'] + floor['weights_read_ms'])
    assert floor['ratio_to_backbone'] == pytest.approx(floor['ms'] / backbone['ms'])
  table = bench_online.to_markdown(rows, 'test machine')
  assert '| online step, 9 points at 32² |' in table and 'medians of 2 interleaved rounds' in table


def test_each_step_carries_its_arithmetic_against_its_backbone():
  rows = {r['case']: r for r in bench_online.run(repeats=1, settings=((32, 2), (32, 9)), overrides=TINY)}
  backbone, two, nine = (rows[k] for k in ('backbone, one frame of 32²', 'online step, 2 points at 32²',
                                           'online step, 9 points at 32²'))
  assert backbone['gflop'] > 0 and backbone['flop_ratio'] == 1.0
  # The step computes the backbone's feature grids and more; more points, more refinement arithmetic.
  assert 1.0 < two['flop_ratio'] < nine['flop_ratio']
  for step in (two, nine):
    extra = step['gflop'] - backbone['gflop']
    assert step['extra_gflop_per_s_needed'] == pytest.approx(extra / (0.1 * backbone['ms'] / 1000))
    assert step['backbone_gflop_per_s'] == pytest.approx(backbone['gflop'] / (backbone['ms'] / 1000))
  table = bench_online.to_markdown(list(rows.values()), 'test machine')
  assert "× the backbone's FLOPs" in table and f'{nine["flop_ratio"]:.3f}' in table


@pytest.mark.parametrize('target', [1.0, 0.5, True, 'x'])
def test_bad_target_is_refused(target):
  with pytest.raises(ValueError, match='target'):
    bench_online.run(repeats=1, settings=((32, 2),), overrides=TINY, target=target)


def test_bad_repeats_are_refused():
  with pytest.raises(ValueError, match='repeats'):
    bench_online.run(repeats=0, settings=((32, 2),), overrides=TINY)
