"""Streaming (online) tracking with the causal model: one frame in, that frame's tracks out.

    tracker = tapir.OnlineTracker.from_checkpoint('causal_tapir_checkpoint.npy', preset='causal_tapir')
    tracker.start(first_frame, query_points_yx)       # [n, 2] (y, x) in the frame's pixels
    for frame in stream:
      out = tracker.step(frame)                   # out.tracks [n, 2] (x, y), out.visible [n]

Queries are defined on the frame they start at; their history is the causal context (`tapir.models.causal`):
the last two frames of two signals per mixer block and refinement iteration, so memory and time per step stay
constant however long the stream. Points can be added, replaced or removed mid-stream; a new point's history
starts from zero. Each step runs the released online protocol: features of the new frame only, no query-frame
replacement, and the outputs of the last refinement iteration.

Slots (so that adding points does not recompile): the model runs on a fixed number of point slots, a bucket
`min_slots * 2^k` (8, 16, 32, ... by default, the last one capped at `capacity`), the smallest that holds the
active points; unused slots hold zero features, their outputs are dropped and their history is zeroed when a point
takes them, so the numbers of the active points are those of a model run on them alone (points never interact;
equal to ~1e-5 px: float32 rounding of other batch shapes). Each bucket's step compiles once, the first time it
is used (or in `warm_up`); new points' features are computed in buckets of the same sizes, so adding points one
at a time recompiles nothing once the bucket has been used. `capacity` None (default) lets the buckets double
without limit (a new size mid-stream logs a warning: one compilation); an integer is a hard limit (adding beyond
it raises ValueError and adds nothing). Removing points moves the rest to a smaller bucket when they fit one.

Indices: each point keeps the index `add_queries` (or `start`) gave it until it is removed (`remove_queries`,
`clear`, `start`); a removed index is free for later points, which take the lowest free indices (so without
removals the indices are 0, 1, 2, ... in order of addition, and after `clear()` they start at 0 again). `step`
returns the active points in increasing index order; `indices` lists those indices.
"""

from typing import Any, Callable, Mapping, NamedTuple, Sequence

from absl import logging
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from tapir import checkpoint as checkpoint_lib
from tapir import conventions
from tapir.tracking import core
from tapir.tracking import queries as queries_lib
from tapir.tracking import tracker as tracker_lib
from tapir.models import causal
from tapir.models import precision
from tapir.models import tapir as tapir_lib

DEFAULT_MIN_SLOTS = 8  # smallest slot bucket: a few points cost what 8 cost (see `benchmark` in the README)


class OnlineOutput(NamedTuple):
  tracks: np.ndarray  # [n, 2] (x, y) pixels of the frame given to `step`
  visible: np.ndarray  # [n] bool
  occlusion: np.ndarray  # [n] logit
  expected_dist: np.ndarray  # [n] logit


