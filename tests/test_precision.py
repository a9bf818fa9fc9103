"""bfloat16 compute for inference (`tapir.models.precision`): what it costs on the golden inputs, that float32
stays the untouched default, that the layers really run in bfloat16, and that bad values are refused by name.

The README's numbers (Performance, "bfloat16 compute") are the ones `test_bfloat16_cost_on_the_golden_inputs`
measures: against float32, tracks move by at most 0.17 px (64×64 and 96×128 inputs) and the logits by at most
0.053; the bounds below leave room for other CPUs' rounding.
"""

import json

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tapir
from tapir.models import precision
from tapir.tracking import cli

TRACK_PX = 0.25  # measured max 0.087 (64x64) and 0.171 (96x128, two refinement levels)
LOGIT = 0.1  # measured max 0.053
TINY = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32, initial_resolution=(32, 32),
            pyramid_level=0)


def _golden_outputs(golden_dir, small_checkpoint, case, dtype):
  config = json.loads((golden_dir / f'{case}.json').read_text())
  golden = np.load(golden_dir / f'{case}.npz')

  def forward(video, query_points):
    with precision.compute_dtype(dtype):
      model = tapir.TAPIR(**config['tapir_kwargs'])
      return model(video, is_training=False, query_points=query_points, query_chunk_size=config['query_chunk_size'])

  out, _ = jax.jit(hk.transform_with_state(forward).apply)(*small_checkpoint, None, golden['video'],
                                                           golden['query_points'])
  return jax.device_get(out), golden


@pytest.mark.parametrize('case', ['tapir_small_square', 'tapir_small_multires_chunked'])
def test_bfloat16_cost_on_the_golden_inputs(case, golden_dir, small_checkpoint):
  full, golden = _golden_outputs(golden_dir, small_checkpoint, case, 'float32')
  half, _ = _golden_outputs(golden_dir, small_checkpoint, case, 'bfloat16')
  np.testing.assert_allclose(full['tracks'], golden['tracks'], atol=1e-3)  # float32 is the golden path
  moved = np.linalg.norm(half['tracks'] - full['tracks'], axis=-1)
  assert half['tracks'].dtype == np.float32 and half['occlusion'].dtype == np.float32
  assert 1e-3 < moved.max() < TRACK_PX, moved.max()  # it does change the computation, by little
  for name in ('occlusion', 'expected_dist'):
    assert np.abs(half[name] - full[name]).max() < LOGIT, name


def test_float32_is_the_default_and_compiles_no_bfloat16():
  tracker = tapir.Tracker.random_init(**TINY)
  assert tracker.dtype == 'float32'
  video = jnp.zeros((1, 2, 32, 32, 3))
  assert 'bf16' not in tracker._features.lower(tracker.params, tracker.state, None, video).as_text()


def test_bfloat16_runs_the_convolutions_and_dense_layers_in_bfloat16():
  tracker = tapir.Tracker.random_init(dtype='bfloat16', **TINY)
  video = jnp.zeros((1, 2, 32, 32, 3))
  text = tracker._features.lower(tracker.params, tracker.state, None, video).as_text()
  convolutions = [line for line in text.splitlines() if 'stablehlo.convolution' in line]
  assert convolutions and all('bf16' in line for line in convolutions)
  stored = jax.tree_util.tree_leaves(tracker.params)
  assert all(leaf.dtype == jnp.float32 for leaf in stored)  # the weights themselves are untouched


def test_online_bfloat16_stays_close_to_float32():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  points = np.array([[8.5, 10.5], [20.5, 24.5]], np.float32)
  outputs = {}
  for dtype in ('float32', 'bfloat16'):
    tracker = tapir.load_tracker(None, 'causal_tapir', online=True, random_weights=True, dtype=dtype, **TINY)
    assert tracker.dtype == dtype
    tracker.start(frames[0], points)
    outputs[dtype] = [tracker.step(frame) for frame in frames[1:]]
  for full, half in zip(outputs['float32'], outputs['bfloat16']):
    assert half.tracks.dtype == np.float32
    np.testing.assert_allclose(half.tracks, full.tracks, atol=TRACK_PX)


def test_offline_trackers_take_the_dtype():
  tracker = tapir.load_tracker(None, 'tapir', random_weights=True, dtype='bfloat16', **TINY)
  video = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  out = tracker.predict(video, np.array([[0, 10.5, 12.5]], np.float32))
  assert out.tracks.shape == (1, 3, 2) and out.tracks.dtype == np.float32
  assert tapir.load_tracker(None, 'tapnet', random_weights=True, dtype='bfloat16').dtype == 'bfloat16'


@pytest.mark.parametrize('bad', ['float16', 'bf16', 'int8', None, True, 3])
def test_bad_dtypes_name_the_argument(bad):
  with pytest.raises(ValueError, match='dtype must be one of'):
    precision.check_compute_dtype(bad)
  with pytest.raises(ValueError, match='dtype must be one of'):
    tapir.Tracker.random_init(dtype=bad, **TINY)
  with pytest.raises(ValueError, match='dtype must be one of'):
    tapir.load_tracker(None, 'causal_tapir', online=True, random_weights=True, dtype=bad, **TINY)


def test_the_command_line_checks_the_dtype_before_loading(tmp_path):
  with pytest.raises(ValueError, match='dtype must be one of'):
    cli.track_file(str(tmp_path / 'missing.mp4'), None, random_weights=True, grid=2, dtype='float16')
