"""Supervised TAPIR: the paper's objective on labelled clips (MOVi-E, the built-in scenes, custom data).

The loss is `tapir.losses.tapir_loss` (position Huber, occlusion and uncertainty cross-entropy over the final
output and every unrefined estimate); evaluation runs `tapir.Tracker` at the model's own resolution.
"""

from tapir import losses
from tapir.tracking import tracker as tracker_lib
from tapir.training import task


class SupervisedTAPIR(task.SupervisedTask):
  name = 'tapir'
  family = 'tapir'
  loss_fn = losses.tapir_loss

  def make_tracker(self, params, state):
    return tracker_lib.Tracker(params, state, self.model_kwargs, query_chunk_size=self.config.eval.query_chunk_size)
