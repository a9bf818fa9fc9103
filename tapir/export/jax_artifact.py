"""Portable compiled trackers: `jax.export` artifacts of TAPIR, weights inside, that run without `tapir`.

    artifact = export_artifact(params, state, model_kwargs, 'offline')    # or 'online' (a causal model)
    write_artifact('tapir.jaxexport', artifact)

A deployer needs only `jax` (the consumer code, `CONSUMER_SNIPPET`, imports nothing else):

    import json, jax.export
    magic, header, blobs = open('tapir.jaxexport', 'rb').read().split(b'\\n', 2)
    header = json.loads(header)
    fns = {k: jax.export.deserialize(bytearray(blobs[f['offset']:f['offset'] + f['size']]))
           for k, f in header['functions'].items()}
    tracks, visible, occlusion, expected_dist = fns['track'].call(video, query_points)

Functions (`tapir.conventions` states the value ranges and coordinates; no batch axis anywhere):
  offline  track(video uint8 [t, h, w, 3], query_points float32 [n, 3] (t, y, x))
             -> tracks float32 [n, t, 2] (x, y), visible bool [n, t], occlusion [n, t], expected_dist [n, t]
  online   start(frame uint8 [h, w, 3], query_points_yx float32 [n, 2] (y, x)) -> (features, context)
           step(frame uint8 [h, w, 3], features, context)
             -> tracks [n, 2] (x, y), visible [n], occlusion [n], expected_dist [n], context
The video is RGB already at the artifact's (h, w) (`header['fixed']`, by default the model's initial resolution,
256x256 for the released models): no resizing inside, so coordinates are pixels of that frame. Logits as in
`tapir.conventions`; `visible` is its rule, (1 - sigmoid(occlusion)) * (1 - sigmoid(expected_dist)) > 0.5.
`features` and `context` are tuples of float32 arrays with the point axis first (names and shapes in the header):
concatenating two point sets' tuples leaf by leaf along axis 0 tracks both; a new point's context is `start`'s.

Symbolic dimensions: the number of frames `t` (offline) and of points `n` (both kinds), each >= 1; pass `frames` /
`num_points` to fix them. Fixed always: the frame size, since the number of refinement levels is computed from
it in Python (`math.log2` in `shapes.generate_default_resolutions`), which a symbolic size cannot enter. A model
with `feature_extractor_chunk_size` needs a fixed `frames` too: its frame-chunk loop compares the frame count in
Python, which a symbolic dimension cannot answer. The header says which are symbolic (`symbolic`) and why the
rest are fixed (`why_fixed`). Offline queries run through refinement `query_chunk_size` at a time (padded with
repeats of the first, as `tapir.Tracker` does); the online step runs all points at once (one frame each). Nothing
checks values inside: queries outside the video read clamped features, as the Haiku model does (`tapir.Tracker`
raises instead).

File: line 1 `MAGIC`, line 2 the JSON header (no newline inside: `json.dumps` escapes them), then the `Exported`
blobs back to back at the header's offsets. The header names every input and output with shape and dtype, and
records the conventions, model settings, tapir and jax versions and the platforms lowered for. `jax.export`
keeps old serialisations loadable for a while only (its compatibility guarantee): keep the header's jax_version.
"""

import importlib.metadata
import json
import os
from typing import Any, Mapping, NamedTuple, Sequence

import jax
from jax import export as jax_export
import jax.numpy as jnp

from tapir import checkpoint as checkpoint_lib
from tapir import checkpoint_io
from tapir import checkpoint_torch
from tapir import conventions
from tapir.models import refinement
from tapir.models import shapes
from tapir.models import tapir as tapir_lib
from tapir.tracking import online as online_lib
from tapir.tracking import queries as queries_lib
from tapir.tracking import tracker as tracker_lib

MAGIC = b'TAPIR-JAX-EXPORT'
FORMAT_VERSION = 1
KINDS = ('offline', 'online')
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
CONVENTIONS = dict(
    video='uint8 RGB [0, 255], frames already at the fixed (height, width); the model sees v / 255 * 2 - 1',
    query_points='float32 (t, y, x): t a frame index, y and x raster pixels (pixel (i, j) has centre (i + .5, j + .5))',
    query_points_yx='float32 (y, x) raster pixels of the frame given to start',
    tracks='float32 (x, y) raster pixels of the frames: note the order swap',
    occlusion='logit; > 0 leans towards occluded',
    expected_dist='logit; > 0 leans towards the track being more than a few pixels off',
    visible='bool: (1 - sigmoid(occlusion)) * (1 - sigmoid(expected_dist)) > 0.5',
    features_and_context='tuples of float32 arrays, point axis first; pass back what start / step returned')
