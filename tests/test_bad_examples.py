"""Bad training examples: skipped with their name, counted in the log and histories, capped; resume still exact."""

import json
import os

import numpy as np
import pytest

from configs import tapir as tapir_configs
from movi_e_testdata import NUM_EXAMPLES
from movi_e_testdata import tiny_movi_e_builder
from tapir.data import bad_examples
from tapir.data import pipeline
from tapir.data import streams
from tapir.training import loop as trainer
from tests.conftest import with_overrides

BAD_EVERY = 5  # custom_examples: example i is bad when i % BAD_EVERY == 3


def custom_examples(config):
  """A custom source (`data.custom_factory`) whose example i is malformed when i % BAD_EVERY == 3."""
  t, (h, w), n = config.data.num_frames, config.data.train_hw, config.data.tracks_per_clip
  i = 0
  while True:
    rng = np.random.default_rng(i)
    queries = np.stack([rng.integers(0, t, n), rng.uniform(0, h, n), rng.uniform(0, w, n)], -1).astype(np.float32)
    example = dict(video=rng.uniform(-1, 1, (t, h, w, 3)).astype(np.float32), query_points=queries,
                   target_points=np.repeat(queries[:, None, 2:0:-1], t, axis=1).astype(np.float32),
                   occluded=np.zeros((n, t), bool), name=f'clip{i:03d}')
    if i % BAD_EVERY == 3:
      example['video'] = example['video'][:-1]  # one frame short
    yield example
    i += 1


def _custom_config(**overrides):
  config = tapir_configs.get_config('tiny')
  return with_overrides(config, {'data.source': 'custom', 'data.custom_factory': f'{__name__}:custom_examples',
                                 'data.per_device_batch': 2, **overrides})


def test_fill_batch_takes_the_good_examples_in_turn():
  bad = [bad_examples.BadExample('x', 'why'), bad_examples.BadExample('y', 'why')]
  filled, skipped = bad_examples.fill_batch([bad[0], {'a': 1}, bad[1], {'a': 2}])
  assert filled == [{'a': 1}, {'a': 1}, {'a': 2}, {'a': 2}] and skipped == bad
  assert bad_examples.fill_batch(bad) == ([], bad)


def test_budget_tolerates_up_to_the_share_and_stops_past_it():
  bad = bad_examples.BadExample('record 7', 'cannot decode')
  budget = bad_examples.SkipBudget(0.1, 20, 'src')
  for _ in range(2):  # 2 of 8 seen: within 0.1 of at least 20
    budget.add(4, [bad])
  with pytest.raises(bad_examples.TooManyBadExamples, match=r'src: 3 of 12 examples.*record 7: cannot decode'):
    budget.add(4, [bad])
  with pytest.raises(bad_examples.TooManyBadExamples, match='every example of a batch was bad'):
    bad_examples.SkipBudget(1.0, 1, 'src').add(2, [bad, bad])
  with pytest.raises(bad_examples.TooManyBadExamples, match='1 of 4'):
    bad_examples.SkipBudget(0, 1000, 'src').add(4, [bad])  # 0: the first one stops
  bad_examples.SkipBudget(0, 1000, 'src').add(4, [])


@pytest.mark.parametrize('share, count, message', [(-0.1, 10, 'max_skipped_share'), (2, 10, 'max_skipped_share'),
                                                   ('x', 10, 'max_skipped_share'), (0.1, 0, 'min_examples'),
                                                   (0.1, 2.5, 'min_examples')])
def test_budget_rejects_bad_settings(share, count, message):
  with pytest.raises(ValueError, match=message):
    bad_examples.SkipBudget(share, count, 'src')


def test_custom_source_skips_names_and_resumes_exactly():
  config = _custom_config()
  straight = streams.train_batches(config, 0)
  first = [next(straight) for _ in range(6)]  # examples 0..11: 3 and 8 are bad
  skipped = {k: [b.source for b in batch.get(streams.SKIPPED_KEY, ())] for k, batch in enumerate(first)}
  assert skipped == {0: [], 1: ['custom example 3 (clip003)'], 2: [], 3: [], 4: ['custom example 8 (clip008)'],
                     5: []}
  reason = first[1][streams.SKIPPED_KEY][0].reason
  assert "example['video']" in reason and 'has 3 frames; this configuration needs 4' in reason
  np.testing.assert_array_equal(first[1]['video'][0, 0], first[1]['video'][0, 1])  # the slot took example 2
  resumed = streams.train_batches(config, 4)
  for k in (4, 5):
    batch = next(resumed)
    assert sorted(batch) == sorted(first[k])
    for key in pipeline.EXAMPLE_KEYS:
      np.testing.assert_array_equal(batch[key], first[k][key])


