"""Training: optimiser rules, the pmapped step, the runner, resume, multi-device and multi-process."""

import itertools
import json
import os
import socket
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tapir
from configs import tapir as tapir_configs
from tapir.training import checkpointing
from tapir.training import loop as trainer
from tapir.training import state as training
from tests.conftest import REPO
from tests.conftest import run_on_two_cpu_devices
from tests.conftest import with_overrides


def _tiny(**overrides):
  return with_overrides(tapir_configs.get_config('tiny'), overrides)


def _fixed_batch(config, devices=1, seed=0):
  rng = np.random.default_rng(seed)
  b, t, n = config.data.per_device_batch, config.data.num_frames, config.data.tracks_per_clip
  h, w = config.data.train_hw
  video = rng.uniform(-1, 1, (devices, b, t, h, w, 3)).astype(np.float32)
  queries = np.stack([rng.integers(0, t, (devices, b, n)), rng.uniform(0, h, (devices, b, n)),
                      rng.uniform(0, w, (devices, b, n))], -1).astype(np.float32)
  targets = np.repeat(queries[..., None, 2:0:-1], t, axis=-2) + rng.normal(0, 1, (devices, b, n, t, 2))
  return dict(video=video, query_points=queries, target_points=targets.astype(np.float32),
              occluded=rng.uniform(size=(devices, b, n, t)) < 0.2)


def test_weight_decay_mask_follows_the_reference_rule():
  params = {'tapir/~/resnet/~/block_group_0/~/block_0/~/instancenorm_0': {'scale': 0, 'offset': 0},
            'tapir/~/pips_mlp_mixer/block/layer_norm': {'scale': 0},
            'tapir/~/pips_mlp_mixer/linear': {'w': 0, 'b': 0}}
  mask = training.weight_decay_mask(params)
  assert mask['tapir/~/resnet/~/block_group_0/~/block_0/~/instancenorm_0'] == {'scale': True, 'offset': True}
  assert mask['tapir/~/pips_mlp_mixer/block/layer_norm'] == {'scale': False}
  assert mask['tapir/~/pips_mlp_mixer/linear'] == {'w': True, 'b': False}


def test_schedule_and_first_update():
  config = _tiny().optimizer
  with config.unlocked():
    config.update(warmup_steps=10, training_steps=110, learning_rate=1e-3)
  schedule = training.learning_rate_schedule(config)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(60), schedule(110)],
                             [0, 5e-4, 1e-3, 5e-4, 0], atol=1e-9)
  params = {'m/linear': {'w': jnp.ones(3)}}
  optimizer = training.make_optimizer(config)
  state = optimizer.init(params)
  updates, state = optimizer.update({'m/linear': {'w': jnp.ones(3)}}, state, params)
  np.testing.assert_array_equal(updates['m/linear']['w'], 0.0)  # lr(0) = 0
  bad, state2 = optimizer.update({'m/linear': {'w': jnp.full(3, jnp.nan)}}, state, params)
  np.testing.assert_array_equal(bad['m/linear']['w'], 0.0)
  assert int(training.nonfinite_count(state2)) == 1
  assert int(state2.inner_state[2].count) == int(state.inner_state[2].count)  # schedule frozen


def test_loss_decreases_on_a_fixed_batch():
  config = _tiny(**{'optimizer.warmup_steps': 1, 'optimizer.learning_rate': 3e-3, 'training_steps': 100})
  model = training.make_model(trainer.model_kwargs(config), config.train_chunk_size)
  optimizer = training.make_optimizer(config.optimizer)
  batch = _fixed_batch(config)
  state = jax.pmap(training.make_init(model, optimizer), axis_name=training.AXIS)(
      jax.random.PRNGKey(0)[None], batch)
  step = jax.pmap(training.make_train_step(model, optimizer, config.loss), axis_name=training.AXIS)
  losses = []
  for _ in range(20):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss'][0]))
  assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.8 * losses[0], losses


