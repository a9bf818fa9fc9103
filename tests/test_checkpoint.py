"""Checkpoints: safe official-format loading, our pickle-free format, the architecture rule, diagnostics."""

import os
import re

import numpy as np
import pytest

import tapir
from tapir import checkpoint
from tests.conftest import GOLDEN
from tests.conftest import SMALL_KWARGS

SMALL_ARCH = {k: v for k, v in SMALL_KWARGS.items() if k != 'pyramid_level'}  # shape settings beyond the preset
LAYOUT_SPEC = GOLDEN / 'checkpoint_layout.txt'  # a copy of ../shared/spec/checkpoint_layout.txt


def _equal_trees(a, b):
  assert a.keys() == b.keys()
  for module in a:
    assert a[module].keys() == b[module].keys()
    for name in a[module]:
      np.testing.assert_array_equal(a[module][name], b[module][name])


def test_load_returns_official_module_paths(small_checkpoint):
  params, state = small_checkpoint
  assert state == {}
  assert params['tapir/~/pips_mlp_mixer/linear']['w'].shape == (486, 128)
  assert params['tapir/~/resnet/~/initial_conv']['w'].shape == (7, 7, 3, 64)
  checkpoint.check_params(params, SMALL_KWARGS)  # fits exactly


def test_released_tapnet_file_loads(golden_dir):
  contents = checkpoint.read_checkpoint(golden_dir / 'tapnet_checkpoint_small.npy')
  assert contents.format == 'official' and contents.model_kwargs is None
  assert all(module.startswith('tap_net/~/') for module in contents.params)
  assert contents.state  # batch-norm statistics


# ---------------------------------------------------------------------------------------------------------------
# Safety of the official format.


class _Payload:
  """Unpickling this calls open(target, 'w'): the file appears if the loader runs the payload."""

  def __init__(self, target):
    self.target = str(target)

  def __reduce__(self):
    return (open, (self.target, 'w'))


def _malicious_npy(path, target):
  with open(path, 'wb') as f:  # a file object: np.save would append '.npy' to other names
    np.save(f, np.array({'params': {'m': {'w': _Payload(target)}}, 'state': {}}, dtype=object), allow_pickle=True)


def test_crafted_file_cannot_run_code(tmp_path):
  control, target = tmp_path / 'control_pwned', tmp_path / 'pwned'
  _malicious_npy(tmp_path / 'control.npy', control)
  np.load(tmp_path / 'control.npy', allow_pickle=True)  # an unrestricted load runs the payload ...
  assert control.exists()
  _malicious_npy(tmp_path / 'evil.npy', target)
  with pytest.raises(checkpoint.UnsafeCheckpointError, match=r'evil\.npy: refusing to load io\.open'):
    tapir.load_checkpoint(tmp_path / 'evil.npy')  # ... ours refuses it before it runs
  assert not target.exists()


def test_crafted_file_with_another_name_is_still_refused(tmp_path):
  target = tmp_path / 'pwned'
  _malicious_npy(tmp_path / 'evil.npz', target)  # the name does not decide the reader: content does
  with pytest.raises(checkpoint.UnsafeCheckpointError, match=r'io\.open'):
    checkpoint.read_checkpoint(tmp_path / 'evil.npz')
  assert not target.exists()


def _spec_layouts() -> dict[str, dict[str, dict[str, tuple[int, ...]]]]:
  """The four released layouts of ../shared/spec/checkpoint_layout.txt as {module: {name: shape}}."""
  sections, current = {}, None
  for line in LAYOUT_SPEC.read_text().splitlines():
    if line.startswith('=== '):
      current = sections.setdefault(line[4], {})
      continue
    match = re.fullmatch(r'(tapir/\S+) \| (\w+) \| \(([\d, ]+)\)', line.strip())
    if match and current is not None:
      current.setdefault(match[1], {})[match[2]] = tuple(int(s) for s in match[3].split(',') if s.strip())
  pyramid1 = {m: dict(v) for m, v in sections['A'].items()}
  pyramid1['tapir/~/pips_mlp_mixer/linear']['w'] = (535, 512)
  return {'tapir': sections['A'], 'causal_tapir': pyramid1, 'bootstapir': {**pyramid1, **sections['B']},
          'small': sections['C']}


@pytest.mark.parametrize('layout', ['tapir', 'causal_tapir', 'bootstapir', 'small'])
def test_released_layouts_load(tmp_path, layout):
  """Every released layout's names (tiny arrays: shapes do not matter to the reader) survives the safe reader."""
  spec = _spec_layouts()[layout]
  params = {m: {n: np.full((1,), i, np.float32) for i, n in enumerate(names)} for m, names in spec.items()}
  path = tmp_path / 'released.npy'
  np.save(path, {'params': params, 'state': {}}, allow_pickle=True)  # as the released files were written
  contents = checkpoint.read_checkpoint(path)
  assert contents.format == 'official' and contents.state == {} and contents.model_kwargs is None
  _equal_trees(contents.params, params)


