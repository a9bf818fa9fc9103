"""TAPIR training losses.

Every estimate the model returns (the cost-volume initialisation, each refinement iteration, and the final
output) gets the same triple of losses against the same ground truth, summed with equal weight:

  position     Huber (delta 4 px) on the track, visible frames only, weight 0.05;
  occlusion    binary cross-entropy of the occlusion logit against the occlusion flag;
  uncertainty  binary cross-entropy of the expected_dist logit against "the (stop-gradient) prediction is more
               than 6 px from the truth", visible frames only.

Positions are compared in a 256x256 raster whatever the video size (pure rescaling, `tapir.conventions`), so
the pixel thresholds mean the same at any training resolution. Every mean runs over all b * n * t elements,
masked or not (masked elements count as zeros in the numerator).
"""

from typing import Any, Mapping, NamedTuple, Sequence
import warnings

import jax
import jax.numpy as jnp

from tapir import conventions

# Values of the released training configuration.
HUBER_DELTA = 4.0  # px in the 256x256 loss raster
POSITION_LOSS_WEIGHT = 0.05
EXPECTED_DIST_THRESHOLD = 6.0  # px in the 256x256 loss raster
LOSS_RESOLUTION = (256, 256)  # (height, width)
RENAMED_LOSS_ARGUMENTS = {'huber_loss_delta': 'huber_delta', 'expected_dist_thresh': 'expected_dist_threshold'}


def huber_loss(
    predicted: jax.Array,  # [..., 2]
    target: jax.Array,  # [..., 2]
    delta: float = HUBER_DELTA,
) -> jax.Array:  # [...]
  """Huber loss on the Euclidean error. The epsilon keeps the gradient finite at zero error."""
  squared = jnp.sum(jnp.square(predicted - target), axis=-1)
  distance = jnp.sqrt(squared + 1e-12)
  return jnp.where(distance < delta, squared / 2, delta * (distance - delta / 2))


def sigmoid_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """-y log sigmoid(z) - (1 - y) log sigmoid(-z), computed stably."""
  return -labels * jax.nn.log_sigmoid(logits) - (1 - labels) * jax.nn.log_sigmoid(-logits)