class OnlineTracker:
  """Frame-by-frame tracker over a causal TAPIR. See the module docstring."""

  def __init__(self, params, state, model_kwargs: Mapping[str, Any],
               resize_to: Sequence[int] | str | None = core.MODEL_RESOLUTION, query_chunk_size: int = 64,
               capacity: int | None = None, min_slots: int = DEFAULT_MIN_SLOTS, dtype: str = 'float32'):
    """`resize_to`: the (height, width) frames are resized to; 'model' (default) for the model's own
    `initial_resolution` (256x256 for the released models); None for the frames' own size. `capacity`: the most
    points tracked at once (None: no limit); `min_slots`: the smallest slot bucket (module docstring); `dtype`:
    the compute precision of the convolutions and dense layers (`tapir.models.precision`)."""
    self.model_kwargs = dict(model_kwargs)
    query_chunk_size = queries_lib.check_positive_int(query_chunk_size, 'query_chunk_size')
    self.min_slots = queries_lib.check_positive_int(min_slots, 'min_slots')
    self.capacity = None if capacity is None else queries_lib.check_positive_int(capacity, 'capacity')
    self.resize_to = core.resolve_resize_to(resize_to, tracker_lib.model_resolution(self.model_kwargs))
    if not self.model_kwargs.get('use_causal_conv'):
      raise ValueError('online tracking needs a causal model (use_causal_conv=True, e.g. preset="causal_tapir")')
    checkpoint_lib.check_params(params, self.model_kwargs)
    self.params, self.state = jax.device_put(params), jax.device_put(state)
    self.dtype = precision.check_compute_dtype(dtype)
    query_features, step = model_functions(self.model_kwargs, query_chunk_size, self.dtype)
    self._query_features = jax.jit(query_features)
    self._step = jax.jit(step)
    self._write = jax.jit(_write_slots)
    self._gather = jax.jit(_gather_slots)
    self._slots_used = set()  # slot counts the step has run with (each compiled once)
    self._reset()
    self._frame_hw = None  # (h, w) of the stream's frames, set by `start`
    self.frames_seen = 0

  @classmethod
  def from_checkpoint(cls, path: str, preset: str | None = None, resize_to=core.MODEL_RESOLUTION,
                      capacity: int | None = None, min_slots: int = DEFAULT_MIN_SLOTS, dtype: str = 'float32',
                      **overrides):
    """Loads a checkpoint of either format; the architecture follows `checkpoint.resolve_model_kwargs` (a
    released causal checkpoint needs its preset: causality cannot be read off parameter shapes)."""
    contents = checkpoint_lib.read_checkpoint(path)
    kwargs = checkpoint_lib.resolve_model_kwargs(contents.model_kwargs, preset, contents.params, overrides,
                                                 family='tapir')
    return cls(contents.params, contents.state, kwargs, resize_to, capacity=capacity, min_slots=min_slots,
               dtype=dtype)

  @classmethod
  def random_init(cls, preset: str = 'causal_tapir', seed: int = 0, resize_to=core.MODEL_RESOLUTION,
                  capacity: int | None = None, min_slots: int = DEFAULT_MIN_SLOTS, dtype: str = 'float32',
                  **overrides):
    kwargs = checkpoint_lib.preset_kwargs(preset, **overrides)
    return cls(*tracker_lib.init_params(kwargs, seed), kwargs, resize_to, capacity=capacity, min_slots=min_slots,
               dtype=dtype)

  # ------------------------------------------------------------------------------------------------------
  # Slots

  def _reset(self) -> None:
    self._features = None  # QueryFeatures [1, slots, c] per entry (None: no points)
    self._context = None  # causal.CausalState [1, slots, ...]
    self._ids = np.zeros([0], np.int64)  # [slots] the index of the point in each slot, -1 for a free slot
    self._rows = np.zeros([0], np.int64)  # slots of the active points in increasing index order

  def _relabel(self) -> None:
    used = np.nonzero(self._ids >= 0)[0]
    self._rows = used[np.argsort(self._ids[used], kind='stable')]

  def slot_count(self, num_points: int) -> int:
    """The slots the step runs on for `num_points` active points (module docstring)."""
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points < 0:
      raise ValueError(f'num_points must be an integer >= 0; got {num_points!r}')
    if self.capacity is not None and num_points > self.capacity:
      raise ValueError(f'cannot track {num_points} points: this tracker has capacity={self.capacity} (make it '
                       'with a larger capacity, or capacity=None for no limit)')
    slots = self.min_slots
    while slots < num_points:
      slots *= 2
    return slots if self.capacity is None else min(slots, self.capacity)

  @property
  def num_points(self) -> int:
    return len(self._rows)

  @property
  def indices(self) -> np.ndarray:  # [n] int64
    """The indices of the active points, increasing: row i of `step`'s outputs is point `indices[i]`."""
    return self._ids[self._rows].copy()

  @property
  def num_slots(self) -> int:
    """The slots the step runs on now (0 without points)."""
    return len(self._ids)

  @property
  def context(self) -> causal.CausalState | None:
    """The causal state of the active points in index order (fixed size: independent of the frames seen)."""
    if self._context is None:
      return None
    rows = jax.device_put(self._rows)
    return jax.tree_util.tree_map(lambda a: jnp.take(a, rows, axis=1), self._context)

  def _resize_slots(self, slots: int, keep: np.ndarray) -> None:
    """Moves the points in slots `keep` (in that order) to the first slots of `slots` slots; the rest free."""
    perm = np.full(slots, len(self._ids), np.int32)  # out of range: a free slot (zero features and history)
    perm[:len(keep)] = keep
    self._features, self._context = self._gather(self._features, self._context, perm)
    ids = np.full(slots, -1, np.int64)
    ids[:len(keep)] = self._ids[keep]
    self._ids = ids

  # ------------------------------------------------------------------------------------------------------
  # Frames and query features

  def _prepare(self, frame: np.ndarray) -> tuple[jax.Array, tuple[int, int]]:
    """uint8 [h, w, 3] -> model input [1, 1, h', w', 3] and the frame's (h, w)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
      raise ValueError(f'frame must be uint8 [height, width, 3]; got {getattr(frame, "dtype", type(frame))} '
                       f'{getattr(frame, "shape", "")}')
    hw = frame.shape[:2]
    if min(hw) < 1:
      raise ValueError(f'frame must have at least one row and column; got shape {frame.shape}')
    if self._frame_hw is not None and tuple(hw) != self._frame_hw:
      raise ValueError(f'frame is {hw[0]}x{hw[1]} (height x width) but this stream started with '
                       f'{self._frame_hw[0]}x{self._frame_hw[1]} frames: every frame of a stream must have the same '
                       'size (call start() to begin a new stream)')
    if self.resize_to is not None and tuple(hw) != self.resize_to:
      import mediapy  # pylint: disable=g-import-not-at-top  (lazy: it imports matplotlib)
      frame = np.asarray(mediapy.resize_image(frame, self.resize_to))
    return jax.device_put(conventions.frames_to_model_input(frame)[None, None]), hw  # (jnp.asarray compiles per shape)

  def _features_for(self, model_frame: jax.Array, hw, query_points_yx: np.ndarray):
    """Features of [k, 2] (y, x) points in a frame's pixels, for k padded to `slot_count(k)` (repeats)."""
    queries = np.concatenate([np.zeros_like(query_points_yx[:, :1]), query_points_yx], axis=-1)
    tapir_lib.check_query_points(queries, (1, hw[0], hw[1], 3))
    queries = conventions.convert_grid_coordinates(queries, (1,) + tuple(hw), (1,) + model_frame.shape[2:4])
    padded = self.slot_count(len(queries))
    queries = np.concatenate([queries, np.repeat(queries[:1], padded - len(queries), axis=0)])
    features, _ = self._query_features(self.params, self.state, None, model_frame, queries[None])
    return features

  def _zero_context(self, num_points: int, model_hw) -> causal.CausalState:
    return zero_context(self.model_kwargs, num_points, model_hw)

  def _put(self, model_frame: jax.Array, hw, query_points_yx: np.ndarray, slots: np.ndarray) -> None:
    """Writes new points into `slots` (their history zeroed)."""
    features = self._features_for(model_frame, hw, query_points_yx)
    if self._features is None:
      count = self.slot_count(len(slots))
      self._features = jax.tree_util.tree_map(lambda a: jnp.zeros((1, count) + a.shape[2:], a.dtype), features)
      self._context = self._zero_context(count, model_frame.shape[2:4])
    positions = np.full(features.lowres[0].shape[1], len(self._ids), np.int32)  # out of range: dropped
    positions[:len(slots)] = slots
    self._features, self._context = self._write(self._features, self._context, features, positions)

  # ------------------------------------------------------------------------------------------------------
  # The public stream API

  def start(self, frame: np.ndarray, query_points_yx: np.ndarray) -> None:
    """Starts a stream of frames the size of `frame` (uint8 [h, w, 3]), tracking `query_points_yx` [n, 2] (y, x)
    given in its pixels (n may be 0: add points later with `add_queries`). The points get indices 0..n-1."""
    query_points_yx = queries_lib.check_points_yx(query_points_yx)
    self._frame_hw = None
    self._prepare(frame)  # validates the frame before anything is forgotten
    self._reset()
    self._frame_hw = tuple(frame.shape[:2])
    self.frames_seen = 0
    if len(query_points_yx):
      self.add_queries(frame, query_points_yx)

  def add_queries(self, frame: np.ndarray, query_points_yx: np.ndarray) -> np.ndarray:  # [n] int64
    """Adds points [n, 2] (y, x) starting at `frame` (call before `step(frame)`). Returns their indices: the
    lowest free ones, in order (empty for n = 0). Beyond `capacity` active points: ValueError, nothing added."""
    query_points_yx = queries_lib.check_points_yx(query_points_yx)
    if self._frame_hw is None:
      self.start(frame, np.zeros([0, 2], np.float32))
    model_frame, hw = self._prepare(frame)
    n, k = self.num_points, len(query_points_yx)
    if not k:
      return np.zeros([0], np.int64)
    self.slot_count(n + k)  # raises beyond capacity before any work
    if self._features is not None and len(self._ids) < self.slot_count(n + k):
      used = np.nonzero(self._ids >= 0)[0]
      self._resize_slots(self.slot_count(n + k), used)
    elif self._features is None:
      self._ids = np.full(self.slot_count(k), -1, np.int64)
    slots = np.nonzero(self._ids < 0)[0][:k]
    self._put(model_frame, hw, query_points_yx, slots)
    new_ids = np.setdiff1d(np.arange(n + k), self._ids[self._ids >= 0])[:k]
    self._ids[slots] = new_ids
    self._relabel()
    return new_ids

  def replace_queries(self, frame: np.ndarray, query_points_yx: np.ndarray, indices: Sequence[int]) -> None:
    """Replaces the points at `indices` by new ones starting at `frame`; their history restarts from zero.

    `indices`: distinct indices of active points (`indices`), one per row of `query_points_yx` [n, 2] (y, x);
    the points keep their indices. n = 0 does nothing.
    """
    query_points_yx = queries_lib.check_points_yx(query_points_yx)
    indices = self._check_indices(indices)
    if len(indices) != len(query_points_yx):
      raise ValueError(f'need one index per new query point: {len(indices)} indices for {len(query_points_yx)} points')
    if self._frame_hw is None:  # no stream, so no points: only an empty replacement gets here
      return
    model_frame, hw = self._prepare(frame)
    if indices.size:
      self._put(model_frame, hw, query_points_yx, self._slots_of(indices))

  def remove_queries(self, indices: Sequence[int]) -> None:
    """Stops tracking the points at `indices` (distinct active indices); the others keep theirs.

    No device work unless the remaining points fit a smaller slot bucket: then they move to it (a small gather
    that compiles once per pair of bucket sizes).
    """
    indices = self._check_indices(indices)
    if not indices.size:
      return
    self._ids[self._slots_of(indices)] = -1
    remaining = int((self._ids >= 0).sum())
    if not remaining:
      self._reset()
      return
    if self.slot_count(remaining) < len(self._ids):
      self._resize_slots(self.slot_count(remaining), np.nonzero(self._ids >= 0)[0])
    self._relabel()

  def clear(self) -> None:
    """Removes every point (the stream goes on: add points with `add_queries`); no device work."""
    self._reset()

  def _check_indices(self, indices: Sequence[int]) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
      raise ValueError(f'indices must be a 1-D sequence of integers (active points: {self.indices.tolist()}); got '
                       f'{indices.tolist()} ({indices.dtype})')
    active = self.indices
    unknown = np.setdiff1d(indices, active)
    if unknown.size and np.array_equal(active, np.arange(len(active))):
      raise ValueError(f'indices must lie in [0, {len(active)}) (the current points); got {indices.tolist()}')
    if unknown.size:
      raise ValueError(f'indices must be those of active points ({active.tolist()}); got {indices.tolist()} '
                       f'({unknown.tolist()} not active)')
    if len(np.unique(indices)) != len(indices):
      raise ValueError(f'indices must be distinct; got {indices.tolist()}')
    return indices.astype(np.int64)

  def _slots_of(self, indices: np.ndarray) -> np.ndarray:
    slot_of = {int(i): s for s, i in enumerate(self._ids) if i >= 0}
    return np.asarray([slot_of[int(i)] for i in indices], np.int64)

  def warm_up(self, frame: np.ndarray, max_points: int | None = None) -> None:
    """Compiles everything adding and removing up to `max_points` points (default: `capacity`) will use, on a
    frame like the stream's (uint8 [h, w, 3]), so that no later call compiles. Leaves the points as they were."""
    max_points = self.capacity if max_points is None else queries_lib.check_positive_int(max_points, 'max_points')
    if max_points is None:
      raise ValueError('max_points is needed when the tracker has no capacity (capacity=None)')
    sizes = sorted({self.slot_count(n) for n in range(1, max_points + 1)})
    model_frame, hw = self._prepare(frame)
    point = np.asarray([[(hw[0] - 1) / 2, (hw[1] - 1) / 2]], np.float32)
    new_features = {size: self._features_for(model_frame, hw, np.repeat(point, size, axis=0)) for size in sizes}
    for slots in sizes:
      template = jax.tree_util.tree_map(lambda a, s=slots: jnp.zeros((1, s) + a.shape[2:], a.dtype),
                                        new_features[slots])
      context = self._zero_context(slots, model_frame.shape[2:4])
      jax.block_until_ready(self._step(self.params, self.state, None, model_frame, template, context))
      self._slots_used.add(slots)
      for new in (s for s in sizes if s <= slots):
        self._write(template, context, new_features[new], np.zeros([new], np.int32))
      for other in sizes:
        jax.block_until_ready(self._gather(template, context, np.zeros([other], np.int32)))

  def step(self, frame: np.ndarray) -> OnlineOutput:
    """Tracks the active points into `frame` (uint8 [h, w, 3]); returns positions in its pixels, one row per
    point in increasing index order (`indices`)."""
    if self._frame_hw is None:
      raise ValueError('call start(frame, query_points_yx) before step()')
    model_frame, (h, w) = self._prepare(frame)
    if self._features is None:  # no points yet
      self.frames_seen += 1
      empty = np.zeros([0], np.float32)
      return OnlineOutput(tracks=np.zeros([0, 2], np.float32), visible=np.zeros([0], bool), occlusion=empty,
                          expected_dist=empty.copy())
    if self.num_slots not in self._slots_used:  # the first size compiles as any first call; later ones stall a stream
      log = logging.warning if self._slots_used else logging.info
      log('online step on %d point slots for the first time: compiling it once for this size (warm_up(frame, '
          'max_points) compiles every size ahead)', self.num_slots)
      self._slots_used.add(self.num_slots)
    (tracks, occ, expd, self._context), _ = self._step(self.params, self.state, None, model_frame, self._features,
                                                       self._context)
    self.frames_seen += 1
    tracks, occ, expd = jax.device_get((tracks, occ, expd))
    tracks, occ, expd = tracks[self._rows], occ[self._rows], expd[self._rows]  # drop the free slots
    model_h, model_w = model_frame.shape[2:4]
    tracks = conventions.convert_grid_coordinates(tracks, (model_w, model_h), (w, h))
    return OnlineOutput(tracks=tracks, visible=conventions.visibility_from_logits(occ, expd), occlusion=occ,
                        expected_dist=expd)