def test_runner_smoke_resume_and_export(tmp_path):
  """The real runner for 2 steps, then pre-empted-and-resumed equals uninterrupted."""
  config = _tiny(**{'training_steps': 4, 'checkpoint_every_steps': 2, 'eval.every_steps': 4})
  straight = trainer.train_and_evaluate(config, str(tmp_path / 'straight'))
  assert straight['step'] == 4 and np.isfinite(straight['metrics']['loss'])
  assert 'average_jaccard' in straight['eval']
  assert (tmp_path / 'straight' / 'summaries' / 'tracks_image_0000004.png').exists()  # the eval image strip
  assert 'tracks_image' not in straight['eval']
  exported = straight['exported']
  params, _ = tapir.load_checkpoint(exported)
  assert tapir.checkpoint.read_checkpoint(exported).model_kwargs == trainer.model_kwargs(config)

  # Fine-tuning starts from the exported weights; a config whose model contradicts the stored settings is refused.
  tuned = trainer.train_and_evaluate(_tiny(**{'training_steps': 2, 'eval.every_steps': 100,
                                              'init_from': exported}), str(tmp_path / 'tuned'))
  assert tuned['step'] == 2
  with pytest.raises(ValueError, match='num_mixer_blocks'):
    trainer.train_and_evaluate(_tiny(**{'training_steps': 2, 'init_from': exported,
                                        'model.num_mixer_blocks': config.model.num_mixer_blocks + 1}),
                               str(tmp_path / 'contradicting'))

  first = trainer.train_and_evaluate(config, str(tmp_path / 'resumed'), stop_at=2)
  assert first['step'] == 2 and first['exported'] is None
  resumed = trainer.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert resumed['step'] == 4
  chex.assert_trees_all_equal(resumed['state'].params, params)


def test_absl_runner_two_steps(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.train', '--config', 'configs/tapir.py:tiny', '--workdir',
       str(tmp_path), '--config.eval.every_steps=100'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / 'tapir_checkpoint.npz').exists()
  history = [json.loads(line) for line in (tmp_path / 'train_history.json').read_text().splitlines()]
  assert [h['step'] for h in history] == [1, 2]
  bad = subprocess.run([sys.executable, '-m', 'experiments.train', '--config', 'configs/tapir.py:tiny',
                        '--workdir', str(tmp_path), '--config.no_such_field=1'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and 'no_such_field' in bad.stderr


_MULTI_DEVICE = textwrap.dedent('''
    import jax, numpy as np
    from tests.test_training import _tiny, _fixed_batch
    from tapir.training import loop as trainer, state as training
    assert jax.local_device_count() == 2
    config = _tiny(**{'model.normalization': 'batchnorm', 'data.per_device_batch': 2, 'train_chunk_size': 64,
                      'optimizer.warmup_steps': 1})
    model = training.make_model(trainer.model_kwargs(config), config.train_chunk_size)
    optimizer = training.make_optimizer(config.optimizer)
    two = _fixed_batch(config, devices=2)
    one = {k: v.reshape((1, -1) + v.shape[2:]) for k, v in two.items()}
    def run(batch, devices, steps):
      init = jax.pmap(training.make_init(model, optimizer), axis_name='i', devices=devices)
      state = init(jax.numpy.stack([jax.random.PRNGKey(0)] * len(devices)), batch)
      step = jax.pmap(training.make_train_step(model, optimizer, config.loss), axis_name='i', devices=devices)
      for _ in range(steps):
        state, metrics = step(state, batch)
      return state, metrics
    state2, metrics2 = run(two, jax.devices(), 2)
    for leaf in jax.tree_util.tree_leaves((state2.params, state2.state)):
      np.testing.assert_array_equal(leaf[0], leaf[1])  # replicas stay identical
    state1, metrics1 = run(one, jax.devices()[:1], 2)
    for key in ('loss', 'gradient_norm'):  # the averaged gradient is the global-batch gradient
      np.testing.assert_allclose(metrics2[key][0], metrics1[key][0], rtol=1e-4)
    # Adam divides by the gradient's own magnitude, so elements whose gradient is ~0 (float noise; e.g. the bias
    # before the heatmap softmax) can move by up to +-lr either way. Everything else must agree.
    total = off = 0
    for module, leaves in state2.params.items():
      for name, a in leaves.items():
        diff = np.abs(np.asarray(a[0]) - np.asarray(state1.params[module][name][0]))
        assert diff.max() <= 2.1e-3, (module, name, diff.max())
        off += int((diff > 2e-5 + 1e-3 * np.abs(np.asarray(a[0]))).sum())
        total += diff.size
    assert off <= 1e-4 * total, (off, total)
    for a, b in zip(jax.tree_util.tree_leaves(state2.state), jax.tree_util.tree_leaves(state1.state)):
      np.testing.assert_allclose(a[0], b[0], atol=1e-5, rtol=1e-4)  # batch-norm EMAs of the global batch
    print('OK')
''')


def test_two_devices_equal_one_device_on_the_global_batch():
  result = run_on_two_cpu_devices([sys.executable, '-c', _MULTI_DEVICE])
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-4000:]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_train_identically(tmp_path):
  port = _free_port()
  procs = []
  for rank in range(2):
    out = tmp_path / f'params_{rank}.npz'
    code = textwrap.dedent(f'''
        import numpy as np, jax
        from tests.test_training import _tiny
        from tapir.training import loop as trainer
        config = _tiny(**{{'training_steps': 2, 'distributed.initialize': True,
                           'distributed.coordinator_address': 'localhost:{port}', 'distributed.num_processes': 2,
                           'distributed.process_id': {rank}, 'distributed.cpu_collectives': 'gloo',
                           'eval.every_steps': 100}})
        result = trainer.train_and_evaluate(config, {str(tmp_path / 'work')!r}, evaluate_fn=lambda *a: {{}})
        assert jax.process_count() == 2
        leaves = jax.tree_util.tree_leaves(result['state'].params)
        np.savez({str(out)!r}, *leaves)
    ''')
    procs.append(subprocess.Popen([sys.executable, '-c', code], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO))))
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-4000:]
  a, b = np.load(tmp_path / 'params_0.npz'), np.load(tmp_path / 'params_1.npz')
  assert a.files == b.files and len(a.files) > 10
  for key in a.files:
    np.testing.assert_array_equal(a[key], b[key])


