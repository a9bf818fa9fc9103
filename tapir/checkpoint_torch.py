"""Weights of the official PyTorch port of TAPIR (`tapnet/torch`): the name/layout table, and readers without torch.

The port's `state_dict` holds the same numbers as our Haiku tree under other names and in other layouts
(../shared/spec/torch_export.md §2). `key_table` lists every (Haiku module, Haiku param, torch key, transform) of
one architecture; the export (`tapir.export.torch`, via `haiku_to_torch`) and the import (`from_torch_state_dict`)
both read it, so the two directions cannot drift apart. Transforms are exact axis permutations:
  conv       Conv2D w [kh, kw, c_in, c_out] (HWIO)   <-> [c_out, c_in, kh, kw] (OIHW)
  linear     Linear w [c_in, c_out]                  <-> [c_out, c_in]
  depthwise  DepthwiseConv1D w [k, 1, c*m]           <-> [c*m, 1, k] (channel order c*m + j in both)
  none       biases, norm scales and offsets.

Files (told apart by content, `is_torch_zip` / `is_safetensors`):
  .pt           torch.save's zip: `<prefix>/data.pkl` pickles {key: torch._utils._rebuild_tensor_v2(storage, offset,
                size, stride, ...)}, `storage` a persistent id ('storage', torch.<Type>Storage, key, location, numel)
                naming the raw bytes `<prefix>/data/<key>` (order: `<prefix>/byteorder`). `tapir.safe_pickle` reads it
                with stand-ins: those torch names resolve to our functions that rebuild numpy arrays, so torch is
                never imported and nothing of it runs; any other global raises `UnsafeCheckpointError`.
  .safetensors  u64 little-endian header length, a JSON header, raw bytes; read by the `safetensors` package.
Settings travel as `tapir_kwargs` in `<name>.json` beside the weights (`tapir.export.torch`, the goldens) or in the
safetensors metadata.
"""

import collections
import inspect
import io
import json
import math
import os
import re
import zipfile
from typing import Any, Mapping, NamedTuple

from absl import logging
import ml_dtypes
import numpy as np

from tapir import safe_pickle
from tapir.checkpoint_io import UnsafeCheckpointError
from tapir.models import refinement

TRANSFORMS: dict[str, tuple[int, ...] | None] = {  # Haiku axes -> torch axes (np.transpose order)
    'conv': (3, 2, 0, 1), 'linear': (1, 0), 'depthwise': (2, 1, 0), 'none': None}
# Declared by the JAX TAPIR but never called: no checkpoint should hold them, and the port has no such modules.
UNUSED_MODULES = ('regression_hid', 'regression_out', 'conv_stats_conv1', 'conv_stats_conv2', 'conv_stats_linear')
EXTRA_CONVS_DEFAULTS = dict(num_layers=5, channel_multiplier=4, use_tsm=False)  # the only extra convs the port has
SETTINGS_KEY = 'tapir_kwargs'  # in the .json beside the weights and in the safetensors metadata
_SHAPE_SETTINGS = ('pyramid_level', 'mixer_hidden_dim', 'num_mixer_blocks', 'blocks_per_group', 'extra_convs',
                   'extra_convs_kwargs', 'normalization')  # what a state_dict's key set and shapes decide


class Entry(NamedTuple):
  module: str  # Haiku module path without the model prefix, e.g. 'resnet/~/initial_conv'
  param: str  # Haiku param name: 'w', 'b', 'scale', 'offset'
  torch_key: str  # e.g. 'resnet_torch.initial_conv.weight'
  transform: str  # a TRANSFORMS key


class Structure(NamedTuple):  # what decides the key set: block counts (shapes do not)
  blocks_per_group: tuple[int, ...]  # ResNet blocks per group, 4 groups
  num_mixer_blocks: int
  num_extra_layers: int  # BootsTAPIR extra convs; 0 without


def _numbered(name: str, i: int) -> str:
  """Haiku's names for repeated modules: name, name_1, name_2, ..."""
  return name if i == 0 else f'{name}_{i}'