def model_functions(model_kwargs: Mapping[str, Any], query_chunk_size: int | None = None,
                    dtype: str = 'float32') -> tuple[Callable, Callable]:
  """The online model's two passes as Haiku apply functions (also what `tapir.export.jax_artifact` exports):
  query_features(params, state, rng, frame [1, 1, h, w, 3], queries [1, n, 3]) -> (QueryFeatures, state) and
  step(params, state, rng, frame, features, context) -> ((tracks [n, 2], occlusion [n], expected_dist [n],
  new context), state): the last refinement iteration's outputs for the frame, computed in `dtype`."""

  def query_features(frame, query_points):
    with precision.compute_dtype(dtype):
      return tapir_lib.TAPIR(**model_kwargs).get_query_features(frame, False, query_points)

  def step(frame, features, context):
    with precision.compute_dtype(dtype):
      model = tapir_lib.TAPIR(**model_kwargs)
      grids = model.get_feature_grids(frame, False)
      out = model.estimate_trajectories(frame.shape[2:4], False, grids, features, None, query_chunk_size,
                                        causal_context=context, get_causal_context=True)
    squeeze = lambda a: a[0, :, 0]  # [1, n, 1, ...] -> [n, ...]
    return (squeeze(out['tracks'][-1]), squeeze(out['occlusion'][-1]), squeeze(out['expected_dist'][-1]),
            out['causal_context'])

  return hk.transform_with_state(query_features).apply, hk.transform_with_state(step).apply


