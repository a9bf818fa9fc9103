r"""TAP-Net training configurations: the reference recipe, on the same runner, data and evaluation as TAPIR.

Reference recipe (google-deepmind/tapnet `configs/tapnet_config.py`; Kubric MOVi-E 256x256 from TFDS):
  python -m experiments.train --config configs/tapnet.py --workdir /tmp/tapnet \
      --config.data.data_dir=gs://your-bucket/tfds
  Expect (the released checkpoint, 256x256, Average Jaccard): DAVIS first 33.0, DAVIS strided 38.4, Kinetics first
  38.5, RoboTAP first 45.1 (100k steps; per device 8 clips x 24 frames x 256 tracks).

Presets (`--config configs/tapnet.py:<preset>`):
  cpu    the TAPIR `cpu` preset's data, steps and evaluation (built-in synthetic scenes, 64x64 clips of 8 frames,
         1000 steps) with TAP-Net's model, loss and optimiser, so the two are comparable (README results table).
         Evaluated at the 64x64 training size.
  tiny   a few-second smoke configuration used by the tests.

Differences from configs/tapir.py: `task='tapnet'` (`tapir.training.task_tapnet`: `tapir.TAPNet`, `config.model` holds
its constructor arguments), one loss term (`tapir.losses.tapnet_loss_terms`: 0.05 * Huber + occlusion BCE, no uncertainty
head), learning rate 2e-3 with 5k warmup over 100k steps, weight decay 1e-2 (batch-norm scale/offset and biases
excluded), unpanned MOVi-E. The exported weights are `workdir/tapnet_checkpoint.npz`
(`tapir.TAPNetTracker.from_checkpoint` runs them).
"""

import ml_collections

from configs import tapir as tapir_configs  # run from the repository root (python -m experiments.train ...)


def get_config(preset: str = '') -> ml_collections.ConfigDict:
  if preset not in ('', 'cpu', 'tiny'):
    raise ValueError(f'unknown preset {preset!r}; choose cpu or tiny (or none for the reference recipe)')
  c = tapir_configs.get_config('tiny' if preset == 'tiny' else 'cpu' if preset == 'cpu' else '')
  c.unlock()
  c.task = 'tapnet'
  c.model = ml_collections.ConfigDict(dict(
      feature_grid_stride=8,
      num_heads=1,
      cross_replica_axis='i',  # the runner's pmap axis: batch-norm moments over the global batch
      num_frames=24,  # the reference's constructor value; 5-D videos carry their own frame count
  ))
  c.loss.position_loss_weight = 0.05
  c.loss.huber_delta = 4.0
  c.optimizer.update(weight_decay=1e-2)
  if not preset:
    c.training_steps = 100_000
    c.optimizer.update(learning_rate=2e-3, warmup_steps=5_000)
    c.data.tfds_name = 'movi_e/256x256'
    c.eval.query_chunk_size = 16
  elif preset == 'cpu':
    c.optimizer.update(learning_rate=2e-3)
  c.lock()
  return c
