"""Weights to and from the official PyTorch port, without torch (spec torch_export.md; golden torch_export_small).

The goldens were made by the port's authors' conversion and torch itself: the export must reproduce the npz bit for
bit, our reader must get the npz's arrays out of the `.pt` exactly, and a crafted `.pt` must not run code.
"""

import functools
import json
import pickle
import shutil
import struct
import sys
import zipfile

import jax
import numpy as np
import pytest
import safetensors.numpy

import tapir
from tapir import checkpoint
from tapir import checkpoint_torch
from tapir.export import torch as torch_export
from tapir.tracking import tracker
from tests.conftest import GOLDEN

GOLDEN_PT = GOLDEN / 'torch_export_small.pt'
GOLDEN_META = json.loads((GOLDEN / 'torch_export_small.json').read_text())
# A trainer-made architecture that exercises every table row and every flag the port renames or cannot build.
TINY = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32, initial_resolution=(32, 32),
            pyramid_level=1, softmax_temperature=10.0, use_causal_conv=True, extra_convs=True,
            extra_convs_kwargs=dict(num_layers=2, channel_multiplier=1))


@pytest.fixture(scope='module')
def golden_state_dict() -> dict[str, np.ndarray]:
  with np.load(GOLDEN / 'torch_export_small.npz', allow_pickle=False) as z:
    return {k: z[k] for k in z.files if '/' not in k}


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  """A checkpoint as our trainer writes it: our .npz with the model settings stored."""
  params, state = tracker.init_params(TINY)
  path = tmp_path_factory.mktemp('trainer') / 'tiny.npz'
  tapir.save_checkpoint(path, params, state, model_kwargs=TINY, global_step=3)
  return path


def _assert_same_arrays(got, want):
  assert set(got) == set(want), sorted(set(got) ^ set(want))
  for key in want:
    assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
    assert got[key].tobytes() == want[key].tobytes(), f'{key}: values differ'


def _assert_same_trees(got, want):
  assert set(got) == set(want), sorted(set(got) ^ set(want))
  for module in want:
    _assert_same_arrays(got[module], want[module])


# ---------------------------------------------------------------------------------------------------------------
# Export.


def test_export_reproduces_the_golden_bit_for_bit(small_checkpoint, golden_state_dict):
  params, state = small_checkpoint
  exported = torch_export.to_torch_state_dict(params, state, GOLDEN_META['tapir_kwargs'])
  assert len(exported) == GOLDEN_META['state_dict']['num_keys'] == 64
  assert sum(v.size for v in exported.values()) == GOLDEN_META['state_dict']['num_parameters']
  _assert_same_arrays(exported, golden_state_dict)
  assert all(v.flags.c_contiguous for v in exported.values())


def test_written_files_hold_the_golden_and_the_port_constructor(tmp_path, small_checkpoint, golden_state_dict):
  params, state = small_checkpoint
  path = tmp_path / 'small.safetensors'
  with pytest.warns(UserWarning, match=r'cannot honour blocks_per_group=\(1, 1, 1, 1\).*mixer_hidden_dim=128'):
    returned = torch_export.write_torch(path, params, state, GOLDEN_META['tapir_kwargs'])
  _assert_same_arrays(safetensors.numpy.load_file(path), golden_state_dict)
  meta = json.loads((tmp_path / 'small.json').read_text())
  assert meta == returned
  for key in ('tapir_kwargs', 'torch_constructor', 'torch_rebuilt_submodules'):
    assert meta[key] == GOLDEN_META[key], key
  assert list(meta['torch_constructor']) == list(GOLDEN_META['torch_constructor'])  # the port's order too
  assert set(meta['port_cannot_honour']) == {'blocks_per_group', 'mixer_hidden_dim', 'num_mixer_blocks'}
  assert meta['state_dict'] == GOLDEN_META['state_dict']
  assert not list(tmp_path.glob('*.tmp'))  # atomic writes leave nothing behind


@pytest.mark.parametrize('preset, want', [
    ('tapir', dict(pyramid_level=0, extra_convs=False, use_casual_conv=False, softmax_temperature=20.0)),
    ('causal_tapir', dict(pyramid_level=1, extra_convs=False, use_casual_conv=True, softmax_temperature=20.0)),
    ('bootstapir', dict(pyramid_level=1, extra_convs=True, use_casual_conv=False, softmax_temperature=10.0)),
    ('causal_bootstapir', dict(pyramid_level=1, extra_convs=True, use_casual_conv=True, softmax_temperature=10.0)),
])
def test_released_presets_need_nothing_the_port_cannot_build(preset, want):
  args, unhonoured = torch_export.port_constructor_args(checkpoint.PRESETS[preset])
  assert unhonoured == [] and torch_export.rebuilt_submodules(checkpoint.PRESETS[preset]) == {}
  assert {k: args[k] for k in want} == want
  # Passed explicitly where the port's defaults differ from TAPIR's (spec §4).
  assert args['feature_extractor_chunk_size'] == 0 and args['blocks_per_group'] == [2, 2, 2, 2]
  assert list(args) == list(torch_export.PORT_ARGS)


