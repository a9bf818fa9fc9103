"""Training: train state, optimiser, schedule, and the pmapped supervised step every objective builds on.

One supervised step, on every local device at once (`jax.pmap`, axis `AXIS`, the same name the backbone's
cross-replica batch norm averages over):
  model on the device's clips -> the objective's loss (`tapir.losses.tapir_loss`, `tapnet_loss_terms`, ...) ->
  gradients -> mean over all devices (the only cross-device reduction of gradients) -> optax update (Adam b1 0.9
  b2 0.95, decoupled weight decay, warmup + cosine learning rate, non-finite updates skipped and counted).
Batches are dicts of host arrays shaped [local_devices, per_device_batch, ...] (`tapir.data`).
Objectives (`tapir.training.task`) compose these pieces; the loop around them is `tapir.training.loop`.
"""

from typing import Any, Callable, Mapping, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tapir import losses
from tapir.models import families

AXIS = 'i'
# Parameters whose module path contains one of these, or named 'b' (biases), are not weight-decayed.
NO_DECAY_SUBSTRINGS = ('layer_norm', 'batch_norm', '_bn', 'linear_classifier')


class TrainState(NamedTuple):
  params: hk.Params  # model parameters
  state: hk.State  # Haiku state (batch-norm EMAs; empty with instance norm)
  opt_state: optax.OptState  # optimiser state, including the non-finite counters
  step: jax.Array  # [] int32, number of train steps run (applied or skipped)
  rng: jax.Array  # PRNG key for the next step (split per device inside the step)
  extra: Any = {}  # the objective's own state (e.g. teacher weights), checkpointed and restored with the rest


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
  return families.normalize_settings(config.model.to_dict())


LossFn = Callable[..., losses.LossTerms]  # (outputs, target_points, occluded, video_shape, **loss config)


def make_model(model_kwargs: Mapping[str, Any], train_chunk_size: int,
               family: str = 'tapir') -> hk.TransformedWithState:
  """The training forward pass of a model family: video + queries -> the model's output dict."""
  module = families.get(family).module

  def forward(video, query_points, is_training=True):
    return module(**model_kwargs)(video, is_training=is_training, query_points=query_points,
                                  query_chunk_size=train_chunk_size)

  return hk.transform_with_state(forward)


def nonfinite_count(opt_state) -> jax.Array:
  """Total number of skipped (non-finite) updates recorded in the optimiser state."""
  return opt_state.total_notfinite


def consecutive_nonfinite(opt_state) -> int:
  """Non-finite updates in a row up to this step (optax.apply_if_finite's counter; 0 after a finite one)."""
  return int(np.max(jax.device_get(opt_state.notfinite_count)))


def loss_metrics(terms: losses.LossTerms, prefix: str = '') -> dict[str, jax.Array]:
  """The log's names for a loss: 'loss', '<term>_loss' summed over estimates, and '<term>_loss/<estimate>'
  per estimate ('final', 'unrefined_0', ...), each name after `prefix` (e.g. 'selfsup_')."""
  metrics = {
      f'{prefix}loss': terms.total,
      f'{prefix}position_loss': jnp.sum(terms.position),
      f'{prefix}occlusion_loss': jnp.sum(terms.occlusion),
      f'{prefix}uncertainty_loss': jnp.sum(terms.uncertainty),
  }
  for i in range(terms.position.shape[0]):
    suffix = 'final' if i == 0 else f'unrefined_{i - 1}'
    metrics[f'{prefix}position_loss/{suffix}'] = terms.position[i]
    metrics[f'{prefix}occlusion_loss/{suffix}'] = terms.occlusion[i]
    metrics[f'{prefix}uncertainty_loss/{suffix}'] = terms.uncertainty[i]
  return metrics


