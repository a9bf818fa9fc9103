"""The training-task interface: what an objective gives the loop, and the supervised objective it builds on.

A task is a small object made from the config (`tapir.training.tasks.get_task`) that answers:

  make_init(optimizer)    -> init(rng, batch) -> TrainState         (pmapped by the loop)
  make_update(optimizer)  -> update_fn(state, batch, rng) -> (state, metrics)
                             (wrapped by `state.make_step`, which splits the key and counts the step)
  train_batches(start)    -> the batches it expects, for steps start, start + 1, ... ([devices, batch, ...])
  init_from(host, path)   -> the host TrainState started from a checkpoint (fine-tuning; the one architecture rule)
  export(host, path)      -> writes the weights for people (our .npz with family and settings)
  predictor(params, state)-> predict(video, queries) -> (tracks, occluded) for the periodic evaluation

The loop never asks which objective it runs: metrics are whatever `update_fn` returns, task-specific state
lives in `TrainState.extra` (checkpointed with the rest). `SupervisedTask` is the labelled objective of both
model families: the model on a labelled batch, the family's loss, one gradient mean, the optimiser.
"""

import abc
from typing import Any, Callable, ClassVar, Iterator, Mapping

import haiku as hk
import ml_collections
import optax

from tapir import checkpoint as checkpoint_lib
from tapir import losses
from tapir.data import streams
from tapir.evaluation import loop as evaluation
from tapir.tracking import core
from tapir.training import state as training

Batch = Mapping[str, Any]
PredictFn = Callable[[Any, Any], tuple[Any, Any]]


class Task(abc.ABC):
  """An objective: see the module docstring for what the loop asks of it."""

  name: ClassVar[str]  # the config's `task` value
  family: ClassVar[str]  # the model family trained (`tapir.models.families`)

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model_kwargs = training.model_kwargs(config)
    self._tracker = None  # the evaluation tracker, built once per run

  def model(self) -> hk.TransformedWithState:
    """The training forward pass (queries in chunks of `config.train_chunk_size`)."""
    return training.make_model(self.model_kwargs, self.config.train_chunk_size, self.family)

  @abc.abstractmethod
  def make_init(self, optimizer: optax.GradientTransformation) -> Callable[[Any, Batch], training.TrainState]:
    """`init(rng, batch) -> TrainState`, run under pmap with the same key on every device."""

  @abc.abstractmethod
  def make_update(self, optimizer: optax.GradientTransformation) -> training.UpdateFn:
    """`update_fn(state, batch, rng) -> (state, metrics)`, run under pmap (axis `training.AXIS`)."""

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    """Batches for steps `start_step`, `start_step + 1`, ... (default: the labelled source of `config.data`)."""
    return streams.train_batches(self.config, start_step)

  def init_from(self, host: training.TrainState, path: str,
                optimizer: optax.GradientTransformation) -> training.TrainState:
    """`host` with the weights of checkpoint `path`, whose stored settings must agree with the config's model."""
    contents = checkpoint_lib.read_checkpoint(path)
    checkpoint_lib.resolve_model_kwargs(contents.model_kwargs, self.model_kwargs, contents.params,
                                        family=self.family)
    checkpoint_lib.check_params(contents.params, self.model_kwargs, contents.state, family=self.family)
    return host._replace(params=contents.params, state=contents.state or host.state,
                         opt_state=optimizer.init(contents.params))

  def export(self, host: training.TrainState, path: str, step: int) -> None:
    """Our pickle-free format with the family and settings, so every entry point runs it as trained."""
    checkpoint_lib.save_checkpoint(path, host.params, host.state, global_step=step,
                                   model_kwargs=self.model_kwargs, family=self.family)

  @abc.abstractmethod
  def make_tracker(self, params, state) -> core.ChunkedTracker:
    """The offline tracker the evaluation runs (built once per run; weights swapped by `set_weights`)."""

  def predictor(self, params, state) -> PredictFn:
    """`predict(video uint8, queries) -> (tracks, occluded)` of these weights, at the tracker's resolution."""
    if self._tracker is None:
      self._tracker = self.make_tracker(params, state)
    else:
      self._tracker.set_weights(params, state)
    return evaluation.tracker_predictor(self._tracker, self._tracker.resolution)


class SupervisedTask(Task):
  """Labelled training of one model family: its model, its loss (`loss_fn`), the supervised step."""

  loss_fn: ClassVar[Callable[..., losses.LossTerms]]

  def make_init(self, optimizer):
    return training.make_init(self.model(), optimizer)

  def make_update(self, optimizer):
    return training.supervised_update(self.model(), optimizer, self.config.loss, type(self).loss_fn)
