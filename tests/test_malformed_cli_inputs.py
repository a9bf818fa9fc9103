"""Generated malformed command-line inputs (issue 22): checkpoints of both formats, video files, query arguments
and mask images, config overrides. Same contract as test_malformed_inputs.py, whose helpers these tests use:
a ValueError (or the documented type) naming the input, no hang, no file created.
"""

import functools
import io
import json
import pathlib

from absl import flags
from hypothesis import example, given, strategies as st
from ml_collections import config_flags
import numpy as np
from PIL import Image
import pytest

import tapir
from tapir import checkpoint, checkpoint_io, safe_pickle
from tapir import video as video_io
from tapir.data import tapvid
from tapir.tracking import queries
from tests.test_malformed_inputs import (FAST, SLOW, WRONG_VALUES, damaged, fails, garbage, outcome, scratch,
                                         to_bytes, valid_mp4, write)

REPO = pathlib.Path(__file__).resolve().parents[1]
NPY_MAGIC = checkpoint_io.NPY_MAGIC

# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: `tapir.checkpoint.read_checkpoint` on official .npy pickles and our .npz.

PARAMS = {'tapir/~/x': {'w': np.zeros(2, np.float32)}}


@functools.cache
def _valid_checkpoint(fmt: str) -> bytes:
  with scratch() as d:
    path = pathlib.Path(d) / 'ckpt'
    tapir.save_checkpoint(path, PARAMS, {'tapir/~/bn': {'mean': np.ones(1)}}, format=fmt,
                          model_kwargs={'pyramid_level': 0}, global_step=3)
    return path.read_bytes()


def _read(path):
  contents = checkpoint.read_checkpoint(path)
  for tree in (contents.params, contents.state):
    assert all(isinstance(v, np.ndarray) for leaves in tree.values() for v in leaves.values())
  assert contents.model_kwargs is None or isinstance(contents.model_kwargs, dict)
  assert isinstance(contents.extra, dict)
  return contents


@SLOW
@given(fmt=st.sampled_from(['official', 'tapir']), data=st.data())
def test_checkpoint_damaged(fmt, data):
  """Truncations and byte flips of an official .npy and of our .npz: they read (intact), or a ValueError."""
  blob = data.draw(damaged(_valid_checkpoint(fmt)))
  with scratch() as d:
    path = write(pathlib.Path(d) / 'ckpt.npy', blob)
    outcome(lambda: _read(path), pathlib.Path(d), path)


@FAST
@given(blob=garbage(NPY_MAGIC, NPY_MAGIC + b'\x01\x00', NPY_MAGIC + b'\x02\x00', checkpoint_io.ZIP_MAGIC))
@example(blob=NPY_MAGIC + b'\x01\x00\x06\x00{bad}\n')  # the .npy header: was numpy's ValueError, no path
@example(blob=checkpoint_io.ZIP_MAGIC)  # was zipfile.BadZipFile
def test_checkpoint_garbage(blob):
  with scratch() as d:
    path = write(pathlib.Path(d) / 'ckpt.npz', blob)
    fails(lambda: _read(path), pathlib.Path(d), path)


# The PyTorch port's formats: a torch-written `.pt` (a zip of a pickle and raw storages) and `.safetensors`.
TORCH_PT = REPO / 'tests' / 'fixtures' / 'torch_export_small.pt'


@functools.cache
def _valid_safetensors() -> bytes:
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  with np.load(REPO / 'tests' / 'fixtures' / 'torch_export_small.npz') as arrays:
    return safetensors.numpy.save({k: arrays[k] for k in arrays.files})


@SLOW
@given(fmt=st.sampled_from(['pt', 'safetensors']), data=st.data())
def test_torch_checkpoint_damaged(fmt, data):
  """Truncations and byte flips of the torch-written .pt and of a .safetensors: they read, or a ValueError."""
  blob = data.draw(damaged(TORCH_PT.read_bytes() if fmt == 'pt' else _valid_safetensors()))
  with scratch() as d:
    path = write(pathlib.Path(d) / f'ckpt.{fmt}', blob)
    outcome(lambda: _read(path), pathlib.Path(d), path)


@FAST
@given(blob=garbage(checkpoint_io.ZIP_MAGIC, b'\x08\x00\x00\x00\x00\x00\x00\x00{', b'\x40\x00\x00\x00\x00\x00\x00\x00'))
def test_torch_checkpoint_garbage(blob):
  with scratch() as d:
    path = write(pathlib.Path(d) / 'ckpt.pt', blob)
    fails(lambda: _read(path), pathlib.Path(d), path)


