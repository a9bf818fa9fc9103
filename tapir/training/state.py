"""Training: optimiser, the pmapped train step, and train state.

One step, on every local device at once (`jax.pmap`, axis `AXIS`, the same name the backbone's cross-replica batch
norm averages over):
  model on the device's clips -> `tapir.losses.tapir_loss` -> gradients -> mean over all devices (the only
  cross-device reduction of gradients) -> optax update (Adam b1 0.9 b2 0.95, decoupled weight decay, warmup +
  cosine learning rate, non-finite updates skipped and counted).
Batches are dicts of host arrays shaped [local_devices, per_device_batch, ...] (`tapir.data`).
The loop, checkpointing and evaluation around it live in `tapir.training.loop`.
"""

from typing import Any, Mapping, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import optax

from tapir import losses
from tapir.models import tapir as tapir_lib
from tapir.models import tapnet as tapnet_lib

AXIS = 'i'
# config.model_kind: which model `config.model` configures; each kind has its own loss (configs/tapnet.py).
MODEL_KINDS = ('tapir', 'tapnet')
# Parameters whose module path contains one of these, or named 'b' (biases), are not weight-decayed.
NO_DECAY_SUBSTRINGS = ('layer_norm', 'batch_norm', '_bn', 'linear_classifier')


class TrainState(NamedTuple):
  params: hk.Params  # model parameters
  state: hk.State  # Haiku state (batch-norm EMAs; empty with instance norm)
  opt_state: optax.OptState  # optimiser state, including the non-finite counters
  step: jax.Array  # [] int32, number of train steps run (applied or skipped)
  rng: jax.Array  # PRNG key for the next step (split per device inside the step)


def weight_decay_mask(params: hk.Params) -> hk.Params:
  """True for parameters that get decoupled weight decay (see NO_DECAY_SUBSTRINGS)."""
  return {
      module: {name: not (name == 'b' or any(s in module for s in NO_DECAY_SUBSTRINGS)) for name in leaves}
      for module, leaves in params.items()
  }


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup from 0, then cosine decay to 0 at `training_steps` (which includes the warmup)."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
      decay_steps=config.training_steps, end_value=0.0)


def make_optimizer(config, num_devices: int = 1) -> optax.GradientTransformation:
  """Adam moments -> + weight_decay * param (masked) -> x learning rate -> negate; skipped if not finite.

  `config.reference_eps_scaling` divides Adam's eps by the device count: the reference trainer sums per-device
  gradients where we average them, which for Adam only differs through eps.
  """
  eps = config.adam_eps / num_devices if config.reference_eps_scaling else config.adam_eps
  chain = optax.chain(
      optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=eps),
      optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
      optax.scale_by_schedule(learning_rate_schedule(config)),
      optax.scale(-1.0),
  )
  return optax.apply_if_finite(chain, max_consecutive_errors=config.max_consecutive_nonfinite)


def model_kwargs(config) -> dict[str, Any]:
  """The model constructor's settings from `config.model` (sequences as tuples, as the constructors expect)."""
  kwargs = config.model.to_dict()
  for key in ('blocks_per_group', 'initial_resolution'):
    if key in kwargs:  # TAP-Net (config.model_kind='tapnet') has neither
      kwargs[key] = tuple(kwargs[key])
  return kwargs


def model_kind(config) -> str:
  """`config.model_kind` ('tapir' when the config has no such field), checked against MODEL_KINDS."""
  kind = config.get('model_kind', 'tapir')
  if kind not in MODEL_KINDS:
    raise ValueError(f'model_kind must be one of {MODEL_KINDS}; got {kind!r}')
  return kind


def make_model(model_kwargs: Mapping[str, Any], train_chunk_size: int,
               kind: str = 'tapir') -> hk.TransformedWithState:
  """The training forward pass: video + queries -> the model's output dict (is_training=True)."""

  def forward(video, query_points, is_training=True):
    if kind == 'tapnet':
      return tapnet_lib.TAPNet(**model_kwargs)(video, is_training, query_points,
                                               query_chunk_size=train_chunk_size)
    model = tapir_lib.TAPIR(**model_kwargs)
    return model(video, is_training=is_training, query_points=query_points, query_chunk_size=train_chunk_size)

  return hk.transform_with_state(forward)