def supervised_terms(model: hk.TransformedWithState, loss_config, loss_fn: LossFn):
  """`terms(params, hk_state, rng, batch) -> (total, (LossTerms, hk_state))`: the model on a labelled batch
  ('video', 'query_points', 'target_points', 'occluded', optionally 'mask') and `loss_fn` against its labels."""

  def terms_fn(params, hk_state, rng, batch):
    outputs, hk_state = model.apply(params, hk_state, rng, batch['video'], batch['query_points'])
    terms = loss_fn(outputs, batch['target_points'], batch['occluded'], batch['video'].shape,
                    position_loss_weight=loss_config.position_loss_weight, huber_delta=loss_config.huber_delta,
                    expected_dist_threshold=loss_config.expected_dist_threshold, mask=batch.get('mask'))
    return terms.total, (terms, hk_state)

  return terms_fn


def apply_gradients(state: TrainState, grads, optimizer: optax.GradientTransformation, hk_state,
                    metrics: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """Mean of `grads` over devices (the one place they are reduced), the optimiser update, and the metrics'
  device mean with 'gradient_norm' and 'nonfinite_updates'. `state.step`/`rng` are the step wrapper's."""
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = jax.lax.pmean({**metrics, 'gradient_norm': optax.tree.norm(grads)}, AXIS)
  metrics['nonfinite_updates'] = nonfinite_count(opt_state)
  return state._replace(params=params, state=hk_state, opt_state=opt_state), metrics


UpdateFn = Callable[[TrainState, Mapping[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def make_step(update_fn: UpdateFn):
  """`train_step(state, batch) -> (state, metrics)` (under pmap, axis `AXIS`) around an objective's
  `update_fn(state, batch, rng)`: splits the state's key (a distinct key per device) and counts the step."""

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    rng, next_rng = jax.random.split(state.rng)
    device_rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))  # distinct query order per device
    new_state, metrics = update_fn(state, batch, device_rng)
    return new_state._replace(step=state.step + 1, rng=next_rng), metrics

  return train_step


def supervised_update(model: hk.TransformedWithState, optimizer: optax.GradientTransformation, loss_config,
                      loss_fn: LossFn = losses.tapir_loss) -> UpdateFn:
  """The supervised `update_fn(state, batch, rng)`: gradients of `loss_fn` on a labelled batch, applied.

  `loss_fn` is the objective's loss with `tapir.losses.tapir_loss`'s signature (default: TAPIR's).
  """
  terms_fn = supervised_terms(model, loss_config, loss_fn)

  def update_fn(state, batch, rng):
    grads, (terms, hk_state) = jax.grad(terms_fn, has_aux=True)(state.params, state.state, rng, batch)
    return apply_gradients(state, grads, optimizer, hk_state, loss_metrics(terms))

  return update_fn


def make_train_step(model: hk.TransformedWithState, optimizer: optax.GradientTransformation, loss_config,
                    loss_fn: LossFn = losses.tapir_loss):
  """The supervised step: `train_step(state, batch) -> (state, metrics)`, to be run under pmap with axis `AXIS`."""
  return make_step(supervised_update(model, optimizer, loss_config, loss_fn))


def make_init(model: hk.TransformedWithState, optimizer: optax.GradientTransformation,
              init_extra: Callable[[hk.Params, hk.State], Any] | None = None):
  """Returns `init(rng, batch) -> TrainState`; run it under pmap with the same rng on every device.

  `init_extra(params, hk_state)` makes the objective's own state (default: none, `{}`).
  """

  def init(rng, batch):
    init_rng, state_rng = jax.random.split(rng)
    params, hk_state = model.init(init_rng, batch['video'], batch['query_points'])
    extra = {} if init_extra is None else init_extra(params, hk_state)
    return TrainState(params, hk_state, optimizer.init(params), jnp.zeros([], jnp.int32), state_rng, extra)

  return init


def replicate(tree):
  """One copy per local device, stacked on a leading axis (what pmap takes)."""
  n = jax.local_device_count()
  return jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * n), tree)


def unreplicate(tree):
  """First device's copy of a replicated tree, on the host."""
  return jax.device_get(jax.tree_util.tree_map(lambda x: x[0], tree))
