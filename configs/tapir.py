r"""TAPIR training configurations. The base is the paper recipe; presets change only what differs.

Paper recipe (a TPU pod; MOVi-E with camera panning from TFDS):
  python -m experiments.train --config configs/tapir.py --workdir /tmp/tapir \
      --config.data.data_dir=gs://your-bucket/tfds
  Expect (paper, TAP-Vid-DAVIS 'first' mode, 256x256): Average Jaccard ~ 56-62 after 50k steps on 64 TPU-v3 cores.

Presets (`--config configs/tapir.py:<preset>`); the model presets are `tapir.PRESETS`' names:
  tapir             the released TAPIR architecture: instance norm instead of cross-replica batch norm.
  causal_tapir      online TAPIR (causal temporal convolutions, pyramid_level=1), instance norm.
  bootstapir        BootsTAPIR's architecture (extra convs, pyramid_level=1, softmax temperature 10), trained with
                    this recipe (the released BootsTAPIR also had a self-supervised stage on real video).
  causal_bootstapir the causal BootsTAPIR architecture.
  finetune          fine-tune a released checkpoint on your own data: set --config.init_from=ckpt.npy and
                    --config.data.source=custom --config.data.custom_factory=module:function (see README).
  cpu               a laptop run on the built-in (photographic) scenes: a small model, 64x64 clips of 8 frames,
                    1000 steps: 10.5 minutes on the repository's 2-core machine (README), final held-out AJ 0.34
                    ('strided', 20 photographic scenes) against the zero-motion baseline's 0.18.
  tiny              a few-second smoke configuration used by the tests.
Any field can be overridden with --config.<field>=<value>; unknown fields are an error (the config is locked).

Training memory, paper recipe, per clip (24 x 256^2, 256 tracks in chunks of 32; XLA:CPU temporaries of the
compiled train step, `scripts/benchmark.py` 'train_memory', 2026-12-01): 7.8 GB without `remat_refinement` and
7.7 GB with it (7.3 GB each before the cost-volume head's matrix-product gradients, which keep their inputs).
Only the first chunk of queries back-propagates through refinement and the other chunks build no backward pass,
so this grows with `train_chunk_size`, not with `tracks_per_clip` (it was 56.5 GB / 4.7 GB when every chunk kept
its refinement residuals). Remat no longer pays (~1% less memory for a second forward pass of one chunk's
refinement), so the paper recipe leaves it off.
"""

import ml_collections

from tapir import checkpoint
from tapir import config_fields

