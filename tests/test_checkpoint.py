"""Official .npy checkpoints: loading, writing, architecture inference and mismatch diagnostics."""

import numpy as np
import pytest

import tapir
from tests.conftest import SMALL_KWARGS


def test_load_returns_official_module_paths(small_checkpoint):
  params, state = small_checkpoint
  assert state == {}
  assert params['tapir/~/pips_mlp_mixer/linear']['w'].shape == (486, 128)
  assert params['tapir/~/resnet/~/initial_conv']['w'].shape == (7, 7, 3, 64)
  tapir.checkpoint.check_params(params, SMALL_KWARGS)  # fits exactly


def test_infer_model_kwargs(small_checkpoint):
  inferred = tapir.checkpoint.infer_model_kwargs(small_checkpoint[0])
  assert inferred == dict(pyramid_level=0, mixer_hidden_dim=128, num_mixer_blocks=2, blocks_per_group=(1, 1, 1, 1),
                          normalization='instancenorm', extra_convs=False)


def test_save_then_load_round_trips(tmp_path, small_checkpoint):
  params, state = small_checkpoint
  path = tmp_path / 'sub' / 'ckpt.npy'
  tapir.save_checkpoint(path, params, state, global_step=7)
  raw = np.load(path, allow_pickle=True).item()  # the official reader's way
  assert set(raw) == {'params', 'state', 'global_step'} and raw['global_step'] == 7
  loaded, loaded_state = tapir.load_checkpoint(path)
  assert loaded_state == {}
  assert loaded.keys() == params.keys()
  for module in params:
    for name in params[module]:
      np.testing.assert_array_equal(loaded[module][name], params[module][name])
  assert not list(tmp_path.glob('sub/*.tmp'))  # no temporary left behind


def test_mismatch_lists_missing_unexpected_misshaped_and_the_likely_setting(small_checkpoint):
  params = {k: dict(v) for k, v in small_checkpoint[0].items()}
  params['tapir/~/bogus'] = {'w': np.zeros(3)}
  del params['tapir/~/occlusion_out']
  with pytest.raises(ValueError) as error:
    tapir.checkpoint.check_params(params, {**SMALL_KWARGS, 'pyramid_level': 1})
  message = str(error.value)
  assert 'missing: tapir/~/occlusion_out/b, tapir/~/occlusion_out/w' in message
  assert 'unexpected: tapir/~/bogus/w' in message
  assert 'mis-shaped: tapir/~/pips_mlp_mixer/linear/w (486, 128) (model wants (535, 128))' in message
  assert 'pyramid_level=0' in message


def test_load_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.npy'):
    tapir.load_checkpoint(tmp_path / 'nope.npy')
  bad = tmp_path / 'bad.npy'
  bad.write_bytes(b'not numpy at all')
  with pytest.raises(ValueError, match='bad.npy'):
    tapir.load_checkpoint(bad)
  np.save(tmp_path / 'array.npy', np.zeros(3))
  with pytest.raises(ValueError, match="expected a pickled dict with 'params'"):
    tapir.load_checkpoint(tmp_path / 'array.npy')