CONSUMER_SNIPPET = """\
import json, jax.export
magic, header, blobs = open(PATH, 'rb').read().split(b'\\n', 2)
header = json.loads(header)
fns = {k: jax.export.deserialize(bytearray(blobs[f['offset']:f['offset'] + f['size']]))
       for k, f in header['functions'].items()}
"""


class Artifact(NamedTuple):
  header: dict[str, Any]  # JSON-able: see the module docstring
  functions: dict[str, jax_export.Exported]  # 'track' (offline) or 'start' and 'step' (online)


def _optional_positive(value: Any, name: str) -> int | None:
  return None if value is None else queries_lib.check_positive_int(value, name)


def _check_platforms(platforms: Sequence[str] | None) -> tuple[str, ...]:
  if platforms is None:
    return (jax_export.default_export_platform(),)
  if isinstance(platforms, str) or not platforms or any(p not in PLATFORMS for p in platforms) or len(
      set(platforms)) != len(platforms):
    raise ValueError(f'platforms must be None or distinct names from {PLATFORMS}; got {platforms!r}')
  return tuple(platforms)


def _settings(model_kwargs: Mapping[str, Any], platforms: tuple[str, ...]) -> dict[str, Any]:
  """`model_kwargs` with defaults filled in and the patch formulation fixed for the first platform."""
  kwargs = dict(model_kwargs)
  if kwargs.get('bilinear_interp_with_depthwise_conv') is None:
    kwargs['bilinear_interp_with_depthwise_conv'] = refinement.DENSE_BY_BACKEND.get(platforms[0], False)
  return kwargs


def _frames_in(video: jax.Array) -> jax.Array:  # uint8 [..., 3] -> float32 [1, ..., 3] in [-1, 1]
  # The arithmetic of `conventions.frames_to_model_input`, traced.
  return (video.astype(jnp.float32) / 255.0 * 2.0 - 1.0)[None]


