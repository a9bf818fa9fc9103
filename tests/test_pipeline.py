"""The MOVi-E tf.data path: TFDS-structured examples -> batches [devices, batch, ...] with the right contents."""

import functools

import numpy as np
import pytest

from movi_e_testdata import golden_example
from movi_e_testdata import nested as _nested
from movi_e_testdata import NUM_EXAMPLES
from movi_e_testdata import tiny_movi_e_builder
from tapir.data import pipeline

tf = pytest.importorskip('tensorflow')


def test_tf_dataset_to_batches(golden_dir):
  data = np.load(golden_dir / 'kubric_tracks_tiny.npz')
  example = _nested({k[len('input/'):]: data[k] for k in data.files if k.startswith('input/')})
  dataset = tf.data.Dataset.from_tensors(example)
  examples = pipeline.tf_dataset_examples(dataset, shuffle_buffer=2, seed=0)
  batches = pipeline.batches_from_examples(examples, per_device_batch=2, tracks_to_sample=32, train_size=(32, 32),
                                           local_devices=1, num_workers=2)
  batch = next(batches)
  assert batch['video'].shape == (1, 2, 8, 32, 32, 3) and batch['video'].dtype == np.float32
  assert batch['query_points'].shape == (1, 2, 32, 3) and batch['target_points'].shape == (1, 2, 32, 8, 2)
  assert batch['occluded'].shape == (1, 2, 32, 8) and batch['occluded'].dtype == bool
  assert batch['video'].min() >= -1 and batch['video'].max() <= 1
  q = batch['query_points']
  assert (q[..., 0] == np.round(q[..., 0])).all() and (q[..., 1:] >= 0).all() and (q[..., 1:] <= 32).all()
  # Different clips of one batch draw different random choices.
  assert not np.array_equal(batch['query_points'][0, 0], batch['query_points'][0, 1])


def test_flatten_joins_nested_keys():
  flat = pipeline.flatten({'camera': {'positions': np.zeros((2, 3))}, 'video': np.zeros(1)})
  assert sorted(flat) == ['camera/positions', 'video']


def test_tfds_record_round_trips_into_training_batches(golden_dir, tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  data = np.load(golden_dir / 'kubric_tracks_tiny.npz')
  builder = tiny_movi_e_builder(tfds, golden_dir)(data_dir=str(tmp_path))
  builder.download_and_prepare()

  # What the reader gets back from the record is what was written.
  record = pipeline.flatten(next(iter(tfds.as_numpy(builder.as_dataset(split='train')))))
  for key in ('video', 'depth', 'segmentations', 'object_coordinates', 'camera/positions', 'instances/bboxes_3d'):
    np.testing.assert_array_equal(record[key], data['input/' + key], err_msg=key)
    assert record[key].dtype == data['input/' + key].dtype, key

  batches = pipeline.movi_e_dataset(data_dir=str(tmp_path), name='tiny_movi_e', per_device_batch=2,
                                    tracks_to_sample=16, train_size=(32, 32), shuffle_buffer=2, num_workers=2)
  batch = next(batches)
  devices = batch['video'].shape[0]
  assert batch['video'].shape == (devices, 2, 8, 32, 32, 3) and batch['video'].dtype == np.float32
  assert batch['target_points'].shape == (devices, 2, 16, 8, 2) and batch['occluded'].dtype == bool
  assert -1 <= batch['video'].min() and batch['video'].max() <= 1
  # Queries are visible at their own frame, and the target on the query frame is the query itself.
  q = batch['query_points']
  t = q[..., 0].astype(int)
  on_query_frame = np.take_along_axis(batch['target_points'], t[..., None, None], axis=-2)[..., 0, :]
  np.testing.assert_allclose(on_query_frame, q[..., ::-1][..., :2], atol=1e-3)
  assert not np.take_along_axis(batch['occluded'], t[..., None], axis=-1).any()


@functools.cache  # TFDS registers builder classes by name: define it once per process
def _distinct_movi_e_builder(tfds, golden_dir):
  """The tiny MOVi-E builder whose 3 examples differ: example i's colours are shifted by 40 i."""

  class TinyMoviEDistinct(tiny_movi_e_builder(tfds, golden_dir)):

    def _generate_examples(self):
      example = _nested(golden_example(golden_dir))
      for i in range(NUM_EXAMPLES):
        yield i, {**example, 'video': ((example['video'].astype(np.int32) + 40 * i) % 256).astype(np.uint8)}

  return TinyMoviEDistinct


def test_movi_e_resume_sees_the_batches_of_an_uninterrupted_run(golden_dir, tmp_path):
  """Batch k of the MOVi-E stream is a function of (seed, k): a stream started at batch 3 yields batches 3, 4, 5."""
  tfds = pytest.importorskip('tensorflow_datasets')
  builder = _distinct_movi_e_builder(tfds, golden_dir)
  builder(data_dir=str(tmp_path)).download_and_prepare()
  kwargs = dict(data_dir=str(tmp_path), name=builder.name, per_device_batch=1, tracks_to_sample=8,
                train_size=(32, 32), shuffle_buffer=2, num_workers=2)

  def first(n, **more):
    stream = pipeline.movi_e_dataset(**kwargs, **more)
    return [next(stream) for _ in range(n)]

  straight = first(6, seed=3)
  resumed = first(3, seed=3, start_batch=3)
  for k in range(3):
    for key in straight[3 + k]:
      np.testing.assert_array_equal(resumed[k][key], straight[3 + k][key], err_msg=f'batch {3 + k} {key}')
  # The resumed stream holds the same examples, not only the same random choices: all 3 videos take part.
  assert len({float(b['video'].mean()) for b in straight}) == 6
  assert len({float(b['video'].mean()) for b in first(6, seed=3, color_augmentation=False, random_crop=False)}) == 3
  # Seed s resumed at 3 is not seed s + 3 from the start (what reseeding with seed + step gave).
  other = first(3, seed=6)
  assert any(not np.array_equal(o['query_points'], r['query_points']) for o, r in zip(other, resumed))
  with pytest.raises(ValueError, match='start_batch'):
    pipeline.movi_e_dataset(**kwargs, start_batch=-1)