@pytest.mark.parametrize('preset, num_keys, num_values', [('tapir', 188, 31_072_327),
                                                          ('bootstapir', 218, 54_699_335)])
def test_released_layouts_map_to_the_port_keys_and_shapes(preset, num_keys, num_values):
  shapes, _ = jax.eval_shape(functools.partial(tracker.init_params, checkpoint.PRESETS[preset]))
  # Zero-stride views: the full-size layout without allocating it.
  params = {m: {n: np.broadcast_to(np.float32(0), s.shape) for n, s in leaves.items()} for m, leaves in shapes.items()}
  torch_views, dropped = checkpoint_torch.haiku_to_torch(params)
  assert dropped == [] and len(torch_views) == num_keys
  assert sum(v.size for v in torch_views.values()) == num_values
  got = {k: v.shape for k, v in torch_views.items()}
  pyramid_level = checkpoint.PRESETS[preset]['pyramid_level']
  expected = {  # spec §1 and §2's examples
      'resnet_torch.initial_conv.weight': (64, 3, 7, 7),
      'resnet_torch.block_groups.1.blocks.0.proj_conv.weight': (128, 64, 1, 1),
      'resnet_torch.block_groups.3.blocks.1.bn_0.bias': (256,),
      'torch_cost_volume_track_mods.hid1.weight': (16, 1, 3, 3),
      'torch_cost_volume_track_mods.hid3.weight': (32, 16, 3, 3),
      'torch_cost_volume_track_mods.hid4.weight': (16, 32),
      'torch_cost_volume_track_mods.occ_out.weight': (2, 16),
      'torch_pips_mixer.linear.weight': (512, 388 + 49 * (pyramid_level + 2)),
      'torch_pips_mixer.blocks.0.mlp1_up.weight': (2048, 1, 3),
      'torch_pips_mixer.blocks.11.mlp1_up_1.weight': (2048, 1, 3),
      'torch_pips_mixer.blocks.11.conv_channels_mixer.mlp2_down.weight': (512, 2048),
      'torch_pips_mixer.blocks.11.layer_norm_1.weight': (512,),
      'torch_pips_mixer.linear_1.weight': (388, 512),
  }
  if preset == 'bootstapir':
    expected.update({'extra_convs.blocks.3.conv_1.weight': (256, 1024, 3, 3),
                     'extra_convs.blocks.4.conv.weight': (1024, 256, 3, 3),
                     'extra_convs.blocks.4.layer_norm.bias': (256,)})
  assert {k: got[k] for k in expected} == expected
  assert not any(k.startswith('resnet_torch.block_groups.0.blocks.1.proj') for k in got)  # first block only


def test_trainer_checkpoint_exports_with_its_settings_and_comes_back_identical(tmp_path, tiny_checkpoint):
  contents = checkpoint.read_checkpoint(tiny_checkpoint)
  assert contents.format == 'tapir' and contents.model_kwargs == TINY
  out = tmp_path / 'tiny.safetensors'
  with pytest.warns(UserWarning, match='extra_convs_kwargs'):
    torch_export.write_torch(out, contents.params, contents.state, contents.model_kwargs)
  meta = json.loads((tmp_path / 'tiny.json').read_text())
  assert checkpoint_torch.plain_settings(meta['tapir_kwargs']) == TINY
  constructor = meta['torch_constructor']
  assert constructor['use_casual_conv'] is True and 'use_causal_conv' not in constructor  # the port's spelling
  assert constructor['softmax_temperature'] == 10.0 and constructor['pyramid_level'] == 1
  assert constructor['extra_convs'] is True and constructor['initial_resolution'] == [32, 32]
  assert set(meta['port_cannot_honour']) == {'blocks_per_group', 'mixer_hidden_dim', 'num_mixer_blocks',
                                             'extra_convs_kwargs'}
  assert "'input_channels': 535" in meta['torch_rebuilt_submodules']['torch_pips_mixer']
  assert "'use_causal_conv': True" in meta['torch_rebuilt_submodules']['torch_pips_mixer']
  # ours -> port -> ours: the same arrays and settings, whichever way the settings travel.
  back = checkpoint.read_checkpoint(out)
  assert back.format == 'safetensors' and back.state == {} and back.model_kwargs == TINY
  _assert_same_trees(back.params, contents.params)
  alone = tmp_path / 'alone' / 'weights.safetensors'  # without the JSON: the safetensors metadata has them
  alone.parent.mkdir()
  shutil.copy(out, alone)
  assert checkpoint.read_checkpoint(alone).model_kwargs == TINY
  params, state, inferred = checkpoint_torch.from_torch_state_dict(checkpoint_torch.read_torch_state_dict(out))
  _assert_same_trees(params, contents.params)
  assert state == {} and inferred == dict(pyramid_level=1, mixer_hidden_dim=32, num_mixer_blocks=1,
                                          blocks_per_group=(1, 1, 1, 1), extra_convs=True,
                                          extra_convs_kwargs=dict(num_layers=2, channel_multiplier=1))