def tapnet_loss(
    points: jax.Array,  # [b, n, t, 2] predicted (x, y), pixels of the video
    occlusion: jax.Array,  # [b, n, t] logit
    target_points: jax.Array,  # [b, n, t, 2] (x, y), pixels of the video
    target_occ: jax.Array,  # [b, n, t] bool, True = occluded
    shape: Sequence[int],  # [b, t, h, w, 3] of the video
    mask: jax.Array | None = None,  # [b, n, t] multiplies every term
    expected_dist: jax.Array | None = None,  # [b, n, t] logit
    position_loss_weight: float = POSITION_LOSS_WEIGHT,
    expected_dist_threshold: float = EXPECTED_DIST_THRESHOLD,
    huber_delta: float = HUBER_DELTA,
    rebalance_factor: float | None = None,
    occlusion_loss_mask: jax.Array | None = None,  # [b, n, t] multiplies the occlusion terms
    **renamed: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The reference's single-estimate loss, with its argument order and defaults.

  Two keywords are named as in `tapir_loss` and the configs (`huber_delta`, `expected_dist_threshold`); the
  reference's names (`huber_loss_delta`, `expected_dist_thresh`) still work with a DeprecationWarning.

  Returns the same three scalars as the reference `tapnet_loss`: (position_loss_weight * H, O, U), each a mean
  over all b * n * t elements (masked elements count as zeros): H the Huber position loss (delta
  `huber_delta` px, visible frames), O the occlusion cross-entropy (times `rebalance_factor` reweighting and
  `occlusion_loss_mask` when given), U the `expected_dist` cross-entropy against "the prediction is more than
  `expected_dist_threshold` px off" (visible frames; 0 without `expected_dist`). Pixels are those of a 256x256
  raster. The defaults are the released training values (0.05, 6 px, 4 px).
  """
  for old, new in RENAMED_LOSS_ARGUMENTS.items():
    if old in renamed:
      warnings.warn(f'tapnet_loss: {old} is now called {new}', DeprecationWarning, stacklevel=2)
      if new == 'huber_delta':
        huber_delta = renamed.pop(old)
      else:
        expected_dist_threshold = renamed.pop(old)
  if renamed:
    raise TypeError(f'tapnet_loss got unexpected keyword arguments {sorted(renamed)}')
  h, w = shape[2:4]
  points = conventions.rescale_xy(points, (h, w), LOSS_RESOLUTION)
  target_points = conventions.rescale_xy(target_points, (h, w), LOSS_RESOLUTION)
  occluded = target_occ.astype(jnp.float32)
  mask = jnp.ones_like(occluded) if mask is None else mask

  huber = huber_loss(points, target_points, huber_delta) * (1 - occluded) * mask

  occ = sigmoid_cross_entropy(occlusion, occluded) * mask
  if rebalance_factor is not None:
    occ = occ * ((1 + rebalance_factor) - rebalance_factor * occluded)
  if occlusion_loss_mask is not None:
    occ = occ * occlusion_loss_mask

  if expected_dist is None:
    uncertainty = jnp.zeros_like(huber)
  else:
    error = jnp.sum(jnp.square(jax.lax.stop_gradient(points) - target_points), axis=-1)
    far = (error > expected_dist_threshold**2).astype(jnp.float32)
    uncertainty = sigmoid_cross_entropy(expected_dist, far) * (1 - occluded) * mask
  return position_loss_weight * jnp.mean(huber), jnp.mean(occ), jnp.mean(uncertainty)


class LossTerms(NamedTuple):
  """Per-estimate scalars (index 0 = final output, then the unrefined estimates in order) and the total."""
  total: jax.Array  # []
  position: jax.Array  # [k]
  occlusion: jax.Array  # [k]
  uncertainty: jax.Array  # [k]


def tapir_loss(
    outputs: Mapping[str, jax.Array | list[jax.Array]],  # the model's output dict
    target_points: jax.Array,  # [b, n, t, 2] (x, y)
    target_occluded: jax.Array,  # [b, n, t] bool
    video_shape: Sequence[int],  # [b, t, h, w, 3]
    position_loss_weight: float = POSITION_LOSS_WEIGHT,
    huber_delta: float = HUBER_DELTA,
    expected_dist_threshold: float = EXPECTED_DIST_THRESHOLD,
    mask: jax.Array | None = None,  # [b, n, t] multiplies every term (e.g. pseudo-label masks)
) -> LossTerms:
  """Equal-weight sum of `tapnet_loss` over the final output and every unrefined estimate.

  `position` holds the unweighted Huber terms; `total` weights them by `position_loss_weight`.
  """
  estimates = [(outputs['tracks'], outputs['occlusion'], outputs['expected_dist'])]
  estimates += list(zip(outputs['unrefined_tracks'], outputs['unrefined_occlusion'],
                        outputs['unrefined_expected_dist']))
  terms = [
      tapnet_loss(points, occ, target_points, target_occluded, video_shape, mask=mask, expected_dist=expd,
                  position_loss_weight=1.0, expected_dist_threshold=expected_dist_threshold,
                  huber_delta=huber_delta)
      for points, occ, expd in estimates
  ]
  position, occlusion, uncertainty = (jnp.stack(x) for x in zip(*terms))
  total = jnp.sum(position_loss_weight * position + occlusion + uncertainty)
  return LossTerms(total=total, position=position, occlusion=occlusion, uncertainty=uncertainty)


def tapnet_loss_terms(
    outputs: Mapping[str, jax.Array],  # TAPNet's output dict
    target_points: jax.Array,  # [b, n, t, 2] (x, y)
    target_occluded: jax.Array,  # [b, n, t] bool
    video_shape: Sequence[int],  # [b, t, h, w, 3]
    position_loss_weight: float = POSITION_LOSS_WEIGHT,
    huber_delta: float = HUBER_DELTA,
    expected_dist_threshold: float = EXPECTED_DIST_THRESHOLD,
    mask: jax.Array | None = None,  # [b, n, t]
) -> LossTerms:
  """TAP-Net's single loss term (no refinement estimates, no uncertainty head) as one-element LossTerms, with
  `tapir_loss`'s signature: total = position_loss_weight * Huber + occlusion BCE; `position` is unweighted.
  `expected_dist_threshold` is unused (TAP-Net has no expected-distance head)."""
  del expected_dist_threshold
  position, occlusion, uncertainty = tapnet_loss(
      outputs['tracks'], outputs['occlusion'], target_points, target_occluded, video_shape, mask=mask,
      position_loss_weight=1.0, huber_delta=huber_delta)
  return LossTerms(total=position_loss_weight * position + occlusion, position=position[None],
                   occlusion=occlusion[None], uncertainty=uncertainty[None])