def _npy_of_pickle(payload: bytes) -> bytes:
  """An official-format .npy header for a 0-d object array, followed by `payload` as its pickle."""
  f = io.BytesIO()
  np.lib.format.write_array_header_1_0(f, {'descr': '|O', 'fortran_order': False, 'shape': ()})
  return f.getvalue() + payload


def _global_pickle(module: str, name: str) -> bytes:
  """Protocol-4 pickle calling module.name() (STACK_GLOBAL, EMPTY_TUPLE, REDUCE)."""
  def short(s):
    b = s.encode('utf-8')
    return b'\x8c' + bytes([len(b)]) + b if len(b) < 256 else b'X' + len(b).to_bytes(4, 'little') + b
  return b'\x80\x04' + short(module) + short(name) + b'\x93)R.'


IDENTIFIERS = st.text(st.characters(blacklist_categories=('Cs',)), min_size=1, max_size=12)


@FAST
@given(module=st.one_of(st.sampled_from(['os', 'builtins', 'subprocess', 'numpy', 'posix']), IDENTIFIERS),
       name=st.one_of(st.sampled_from(['system', 'eval', 'Popen', 'load', 'exec']), IDENTIFIERS))
def test_forbidden_globals(module, name):
  """A pickle naming any global off the allow-list: UnsafeCheckpointError / UnsafePickleError naming it."""
  if (module, name) in safe_pickle.ALLOWED_GLOBALS:
    return
  with scratch() as d:
    root = pathlib.Path(d)
    ckpt = write(root / 'ckpt.npy', _npy_of_pickle(_global_pickle(module, name)))
    outcome(lambda: _read(ckpt), root, f'{module}.{name}', types=(checkpoint.UnsafeCheckpointError,))
    outcome(lambda: _read(ckpt), root, str(ckpt), types=(checkpoint.UnsafeCheckpointError,))
    davis = write(root / 'davis.pkl', _global_pickle(module, name))
    outcome(lambda: list(tapvid.read_davis(davis, 'first')), root, str(davis), types=(safe_pickle.UnsafePickleError,))


LEAVES = st.one_of(st.builds(np.zeros, st.integers(0, 2)), WRONG_VALUES)
TREES = st.one_of(WRONG_VALUES, st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), st.one_of(
    WRONG_VALUES, st.dictionaries(st.text(max_size=3), LEAVES, max_size=2)), max_size=2))


@FAST
@given(params=TREES, state=st.none() | TREES.filter(lambda t: not isinstance(t, np.ndarray)),
       kwargs=st.none() | st.just({'pyramid_level': 1}), drop_params=st.booleans())
def test_official_checkpoint_wrong_structure(params, state, kwargs, drop_params):
  """Pickled trees of the wrong shape (array states and odd settings: the xfail test below)."""
  content = {'state': state} if drop_params else {'params': params, 'state': state}
  if kwargs is not None:
    content[checkpoint.MODEL_KWARGS_KEY] = kwargs
  with scratch() as d:
    path = pathlib.Path(d) / 'ckpt.npy'
    np.save(path, content, allow_pickle=True)
    result = outcome(lambda: _read(path), pathlib.Path(d), path)
    assert result is None or not drop_params


@pytest.mark.parametrize('entry', [{'state': np.zeros(3)}, {checkpoint.MODEL_KWARGS_KEY: 3},
                                   {checkpoint.MODEL_KWARGS_KEY: ['ab']}])
def test_official_checkpoint_bad_state_or_settings(entry):
  with scratch() as d:
    path = pathlib.Path(d) / 'ckpt.npy'
    np.save(path, {'params': PARAMS, **entry}, allow_pickle=True)
    fails(lambda: _read(path), pathlib.Path(d), path)


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.text(max_size=6)),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3), max_leaves=6)


@FAST
@given(field=st.sampled_from(['format_version', 'arrays', 'model_kwargs', 'extra', None]), value=JSON,
       raw=st.none() | st.binary(max_size=20), drop_array=st.booleans())
