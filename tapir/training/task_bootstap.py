"""BootsTAP-style self-supervised fine-tuning of TAPIR on unlabeled video, mixed with the supervised objective.

Each step takes a supervised batch from `config.data` (unless `selfsup.supervised_weight` is 0) and a batch of
unlabeled clips (`tapir.data.unlabeled_batches`); the loss is
  supervised_weight * tapir_loss(labelled) + weight * tapir_loss(student view | teacher's pseudo-labels, masks)
with one gradient and one optimiser update (`tapir.training.selfsup` builds the labels). After the update the
teacher (an exponential moving average of the student, `selfsup.teacher_decay`; 0 keeps it frozen) moves towards
the student. The teacher's weights and Haiku state live in `TrainState.extra`, so checkpoints and resumption
carry them. `init_from` starts both the student and the teacher from a checkpoint. The export is the student
(`<workdir>/tapir_checkpoint.npz`) and, with `selfsup.export_teacher`, the teacher beside it
(`tapir_teacher_checkpoint.npz`). The periodic evaluation scores the student.

Metrics: the supervised terms under their usual names ('loss', 'position_loss', ...), the self-supervised ones
prefixed 'selfsup_' ('selfsup_loss', 'selfsup_position_loss', ...), 'total_loss' (what the gradient is of),
'selfsup_kept_tracks' (the share of pseudo-label tracks that passed the filters) and 'selfsup_skipped_videos' (video
files the source could not decode so far).
"""

import os

import jax
import jax.numpy as jnp

from tapir import checkpoint as checkpoint_lib
from tapir import losses
from tapir.data import unlabeled_batches
from tapir.tracking import tracker as tracker_lib
from tapir.training import selfsup
from tapir.training import state as training
from tapir.training import task

OUT_OF_FRAME = ('occluded', 'mask')


def check_knobs(knobs) -> None:
  """ValueError naming the `config.selfsup` field whose value is unusable."""
  if not 0 <= knobs.teacher_decay < 1:
    raise ValueError(f'selfsup.teacher_decay must be in [0, 1) (0: a frozen teacher), got {knobs.teacher_decay}')
  if not knobs.cycle_px > 0:
    raise ValueError(f'selfsup.cycle_px must be > 0 (256-scale pixels), got {knobs.cycle_px}')
  selfsup.check_visibility_rule(knobs.visibility_rule, 'selfsup.visibility_rule')
  if knobs.out_of_frame not in OUT_OF_FRAME:
    raise ValueError(f'selfsup.out_of_frame must be one of {OUT_OF_FRAME}, got {knobs.out_of_frame!r}')
  for name in ('weight', 'supervised_weight'):
    if not getattr(knobs, name) >= 0:
      raise ValueError(f'selfsup.{name} must be >= 0, got {getattr(knobs, name)}')
  if knobs.per_device_batch < 1 or knobs.num_queries < 1:
    raise ValueError(f'selfsup.per_device_batch and selfsup.num_queries must be >= 1, got '
                     f'{knobs.per_device_batch} and {knobs.num_queries}')


class BootstapTAPIR(task.Task):
  name = 'bootstap'
  family = 'tapir'

  def __init__(self, config):
    super().__init__(config)
    check_knobs(config.selfsup)
    unlabeled_batches.teacher_hw(config)  # checks selfsup.teacher_scale

  def make_init(self, optimizer):
    base = training.make_init(self.model(), optimizer, lambda params, hk_state: dict(teacher_params=params,
                                                                                    teacher_state=hk_state))
    return lambda rng, batch: base(rng, batch['unlabeled'])

  def make_update(self, optimizer):
    model = self.model()
    teacher = selfsup.make_teacher(self.model_kwargs, self.config.train_chunk_size, self.family,
                                   self.config.selfsup.visibility_rule)
    supervised = training.supervised_terms(model, self.config.loss, losses.tapir_loss)
    knobs = self.config.selfsup

    def update_fn(state, batch, rng):
      label_rng, supervised_rng, student_rng = jax.random.split(rng, 3)
      clip = batch['unlabeled']
      labels = selfsup.pseudo_labels(teacher, state.extra['teacher_params'], state.extra['teacher_state'],
                                     label_rng, clip, knobs)
      view = clip['student_video']

      def loss_fn(params):
        hk_state, total, supervised_terms = state.state, 0.0, None
        if 'supervised' in batch:
          supervised_total, (supervised_terms, hk_state) = supervised(params, hk_state, supervised_rng,
                                                                      batch['supervised'])
          total = knobs.supervised_weight * supervised_total
        pseudo = dict(video=view, query_points=labels.query_points, target_points=labels.target_points,
                      occluded=labels.occluded, mask=labels.mask)
        selfsup_total, (terms, hk_state) = supervised(params, hk_state, student_rng, pseudo)
        return total + knobs.weight * selfsup_total, (supervised_terms, terms, hk_state)

      (total, (supervised_terms, terms, hk_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      metrics = training.loss_metrics(terms, 'selfsup_')
      if supervised_terms is not None:
        metrics.update(training.loss_metrics(supervised_terms))
      metrics.update(total_loss=total, selfsup_kept_tracks=jnp.mean(labels.kept.astype(jnp.float32)),
                     selfsup_skipped_videos=clip['skipped_videos'].astype(jnp.float32))
      state, metrics = training.apply_gradients(state, grads, optimizer, hk_state, metrics)
      extra = dict(teacher_params=selfsup.ema_update(state.extra['teacher_params'], state.params,
                                                     knobs.teacher_decay),
                   teacher_state=state.state if knobs.teacher_decay else state.extra['teacher_state'])
      return state._replace(extra=extra), metrics

    return update_fn

  def train_batches(self, start_step):
    return unlabeled_batches.mixed_batches(self.config, start_step)

  def init_from(self, host, path, optimizer):
    host = super().init_from(host, path, optimizer)
    return host._replace(extra=dict(teacher_params=host.params, teacher_state=host.state))

  def export(self, host, path, step):
    super().export(host, path, step)
    if self.config.selfsup.export_teacher:
      stem, ext = os.path.splitext(path)
      checkpoint_lib.save_checkpoint(f'{stem.replace("_checkpoint", "")}_teacher_checkpoint{ext}',
                                     host.extra['teacher_params'], host.extra['teacher_state'], global_step=step,
                                     model_kwargs=self.model_kwargs, family=self.family)

  def make_tracker(self, params, state):
    return tracker_lib.Tracker(params, state, self.model_kwargs, query_chunk_size=self.config.eval.query_chunk_size)
