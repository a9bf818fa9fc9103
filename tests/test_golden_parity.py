"""The model reproduces the official implementation's outputs on the golden fixtures (spec §12)."""

import json

import haiku as hk
import jax
import numpy as np
import pytest

import tapir

LOGIT_TOL = 1e-4
TRACK_TOL = 1e-3  # pixels


@pytest.mark.parametrize('case', ['tapir_small_square', 'tapir_small_multires_chunked'])
def test_offline_call_matches_golden(case, golden_dir, small_checkpoint, xla_optimisations):
  del xla_optimisations
  config = json.loads((golden_dir / f'{case}.json').read_text())
  golden = np.load(golden_dir / f'{case}.npz')
  params, state = small_checkpoint

  def forward(video, query_points):
    model = tapir.TAPIR(**config['tapir_kwargs'])
    return model(video, is_training=False, query_points=query_points, query_chunk_size=config['query_chunk_size'])

  apply = jax.jit(hk.transform_with_state(forward).apply)
  out, _ = apply(params, state, jax.random.PRNGKey(42), golden['video'], golden['query_points'])

  compared = 0
  for key in golden.files:
    if key in ('video', 'query_points'):
      continue
    if key.startswith('unrefined_'):
      name, index = key.rsplit('_', 1)
      ours = out[name][int(index)]
    else:
      ours = out[key]
    tol = TRACK_TOL if 'tracks' in key else LOGIT_TOL
    np.testing.assert_allclose(np.asarray(ours), golden[key], rtol=0, atol=tol, err_msg=key)
    compared += 1
  levels = 2 if 'multires' in case else 1
  assert compared == 3 + 3 * 4 * levels  # final outputs and every unrefined entry
  for name in ('tracks', 'occlusion', 'expected_dist'):
    assert len(out['unrefined_' + name]) == 4 * levels