_TORCH_NAMES = {'w': 'weight', 'b': 'bias', 'scale': 'weight', 'offset': 'bias'}
_NORM, _SCALE, _W = ('scale', 'offset'), ('scale',), ('w',)  # which params a module has (default: w and b)
_COST_VOLUME = (('cost_volume_regression_1', 'hid1', 'conv'), ('cost_volume_regression_2', 'hid2', 'conv'),
                ('cost_volume_occlusion_1', 'hid3', 'conv'), ('cost_volume_occlusion_2', 'hid4', 'linear'),
                ('occlusion_out', 'occ_out', 'linear'))


def _rows(ours: str, port: str, transform: str = 'none', params=('w', 'b')) -> list[Entry]:
  """One module's entries: its weight `w` gets `transform`; biases, norm scales and offsets are copied."""
  return [Entry(ours, p, f'{port}.{_TORCH_NAMES[p]}', transform if p == 'w' else 'none') for p in params]


def key_table(structure: Structure) -> tuple[Entry, ...]:
  """Every Haiku parameter of the architecture with its torch key and transform (spec §2), in torch order."""
  out = _rows('resnet/~/initial_conv', 'resnet_torch.initial_conv', 'conv', _W)
  for g, num_blocks in enumerate(structure.blocks_per_group):
    for b in range(num_blocks):
      ours, port = f'resnet/~/block_group_{g}/~/block_{b}/~/', f'resnet_torch.block_groups.{g}.blocks.{b}.'
      out += _rows(ours + 'conv_0', port + 'conv_0', 'conv', _W) + _rows(ours + 'conv_1', port + 'conv_1', 'conv', _W)
      if b == 0:  # the 1x1 projection shortcut of each group's first block
        out += _rows(ours + 'shortcut_conv', port + 'proj_conv', 'conv', _W)
      out += _rows(ours + 'instancenorm_0', port + 'bn_0', params=_NORM) + _rows(ours + 'instancenorm_1', port + 'bn_1',
                                                                                 params=_NORM)
  for ours, port, transform in _COST_VOLUME:
    out += _rows(ours, f'torch_cost_volume_track_mods.{port}', transform)
  out += _rows('pips_mlp_mixer/linear', 'torch_pips_mixer.linear', 'linear')
  for i in range(structure.num_mixer_blocks):
    ours, port = f'pips_mlp_mixer/{_numbered("block", i)}/', f'torch_pips_mixer.blocks.{i}.'
    out += _rows(ours + 'layer_norm', port + 'layer_norm', params=_SCALE)
    out += _rows(ours + 'layer_norm_1', port + 'layer_norm_1', params=_SCALE)
    out += _rows(ours + 'mlp1_up', port + 'mlp1_up', 'depthwise') + _rows(ours + 'mlp1_up_1', port + 'mlp1_up_1',
                                                                          'depthwise')
    out += _rows(ours + 'mlp2_up', port + 'conv_channels_mixer.mlp2_up', 'linear')
    out += _rows(ours + 'mlp2_down', port + 'conv_channels_mixer.mlp2_down', 'linear')
  out += _rows('pips_mlp_mixer/layer_norm', 'torch_pips_mixer.layer_norm', params=_SCALE)
  out += _rows('pips_mlp_mixer/linear_1', 'torch_pips_mixer.linear_1', 'linear')
  for i in range(structure.num_extra_layers):  # layer i: layer_norm_i, conv2_d_{2i} (expand), conv2_d_{2i+1}
    out += _rows(f'extra_convs/{_numbered("layer_norm", i)}', f'extra_convs.blocks.{i}.layer_norm', params=_NORM)
    out += _rows(f'extra_convs/{_numbered("conv2_d", 2 * i)}', f'extra_convs.blocks.{i}.conv', 'conv')
    out += _rows(f'extra_convs/{_numbered("conv2_d", 2 * i + 1)}', f'extra_convs.blocks.{i}.conv_1', 'conv')
  return tuple(out)


