"""The composed TAPIR model: feature grids -> query features -> initialisation -> multi-resolution refinement.

Inputs and outputs follow `tapir.conventions`. Stages (all Haiku methods of one module, so they share weights):
  get_feature_grids      backbone features of every frame at every resolution level;
  get_query_features     each query's features, sampled from its own frame;
  estimate_trajectories  per chunk of queries: cost-volume initialisation, then `num_pips_iter` refinement
                         iterations per resolution level; returns every intermediate estimate.
`__call__` chains them and averages the last iteration of every level into `tracks`, `occlusion` and
`expected_dist`; all earlier estimates are returned as the `unrefined_*` lists.

Resolution levels: the initial estimate is computed at `initial_resolution`; refinement runs once per entry of
`refinement_resolutions` (default: from the initial resolution up to the video's, doubling per level). Tracks are
kept in pixels of the initial resolution internally and scaled to the video's pixels for output.
"""

import contextlib
import functools
from typing import Any, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from tapir import conventions
from tapir.models import causal
from tapir.models import chunking
from tapir.models import cost_volume as cost_volume_lib
from tapir.models import extra_convs as extra_convs_lib
from tapir.models import refinement
from tapir.models import resnet
from tapir.models import shapes

# Re-exported: part of this module's public interface.
Resolution = shapes.Resolution
check_query_points = shapes.check_query_points
FeatureGrids = shapes.FeatureGrids
QueryFeatures = shapes.QueryFeatures
generate_default_resolutions = shapes.generate_default_resolutions