@example(field=None, value=None, raw=b'\xff', drop_array=False)  # was UnicodeDecodeError, no path
@example(field='arrays', value=3, raw=None, drop_array=False)  # was TypeError
@example(field='extra', value=[1], raw=None, drop_array=False)  # was accepted
@example(field=None, value=None, raw=None, drop_array=True)  # was KeyError
def test_npz_checkpoint_wrong_metadata(field, value, raw, drop_array):
  """Our .npz with its JSON metadata replaced field by field, or by raw bytes, or its array entry missing."""
  meta = {'format_version': 1, 'arrays': [['params', 'tapir/~/x', 'w']], 'model_kwargs': None, 'extra': {}}
  if field is not None:
    meta[field] = value
  encoded = raw if raw is not None else json.dumps(meta).encode('utf-8')
  arrays = {} if drop_array else {'a0': np.zeros(2)}
  with scratch() as d:
    path = pathlib.Path(d) / 'ckpt.npz'
    np.savez(path, **arrays, **{checkpoint_io.METADATA_ENTRY: np.frombuffer(encoded, np.uint8)})
    result = outcome(lambda: _read(path), pathlib.Path(d), path)
    assert result or field or raw is not None or drop_array, 'the valid file did not read'


@FAST
@given(value=WRONG_VALUES)
@example(value=None)  # an object array: was numpy's ValueError without the path
def test_npz_checkpoint_wrong_arrays(value):
  meta = json.dumps({'format_version': 1, 'arrays': [['params', 'tapir/~/x', 'w']]}).encode()
  value = np.asarray(value)  # None, text: object / str arrays
  with scratch() as d:
    path = pathlib.Path(d) / 'ckpt.npz'
    np.savez(path, a0=value, **{checkpoint_io.METADATA_ENTRY: np.frombuffer(meta, np.uint8)})
    outcome(lambda: _read(path), pathlib.Path(d), path)


# ---------------------------------------------------------------------------------------------------------------
# Video files.


def _probe(path):
  info = video_io.probe(path)
  assert info.num_frames >= 1 and info.height >= 1 and info.width >= 1 and info.fps > 0
  return info


def _frames(path):
  with video_io.FrameReader(path) as reader:
    frames = list(reader)
  assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[-1] == 3 for f in frames)
  return frames


def _whole(path):
  video, fps = video_io.read_video(path)
  assert video.dtype == np.uint8 and video.ndim == 4 and video.shape[0] >= 1 and fps > 0
  return video


VIDEO_READERS = {'probe': _probe, 'frames': _frames, 'read_video': _whole}


@SLOW
@given(reader=st.sampled_from(sorted(VIDEO_READERS)),
       blob=st.deferred(lambda: damaged(valid_mp4()) | garbage(b'\x00\x00\x00\x20ftypisom')))
def test_video_damaged(reader, blob):
  with scratch() as d:
    path = write(pathlib.Path(d) / 'clip.mp4', blob)
    outcome(lambda: VIDEO_READERS[reader](path), pathlib.Path(d), path)


@pytest.mark.parametrize('reader', sorted(VIDEO_READERS))
def test_video_missing_or_directory(reader, tmp_path):
  for path in (tmp_path / 'missing.mp4', tmp_path):
    fails(lambda: VIDEO_READERS[reader](path), tmp_path, path)


# ---------------------------------------------------------------------------------------------------------------
# Queries from the command line: --points strings, --grid / --mask_frame values, mask images.


@FAST
@given(spec=st.text(alphabet=st.sampled_from('0123456789.,;-+e nainf_x\t'), max_size=30))
@example(spec='0,1e39,0')  # finite as float64, inf as float32: was returned
def test_parse_points(spec):
  try:
    points = queries.parse_points(spec)
  except ValueError as e:  # names the whole spec or the item it could not parse
    assert any(repr(s) in str(e) for s in [spec] + [item.strip() for item in spec.split(';')]), str(e)
  else:
    assert points.dtype == np.float32 and points.ndim == 2 and points.shape[1] == 3
    assert np.isfinite(points).all(), f'{spec!r} -> {points}'


ARGUMENT_VALUES = st.one_of(st.none(), st.integers(-2, 40), st.floats(-1, 5), st.booleans(), st.text(max_size=3))


@FAST
@given(video_shape=st.tuples(st.integers(1, 4), st.integers(1, 20), st.integers(1, 20)), grid=ARGUMENT_VALUES,
       points=st.none() | st.text(alphabet='0123456789.,;-', max_size=12), mask=st.booleans(),
       mask_frame=ARGUMENT_VALUES)