def _offline_function(params, state, kwargs: Mapping[str, Any], chunk: int):
  """(video uint8 [t, h, w, 3], queries [n, 3]) -> (tracks [n, t, 2], visible, occlusion, expected_dist [n, t])."""

  features_apply, heads_apply = tracker_lib.model_functions(kwargs)  # what tapir.Tracker runs

  def track(video, query_points):
    frames = _frames_in(video)  # [1, t, h, w, 3]
    grids, _ = features_apply(params, state, None, frames)
    n, t = query_points.shape[0], video.shape[0]
    num_chunks = -(-n // chunk)
    padded = jnp.concatenate([query_points, jnp.broadcast_to(query_points[:1], (num_chunks * chunk - n, 3))])

    def one_chunk(chunk_points):  # [chunk, 3]
      (tracks, occ, expd), _ = heads_apply(params, state, None, frames, grids, chunk_points[None])
      return tracks[0], occ[0], expd[0]

    tracks, occ, expd = jax.lax.map(one_chunk, padded.reshape(num_chunks, chunk, 3))
    tracks = tracks.reshape(num_chunks * chunk, t, 2)[:n]
    occ, expd = occ.reshape(num_chunks * chunk, t)[:n], expd.reshape(num_chunks * chunk, t)[:n]
    return tracks, conventions.visibility_from_logits(occ, expd), occ, expd

  return track


def _levels(kwargs: Mapping[str, Any], hw: tuple[int, int]) -> int:
  return len(shapes.generate_default_resolutions(hw, tracker_lib.model_resolution(kwargs)))


def _online_functions(params, state, kwargs: Mapping[str, Any], hw: tuple[int, int]):
  """start(frame, query_points_yx) -> (features, context); step(frame, features, context) -> outputs, context."""
  levels = _levels(kwargs, hw)
  zero = lambda n: online_lib.zero_context(kwargs, n, hw)
  features_tree = jax.tree_util.tree_structure(tapir_lib.QueryFeatures((0,) * (levels + 1), (0,) * (levels + 1)))
  context_tree = jax.tree_util.tree_structure(zero(1))
  unbatched = lambda tree: tuple(a[0] for a in jax.tree_util.tree_leaves(tree))
  batched = lambda treedef, leaves: jax.tree_util.tree_unflatten(treedef, [a[None] for a in leaves])
  query_apply, frame_apply = online_lib.model_functions(kwargs)  # what tapir.OnlineTracker runs

  def start(frame, query_points_yx):
    queries = jnp.concatenate([jnp.zeros_like(query_points_yx[:, :1]), query_points_yx], axis=-1)
    features, _ = query_apply(params, state, None, _frames_in(frame[None]), queries[None])
    return unbatched(features), unbatched(zero(query_points_yx.shape[0]))

  def step(frame, features, context):
    (tracks, occ, expd, context), _ = frame_apply(params, state, None, _frames_in(frame[None]),
                                                  batched(features_tree, features), batched(context_tree, context))
    return tracks, conventions.visibility_from_logits(occ, expd), occ, expd, unbatched(context)

  feature_names = [f'{res}_{k}' for res in ('lowres', 'hires') for k in range(levels + 1)]
  context_names = [f'iteration{i}_block{j}_{field}' for i, blocks in enumerate(zero(1)) for j in range(len(blocks))
                   for field in refinement.BlockContext._fields]
  return start, step, feature_names, context_names


def _tapir_version() -> str:
  try:
    return importlib.metadata.version('tapir')
  except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
    return 'unknown (not installed)'


def _describe(names: Sequence[str], avals) -> list[dict[str, Any]]:
  avals = list(avals)
  if len(names) != len(avals):
    raise AssertionError(f'{len(names)} names for {len(avals)} values')  # a bug here, not bad input
  return [dict(name=name, shape=[d if isinstance(d, int) else str(d) for d in a.shape], dtype=str(a.dtype))
          for name, a in zip(names, avals)]


def export_artifact(params, state, model_kwargs: Mapping[str, Any], kind: str = 'offline', *,
                    frames: int | None = None, height: int | None = None, width: int | None = None,
                    num_points: int | None = None, query_chunk_size: int = 64,
                    platforms: Sequence[str] | None = None, source: Mapping[str, Any] | None = None) -> Artifact:
  """Exports a TAPIR (weights baked in as constants) as an `Artifact` (see the module docstring).

  Args:
    params, state: the weights of `tapir.TAPIR(**model_kwargs)` (checked against it).
    kind: 'offline' (function `track`) or 'online' (`start` and `step`; needs `use_causal_conv=True`).
    frames: fix the number of frames (offline only); None: symbolic `t`.
    height, width: the frame size the artifact takes; None: the model's `initial_resolution`.
    num_points: fix the number of query points; None: symbolic `n`.
    query_chunk_size: offline queries per refinement pass (memory grows with it, numbers do not change).
    platforms: subset of `PLATFORMS` to lower for; None: JAX's default backend. Several make one artifact that
      runs on each.
    source: JSON-able notes stored in the header (e.g. the checkpoint and preset).
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}; got {kind!r}')
  frames = _optional_positive(frames, 'frames')
  num_points = _optional_positive(num_points, 'num_points')
  query_chunk_size = queries_lib.check_positive_int(query_chunk_size, 'query_chunk_size')
  if not isinstance(model_kwargs, Mapping):
    raise ValueError(f'model_kwargs must be a mapping of tapir.TAPIR settings; got {type(model_kwargs).__name__}')
  platforms = _check_platforms(platforms)
  kwargs = _settings(model_kwargs, platforms)
  model_h, model_w = tracker_lib.model_resolution(kwargs)
  hw = (queries_lib.check_positive_int(model_h if height is None else height, 'height'),
        queries_lib.check_positive_int(model_w if width is None else width, 'width'))
  checkpoint_lib.check_params(params, kwargs, state, family='tapir')
  if kind == 'online' and not kwargs.get('use_causal_conv'):
    raise ValueError("kind='online' needs a causal model (use_causal_conv=True, e.g. preset causal_tapir)")
  if kind == 'online' and frames is not None:
    raise ValueError(f'frames={frames} is for the offline artifact: the online step takes one frame at a time')
  if kind == 'offline' and frames is None and kwargs.get('feature_extractor_chunk_size') is not None:
    raise ValueError('this model sets feature_extractor_chunk_size, whose frame-chunk loop cannot take a symbolic '
                     'number of frames: give frames (a fixed count)')
  try:
    source = json.loads(json.dumps(dict(source or {})))
  except TypeError as e:
    raise ValueError(f'source must be JSON-able: {e}') from e
  params, state = jax.device_get((params, state))
  t, n = jax_export.symbolic_shape('t, n', constraints=())
  t, n = (t if frames is None else frames), (n if num_points is None else num_points)
  spec = jax.ShapeDtypeStruct
  do_export = lambda fn, *args: jax_export.export(jax.jit(fn), platforms=platforms)(*args)
  functions, signatures = {}, {}
  if kind == 'offline':
    chunk = query_chunk_size if num_points is None else min(query_chunk_size, num_points)
    fn = _offline_function(params, state, kwargs, chunk)
    functions['track'] = do_export(fn, spec((t, *hw, 3), jnp.uint8), spec((n, 3), jnp.float32))
    signatures['track'] = (['video', 'query_points'], ['tracks', 'visible', 'occlusion', 'expected_dist'])
  else:
    start, step, feature_names, context_names = _online_functions(params, state, kwargs, hw)
    functions['start'] = do_export(start, spec((*hw, 3), jnp.uint8), spec((n, 2), jnp.float32))
    started = [spec(a.shape, a.dtype) for a in functions['start'].out_avals]  # features, then context
    functions['step'] = do_export(step, spec((*hw, 3), jnp.uint8), tuple(started[:len(feature_names)]),
                                  tuple(started[len(feature_names):]))
    signatures['start'] = (['frame', 'query_points_yx'], feature_names + context_names)
    signatures['step'] = (['frame'] + feature_names + context_names,
                          ['tracks', 'visible', 'occlusion', 'expected_dist'] + context_names)
  symbolic = {}
  if kind == 'offline' and frames is None:
    symbolic['t'] = 'frames, >= 1'
  if num_points is None:
    symbolic['n'] = 'query points, >= 1'
  header = dict(
      format='tapir-jax-export', format_version=FORMAT_VERSION, kind=kind,
      functions={name: dict(inputs=_describe(signatures[name][0], exp.in_avals),
                            outputs=_describe(signatures[name][1], exp.out_avals))
                 for name, exp in functions.items()},
      symbolic=symbolic, fixed=dict(height=hw[0], width=hw[1], frames=frames, num_points=num_points),
      why_fixed=dict(height_width='the number of refinement levels is computed from it in Python (math.log2)',
                     **({'frames': 'feature_extractor_chunk_size loops over frame chunks in Python'}
                        if kind == 'offline' and kwargs.get('feature_extractor_chunk_size') else {})),
      query_chunk_size=query_chunk_size if kind == 'offline' else None,
      conventions=CONVENTIONS,
      model_kwargs=json.loads(json.dumps(checkpoint_torch.tapir_settings(kwargs))),
      tapir_version=_tapir_version(), jax_version=jax.__version__, platforms=list(platforms),
      source=source, consumer=CONSUMER_SNIPPET)
  return Artifact(header, functions)


def write_artifact(path: str | os.PathLike, artifact: Artifact) -> int:
  """Writes `artifact` to `path` atomically (temporary file, fsync, rename); returns the file's size in bytes."""
  if not isinstance(artifact, Artifact) or set(artifact.functions) != set(artifact.header.get('functions', ())):
    raise ValueError(f'artifact must be an Artifact from export_artifact; got {type(artifact).__name__}')
  if not isinstance(path, (str, os.PathLike)):
    raise ValueError(f'path must be a file path; got {path!r}')
  path = os.fspath(path)
  blobs = {name: bytes(exp.serialize()) for name, exp in artifact.functions.items()}
  header = json.loads(json.dumps(artifact.header))
  offset = 0
  for name, blob in blobs.items():
    header['functions'][name].update(offset=offset, size=len(blob))
    offset += len(blob)
  encoded = json.dumps(header, ensure_ascii=True).encode('ascii')

  def write(f):
    f.write(MAGIC + b'\n' + encoded + b'\n')
    for blob in blobs.values():
      f.write(blob)

  checkpoint_io.write_atomically(path, write)
  return len(MAGIC) + len(encoded) + 2 + offset


def read_artifact(path: str | os.PathLike) -> Artifact:
  """Reads a file `write_artifact` wrote (`CONSUMER_SNIPPET` does the same without tapir); ValueError naming
  `path` for anything else."""
  if not isinstance(path, (str, os.PathLike)):
    raise ValueError(f'path must be a file path; got {path!r}')
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'artifact not found: {path}')
  with open(path, 'rb') as f:
    data = f.read()
  parts = data.split(b'\n', 2)
  if len(parts) != 3 or parts[0] != MAGIC:
    raise ValueError(f'{path} is not a TAPIR JAX artifact: it does not start with {MAGIC!r} (starts with '
                     f'{data[:len(MAGIC)]!r})')
  try:
    header = json.loads(parts[1])
    version, functions = header['format_version'], header['functions']
    spans = {name: (int(f['offset']), int(f['size'])) for name, f in functions.items()}
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{path}: the TAPIR JAX artifact header is damaged ({type(e).__name__}: {e})') from e
  if version != FORMAT_VERSION:
    raise ValueError(f'{path}: artifact format_version {version!r} is not supported (this library reads '
                     f'{FORMAT_VERSION})')
  blobs = parts[2]
  if any(offset < 0 or size < 1 or offset + size > len(blobs) for offset, size in spans.values()):
    raise ValueError(f'{path}: truncated TAPIR JAX artifact ({len(blobs)} bytes of functions; header spans {spans})')
  try:
    exported = {name: jax_export.deserialize(bytearray(blobs[o:o + s])) for name, (o, s) in spans.items()}
  except Exception as e:  # damaged flatbuffers raise several kinds
    raise ValueError(f'{path}: cannot deserialize the exported functions ({type(e).__name__}: {e})') from e
  return Artifact(header, exported)