def test_remat_refinement_changes_memory_not_numbers():
  """Rematerialising the refinement iterations gives the same train step (loss, metrics, new parameters)."""
  config = _tiny()
  batch = _fixed_batch(config)
  results = []
  for remat in (False, True):
    kwargs = {**trainer.model_kwargs(config), 'remat_refinement': remat}
    model = training.make_model(kwargs, config.train_chunk_size)
    optimizer = training.make_optimizer(config.optimizer)
    state = jax.pmap(training.make_init(model, optimizer), axis_name=training.AXIS)(
        jax.random.PRNGKey(0)[None], batch)
    step = jax.pmap(training.make_train_step(model, optimizer, config.loss), axis_name=training.AXIS)
    state, _ = step(state, batch)  # the first update is zero (warmup); compare the second
    results.append(step(state, batch))
  (state_a, metrics_a), (state_b, metrics_b) = results
  np.testing.assert_allclose(metrics_a['loss'], metrics_b['loss'], rtol=1e-5)
  chex.assert_trees_all_close(state_a.params, state_b.params, rtol=1e-4, atol=1e-6)


def _tiny_batches(config, nan_from_step=None):
  """`start_step -> batches`: `_fixed_batch` with seed = step, NaN video from step `nan_from_step` on."""

  def batches(start_step):
    for step in itertools.count(start_step + 1):  # the batch of step `step` (1-based)
      batch = _fixed_batch(config, seed=step)
      if nan_from_step is not None and step >= nan_from_step:
        batch['video'] = np.full_like(batch['video'], np.nan)
      yield batch

  return batches


def test_nonfinite_steps_stop_the_run_after_checkpointing_the_last_good_state(tmp_path):
  config = _tiny(**{'training_steps': 10, 'optimizer.max_consecutive_nonfinite': 2, 'eval.every_steps': 2,
                    'optimizer.warmup_steps': 1})
  seen = {}

  def remember(params, state, step):
    seen[step] = params
    return {}

  with pytest.raises(FloatingPointError, match=r'steps 3\.\.4: 2 non-finite.*stopped at step 4'):
    trainer.train_and_evaluate(config, str(tmp_path), train_data=_tiny_batches(config, nan_from_step=3),
                               evaluate_fn=remember)
  assert sorted(seen) == [2]  # evaluated at step 2, stopped before step 4's evaluation
  # The checkpoint of step 4 holds step 2's parameters (finite; the bad updates were never applied) and resumes.
  resumed = trainer.train_and_evaluate(_tiny(**{'training_steps': 4}), str(tmp_path),
                                       train_data=_tiny_batches(config), evaluate_fn=lambda *a: {})
  assert resumed['step'] == 4
  assert int(np.asarray(resumed['state'].opt_state.notfinite_count)) == 0
  chex.assert_tree_all_finite(resumed['state'].params)
  chex.assert_trees_all_equal(resumed['state'].params, seen[2])
  assert [json.loads(r)['step'] for r in (tmp_path / 'train_history.json').read_text().splitlines()] == [1, 2, 3]