def _structure(names, group_block: str, mixer_block: str, extra_layer: str) -> Structure:
  """Block counts read off names (module paths or torch keys) with a pattern for each kind of block."""
  names, groups = set(names), collections.defaultdict(set)
  for m in filter(None, map(re.compile(group_block).fullmatch, names)):
    groups[int(m[1])].add(m[2])
  count = lambda pattern: sum(1 for n in names if re.fullmatch(pattern, n))
  return Structure(tuple(len(groups[g]) for g in range(max(groups, default=-1) + 1)), count(mixer_block),
                   count(extra_layer))


def haiku_structure(modules) -> Structure:
  """The Structure of a Haiku tree, from its module paths (model prefix removed)."""
  return _structure(modules, r'resnet/~/block_group_(\d+)/~/block_(\d+)/~/conv_0',
                    r'pips_mlp_mixer/block(_\d+)?/mlp2_up', r'extra_convs/layer_norm(_\d+)?')


def torch_structure(keys) -> Structure:
  """The Structure of a port state_dict, from its keys."""
  return _structure(keys, r'resnet_torch\.block_groups\.(\d+)\.blocks\.(\d+)\.conv_0\.weight',
                    r'torch_pips_mixer\.blocks\.\d+\.layer_norm\.weight',
                    r'extra_convs\.blocks\.\d+\.layer_norm\.weight')


def _show(names) -> str:
  names = sorted(names)
  return ', '.join(names[:8]) + (f', ... ({len(names)} in all)' if len(names) > 8 else '')


def _check_keys(have: set, want: set, what: str, extra: str, show=lambda k: k) -> None:
  unexpected, missing = have - want, want - have
  if unexpected or missing:
    raise ValueError(what + (f'{extra} {_show(map(show, unexpected))}; ' if unexpected else '') +
                     (f'missing {_show(map(show, missing))}' if missing else ''))


def _permute(value: Any, transform: str, where: str, inverse: bool = False) -> np.ndarray:
  axes = TRANSFORMS[transform]
  value = np.asarray(value)
  if axes is None:
    return value
  if value.ndim != len(axes):
    raise ValueError(f'{where}: a {transform} weight must have {len(axes)} axes, got shape {value.shape}')
  return np.transpose(value, np.argsort(axes) if inverse else axes)


def haiku_to_torch(params: Mapping[str, Mapping[str, Any]], state: Mapping[str, Any] | None = None,
                   name: str = 'tapir') -> tuple[dict[str, np.ndarray], list[str]]:
  """({torch key: array in torch layout (a view: copy before writing)}, dropped Haiku params).

  Raises ValueError for Haiku state (nothing in the port keeps any), for modules or params the port has no place
  for, and for missing ones. `UNUSED_MODULES` are dropped with a warning.
  """
  if state and any(state.values()):
    raise ValueError(f'the PyTorch port keeps no state, but the checkpoint has state for {_show(state)}')
  prefix = f'{name}/~/'
  flat = {(m.removeprefix(prefix), p): v for m, leaves in params.items() for p, v in leaves.items()}
  dropped = [f'{prefix}{m}:{p}' for m, p in flat if m in UNUSED_MODULES]
  flat = {(m, p): v for (m, p), v in flat.items() if m not in UNUSED_MODULES}
  if dropped:
    logging.warning('dropping %d Haiku params the model never uses (the port has no such modules): %s',
                    len(dropped), _show(dropped))
  table = key_table(haiku_structure({m for m, _ in flat}))
  _check_keys(set(flat), {(e.module, e.param) for e in table}, 'the parameters do not fit the PyTorch port: ',
              'no counterpart for', lambda mp: f'{prefix}{mp[0]}:{mp[1]}')
  return {e.torch_key: _permute(flat[e.module, e.param], e.transform, e.torch_key) for e in table}, dropped