@example(video_shape=(1, 4, 4), grid='', points=None, mask=False, mask_frame=None)  # was a TypeError
@example(video_shape=(1, 4, 4), grid=2.5, points=None, mask=False, mask_frame=None)  # was a 3x3 grid
@example(video_shape=(2, 4, 4), grid=None, points=None, mask=True, mask_frame=0.5)  # was queries at t=0.5
def test_make_query_points(video_shape, grid, points, mask, mask_frame):
  with scratch() as d:
    root = pathlib.Path(d)
    kwargs = dict(grid=grid, points=points, mask=None)
    if mask:
      kwargs['mask'] = str(root / 'mask.png')
      Image.fromarray(np.full(video_shape[1:], 255, np.uint8)).save(kwargs['mask'])
    if mask_frame is not None:
      kwargs['mask_frame'] = mask_frame
    names = ['--grid', '--points', '--mask', 'query points', 'point', repr(grid), repr(mask_frame), str(points)]
    result = outcome(lambda: queries.make_query_points(video_shape, **kwargs), root, *names)
    if result is not None:
      assert result.dtype == np.float32 and result.shape[1:] == (3,) and np.isfinite(result).all()
      assert np.array_equal(result[:, 0], np.round(result[:, 0])), 'fractional query frames'


@functools.cache
def _png() -> bytes:
  return to_bytes(lambda f: Image.fromarray(np.eye(6, 8, dtype=np.uint8) * 255).save(f, format='PNG'))


@FAST
@given(blob=st.deferred(lambda: damaged(_png()) | garbage(b'\x89PNG\r\n\x1a\n', b'GIF89a', b'\xff\xd8\xff')),
       frame_hw=st.sampled_from([(6, 8), (8, 6)]))
def test_load_mask_damaged(blob, frame_hw):
  with scratch() as d:
    path = write(pathlib.Path(d) / 'mask.png', blob)
    mask = outcome(lambda: queries.load_mask(path, frame_hw), pathlib.Path(d), path)
    assert mask is None or (mask.dtype == bool and mask.shape == frame_hw)


# ---------------------------------------------------------------------------------------------------------------
# Config overrides, parsed as `experiments/train.py` parses them (absl flags + ml_collections config_flags).


def _flat_fields(config, prefix=''):
  """(dotted name, value, type) of every leaf; placeholders have value None and their declared type."""
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _flat_fields(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value, config.get_type(key)


def _parse_overrides(*overrides: str):
  argv = ['train', f'--config={REPO / "configs" / "tapir.py"}:tiny', *overrides]
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values, lock_config=True,
                                           sys_argv=argv)
  flag_values(argv)
  return holder.value


@functools.cache
def _fields() -> dict:
  return {name: (value, kind) for name, value, kind in _flat_fields(_parse_overrides())}


@FAST
@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')  # ml_collections loading the config
@given(field=st.sampled_from(sorted(_fields())), typo=st.sampled_from(['', 'x', '_', '.x']),
       value=st.text(alphabet='0123456789.,()[]-eTrufalsFx \'"', max_size=8))
def test_config_overrides(field, typo, value):
  """A mistyped field or a value of the wrong type fails naming the field; a good one sets a value of its type.

  ml_collections raises AttributeError for an unknown field (KeyError, ValueError for a path through an int or an
  unset placeholder), absl IllegalFlagValueError for a bad value: `experiments/train.py` exits with the message.
  """
  default, kind = _fields()[field]
  if typo == '.x' and isinstance(default, (str, tuple)):
    return  # ml_collections raises TypeError without the field's name: test_config_path_through_a_scalar
  with scratch() as d:
    name = field + typo
    config = outcome(lambda: _parse_overrides(f'--config.{name}={value}'), pathlib.Path(d), name.split('.')[-1],
                     types=(flags.Error, AttributeError, KeyError, ValueError))
    if typo:
      assert config is None, f'accepted the unknown field {name}'
    elif config is not None:
      got = functools.reduce(lambda c, part: c[part], field.split('.'), config)
      assert got is None or isinstance(got, kind), f'--config.{field}={value!r} gave {got!r}, not a {kind}'


@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')
@pytest.mark.xfail(strict=True, raises=TypeError, reason='ml_collections config_flags indexes the str / tuple value '
                   "with 'x' and raises TypeError('string indices must be integers'), naming no field; needs a "
                   'check in experiments/train.py (or upstream), outside the readers')
@pytest.mark.parametrize('field', ['data.source', 'model.blocks_per_group'])
def test_config_path_through_a_scalar(field):
  with pytest.raises((flags.Error, AttributeError, KeyError), match=f'{field}.x'):
    _parse_overrides(f'--config.{field}.x=1')