def test_history_files_have_one_row_per_step_after_a_resume(tmp_path):
  config = _tiny(**{'training_steps': 3, 'checkpoint_every_steps': 1, 'eval.every_steps': 1})
  evaluate = lambda params, state, step: {'evaluated_at': step}
  trainer.train_and_evaluate(config, str(tmp_path), train_data=_tiny_batches(config), evaluate_fn=evaluate,
                             stop_at=2)
  for name in checkpointing.HISTORY_FILES:  # as if the first run had logged step 3 and died before checkpointing it
    with open(tmp_path / name, 'a') as f:
      f.write(json.dumps({'step': 3, 'loss': -1.0, 'evaluated_at': -1}) + '\n')
  result = trainer.train_and_evaluate(config, str(tmp_path), train_data=_tiny_batches(config),
                                      evaluate_fn=evaluate)
  train = [json.loads(r) for r in (tmp_path / 'train_history.json').read_text().splitlines()]
  evals = [json.loads(r) for r in (tmp_path / 'eval_history.json').read_text().splitlines()]
  assert [r['step'] for r in train] == [1, 2, 3] and train[-1]['loss'] != -1.0
  assert [(r['step'], r['evaluated_at']) for r in evals] == [(1, 1), (2, 2), (3, 3)]
  assert all(r['steps_per_second'] > 0 and 0 <= r['data_wait_fraction'] <= 1 for r in train)
  timings = result['timings']
  assert timings.total > 0 and 0 <= timings.overhead_fraction() <= 1


def test_prefetched_batches_are_the_batches_in_order():
  from tapir.data import streams as sources  # pylint: disable=g-import-not-at-top
  config = _tiny(**{'data.per_device_batch': 2})
  plain = list(itertools.islice(sources.train_batches(config, 3), 4))
  prefetcher = sources.Prefetcher(sources.train_batches(config, 3), size=2, transform=sources.put_on_devices)
  fetched = list(itertools.islice(prefetcher, 4))
  prefetcher.close()
  for a, b in zip(plain, fetched):
    assert sorted(a) == sorted(b)
    for key in a:
      assert isinstance(b[key], jax.Array)
      np.testing.assert_array_equal(a[key], np.asarray(b[key]), err_msg=key)
  # Batch k of the stream is a function of (seed, k): the stream from step 3 continues the stream from 0.
  np.testing.assert_array_equal(list(itertools.islice(sources.train_batches(config, 0), 4))[3]['video'],
                                plain[0]['video'])

  def failing():
    yield {'x': np.zeros(1)}
    raise RuntimeError('broken source')

  stream = sources.Prefetcher(failing(), size=1)
  assert next(stream)['x'].shape == (1,)
  with pytest.raises(RuntimeError, match='broken source'):
    next(stream)
  with pytest.raises(ValueError, match='size'):
    sources.Prefetcher([], size=0)


def test_synthetic_evaluation_set_is_rendered_once(monkeypatch):
  from tapir.data import streams as sources  # pylint: disable=g-import-not-at-top
  from tapir.data import synthetic  # pylint: disable=g-import-not-at-top
  sources._rendered_evaluation_set.cache_clear()  # pylint: disable=protected-access
  rendered = []
  generate = synthetic.generate_scene
  monkeypatch.setattr(synthetic, 'generate_scene', lambda seed, scenes: rendered.append(seed) or generate(seed,
                                                                                                           scenes))
  scenes = sources.scene_config(_tiny(), (32, 32))
  first = list(sources.synthetic_evaluation_set(2, 'first', scenes, tracks=8))
  strided = list(sources.synthetic_evaluation_set(2, 'strided', scenes, tracks=8))
  again = list(sources.synthetic_evaluation_set(2, 'first', scenes, tracks=8))
  assert rendered == [0, 1]
  assert [e.video_name for e in strided] == [e.video_name for e in first]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a.video, b.video)
    np.testing.assert_array_equal(a.query_points, b.query_points)