class TAPIR(hk.Module):
  """TAPIR point tracker. Constructor arguments use the official names and defaults."""

  def __init__(
      self,
      bilinear_interp_with_depthwise_conv: bool | None = None,
      num_pips_iter: int = 4,
      pyramid_level: int = 1,
      mixer_hidden_dim: int = 512,
      num_mixer_blocks: int = 12,
      mixer_kernel_shape: int = 3,
      patch_size: int = 7,
      softmax_temperature: float = 20.0,
      use_causal_conv: bool = False,
      parallelize_query_extraction: bool = False,
      initial_resolution: Sequence[int] = (256, 256),
      blocks_per_group: Sequence[int] = (2, 2, 2, 2),
      extra_convs: bool = False,
      extra_convs_kwargs: dict[str, Any] | None = None,
      feature_extractor_chunk_size: int | None = None,
      normalization: str | None = 'instancenorm',
      cross_replica_axis: str | None = 'i',
      remat_refinement: bool = False,
      name: str = 'tapir',
  ):
    """See the module docstring. Beyond the official arguments:

    Args:
      normalization: backbone normalisation, 'instancenorm' (released checkpoints) or 'batchnorm'
        (cross-replica over `cross_replica_axis`; see `tapir.models.resnet`), 'layernorm' or None.
      cross_replica_axis: the mapped axis name batch norm averages its statistics over (None: local batch).
      bilinear_interp_with_depthwise_conv: the official switch between the two formulations of the 7x7
        correlation patches (equal numbers): a gather of the patch pixels (False) or the full correlation map
        contracted with separable bilinear weights (True). None (our default; the official default is False)
        picks the faster for the JAX backend (`tapir.models.refinement.DENSE_BY_BACKEND`).
      remat_refinement: recompute each refinement iteration's activations in the backward pass instead of
        storing them (`hk.remat`). Same numbers; on XLA:CPU it no longer saves memory worth its recompute
        (one clip of 24 x 256^2 with 256 tracks in chunks of 32: 7.34 GB without, 7.29 GB with).
    """
    super().__init__(name=name)
    if patch_size != refinement.PATCH_WIDTH:
      raise ValueError(f'patch_size={patch_size} is not supported: the released models use '
                       f'{refinement.PATCH_WIDTH}x{refinement.PATCH_WIDTH} patches')
    if num_pips_iter < 1 or pyramid_level < 0:
      raise ValueError(f'need num_pips_iter >= 1 and pyramid_level >= 0; got {num_pips_iter}, {pyramid_level}')
    shapes.check_resolution(initial_resolution, 'initial_resolution')
    if feature_extractor_chunk_size is not None and feature_extractor_chunk_size < 1:
      raise ValueError(f'feature_extractor_chunk_size must be positive; got {feature_extractor_chunk_size}')
    if bilinear_interp_with_depthwise_conv is None:
      bilinear_interp_with_depthwise_conv = refinement.default_dense()
    self.bilinear_interp_with_depthwise_conv = bilinear_interp_with_depthwise_conv
    self.num_pips_iter = num_pips_iter
    self.pyramid_level = pyramid_level
    self.mixer_hidden_dim = mixer_hidden_dim
    self.num_mixer_blocks = num_mixer_blocks
    self.use_causal_conv = use_causal_conv
    self.parallelize_query_extraction = parallelize_query_extraction
    self.initial_resolution = tuple(int(s) for s in initial_resolution)
    self.feature_extractor_chunk_size = feature_extractor_chunk_size
    self.remat_refinement = remat_refinement
    self.normalization = normalization

    self.resnet = resnet.ResNet(blocks_per_group, normalization, cross_replica_axis, name='resnet')
    self.cost_volume = cost_volume_lib.CostVolumeHead(softmax_temperature)
    self.mixer = refinement.PIPsMLPMixer(mixer_hidden_dim, num_mixer_blocks, mixer_kernel_shape,
                                         use_causal_conv, name='pips_mlp_mixer')
    self.extra_convs = extra_convs_lib.ExtraConvs(**(extra_convs_kwargs or {})) if extra_convs else None

  # ------------------------------------------------------------------------------------------------------
  # Stage 1: feature grids

  def _encode(self, images: jax.Array, is_training: bool) -> tuple[jax.Array, jax.Array]:
    """[p, h, w, 3] -> unit-norm hires [p, h/4, w/4, 128] and lowres [p, h/8, w/8, 256]."""
    out = self.resnet(images, is_training)
    lowres = out.lowres if self.extra_convs is None else self.extra_convs(out.lowres)
    normalize = lambda f: f / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(f), axis=-1, keepdims=True), 1e-12))
    return normalize(out.hires), normalize(lowres)

  def _encode_frames(self, frames: jax.Array, is_training: bool) -> tuple[jax.Array, jax.Array]:
    """Runs the backbone on [p, h, w, 3] frames, `feature_extractor_chunk_size` at a time if set."""
    return chunking.map_frames(lambda x: self._encode(x, is_training), frames, self.feature_extractor_chunk_size)

  def _all_resolutions(self, video_hw: Resolution, refinement_resolutions) -> list[Resolution]:
    if refinement_resolutions is None:
      refinement_resolutions = generate_default_resolutions(video_hw, self.initial_resolution)
    all_res = [self.initial_resolution] + [tuple(int(s) for s in r) for r in refinement_resolutions]
    for r in all_res:
      shapes.check_resolution(r, 'every refinement resolution')
    return all_res

  def get_feature_grids(
      self,
      video: jax.Array,  # [b, t, h, w, 3]
      is_training: bool,
      refinement_resolutions: Sequence[Resolution] | None = None,
  ) -> FeatureGrids:
    shapes.check_video(video)
    b, t, h, w, _ = video.shape
    lowres, hires = [], []
    prev = None
    for res in self._all_resolutions((h, w), refinement_resolutions):
      if res == prev:
        lowres.append(lowres[-1])
        hires.append(hires[-1])
        continue
      if prev == (h, w):
        # Reference quirk: after a level at the video's own size, the next level encodes the unresized video.
        images = video
      else:
        images = jax.image.resize(video, (b, t) + res + (3,), method='bilinear')
      prev = res
      frames = images.reshape((b * t,) + images.shape[2:])
      hi, lo = self._encode_frames(frames, is_training)
      hires.append(hi.reshape((b, t) + hi.shape[1:]))
      lowres.append(lo.reshape((b, t) + lo.shape[1:]))
    return FeatureGrids(lowres=tuple(lowres), hires=tuple(hires))

  # ------------------------------------------------------------------------------------------------------
  # Stage 2: query features

  def _sample_queries(self, grid: jax.Array, query_points: jax.Array, video_shape) -> jax.Array:
    """grid [b, t, gh, gw, c], queries (t, y, x) in video pixels -> [b, n, c] (clamped trilinear sample)."""
    _, t, vh, vw, _ = video_shape
    gh, gw = grid.shape[2:4]
    position = conventions.convert_grid_coordinates(query_points, (t, vh, vw), (t, gh, gw))
    if self.parallelize_query_extraction:
      # Official alternative: no interpolation along t; a frame outside the video gives a zero feature.
      frame = jnp.round(position[..., 0])
      in_range = ((frame >= 0) & (frame < t)).astype(grid.dtype)
      position = position.at[..., 0].set(frame)
      return jax.vmap(conventions.interp)(grid, position) * in_range[..., None]
    return jax.vmap(conventions.interp)(grid, position)

  def get_query_features(
      self,
      video: jax.Array,  # [b, t, h, w, 3]
      is_training: bool,
      query_points: jax.Array,  # [b, n, 3] (t, y, x) in pixels of `video`
      feature_grids: FeatureGrids | None = None,
      refinement_resolutions: Sequence[Resolution] | None = None,
  ) -> QueryFeatures:
    shapes.check_call(video, query_points, None)
    if feature_grids is None:
      feature_grids = self.get_feature_grids(video, is_training, refinement_resolutions)
    lowres, hires = [], []
    for k, (lo, hi) in enumerate(zip(feature_grids.lowres, feature_grids.hires)):
      if k > 0 and lo is feature_grids.lowres[k - 1] and hi is feature_grids.hires[k - 1]:
        lowres.append(lowres[-1])
        hires.append(hires[-1])
        continue
      lowres.append(self._sample_queries(lo, query_points, video.shape))
      hires.append(self._sample_queries(hi, query_points, video.shape))
    return QueryFeatures(lowres=tuple(lowres), hires=tuple(hires))

  # ------------------------------------------------------------------------------------------------------
  # Stage 3: trajectories

  def _refine_level(self, grids, level_resolution, points, occ, expd, query_hires, query_lowres, contexts,
                    unroll: bool = False):
    """`num_pips_iter` refinement iterations at one resolution level.

    Returns the per-iteration estimates stacked on a leading axis ([iters, b, n, t, ...]) and the new contexts.
    """
    b, n, t, _ = points.shape
    hi, wi = self.initial_resolution
    feats = jnp.concatenate([query_hires, query_lowres], axis=-1)  # [b, n, 384]
    feats = jnp.broadcast_to(feats[:, :, None], (b, n, t, feats.shape[-1]))

    def iteration(carry, context):
      points, occ, expd, feats = carry
      hires_query = feats[..., :refinement.HIRES_CHANNELS]
      lowres_query = feats[..., refinement.HIRES_CHANNELS:]
      queries = [hires_query] + [lowres_query] * (len(grids) - 1)
      corr = refinement.correlation_patches(grids, queries, points, (hi, wi),
                                            dense=self.bilinear_interp_with_depthwise_conv)
      mixer_in = jnp.concatenate([jnp.zeros_like(points), occ[..., None], expd[..., None], feats, corr], -1)
      if context is not None:
        context = [refinement.BlockContext(*(a.reshape((b * n,) + a.shape[2:]) for a in c)) for c in context]
      out, context = self.mixer(mixer_in.reshape(b * n, t, -1), context)
      out = out.reshape(b, n, t, -1)
      delta = conventions.convert_grid_coordinates(out[..., :2], level_resolution[::-1], (wi, hi))
      points = points + delta
      occ = occ + out[..., 2]
      expd = expd + out[..., 3]
      feats = feats + out[..., 4:]
      if context is not None:
        context = [refinement.BlockContext(*(a.reshape((b, n) + a.shape[1:]) for a in c)) for c in context]
      return (points, occ, expd, feats), (points, occ, expd, context)

    if self.remat_refinement:
      iteration = hk.remat(iteration)
    # Unrolled in training (same numbers): XLA fuses across iterations and skips the loop's stacking of
    # residuals (~5% of the `cpu` preset's train step). Not in inference, where it keeps every iteration's
    # buffers alive (offline forward of 48 x 256^2: 0.7 -> 1.7 GB of temporaries).
    _, (all_points, all_occ, all_expd, new_contexts) = hk.scan(
        iteration, (points, occ, expd, feats), contexts, length=self.num_pips_iter,
        unroll=self.num_pips_iter if unroll else 1)
    return all_points, all_occ, all_expd, new_contexts

  def _estimate_chunk(self, feature_grids, query_lowres, query_hires, query_points, video_size, contexts,
                      refinement_gradients: bool = True, unroll: bool = False):
    """Initialisation and every refinement iteration for one chunk of queries.

    query_lowres / query_hires: per resolution entry, [b, n, c]. query_points: [b, n, 3] in video pixels or
    None. contexts: None, or per refinement level the stacked causal contexts of its iterations.
    refinement_gradients=False: the refinement iterations read only stop-gradient inputs and parameters, so
    differentiating the chunk builds no backward pass (and keeps no residuals) for them; the cost-volume
    initialisation keeps its gradients either way. Values are the same.
    Returns (points, occlusion, expected_dist) stacked over the 1 + num_iters estimates ([k, b, n, t, ...]),
    tracks in initial-resolution pixels, and the new contexts.
    """
    hi, wi = self.initial_resolution
    t = feature_grids.lowres[0].shape[1]
    initial = self.cost_volume(query_lowres[0], feature_grids.lowres[0], self.initial_resolution)
    points0 = initial.points
    if query_points is not None:
      query_initial = conventions.convert_grid_coordinates(query_points, (t,) + tuple(video_size), (t, hi, wi))
      points0 = cost_volume_lib.replace_query_frame(points0, query_initial)

    tracks, occlusion, expected_dist, new_contexts = [points0[None]], [initial.occlusion[None]], [
        initial.expected_dist[None]], []
    refine_inputs = (feature_grids, points0, initial.occlusion, initial.expected_dist, query_hires, query_lowres)
    if not refinement_gradients:
      refine_inputs = jax.lax.stop_gradient(refine_inputs)
    grids_in, points, occ0, expd0, hires_in, lowres_in = refine_inputs
    resolutions = feature_grids.resolutions
    # Without refinement gradients, the shared weights, too, enter these iterations as constants.
    with contextlib.nullcontext() if refinement_gradients else chunking.constant_parameters():
      for level in range(1, len(grids_in.lowres)):
        grids = refinement.pyramid(grids_in.hires[level], grids_in.lowres[level], self.pyramid_level)
        level_points, level_occ, level_expd, level_context = self._refine_level(
            grids, resolutions[level], points, occ0, expd0, hires_in[level], lowres_in[level],
            None if contexts is None else contexts[level - 1], unroll)
        tracks.append(level_points)
        occlusion.append(level_occ)
        expected_dist.append(level_expd)
        new_contexts.append(level_context)
        # The next level starts from these positions; logits restart from the initialisation.
        points = level_points[-1]
    return (jnp.concatenate(tracks), jnp.concatenate(occlusion), jnp.concatenate(expected_dist),
            None if contexts is None else new_contexts)

  def estimate_trajectories(
      self,
      video_size: Sequence[int],  # (h, w) of the video the outputs' pixels refer to
      is_training: bool,
      feature_grids: FeatureGrids,
      query_features: QueryFeatures,
      query_points_in_video: jax.Array | None,  # [b, n, 3] (t, y, x); None: no query-frame replacement
      query_chunk_size: int | None = None,
      causal_context: Any = None,
      get_causal_context: bool = False,
  ) -> dict[str, Any]:
    """Initial estimate and every refinement iteration, as lists of `1 + num_pips_iter * levels` entries.

    Returns a dict with lists `tracks` ([b, n, t, 2] (x, y) in pixels of `video_size`), `occlusion` and
    `expected_dist` ([b, n, t] logits); entry 0 is the cost-volume initialisation. With a causal context
    (see `tapir.models.causal`), also `causal_context`, the context for the next frames.
    """
    b, n = query_features.lowres[0].shape[:2]
    num_levels = len(feature_grids.lowres) - 1
    if is_training and causal_context is not None:
      raise ValueError('training with a causal context is not supported')
    contexts = official_format = None
    if causal_context is not None or get_causal_context:
      if not self.use_causal_conv:
        raise ValueError('causal contexts need a model built with use_causal_conv=True')
      contexts, official_format = causal.stack_input(causal_context, b, n, self.mixer_hidden_dim,
                                                     self.num_mixer_blocks, self.num_pips_iter, num_levels)

    # Queries are processed in a random order when an RNG is available (it decides which chunk gets gradients
    # through refinement in training); values do not depend on the order.
    rng = hk.maybe_next_rng_key()
    plan = chunking.plan(n, query_chunk_size, rng if contexts is None else None)
    split = functools.partial(chunking.split, plan)
    chunked = dict(
        lowres=[split(q) for q in query_features.lowres],
        hires=[split(q) for q in query_features.hires],
        points=None if query_points_in_video is None else split(query_points_in_video),
        contexts=None if contexts is None else jax.tree_util.tree_map(lambda a: split(a, axis=2), contexts),
        index=jnp.arange(plan.num_chunks),
    )

    def run_chunk(xs, refinement_gradients):
      return self._estimate_chunk(feature_grids, xs['lowres'], xs['hires'], xs['points'], video_size,
                                  xs['contexts'], refinement_gradients, unroll=is_training)

    points, occ, expd, new_contexts = chunking.run(run_chunk, chunked, plan.num_chunks, is_training)
    merge = functools.partial(chunking.merge, plan)
    points, occ, expd = merge(points, 2), merge(occ, 2), merge(expd, 2)  # [k, b, n, t, ...]
    hi, wi = self.initial_resolution
    points = conventions.convert_grid_coordinates(points, (wi, hi), tuple(video_size)[::-1])
    result = dict(tracks=list(points), occlusion=list(occ), expected_dist=list(expd))
    if contexts is not None:
      new_contexts = jax.tree_util.tree_map(lambda a: merge(a, 2), new_contexts)
      result['causal_context'] = causal.unstack_output(new_contexts, official_format)
    return result

  def construct_initial_causal_state(self, num_points: int, num_resolutions: int = 1,
                                     batch_size: int = 1) -> list[dict[str, jax.Array]]:
    """Zero causal context in the reference layout (a list of dicts), for any batch size and mixer width.

    `num_resolutions` is the number of refinement levels. `tapir.models.causal.zero_state` gives the same in
    our typed layout; `estimate_trajectories` accepts and returns either.
    """
    return causal.to_official(causal.zero_state(batch_size, num_points, self.mixer_hidden_dim,
                                                self.num_mixer_blocks, self.num_pips_iter, num_resolutions))

  @staticmethod
  def update_query_features(
      query_features: QueryFeatures,
      new_query_features: QueryFeatures,
      idx_to_update: jax.Array,  # [k] indices of the points to replace
      causal_state: Any = None,
  ) -> QueryFeatures | tuple[QueryFeatures, Any]:
    """Replaces the features of some points (at every resolution entry) and zeroes their causal history."""
    idx = jnp.asarray(idx_to_update)
    replace = lambda old, new: old.at[:, idx].set(new)
    updated = QueryFeatures(
        lowres=tuple(replace(o, n) for o, n in zip(query_features.lowres, new_query_features.lowres)),
        hires=tuple(replace(o, n) for o, n in zip(query_features.hires, new_query_features.hires)))
    return updated if causal_state is None else (updated, causal.reset_points(causal_state, idx))

  # ------------------------------------------------------------------------------------------------------

  def __call__(
      self,
      video: jax.Array,  # [b, t, h, w, 3] in [-1, 1]
      is_training: bool,
      query_points: jax.Array,  # [b, n, 3] (t, y, x) in pixels of `video`
      query_chunk_size: int | None = None,
      get_query_feats: bool = False,
      refinement_resolutions: Sequence[Resolution] | None = None,
      feature_grids: FeatureGrids | None = None,
  ) -> dict[str, Any]:
    """Tracks every query through the whole video.

    Returns:
      tracks [b, n, t, 2], occlusion [b, n, t], expected_dist [b, n, t]: the mean of the last refinement
        iteration of every resolution level;
      unrefined_tracks / unrefined_occlusion / unrefined_expected_dist: lists of every earlier estimate
        (entry 0 is the cost-volume initialisation).
    """
    if get_query_feats:
      raise ValueError('get_query_feats=True is not supported (as in the reference implementation)')
    shapes.check_call(video, query_points, query_chunk_size)
    if feature_grids is None:
      feature_grids = self.get_feature_grids(video, is_training, refinement_resolutions)
    query_features = self.get_query_features(video, is_training, query_points, feature_grids)
    trajectories = self.estimate_trajectories(video.shape[2:4], is_training, feature_grids, query_features,
                                              query_points, query_chunk_size)
    p = self.num_pips_iter
    num_levels = len(feature_grids.lowres) - 1
    out = {}
    for key in ('tracks', 'occlusion', 'expected_dist'):
      values = trajectories[key]
      finals = [values[p * level] for level in range(1, num_levels + 1)]
      out[key] = finals[0] if len(finals) == 1 else jnp.mean(jnp.stack(finals), axis=0)
      out['unrefined_' + key] = values[:-1]
    return out
