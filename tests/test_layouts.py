"""Our module tree produces exactly the parameter layout of the released checkpoints (checkpoint_layout.txt)."""

import re

import haiku as hk
import jax
import numpy as np
import pytest

import tapir
from tests.conftest import GOLDEN


def _section(name: str) -> dict[str, tuple[int, ...]]:
  text = (GOLDEN / 'checkpoint_layout.txt').read_text()
  body = text.split(f'=== {name}.')[1].split('===')[0]
  out = {}
  for module, param, shape in re.findall(r'^(tapir/\S+) \| (\w+) \| \(([\d, ]*)\)', body, flags=re.M):
    out[f'{module}/{param}'] = tuple(int(s) for s in shape.replace(' ', '').split(',') if s)
  return out


def _ours(kwargs) -> dict[str, tuple[int, ...]]:
  shapes = tapir.checkpoint.expected_shapes(kwargs)
  return {f'{m}/{n}': s for m, leaves in shapes.items() for n, s in leaves.items()}


def test_default_tapir_layout():
  assert _ours(dict(pyramid_level=0)) == _section('A')


def test_bootstapir_layout():
  want = {**_section('A'), **_section('B')}
  want['tapir/~/pips_mlp_mixer/linear/w'] = (535, 512)
  assert _ours(dict(pyramid_level=1, extra_convs=True, softmax_temperature=10.0)) == want


def test_small_golden_layout():
  assert _ours(dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=2, mixer_hidden_dim=128,
                    pyramid_level=0)) == _section('C')


@pytest.mark.parametrize('use_tsm', [False, True])
def test_bootstapir_forward_small(use_tsm, rng):
  kwargs = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32, initial_resolution=(32, 32),
                pyramid_level=1, extra_convs=True, softmax_temperature=10.0, num_pips_iter=2,
                extra_convs_kwargs=dict(num_layers=2, use_tsm=use_tsm))
  video = rng.uniform(-1, 1, size=(1, 3, 40, 48, 3)).astype(np.float32)
  queries = np.array([[[0, 3.0, 4.0], [2, 39.0, 47.0], [1.5, 20.0, 20.0]]], np.float32)
  model = hk.transform_with_state(lambda v, q, dense: tapir.TAPIR(
      **kwargs, bilinear_interp_with_depthwise_conv=dense)(v, False, q))
  params, state = jax.jit(model.init, static_argnums=3)(jax.random.PRNGKey(0), video, queries, False)
  # The zero-initialised second convs make a fresh stack a chain of LayerNorms; perturb them.
  params = jax.tree_util.tree_map(lambda x: x + 0.01 * np.sin(np.arange(x.size)).reshape(x.shape), params)
  apply = jax.jit(model.apply, static_argnums=5)
  gather, _ = apply(params, state, None, video, queries, False)
  dense, _ = apply(params, state, None, video, queries, True)
  assert gather['tracks'].shape == (1, 3, 3, 2) and len(gather['unrefined_tracks']) == 2 * 2  # init + 2 levels x 2 iterations - last
  for key in ('tracks', 'occlusion', 'expected_dist'):
    np.testing.assert_allclose(dense[key], gather[key], atol=1e-4, err_msg=key)
