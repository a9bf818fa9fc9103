"""A tiny TFDS dataset with MOVi-E's feature structure, built from the golden Kubric scene (shared by tests).

    builder = tiny_movi_e_builder(tfds, golden_dir)(data_dir=str(tmp_path))
    builder.download_and_prepare()          # splits 'train' and 'validation', 3 copies of the scene each
    tfds.load(TINY_MOVI_E, data_dir=str(tmp_path), split='validation')
"""

import functools
import pathlib

import numpy as np

TINY_MOVI_E = 'tiny_movi_e'  # the registered TFDS name of the builder
NUM_EXAMPLES = 3  # per split


def nested(example):
  """Flat fixture keys ('camera/positions') -> TFDS's nested feature dicts."""
  out = {}
  for key, value in example.items():
    *groups, leaf = key.split('/')
    target = out
    for g in groups:
      target = target.setdefault(g, {})
    target[leaf] = value
  return out


def golden_example(golden_dir: pathlib.Path) -> dict[str, np.ndarray]:
  """The golden scene's MOVi-E input arrays, flat keys."""
  data = np.load(pathlib.Path(golden_dir) / 'kubric_tracks_tiny.npz')
  return {k[len('input/'):]: data[k] for k in data.files if k.startswith('input/')}


@functools.cache  # TFDS registers builder classes by name: define it once per process
def tiny_movi_e_builder(tfds, golden_dir: pathlib.Path):
  """A TFDS builder with MOVi-E's features (videos PNG-encoded per frame, instances as a Sequence)."""
  example = golden_example(golden_dir)
  t, h, w = example['video'].shape[:3]
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
      return {'train': self._generate_examples(), 'validation': self._generate_examples()}

    def _generate_examples(self):
      for i in range(NUM_EXAMPLES):
        yield i, nested(example)

  assert TinyMoviE.name == TINY_MOVI_E
  return TinyMoviE