def zero_context(model_kwargs: Mapping[str, Any], num_points: int, model_hw) -> causal.CausalState:
  """The causal context of `num_points` points that have seen no frame, for frames of `model_hw` (h, w)."""
  levels = len(tapir_lib.generate_default_resolutions(model_hw, model_kwargs.get('initial_resolution', (256, 256))))
  return causal.zero_state(1, num_points, model_kwargs.get('mixer_hidden_dim', 512),
                           model_kwargs.get('num_mixer_blocks', 12), model_kwargs.get('num_pips_iter', 4), levels)


def _write_slots(features: tapir_lib.QueryFeatures, context: causal.CausalState,
                 new_features: tapir_lib.QueryFeatures,  # [1, k, c] per entry
                 positions: jax.Array):  # [k] int32 slot of each new point; out of range: not written
  """New points' features into their slots, and their history zeroed."""
  put = lambda old, new: old.at[:, positions].set(new, mode='drop')
  features = jax.tree_util.tree_map(put, features, new_features)
  context = jax.tree_util.tree_map(lambda a: a.at[:, positions].set(0.0, mode='drop'), context)
  return features, context


def _gather_slots(features: tapir_lib.QueryFeatures, context: causal.CausalState,
                  perm: jax.Array):  # [slots'] int32 old slot of each new slot; out of range: a free slot
  """A new slot layout (any size): slot j takes old slot perm[j], or zeros where perm[j] is out of range."""
  take = lambda a: jnp.take(a, perm, axis=1, mode='fill', fill_value=0)
  return jax.tree_util.tree_map(take, features), jax.tree_util.tree_map(take, context)