def test_what_has_no_counterpart(small_checkpoint, golden_state_dict, caplog):
  params, state = small_checkpoint
  kwargs = GOLDEN_META['tapir_kwargs']
  unused = {**params, 'tapir/~/regression_hid': {'w': np.ones((3, 2), np.float32), 'b': np.ones(2, np.float32)}}
  _assert_same_arrays(torch_export.to_torch_state_dict(unused, state, kwargs), golden_state_dict)  # dropped ...
  assert 'tapir/~/regression_hid:w' in caplog.text  # ... with a notice
  with pytest.raises(ValueError, match='keeps no state'):
    torch_export.to_torch_state_dict(params, {'tapir/~/resnet': {'mean': np.zeros(3)}}, kwargs)
  with pytest.raises(ValueError, match=r'no counterpart for tapir/~/somewhere:w'):
    checkpoint_torch.haiku_to_torch({**params, 'tapir/~/somewhere': {'w': np.zeros(1)}})
  with pytest.raises(ValueError, match='InstanceNorm|instance norm'):
    torch_export.to_torch_state_dict(params, state, {**kwargs, 'normalization': 'batchnorm'})
  with pytest.raises(ValueError, match='mixer_hidden_dim'):  # settings that do not describe the arrays
    torch_export.to_torch_state_dict(params, state, {**kwargs, 'mixer_hidden_dim': 64})


# ---------------------------------------------------------------------------------------------------------------
# Import.


def test_golden_pt_reads_exactly_without_torch(golden_state_dict):
  got = checkpoint_torch.read_torch_state_dict(GOLDEN_PT)
  _assert_same_arrays(got, golden_state_dict)
  assert 'torch' not in sys.modules
  assert all(v.flags.writeable and v.flags.c_contiguous for v in got.values())


def test_golden_pt_maps_back_to_the_official_checkpoint(small_checkpoint):
  params, _ = small_checkpoint
  got, state, inferred = checkpoint_torch.from_torch_state_dict(checkpoint_torch.read_torch_state_dict(GOLDEN_PT))
  _assert_same_trees(got, params)
  assert state == {} and inferred == dict(pyramid_level=0, mixer_hidden_dim=128, num_mixer_blocks=2,
                                          blocks_per_group=(1, 1, 1, 1), extra_convs=False)
  contents = checkpoint.read_checkpoint(GOLDEN_PT)  # the json beside it gives the settings
  assert contents.format == 'torch'
  assert contents.model_kwargs == checkpoint_torch.plain_settings(GOLDEN_META['tapir_kwargs'])
  _assert_same_trees(contents.params, params)


def test_import_checks_keys_and_settings(golden_state_dict):
  sd = dict(golden_state_dict)
  with pytest.raises(ValueError, match=r'unexpected keys .*extra\.thing'):
    checkpoint_torch.from_torch_state_dict({**sd, 'extra.thing': np.zeros(1)})
  del sd['torch_cost_volume_track_mods.hid2.bias']
  with pytest.raises(ValueError, match=r'missing torch_cost_volume_track_mods\.hid2\.bias'):
    checkpoint_torch.from_torch_state_dict(sd)
  with pytest.raises(ValueError, match=r'mixer_hidden_dim=512 \(arrays: 128\)'):  # TAPIR's default vs the arrays
    checkpoint_torch.from_torch_state_dict(golden_state_dict, {'pyramid_level': 0, 'blocks_per_group': (1, 1, 1, 1),
                                                               'num_mixer_blocks': 2})