def nonfinite_count(opt_state) -> jax.Array:
  """Total number of skipped (non-finite) updates recorded in the optimiser state."""
  return opt_state.total_notfinite


def tapnet_loss_terms(
    outputs: Mapping[str, jax.Array],  # TAPNet's output dict
    target_points: jax.Array,  # [b, n, t, 2] (x, y)
    target_occluded: jax.Array,  # [b, n, t] bool
    video_shape,  # [b, t, h, w, 3]
    position_loss_weight: float = losses.POSITION_LOSS_WEIGHT,
    huber_delta: float = losses.HUBER_DELTA,
) -> losses.LossTerms:
  """TAP-Net's single loss term (no refinement estimates, no uncertainty head), as one-element LossTerms.

  total = position_loss_weight * Huber + occlusion BCE (`losses.tapnet_loss`); `position` is unweighted.
  """
  position, occlusion, uncertainty = losses.tapnet_loss(
      outputs['tracks'], outputs['occlusion'], target_points, target_occluded, video_shape,
      position_loss_weight=1.0, huber_loss_delta=huber_delta)  # `position` unweighted, as in tapir_loss
  return losses.LossTerms(total=position_loss_weight * position + occlusion, position=position[None],
                          occlusion=occlusion[None], uncertainty=uncertainty[None])


def make_train_step(model: hk.TransformedWithState, optimizer: optax.GradientTransformation, loss_config,
                    kind: str = 'tapir'):
  """Returns `train_step(state, batch) -> (state, metrics)`, to be run under pmap with axis `AXIS`."""

  def loss_fn(params, hk_state, rng, batch):
    outputs, hk_state = model.apply(params, hk_state, rng, batch['video'], batch['query_points'])
    if kind == 'tapnet':
      terms = tapnet_loss_terms(outputs, batch['target_points'], batch['occluded'], batch['video'].shape,
                                position_loss_weight=loss_config.position_loss_weight,
                                huber_delta=loss_config.huber_delta)
      return terms.total, (terms, hk_state)
    terms = losses.tapir_loss(outputs, batch['target_points'], batch['occluded'], batch['video'].shape,
                              position_loss_weight=loss_config.position_loss_weight,
                              huber_delta=loss_config.huber_delta,
                              expected_dist_threshold=loss_config.expected_dist_threshold)
    return terms.total, (terms, hk_state)

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    rng, next_rng = jax.random.split(state.rng)
    device_rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))  # distinct query order per device
    grads, (terms, hk_state) = jax.grad(loss_fn, has_aux=True)(state.params, state.state, device_rng, batch)
    grads = jax.lax.pmean(grads, AXIS)  # the one place gradients are reduced across devices
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        'loss': terms.total,
        'position_loss': jnp.sum(terms.position),
        'occlusion_loss': jnp.sum(terms.occlusion),
        'uncertainty_loss': jnp.sum(terms.uncertainty),
        'gradient_norm': optax.tree.norm(grads),
    }
    for i in range(terms.position.shape[0]):
      suffix = 'final' if i == 0 else f'unrefined_{i - 1}'
      metrics[f'position_loss/{suffix}'] = terms.position[i]
      metrics[f'occlusion_loss/{suffix}'] = terms.occlusion[i]
      metrics[f'uncertainty_loss/{suffix}'] = terms.uncertainty[i]
    metrics = jax.lax.pmean(metrics, AXIS)
    metrics['nonfinite_updates'] = nonfinite_count(opt_state)
    return TrainState(params, hk_state, opt_state, state.step + 1, next_rng), metrics

  return train_step


def make_init(model: hk.TransformedWithState, optimizer: optax.GradientTransformation):
  """Returns `init(rng, batch) -> TrainState`; run it under pmap with the same rng on every device."""

  def init(rng, batch):
    init_rng, state_rng = jax.random.split(rng)
    params, hk_state = model.init(init_rng, batch['video'], batch['query_points'])
    return TrainState(params, hk_state, optimizer.init(params), jnp.zeros([], jnp.int32), state_rng)

  return init


def unreplicate(tree):
  """First device's copy of a replicated tree, on the host."""
  return jax.device_get(jax.tree_util.tree_map(lambda x: x[0], tree))
