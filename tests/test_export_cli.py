"""`tapir.export.command.export_model` and the `experiments.export` runner: every format reads back as the same weights.

One tiny random TAPIR, saved as our checkpoint, goes out in each format and comes back through
`tapir.checkpoint.read_checkpoint` (the jax artifact through `read_artifact`).
"""

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

import tapir
from tapir import checkpoint
from tapir.export import command
from tapir.export import jax_artifact
from tapir.tracking import tracker
from tests.conftest import REPO

TINY = checkpoint.preset_kwargs('tapir', blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32,
                                initial_resolution=(32, 32))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """(path of our .npz with the settings stored, params, state)."""
  params, state = tracker.init_params(TINY)
  path = tmp_path_factory.mktemp('tiny') / 'tiny.npz'
  tapir.save_checkpoint(path, params, state, model_kwargs=TINY)
  return str(path), *checkpoint.load_checkpoint(path)


def _assert_same_trees(got, want):
  assert set(got) == set(want), sorted(set(got) ^ set(want))
  for module in want:
    assert set(got[module]) == set(want[module]), module
    for name, value in want[module].items():
      assert got[module][name].dtype == value.dtype and got[module][name].tobytes() == value.tobytes(), (module, name)


@pytest.mark.parametrize('to, name, file_format', [('npz', 'out.npz', 'tapir'), ('official', 'out.npy', 'official'),
                                                    ('torch', 'out.safetensors', 'safetensors')])
def test_each_format_reads_back_as_the_same_weights(tmp_path, tiny, to, name, file_format):
  path, params, state = tiny
  out = tmp_path / name
  with pytest.warns(UserWarning, match='cannot honour') if to == 'torch' else contextlib.nullcontext():
    written = command.export_model(out, to, path)
  assert written.paths[0] == str(out) and written.sizes[0] == os.path.getsize(out)
  back = checkpoint.read_checkpoint(out)
  assert back.format == file_format and back.family == 'tapir'
  _assert_same_trees(back.params, params)
  _assert_same_trees(back.state, state)
  assert back.model_kwargs == TINY
  if to == 'torch':
    assert written.paths[1] == str(tmp_path / 'out.json') and os.path.exists(written.paths[1])
  if to == 'official':  # what the reference loader does with it
    content = np.load(out, allow_pickle=True).item()
    assert isinstance(content, dict) and set(content['params']) == set(params) and content['state'] == state


def test_jax_format_makes_a_loadable_artifact(tmp_path, tiny):
  path, _, _ = tiny
  out = tmp_path / 'tiny.jaxexport'
  written = command.export_model(out, 'jax', path, frames=3, num_points=2, height=40, width=48,
                                 platforms=('cpu', 'cuda'))  # lowered for both; runs here on the CPU
  artifact = jax_artifact.read_artifact(out)
  header = artifact.header
  assert written.sizes == (os.path.getsize(out),) and header['kind'] == 'offline' and header['symbolic'] == {}
  assert header['fixed'] == dict(height=40, width=48, frames=3, num_points=2)
  assert header['source'] == dict(preset='tapir', checkpoint=path) and header['platforms'] == ['cpu', 'cuda']
  assert artifact.functions['track'].platforms == ('cpu', 'cuda')
  video = np.zeros((3, 40, 48, 3), np.uint8)
  tracks, visible, occlusion, expected_dist = artifact.functions['track'].call(video, np.array(
      [[0, 20.5, 24.5], [2, 1, 47]], np.float32))
  assert tracks.shape == (2, 3, 2) and visible.shape == occlusion.shape == expected_dist.shape == (2, 3)
  assert np.isfinite(np.asarray(tracks)).all()


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(to='onnx'), ValueError, 'to must be one of npz, official, torch, jax'),
    (dict(to='npz', frames=4), ValueError, "frames applies only to the jax format"),
    (dict(to='official', artifact='online'), ValueError, 'artifact applies only'),
    (dict(to='jax', artifact='online'), ValueError, 'use_causal_conv'),
    (dict(to='jax', artifact='batch'), ValueError, 'kind must be one of'),
    (dict(to='jax', num_points=0), ValueError, 'num_points'),
    (dict(to='npz', model_overrides={'mixer_hidden_dim': 64}), ValueError, 'contradict the settings stored'),
    (dict(to='npz', checkpoint='missing.npz'), FileNotFoundError, 'missing.npz'),
    (dict(to='npz', checkpoint=None), ValueError, 'random_weights'),
    (dict(to='torch', checkpoint=str(REPO / 'tests' / 'fixtures' / 'tapnet_checkpoint_small.npy')), ValueError,
     'TAPIR models only'),
])
def test_settings_that_do_not_fit_are_named(tmp_path, tiny, kwargs, error, message):
  kwargs = {'checkpoint': tiny[0], **kwargs}
  with pytest.raises(error, match=message):
    command.export_model(tmp_path / 'out', **kwargs)
  assert not os.path.exists(tmp_path / 'out')


def test_out_must_be_a_file(tmp_path, tiny):
  with pytest.raises(ValueError, match='is a directory'):
    command.export_model(tmp_path, 'npz', tiny[0])


def _runner(*flags):
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  return subprocess.run([sys.executable, '-m', 'experiments.export', *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_runner_errors_are_one_clean_line(tmp_path, tiny):
  for flags, message in [
      (('--to', 'onnx', '--checkpoint', tiny[0]), 'error: to must be one of npz, official, torch, jax'),
      (('--to', 'npz', '--checkpoint', str(tmp_path / 'gone.npy')), f'error: checkpoint not found: {tmp_path}'),
  ]:
    proc = _runner(*flags, '--out', str(tmp_path / 'out'))
    assert proc.returncode != 0
    assert message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / 'out')
