"""Supervised TAP-Net: the reference baseline's objective on the same labelled clips as TAPIR.

One loss term (`tapir.losses.tapnet_loss_terms`: position_loss_weight * Huber + occlusion cross-entropy; no
refinement estimates, no uncertainty head); evaluation runs `tapir.TAPNetTracker` at the training clip size,
since TAP-Net has no resolution setting of its own.
"""

from tapir import losses
from tapir.tracking import tapnet as tapnet_tracking
from tapir.training import task


class SupervisedTAPNet(task.SupervisedTask):
  name = 'tapnet'
  family = 'tapnet'
  loss_fn = losses.tapnet_loss_terms

  def make_tracker(self, params, state):
    return tapnet_tracking.TAPNetTracker(params, state, self.model_kwargs, self.config.eval.query_chunk_size,
                                         resolution=tuple(self.config.data.train_hw))