def test_custom_source_stops_past_the_cap():
  stream = streams.train_batches(_custom_config(**{'data.max_skipped_share': 0.0}), 0)
  next(stream)
  with pytest.raises(bad_examples.TooManyBadExamples, match=r'custom data: 1 of 4 .*custom example 3 \(clip003\)'):
    next(stream)


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_training_counts_skipped_examples_and_checkpoints_before_stopping(tmp_path):
  overrides = {'training_steps': 4, 'checkpoint_every_steps': 100, 'eval.every_steps': 100}
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(_custom_config(**overrides), workdir, evaluate_fn=lambda *a: {})
  assert [(r['step'], r['source']) for r in _rows(os.path.join(workdir, 'skipped_examples.json'))] == [
      (2, 'custom example 3 (clip003)')]
  assert [r['skipped_examples'] for r in _rows(os.path.join(workdir, 'train_history.json'))] == [0, 1, 1, 1]
  # Resumed from step 4 to 6: the count goes on from the history (example 8 is step 5's), no row twice.
  trainer.train_and_evaluate(_custom_config(**{**overrides, 'training_steps': 6}), workdir,
                             evaluate_fn=lambda *a: {})
  assert [r['step'] for r in _rows(os.path.join(workdir, 'skipped_examples.json'))] == [2, 5]
  assert [r['skipped_examples'] for r in _rows(os.path.join(workdir, 'train_history.json'))] == [0, 1, 1, 1, 2, 2]

  strict = _custom_config(**{**overrides, 'data.max_skipped_share': 0.0, 'training_steps': 6})
  with pytest.raises(bad_examples.TooManyBadExamples, match='custom example 3'):
    trainer.train_and_evaluate(strict, str(tmp_path / 'strict'), evaluate_fn=lambda *a: {})
  assert os.listdir(tmp_path / 'strict' / 'checkpoints') == ['1']  # the step done before the bad batch


def _damage_video_frame(record_file: str, index: int) -> None:
  """Rewrites `record_file` with frame 1 of record `index`'s video replaced by bytes that are not a PNG."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  records = list(tf.data.TFRecordDataset(record_file).as_numpy_iterator())
  parsed = tf.train.Example.FromString(records[index])
  frames = parsed.features.feature['video'].bytes_list.value
  frames[1] = b'not a png'
  records[index] = parsed.SerializeToString()
  with tf.io.TFRecordWriter(record_file) as writer:
    for r in records:
      writer.write(r)


def test_movi_e_skips_an_undecodable_video_by_record_id(golden_dir, tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  builder = tiny_movi_e_builder(tfds, golden_dir)(data_dir=str(tmp_path))
  builder.download_and_prepare()
  files = sorted(str(p) for p in (tmp_path).rglob('*train.tfrecord*'))
  assert len(files) == 1
  _damage_video_frame(files[0], 1)
  kwargs = dict(data_dir=str(tmp_path), name=builder.name, per_device_batch=NUM_EXAMPLES, tracks_to_sample=8,
                train_size=(32, 32), shuffle_buffer=0, num_workers=2)
  batch = next(pipeline.movi_e_dataset(**kwargs, skip_budget=bad_examples.SkipBudget(0.5, 1, 'MOVi-E')))
  (bad,) = batch[streams.SKIPPED_KEY]
  assert bad.source.startswith('record ') and 'train.tfrecord' in bad.source, bad.source
  assert 'PNG' in bad.reason or 'image' in bad.reason.lower(), bad.reason
  assert batch["video"].shape[1] == NUM_EXAMPLES
  with pytest.raises(bad_examples.TooManyBadExamples, match=r'1 of 3 examples were bad'):
    next(pipeline.movi_e_dataset(**kwargs))  # default: the first bad example stops


def test_a_record_that_fails_to_read_becomes_a_bad_example_and_reading_goes_on():
  calls = iter([{'i': 0}, OSError('corrupted record at 12'), {'i': 2}])

  class Reader:
    def __next__(self):
      item = next(calls)
      if isinstance(item, Exception):
        raise item
      return item

  out = list(pipeline._record_errors_as_bad(Reader(), OSError))  # pylint: disable=protected-access
  assert out == [{'i': 0}, bad_examples.BadExample('the record after 1 read', 'OSError: corrupted record at 12'),
                 {'i': 2}]