MODEL_PRESETS = ('tapir', 'causal_tapir', 'bootstapir', 'causal_bootstapir')  # `tapir.PRESETS` names
RECIPE_PRESETS = ('finetune', 'cpu', 'tiny')
RENAMED_PRESETS = {'released': 'tapir', 'causal': 'causal_tapir'}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = 'tapir'  # the objective (`tapir.training.tasks`): supervised TAPIR
  c.seed = 0
  c.training_steps = 50_000  # paper; the released code ran 100k
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.init_from = ''  # a checkpoint to start from (fine-tuning): a released .npy or one of ours
  c.export_weights = True  # write workdir/<model>_checkpoint.npz (pickle-free, with the model settings) at the end
  c.train_chunk_size = 32  # queries per chunk; only the first chunk back-propagates through refinement (the
  #                           others do no backward work there), so training memory grows with this, not the tracks

  c.model = ml_collections.ConfigDict(dict(
      pyramid_level=0,
      use_causal_conv=False,
      extra_convs=False,
      softmax_temperature=20.0,
      mixer_hidden_dim=512,
      num_mixer_blocks=12,
      num_pips_iter=4,
      blocks_per_group=(2, 2, 2, 2),
      initial_resolution=(256, 256),
      normalization='batchnorm',  # cross-replica over the pmap axis
      bilinear_interp_with_depthwise_conv=True,  # dense patches: the TPU formulation; also faster to train on CPU
      remat_refinement=False,  # recomputing refinement in the backward pass saves only 7.34 -> 7.29 GB per clip
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3,
      warmup_steps=1000,
      training_steps=c.get_ref('training_steps'),
      adam_b1=0.9,
      adam_b2=0.95,
      adam_eps=1e-8,
      weight_decay=0.1,
      max_consecutive_nonfinite=5,  # non-finite steps are skipped; this many in a row stop the run (checkpointed)
      reference_eps_scaling=False,  # True: eps / devices, the reference trainer's effective Adam eps
  ))

  c.loss = ml_collections.ConfigDict(dict(
      position_loss_weight=0.05,
      huber_delta=4.0,  # px at 256x256
      expected_dist_threshold=6.0,  # px at 256x256
  ))

  c.data = ml_collections.ConfigDict(dict(
      source='movi_e',  # 'movi_e' (TFDS), 'synthetic' (built-in scenes) or 'custom'
      tfds_name='panning_movi_e/256x256',
      data_dir='',  # TFDS data_dir, e.g. a bucket on a TPU pod; '' = the TFDS default
      per_device_batch=8,
      num_frames=24,
      train_hw=(256, 256),
      tracks_per_clip=256,
      shuffle_buffer=128,
      color_augmentation=True,
      random_crop=True,
      snap_to_occluder=False,  # MOVi-E: queries near depth edges jump onto the hidden surface (Kubric's option)
      custom_factory='',  # 'package.module:function' returning an iterable of example dicts
      synthetic_kind='photographic',  # built-in scenes: 'photographic' (photographs, shadows, a real camera) or
      #                                 'procedural' (solid patterns, flat light, a perfect camera): SCENE_KINDS
      synthetic_static_objects=(8, 14),  # built-in scenes: objects resting on the floor (min, max)
      synthetic_dynamic_objects=(1, 3),  # and moving ones
      synthetic_cards=0.0,  # built-in scenes: chance that a moving object is a photographed card flying in front
      #                       of the scene (synthetic.cards.Cards.probability)
      prefetch=2,  # batches made and put on the devices ahead of the step, in a background thread
      # Bad examples (undecodable, corrupted, failing the checks) are skipped and counted; the run stops once they
      # pass this share of the examples seen, counted over at least skipped_share_min_examples (0: stop at the
      # first). See tapir.data.bad_examples.
      max_skipped_share=0.01,
      skipped_share_min_examples=1000,
  ))

  c.eval = ml_collections.ConfigDict(dict(
      every_steps=10_000,
      dataset='synthetic',  # 'synthetic', 'realpix' (real photographs, known motion) or a TAP-Vid reader name
      path='',
      query_modes=('strided',),  # several: metrics are reported as '<mode>/<name>'
      num_videos=20,  # synthetic / realpix set size
      synthetic_hw=(256, 256),  # synthetic and realpix videos are rendered and scored at TAP-Vid's 256x256
      synthetic_kind='photographic',  # the held-out built-in scenes' kind (see data.synthetic_kind)
      tracks=256,  # synthetic tracks per video (before de-duplication)
      query_chunk_size=16,
  ))

  # Multi-host: TPU pods need only initialize=True; elsewhere give the coordinator and this process's id.
  # cpu_collectives='gloo' lets CPU-only processes (e.g. on one machine) run collectives across processes.
  c.distributed = ml_collections.ConfigDict(dict(initialize=False, coordinator_address='', num_processes=0,
                                                 process_id=-1, cpu_collectives=''))
  return c


def get_config(preset: str = '') -> ml_collections.ConfigDict:
  c = base_config()
  if preset in RENAMED_PRESETS:
    raise ValueError(f'preset {preset!r} is now called {RENAMED_PRESETS[preset]!r} (configs/tapir.py:'
                     f'{RENAMED_PRESETS[preset]})')
  if preset in MODEL_PRESETS:  # the released architecture: its settings, instance norm
    c.model.update(**checkpoint.PRESETS[preset], normalization='instancenorm')
  elif preset == 'finetune':
    c.model.normalization = 'instancenorm'
    c.data.update(source='custom', color_augmentation=True)
    c.optimizer.update(learning_rate=1e-4, warmup_steps=100)
    c.training_steps = 5_000
    c.checkpoint_every_steps = 500
    c.eval.every_steps = 1_000
  elif preset in ('cpu', 'tiny'):
    c.model.update(normalization='instancenorm', mixer_hidden_dim=64, num_mixer_blocks=2,
                   blocks_per_group=(1, 1, 1, 1), initial_resolution=(64, 64), remat_refinement=False)
    c.data.update(source='synthetic', per_device_batch=4, num_frames=8, train_hw=(64, 64),
                  tracks_per_clip=64, shuffle_buffer=16, random_crop=False)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=50)
    c.training_steps = 1000
    c.log_every_steps = 20
    c.checkpoint_every_steps = 250
    c.eval.update(every_steps=250, num_videos=20, query_chunk_size=128)
    c.train_chunk_size = 64
    if preset == 'tiny':
      c.model.update(mixer_hidden_dim=16, num_mixer_blocks=1, num_pips_iter=2, initial_resolution=(32, 32))
      c.data.update(per_device_batch=1, num_frames=4, train_hw=(32, 32), tracks_per_clip=8, shuffle_buffer=2,
                    synthetic_static_objects=(1, 2), synthetic_dynamic_objects=(1, 1))
      c.training_steps = 2
      c.optimizer.warmup_steps = 1
      c.log_every_steps = 1
      c.checkpoint_every_steps = 2
      c.eval.update(every_steps=2, num_videos=1, synthetic_hw=(32, 32), tracks=8)
  elif preset:
    raise ValueError(f'unknown preset {preset!r}; choose one of {MODEL_PRESETS + RECIPE_PRESETS}')
  config_fields.add_placeholders(c, config_fields.TRAINING_RENAMES)
  c.lock()
  return c
