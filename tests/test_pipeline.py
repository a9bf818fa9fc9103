"""The MOVi-E tf.data path: TFDS-structured examples -> batches [devices, batch, ...] with the right contents."""

import numpy as np
import pytest

from tapir.data import pipeline

tf = pytest.importorskip('tensorflow')


def _nested(example):
  """Flat fixture keys -> TFDS's nested feature dicts."""
  out = {}
  for key, value in example.items():
    *groups, leaf = key.split('/')
    target = out
    for g in groups:
      target = target.setdefault(g, {})
    target[leaf] = value
  return out


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


def _tiny_movi_e_builder(tfds, data):
  """A TFDS builder with MOVi-E's feature structure (videos PNG-encoded per frame, instances as a Sequence)."""
  t, h, w = data['input/video'].shape[:3]
  video = lambda channels, dtype: tfds.features.Video(shape=(None, h, w, channels), dtype=dtype)
  tensor = lambda shape, dtype: tfds.features.Tensor(shape=shape, dtype=dtype)

  class TinyMoviE(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'video': video(3, np.uint8), 'segmentations': video(1, np.uint8), 'depth': video(1, np.uint16),
          'normal': video(3, np.uint16), 'object_coordinates': video(3, np.uint16),
          'metadata': {'depth_range': tensor((2,), np.float32), 'num_frames': tensor((), np.int32),
                       'num_instances': tensor((), np.uint16), 'height': tensor((), np.int32),
                       'width': tensor((), np.int32)},
          'camera': {'focal_length': tensor((), np.float32), 'sensor_width': tensor((), np.float32),
                     'field_of_view': tensor((), np.float32), 'positions': tensor((t, 3), np.float32),
                     'quaternions': tensor((t, 4), np.float32)},
          'instances': tfds.features.Sequence({
              'positions': tensor((t, 3), np.float32), 'quaternions': tensor((t, 4), np.float32),
              'bboxes_3d': tensor((t, 8, 3), np.float32), 'scale': tensor((), np.float32)}),
      }))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      example = _nested({k[len('input/'):]: data[k] for k in data.files if k.startswith('input/')})
      for i in range(3):
        yield i, example

  return TinyMoviE


def test_tfds_record_round_trips_into_training_batches(golden_dir, tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  data = np.load(golden_dir / 'kubric_tracks_tiny.npz')
  builder = _tiny_movi_e_builder(tfds, data)(data_dir=str(tmp_path))
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