def test_sniffing_by_content(tmp_path, tiny_checkpoint):
  assert checkpoint_torch.is_torch_zip(GOLDEN_PT)
  assert not checkpoint_torch.is_torch_zip(tiny_checkpoint)  # our npz is a zip too
  assert not checkpoint_torch.is_torch_zip(GOLDEN / 'tapir_small_checkpoint.npy')
  encoded = safetensors.numpy.save({'a': np.zeros(3, np.float32)})
  assert checkpoint_torch.is_safetensors(encoded[:16])
  for path in (GOLDEN_PT, tiny_checkpoint, GOLDEN / 'tapir_small_checkpoint.npy'):
    assert not checkpoint_torch.is_safetensors(path.read_bytes()[:16]), path
  assert not checkpoint_torch.is_safetensors(b'{"a": 1}')


# ---------------------------------------------------------------------------------------------------------------
# Hand-written torch pickles (no torch here): the opcodes torch.save writes (see pickletools.dis of the golden).


def _str(s: str) -> bytes:
  return b'X' + struct.pack('<I', len(s.encode())) + s.encode()


def _int(i: int) -> bytes:
  return b'J' + struct.pack('<i', i)


def _ints(values) -> bytes:
  return b'(' + b''.join(_int(v) for v in values) + b't'


def _state_dict_pickle(tensors, storage_global=b'ctorch\nFloatStorage\n') -> bytes:
  """{name: (storage type name, storage key, numel, offset, size, stride)} as torch pickles a state_dict."""
  out = [b'\x80\x02}(']
  for name, (kind, key, numel, offset, size, stride) in tensors.items():
    storage_type = f'ctorch\n{kind}\n'.encode() if kind else storage_global
    out += [_str(name), b'ctorch._utils\n_rebuild_tensor_v2\n(',
            b'(' + _str('storage') + storage_type + _str(key) + _str('cpu') + _int(numel) + b'tQ',
            _int(offset), _ints(size), _ints(stride), b'\x89ccollections\nOrderedDict\n)R', b'tR']
  return b''.join(out) + b'u.'


def _write_pt(path, data_pkl: bytes | None, storages: dict[str, bytes], byteorder: str = 'little'):
  with zipfile.ZipFile(path, 'w') as z:
    if data_pkl is not None:
      z.writestr('archive/data.pkl', data_pkl)
    z.writestr('archive/byteorder', byteorder)
    for key, raw in storages.items():
      z.writestr(f'archive/data/{key}', raw)
  return path


@pytest.mark.parametrize('byteorder', ['little', 'big'])
def test_strides_offsets_shared_storages_and_dtypes(tmp_path, byteorder):
  a = np.arange(24, dtype=np.float32) * 1.5
  h = np.array([1.5, -2.25, 65504.0], np.float16)
  q = np.array([-(2**40), 7, 2**62], np.int64)
  m = np.array([True, False, True, True])
  order = '<' if byteorder == 'little' else '>'
  raw = lambda x: x.astype(x.dtype.newbyteorder(order)).tobytes()
  pkl = _state_dict_pickle({
      'transposed': ('FloatStorage', 'a', 24, 0, (2, 3), (1, 2)),  # a view that is not contiguous
      'offset': ('FloatStorage', 'a', 24, 6, (3, 4), (4, 1)),  # same storage, from element 6
      'scalar': ('FloatStorage', 'a', 24, 23, (), ()),
      'empty': ('FloatStorage', 'a', 24, 0, (0, 5), (5, 1)),
      'half': ('HalfStorage', 'h', 3, 0, (3,), (1,)),
      'long': ('LongStorage', 'q', 3, 1, (2,), (1,)),
      'mask': ('BoolStorage', 'm', 4, 0, (2, 2), (2, 1)),
  })
  path = _write_pt(tmp_path / 'crafted.pt', pkl, {'a': raw(a), 'h': raw(h), 'q': raw(q), 'm': m.tobytes()},
                   byteorder)
  got = checkpoint_torch.read_torch_state_dict(path)
  want = {'transposed': a[:6].reshape(3, 2).T, 'offset': a[6:18].reshape(3, 4), 'scalar': np.float32(a[23]),
          'empty': np.zeros((0, 5), np.float32), 'half': h, 'long': q[1:], 'mask': m.reshape(2, 2)}
  for key, value in want.items():
    assert got[key].dtype == value.dtype and got[key].shape == np.shape(value), key
    np.testing.assert_array_equal(got[key], value)
  assert got['half'].dtype.isnative and got['long'].dtype.isnative