@pytest.mark.parametrize('content, message', [
    ({'params': {}, 'state': {}}, 'empty'),
    ({'params': {'tapir/~/occlusion_out': {}}, 'state': {}}, 'module without arrays'),
    ({'params': {'tapir/~/occlusion_out': {'w': 'text'}}, 'state': {}}, r'\{name: array\}'),
    ({'state': {}}, "expected a pickled dict with 'params'"),
])
def test_empty_or_malformed_params_raise(tmp_path, content, message):
  np.save(tmp_path / 'c.npy', np.array(content, dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match=message):
    tapir.load_checkpoint(tmp_path / 'c.npy')


def test_partial_params_raise_when_building_the_tracker(tmp_path, small_checkpoint):
  params = {k: v for k, v in small_checkpoint[0].items() if k != 'tapir/~/occlusion_out'}
  tapir.save_checkpoint(tmp_path / 'partial.npz', params)
  with pytest.raises(ValueError, match='missing: tapir/~/occlusion_out/b'):
    tapir.Tracker.from_checkpoint(tmp_path / 'partial.npz', preset='tapir', **SMALL_ARCH)


# ---------------------------------------------------------------------------------------------------------------
# Our format, and writing both.


def test_default_format_is_pickle_free_and_round_trips(tmp_path, small_checkpoint):
  params, state = small_checkpoint
  path = tmp_path / 'sub' / 'ckpt.npz'
  tapir.save_checkpoint(path, params, state, model_kwargs=SMALL_KWARGS, global_step=7)
  assert path.read_bytes()[:4] == b'PK\x03\x04'
  with np.load(path, allow_pickle=False) as raw:  # readable without pickle
    assert all(raw[k].dtype != object for k in raw.files)
  contents = checkpoint.read_checkpoint(path)
  assert contents.format == 'tapir' and contents.extra == {'global_step': 7}
  assert contents.model_kwargs == SMALL_KWARGS  # tuples come back as tuples
  _equal_trees(contents.params, params)
  assert contents.state == {}
  assert os.listdir(path.parent) == ['ckpt.npz']  # no temporary left behind


def test_official_export_round_trips_and_reads_in_the_reference_way(tmp_path, small_checkpoint):
  params, state = small_checkpoint
  path = tmp_path / 'ckpt.npy'
  tapir.save_checkpoint(path, params, state, format='official', global_step=7,
                        **{checkpoint.MODEL_KWARGS_KEY: SMALL_KWARGS})
  raw = np.load(path, allow_pickle=True).item()  # the reference loader's way
  assert set(raw) == {'params', 'state', 'global_step', checkpoint.MODEL_KWARGS_KEY, checkpoint.FAMILY_KEY}
  assert raw['global_step'] == 7 and raw[checkpoint.FAMILY_KEY] == 'tapir'
  contents = checkpoint.read_checkpoint(path)
  assert contents.format == 'official' and contents.model_kwargs == SMALL_KWARGS
  assert contents.extra == {'global_step': 7} and contents.family == 'tapir'
  _equal_trees(contents.params, params)


@pytest.mark.parametrize('fmt, name', [('tapir', 'ours.npy'), ('official', 'released.npz'), ('tapir', 'noext')])
def test_format_is_read_from_content_not_name(tmp_path, small_checkpoint, fmt, name):
  tapir.save_checkpoint(tmp_path / name, small_checkpoint[0], format=fmt)
  assert checkpoint.read_checkpoint(tmp_path / name).format == fmt
  assert os.listdir(tmp_path) == [name]  # np.savez did not append '.npz'


def test_failed_write_keeps_the_old_file(tmp_path, small_checkpoint, monkeypatch):
  path = tmp_path / 'ckpt.npz'
  tapir.save_checkpoint(path, small_checkpoint[0], global_step=1)

  def broken(*args, **kwargs):
    raise OSError('disk full')

  monkeypatch.setattr(np, 'savez', broken)
  with pytest.raises(OSError, match='disk full'):
    tapir.save_checkpoint(path, small_checkpoint[0], global_step=2)
  assert checkpoint.read_checkpoint(path).extra == {'global_step': 1}
  assert os.listdir(tmp_path) == ['ckpt.npz']


def test_written_files_get_the_mode_of_a_plain_open(tmp_path, small_checkpoint):
  tapir.save_checkpoint(tmp_path / 'ckpt.npz', small_checkpoint[0])  # atomic: via a mkstemp file (0o600)
  with open(tmp_path / 'plain', 'w'):
    pass
  mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777
  assert mode('ckpt.npz') == mode('plain'), (oct(mode('ckpt.npz')), oct(mode('plain')))


@pytest.mark.parametrize('kwargs, message', [
    (dict(format='pickle'), "format must be 'tapir'"),
    (dict(step=object()), 'JSON-serialisable'),
])
def test_save_bad_arguments_raise(tmp_path, small_checkpoint, kwargs, message):
  with pytest.raises(ValueError, match=message):
    tapir.save_checkpoint(tmp_path / 'c', small_checkpoint[0], **kwargs)


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
  np.savez(tmp_path / 'other.npz', x=np.zeros(3))
  with pytest.raises(ValueError, match='not a TAPIR checkpoint'):
    tapir.load_checkpoint(tmp_path / 'other.npz')


# ---------------------------------------------------------------------------------------------------------------
# The architecture rule.


def _layout_params(layout: str):
  """Zero-strided arrays with the spec's shapes: the rule looks at shapes only."""
  return {m: {n: np.broadcast_to(np.float32(0), s) for n, s in names.items()}
          for m, names in _spec_layouts()[layout].items()}


@pytest.mark.parametrize('layout, overrides, outcome', [
    ('tapir', {}, 'tapir'),  # pyramid_level=0 shows in the layout: only 'tapir' fits
    ('small', SMALL_ARCH, 'tapir'),
    ('causal_tapir', {}, r"fits preset\(s\) \['causal_tapir'\].*causality"),  # causality never shows
    ('bootstapir', {}, r"fits preset\(s\) \['bootstapir', 'causal_bootstapir'\]"),
    ('small', {}, 'fits none of the presets'),
])
def test_released_checkpoint_without_preset(layout, overrides, outcome):
  params = _layout_params(layout)
  if outcome in checkpoint.PRESETS:
    kwargs = checkpoint.resolve_model_kwargs(None, None, params, overrides)
    assert kwargs == {**checkpoint.PRESETS[outcome], **overrides}
    checkpoint.check_params(params, kwargs)
  else:
    with pytest.raises(ValueError, match=outcome):
      checkpoint.resolve_model_kwargs(None, None, params, overrides)


def test_stored_settings_win_and_a_contradicting_preset_is_an_error():
  stored = {**SMALL_KWARGS, 'softmax_temperature': 10.0}
  assert checkpoint.resolve_model_kwargs(stored, None) == stored
  assert checkpoint.resolve_model_kwargs(stored, 'tapir') == stored  # agrees: pyramid_level=0
  with pytest.raises(ValueError, match=r"preset 'bootstapir' contradicts.*pyramid_level=1 \(checkpoint: 0\)"):
    checkpoint.resolve_model_kwargs(stored, 'bootstapir')
  with pytest.raises(ValueError, match=r'use_causal_conv=True \(checkpoint: False\)'):
    checkpoint.resolve_model_kwargs(stored, 'causal_tapir')  # a default in the stored settings counts too
  with pytest.raises(ValueError, match=r'mixer_hidden_dim=64 \(checkpoint: 128\)'):
    checkpoint.resolve_model_kwargs(stored, None, overrides={'mixer_hidden_dim': 64})
  # How to compute (same numbers) is the caller's choice; fine-tuning passes its full config as `preset`.
  config = {**stored, 'remat_refinement': True}
  assert checkpoint.resolve_model_kwargs(stored, config) == config
  with pytest.raises(ValueError, match=r'the requested settings contradict.*num_mixer_blocks=12 \(checkpoint: 2\)'):
    checkpoint.resolve_model_kwargs(stored, {**config, 'num_mixer_blocks': 12})


def test_named_preset_without_stored_settings():
  assert checkpoint.resolve_model_kwargs(None, 'bootstapir', overrides={'num_mixer_blocks': 1}) == {
      **checkpoint.PRESETS['bootstapir'], 'num_mixer_blocks': 1}
  with pytest.raises(ValueError, match='unknown preset'):
    checkpoint.resolve_model_kwargs(None, 'nope')
  with pytest.raises(ValueError, match='name a preset'):
    checkpoint.resolve_model_kwargs(None, None)


def test_tracker_uses_the_rule(tmp_path, small_checkpoint):
  params, state = small_checkpoint
  stored = {**SMALL_KWARGS, 'softmax_temperature': 10.0}
  tapir.save_checkpoint(tmp_path / 'ours.npz', params, state, model_kwargs=stored)
  assert tapir.Tracker.from_checkpoint(tmp_path / 'ours.npz').model_kwargs == stored  # temperature kept
  with pytest.raises(ValueError, match='contradicts'):
    tapir.Tracker.from_checkpoint(tmp_path / 'ours.npz', preset='bootstapir')
  with pytest.raises(ValueError, match='contradicts'):
    tapir.OnlineTracker.from_checkpoint(tmp_path / 'ours.npz', preset='causal_tapir')


def test_mismatch_lists_missing_unexpected_misshaped_and_the_likely_setting(small_checkpoint):
  params = {k: dict(v) for k, v in small_checkpoint[0].items()}
  params['tapir/~/bogus'] = {'w': np.zeros(3)}
  del params['tapir/~/occlusion_out']
  with pytest.raises(ValueError) as error:
    checkpoint.check_params(params, {**SMALL_KWARGS, 'pyramid_level': 1})
  message = str(error.value)
  assert 'missing: tapir/~/occlusion_out/b, tapir/~/occlusion_out/w' in message
  assert 'unexpected: tapir/~/bogus/w' in message
  assert 'mis-shaped: tapir/~/pips_mlp_mixer/linear/w (486, 128) (model wants (535, 128))' in message
  assert 'pyramid_level=0' in message