def plain_settings(value: Any) -> Any:
  """JSON lists -> tuples, numpy scalars -> Python (recursively), so stored settings compare equal to configs."""
  if isinstance(value, (list, tuple)):
    return tuple(plain_settings(v) for v in value)
  if isinstance(value, Mapping):
    return {k: plain_settings(v) for k, v in value.items()}
  return value.item() if isinstance(value, np.generic) else value


def tapir_settings(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """`model_kwargs` with `tapir.TAPIR`'s constructor defaults filled in; names it does not take raise ValueError."""
  from tapir.models import tapir as tapir_lib  # pylint: disable=g-import-not-at-top
  defaults = {k: p.default for k, p in inspect.signature(tapir_lib.TAPIR.__init__).parameters.items()
              if p.default is not inspect.Parameter.empty}
  unknown = sorted(set(model_kwargs) - set(defaults))
  if unknown:
    raise ValueError(f'not tapir.TAPIR settings: {unknown}')
  return plain_settings({**defaults, **dict(model_kwargs)})


def _shown_settings(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """The settings a port state_dict's (checked) keys and shapes show: never temperature, causality, resolution."""
  structure = torch_structure(state_dict)
  hidden, in_width = np.shape(state_dict['torch_pips_mixer.linear.weight'])
  kwargs = dict(pyramid_level=(in_width - refinement.mixer_input_width(0)) // refinement.PATCH_WIDTH**2,
                mixer_hidden_dim=hidden, num_mixer_blocks=structure.num_mixer_blocks,
                blocks_per_group=structure.blocks_per_group, extra_convs=structure.num_extra_layers > 0)
  if structure.num_extra_layers:
    c_out, c_in = np.shape(state_dict['extra_convs.blocks.0.conv.weight'])[:2]
    width = np.shape(state_dict['extra_convs.blocks.0.layer_norm.weight'])[0]
    extra = dict(num_layers=structure.num_extra_layers, channel_multiplier=c_out // width, use_tsm=c_in == 3 * width)
    extra = {k: v for k, v in extra.items() if v != EXTRA_CONVS_DEFAULTS[k]}
    if extra:
      kwargs['extra_convs_kwargs'] = extra
  return plain_settings(kwargs)


def from_torch_state_dict(state_dict: Mapping[str, Any], model_kwargs: Mapping[str, Any] | None = None
                          ) -> tuple[dict, dict, dict[str, Any]]:
  """(Haiku params, state ({}), model settings) of a port state_dict.

  Args:
    state_dict: {torch key: array in torch layout}, every key of the port's architecture and no other.
    model_kwargs: the `tapir.TAPIR` settings (e.g. the JSON written beside an export); None: those the shapes show
      (block counts, widths, pyramid level, extra convs). Settings that contradict the shapes raise ValueError.
  """
  table = key_table(torch_structure(state_dict))
  _check_keys(set(state_dict), {e.torch_key for e in table}, 'not a state_dict of the TAPIR PyTorch port: ',
              'unexpected keys')
  inferred = _shown_settings(state_dict)
  kwargs = inferred if model_kwargs is None else plain_settings(dict(model_kwargs))
  have, shown = tapir_settings(kwargs), tapir_settings({**inferred, 'normalization': 'instancenorm'})
  for s in (have, shown):  # compare extra-conv settings with their defaults filled in
    s['extra_convs_kwargs'] = {**EXTRA_CONVS_DEFAULTS, **(s['extra_convs_kwargs'] or {})} if s['extra_convs'] else None
  bad = [f'{k}={have[k]!r} (arrays: {shown[k]!r})' for k in _SHAPE_SETTINGS if have[k] != shown[k]]
  if bad:
    raise ValueError('the model settings contradict the state_dict: ' + '; '.join(bad))
  prefix = kwargs.get('name', 'tapir') + '/~/'
  params: dict[str, dict[str, np.ndarray]] = {}
  for e in table:
    value = np.ascontiguousarray(_permute(state_dict[e.torch_key], e.transform, e.torch_key, inverse=True))
    params.setdefault(prefix + e.module, {})[e.param] = value
  return params, {}, kwargs


# Reading files. -------------------------------------------------------------------------------------------------

def is_torch_zip(path: str | os.PathLike) -> bool:
  """Whether `path` is a zip holding a torch save (`<prefix>/data.pkl`)."""
  try:
    with zipfile.ZipFile(path) as z:
      return any(re.fullmatch(r'[^/]+/data\.pkl', n) for n in z.namelist())
  except (OSError, EOFError, ValueError, zipfile.BadZipFile, NotImplementedError):
    return False


def is_safetensors(head: bytes) -> bool:
  """Whether a file's first bytes are a safetensors header: u64 little-endian length (< 100 MB), then '{'."""
  return len(head) >= 9 and head[8:9] == b'{' and 2 <= int.from_bytes(head[:8], 'little') <= 100_000_000


_STORAGE_DTYPES = {'Float': np.float32, 'Double': np.float64, 'Half': np.float16, 'BFloat16': ml_dtypes.bfloat16,
                   'Long': np.int64, 'Int': np.int32, 'Short': np.int16, 'Char': np.int8, 'Byte': np.uint8,
                   'Bool': np.bool_}  # torch.<name>Storage


class _StorageType(NamedTuple):  # what `torch.FloatStorage` etc. resolve to
  dtype: np.dtype


class _Storage(NamedTuple):  # what a persistent id resolves to
  key: str
  data: np.ndarray  # [numel] flat, native byte order


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused_grad_hooks_metadata) -> np.ndarray:
  """Stand-in for torch._utils._rebuild_tensor_v2: the strided view of the storage, copied, bounds checked."""
  ints = lambda v: isinstance(v, tuple) and all(isinstance(i, int) and i >= 0 for i in v)
  if not (isinstance(storage, _Storage) and isinstance(storage_offset, int) and storage_offset >= 0
          and ints(size) and ints(stride) and len(size) == len(stride)):
    raise ValueError(f'malformed tensor: offset {storage_offset!r}, size {size!r}, stride {stride!r}')
  data = storage.data
  if math.prod(size) == 0:
    return np.zeros(size, data.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= data.size:
    raise ValueError(f'tensor of size {size}, stride {stride}, offset {storage_offset} reads element {last} of '
                     f'storage {storage.key}, which holds {data.size}')
  view = np.lib.stride_tricks.as_strided(data[storage_offset:], shape=size,
                                         strides=[s * data.itemsize for s in stride], writeable=False)
  return view.copy()


_STAND_INS = {
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor_v2,  # older saves: (storage, offset, size, stride)
    ('torch._utils', '_rebuild_parameter'): lambda data, requires_grad=False, backward_hooks=None: data,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    **{('torch', name + 'Storage'): _StorageType(np.dtype(dtype)) for name, dtype in _STORAGE_DTYPES.items()},
}


def _read_pt(path: str) -> dict[str, np.ndarray]:
  try:
    z = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise ValueError(f'{path}: not a readable zip (truncated or corrupt torch file?): {e}') from e
  with z:
    pickles = [n for n in z.namelist() if re.fullmatch(r'[^/]+/data\.pkl', n)]
    if len(pickles) != 1:
      raise ValueError(f'{path}: a torch file holds exactly one <prefix>/data.pkl; found {pickles or "none"}')
    prefix = pickles[0][:-len('data.pkl')]
    byteorder = z.read(prefix + 'byteorder') if prefix + 'byteorder' in z.namelist() else b'little'
    order = {b'little': '<', b'big': '>'}.get(byteorder.strip())
    if order is None:
      raise ValueError(f'{path}: unknown byte order {byteorder!r}')
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
      if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage' and isinstance(pid[1], _StorageType)
              and isinstance(pid[2], str) and isinstance(pid[4], int) and pid[4] >= 0):
        raise ValueError(f'unsupported persistent id {pid!r}: expected (storage, torch.<Type>Storage, key, '
                         'location, numel)')
      dtype, key, numel = pid[1].dtype, pid[2], pid[4]
      if key not in storages:
        entry = f'{prefix}data/{key}'
        try:
          with z.open(entry) as f:
            raw = f.read(numel * dtype.itemsize)  # no more than the pickle declares, however the entry inflates
        except KeyError:
          raise ValueError(f'storage {key}: no entry {entry}') from None
        if len(raw) < numel * dtype.itemsize:
          raise ValueError(f'storage {key} ({entry}) holds {len(raw)} bytes; the pickle says {numel} x {dtype} '
                           f'= {numel * dtype.itemsize} bytes (truncated file?)')
        uint = np.dtype(f'{order}u{dtype.itemsize}')  # swap bytes as unsigned ints, then reinterpret
        data = np.frombuffer(raw, uint, count=numel).astype(uint.newbyteorder('='), copy=False).view(dtype)
        storages[key] = _Storage(key, data)
      if storages[key].data.dtype != dtype:
        raise ValueError(f'storage {key} is read both as {storages[key].data.dtype} and as {dtype}')
      return storages[key]

    try:
      content = safe_pickle.load(io.BytesIO(z.read(pickles[0])), UnsafeCheckpointError, stand_ins=_STAND_INS,
                                 persistent_load=persistent_load)
    except UnsafeCheckpointError as e:
      raise UnsafeCheckpointError(f'{path}: {e}') from None
    except Exception as e:  # corrupt pickles raise several kinds; so do stand-ins given wrong arguments
      raise ValueError(f'{path}: cannot read the torch file ({type(e).__name__}: {e})') from e
  if not (isinstance(content, Mapping) and all(isinstance(k, str) and isinstance(v, np.ndarray)
                                               for k, v in content.items())):
    raise ValueError(f'{path}: expected a state_dict {{name: tensor}}, got {type(content).__name__}')
  return dict(content)


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  import safetensors  # pylint: disable=g-import-not-at-top  (only this format needs it)
  try:
    with safetensors.safe_open(path, framework='np') as f:
      return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
  except Exception as e:  # SafetensorError and friends
    raise ValueError(f'{path}: cannot read the safetensors file ({type(e).__name__}: {e})') from e


def _read(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(state_dict, safetensors metadata ({} for .pt)), the format told by content."""
  with open(path, 'rb') as f:
    head = f.read(16)
  return _read_safetensors(path) if is_safetensors(head) else (_read_pt(path), {})


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{torch key: array} of a `.pt` (torch.save zip) or `.safetensors` file, told apart by content."""
  return _read(os.fspath(path))[0]


def read_torch_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict[str, Any] | None]:
  """(params, state, stored settings or None) of a port `.pt` / `.safetensors` file (for `read_checkpoint`).

  The settings are `<path minus suffix>.json`'s `tapir_kwargs`, else the safetensors metadata entry; shapes alone
  do not give temperature or causality, so without either the caller decides (`resolve_model_kwargs`).
  """
  path = os.fspath(path)
  sidecar, stored = os.path.splitext(path)[0] + '.json', None
  try:
    state_dict, metadata = _read(path)
    if sidecar != path and os.path.exists(sidecar):
      with open(sidecar) as f:
        stored = json.load(f)
      stored = stored.get(SETTINGS_KEY) if isinstance(stored, Mapping) else None
      if stored is None:
        logging.info('%s holds no %r entry: not using it for %s', sidecar, SETTINGS_KEY, path)
    if stored is None and SETTINGS_KEY in metadata:
      stored = json.loads(metadata[SETTINGS_KEY])
    params, state, kwargs = from_torch_state_dict(state_dict, stored)
  except ValueError as e:  # UnsafeCheckpointError too: it names the file already
    if str(e).startswith(path):
      raise
    raise ValueError(f'{path}: {e}') from e
  return params, state, None if stored is None else kwargs