_TARGET = 'PWNED'


def _payloads(target) -> dict[str, bytes]:
  """Pickles that create `target` when an unrestricted unpickler loads them."""
  return {
      'os.system': b'cos\nsystem\n(' + _str(f'touch {target}') + b'tR.',
      'builtins.eval': b'cbuiltins\neval\n(' + _str(f'open({str(target)!r}, "w").close()') + b'tR.',
      'torch.load': b'ctorch\nload\n(' + _str(str(target)) + b'tR.',  # a torch name that is not on the list
  }


@pytest.mark.parametrize('name', ['os.system', 'builtins.eval'])
def test_payloads_work_when_unpickled_unrestricted(tmp_path, name):
  target = tmp_path / _TARGET
  pickle.loads(_payloads(target)[name])  # the control: these do create the file ...
  assert target.exists()


@pytest.mark.parametrize('name', ['os.system', 'builtins.eval', 'torch.load'])
@pytest.mark.parametrize('where', ['top', 'storage_type'])
def test_crafted_pt_is_refused_naming_the_global(tmp_path, name, where):
  target = tmp_path / _TARGET
  payload = _payloads(target)[name]
  if where == 'storage_type':  # hidden inside an otherwise valid state_dict, where torch.FloatStorage goes
    module, attr = name.split('.')
    payload = _state_dict_pickle({'w': (None, '0', 1, 0, (1,), (1,))},
                                 storage_global=f'c{module}\n{attr}\n'.encode())
  path = _write_pt(tmp_path / 'evil.pt', payload, {'0': b'\0' * 4})
  for read in (checkpoint.read_checkpoint, checkpoint_torch.read_torch_state_dict):
    with pytest.raises(checkpoint.UnsafeCheckpointError, match=rf'evil\.pt: refusing to load {name}'):
      read(path)
  assert not target.exists()  # ... ours never runs them


def test_malformed_files_raise_value_error_naming_the_file(tmp_path):
  blob = GOLDEN_PT.read_bytes()
  truncated = tmp_path / 'truncated.pt'
  truncated.write_bytes(blob[:len(blob) // 2])
  with pytest.raises(ValueError, match=r'truncated\.pt: not a readable zip'):
    checkpoint_torch.read_torch_state_dict(truncated)
  with pytest.raises(ValueError, match=r'truncated\.pt'):  # no zip directory left: not recognisable as torch's
    checkpoint.read_checkpoint(truncated)
  no_pickle = _write_pt(tmp_path / 'no_pickle.pt', None, {'0': b'\0' * 4})
  with pytest.raises(ValueError, match=r'no_pickle\.pt: .*data\.pkl'):
    checkpoint_torch.read_torch_state_dict(no_pickle)
  with pytest.raises(ValueError, match=r'no_pickle\.pt'):
    checkpoint.read_checkpoint(no_pickle)
  short = tmp_path / 'short.pt'  # the golden with one storage cut in half
  with zipfile.ZipFile(GOLDEN_PT) as src, zipfile.ZipFile(short, 'w') as dst:
    for info in src.infolist():
      data = src.read(info)
      dst.writestr(info.filename, data[:len(data) // 2] if info.filename.endswith('/data/1') else data)
  for read in (checkpoint.read_checkpoint, checkpoint_torch.read_torch_state_dict):
    with pytest.raises(ValueError, match=r'short\.pt: .*storage 1 .* holds 9216 bytes'):
      read(short)
  past_the_end = _write_pt(tmp_path / 'past_the_end.pt', _state_dict_pickle(
      {'w': ('FloatStorage', '0', 4, 2, (2, 2), (2, 1))}), {'0': b'\0' * 16})
  with pytest.raises(ValueError, match=r'past_the_end\.pt: .*reads element 5 of storage 0, which holds 4'):
    checkpoint_torch.read_torch_state_dict(past_the_end)
  not_a_dict = _write_pt(tmp_path / 'list.pt', pickle.dumps([1, 2], protocol=2), {})
  with pytest.raises(ValueError, match=r'list\.pt: expected a state_dict'):
    checkpoint_torch.read_torch_state_dict(not_a_dict)
  cut = tmp_path / 'cut.safetensors'
  cut.write_bytes(safetensors.numpy.save({'a': np.zeros(100, np.float32)})[:200])
  for read in (checkpoint.read_checkpoint, checkpoint_torch.read_torch_state_dict):
    with pytest.raises(ValueError, match=r'cut\.safetensors: cannot read the safetensors file'):
      read(cut)
