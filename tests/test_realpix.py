"""The "realpix" set (`tapir.data.realpix`): real photographs moved by known maps, with exact ground truth.

The truth is checked against the rendered pixels, not against the generator's own inverse: the photographs are
replaced by coordinate images (channel 0 = u, channel 1 = v, channel 2 = the layer id, exact at every mip level),
so a frame read bilinearly (raster convention, written out here) at a track's position must return the texel
the track follows and the layer the occlusion truth says.
"""

import dataclasses

import numpy as np
import pytest

from configs import evaluate as evaluate_configs
from configs import tapir as tapir_configs
from tapir.data import photographs
from tapir.data import realpix
from tapir.data import streams
from tapir.data import tapvid
from tapir.evaluation import runner

# Not square, so that a swapped x / y shows; paths run their whole course in the 8 frames.
TINY = realpix.RealPixConfig(height=48, width=64, num_frames=8, motion_frames=8, tracks=96, num_foreground=(2, 3))
SEEDS = (0, 1, 2, 3)
TRUTH_TOLERANCE = 0.05  # pixels


def _coordinate_mipmap(photo: str, layer: int) -> tuple[np.ndarray, ...]:
  """Levels shaped like `photographs.pyramid(photo)` whose texels hold their level-0 centre (u, v) and `layer`."""
  out = []
  for level, image in enumerate(photographs.pyramid(photo)):
    _, h, w = image.shape
    v, u = np.meshgrid((np.arange(h) + 0.5) * 2 ** level, (np.arange(w) + 0.5) * 2 ** level, indexing='ij')
    out.append(np.stack([u, v, np.full_like(u, layer)]).astype(np.float32))
  return tuple(out)


def _bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:  # [h, w, c], [n, 2] raster (x, y) -> [n, c]
  x, y = xy[:, 0] - 0.5, xy[:, 1] - 0.5  # pixel (i, j) has its centre at (j + .5, i + .5)
  j, i = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = (x - j)[:, None], (y - i)[:, None]
  return ((1 - fy) * ((1 - fx) * image[i, j] + fx * image[i, j + 1])
          + fy * ((1 - fx) * image[i + 1, j] + fx * image[i + 1, j + 1]))


def _clean(layers: np.ndarray, xy: np.ndarray) -> np.ndarray:  # [h, w], [n, 2] -> [n] bool
  """Points whose 4x4 pixel neighbourhood lies in the frame and in one layer: bilinear reads there are exact."""
  h, w = layers.shape
  j, i = np.floor(xy[:, 0] - 0.5).astype(int), np.floor(xy[:, 1] - 0.5).astype(int)
  ok = (j >= 1) & (j + 2 < w) & (i >= 1) & (i + 2 < h)
  window = np.stack([layers[np.clip(i + di, 0, h - 1), np.clip(j + dj, 0, w - 1)]
                     for di in range(-1, 3) for dj in range(-1, 3)], -1)
  return ok & (window == window[:, :1]).all(-1)


@pytest.fixture(scope='module')
def coordinate_clips():
  """Per seed: (tracks, coordinate frames [t, h, w, 3] float32, top layers [t, h, w])."""
  clips = []
  for seed in SEEDS:
    scene = realpix.sample_scene(seed, TINY)
    sources = [_coordinate_mipmap(photo, k) for k, photo in enumerate(scene.photos)]
    frames, layers = realpix.render_scene(scene, TINY, sources)
    clips.append((realpix.scene_tracks(scene, TINY), frames, layers))
  return clips


def test_clips_are_a_pure_function_of_seed_and_config():
  first = realpix.generate_clip(5, TINY)
  realpix.generate_clip(6, TINY)  # no state carried between calls
  again = realpix.generate_clip(5, TINY)
  other = realpix.generate_clip(6, TINY)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first.video, other.video)
  t, h, w = TINY.num_frames, TINY.height, TINY.width
  assert first.video.shape == (t, h, w, 3) and first.video.dtype == np.uint8
  assert first.points.shape == (TINY.tracks, t, 2) and first.points.dtype == np.float32
  assert first.occluded.shape == (TINY.tracks, t) and first.occluded.dtype == bool
  assert first.layers.shape == (t, h, w) and set(np.unique(first.track_layers)) <= set(np.unique(first.layers))
  visible = first.points[~first.occluded]
  assert visible.min() >= 0 and visible.max() <= 1


def test_tracks_follow_the_rendered_pixels_exactly(coordinate_clips):
  """Each visible point shows its own texel where the truth puts it, to well under 0.05 px."""
  errors, visible = [], 0
  for tracks, frames, layers in coordinate_clips:
    for t in range(TINY.num_frames):
      xy = tracks.xy[:, t]
      tested = ~tracks.occluded[:, t] & _clean(layers[t], xy)
      visible += int((~tracks.occluded[:, t]).sum())
      read = _bilinear(frames[t], xy[tested])
      np.testing.assert_array_equal(read[:, 2], tracks.layers[tested])
      # Texel error -> pixels through the local Jacobian of the rendered map (central differences, 1 px).
      dx = (_bilinear(frames[t], xy[tested] + [1, 0]) - _bilinear(frames[t], xy[tested] - [1, 0]))[:, :2] / 2
      dy = (_bilinear(frames[t], xy[tested] + [0, 1]) - _bilinear(frames[t], xy[tested] - [0, 1]))[:, :2] / 2
      jacobian = np.stack([dx, dy], -1).astype(np.float64)  # [n, 2 (u, v), 2 (x, y)]
      texel_error = read[:, :2] - tracks.texels[tested]
      errors.append(np.linalg.norm(np.linalg.solve(jacobian, texel_error[..., None])[..., 0], axis=-1))
  errors = np.concatenate(errors)
  assert len(errors) > 0.5 * visible  # most visible points are away from edges, hence tested
  assert errors.max() < TRUTH_TOLERANCE, f'max truth error {errors.max():.4f} px'


def test_background_inversion_converges(coordinate_clips):
  from tapir.data import realpix_scene  # pylint: disable=g-import-not-at-top
  for seed, (tracks, _, _) in zip(SEEDS, coordinate_clips):
    scene = realpix.sample_scene(seed, TINY)
    on = tracks.layers == 0
    frames = np.broadcast_to(np.arange(TINY.num_frames), tracks.xy[on].shape[:2])
    texels, _ = realpix_scene.background_texels(scene.background, frames, tracks.xy[on])
    assert np.abs(texels - tracks.texels[on, None]).max() < 1e-6  # texels: well under 1e-6 px


def test_occlusion_truth_matches_the_layers_shown(coordinate_clips):
  counts = dict(visible=0, covered=0, outside=0)
  for tracks, frames, layers in coordinate_clips:
    for t in range(TINY.num_frames):
      xy, occluded = tracks.xy[:, t], tracks.occluded[:, t]
      outside = (xy[:, 0] < 0) | (xy[:, 0] >= TINY.width) | (xy[:, 1] < 0) | (xy[:, 1] >= TINY.height)
      assert occluded[outside].all(), 'points outside the frame must be occluded'
      clean = ~outside & _clean(layers[t], xy)
      shown = np.round(_bilinear(frames[t], xy[clean])[:, 2]).astype(int)  # the layer id "colour" read there
      own = tracks.layers[clean]
      np.testing.assert_array_equal(shown[~occluded[clean]], own[~occluded[clean]])
      assert (shown[occluded[clean]] > own[occluded[clean]]).all(), 'an occluded point must show a higher layer'
      counts['visible'] += int((~occluded[clean]).sum())
      counts['covered'] += int(occluded[clean].sum())
      counts['outside'] += int(outside.sum())
  assert min(counts.values()) > 0, counts  # every case is exercised


def test_video_shows_the_layers_and_photographs():
  clip = realpix.generate_clip(2, TINY)
  scene = realpix.sample_scene(2, TINY)
  frames, layers = realpix.render_scene(scene, TINY)
  np.testing.assert_array_equal(clip.layers, layers)
  np.testing.assert_array_equal(clip.video, np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8))
  assert all(photo in photographs.EVAL_PHOTOGRAPHS for photo in scene.photos)
  assert clip.video.std() > 10  # textured, not flat


@pytest.mark.parametrize('query_mode', ['first', 'strided'])
def test_evaluation_examples(query_mode):
  examples = list(realpix.evaluation_examples(2, query_mode, TINY))
  assert [e.video_name for e in examples] == ['realpix_0000', 'realpix_0001']
  for example in examples:
    assert isinstance(example, tapvid.TapVidExample)
    q = len(example.query_points)
    assert q > 0 and example.target_points.shape == (q, TINY.num_frames, 2) and example.occluded.shape[0] == q
    frame = example.query_points[:, 0].astype(int)
    np.testing.assert_array_equal(example.query_points[:, 2:0:-1], example.target_points[np.arange(q), frame])
    assert not example.occluded[np.arange(q), frame].any()
    assert (example.trackgroup is not None) == (query_mode == 'strided')
  again = list(realpix.evaluation_examples(2, query_mode, TINY))
  assert again[0].video is examples[0].video  # rendered once per process


def test_npz_round_trip(tmp_path):
  paths = realpix.write_npz(tmp_path, 2, TINY)
  assert [p.rsplit('/', 1)[-1] for p in paths] == ['realpix_0000.npz', 'realpix_0001.npz']
  read = list(tapvid.read_npz_dataset(tmp_path, 'first', resolution=None))
  direct = list(realpix.evaluation_examples(2, 'first', TINY))
  for a, b in zip(read, direct):
    assert a.video_name == b.video_name
    np.testing.assert_array_equal(a.video, b.video)
    np.testing.assert_array_equal(a.occluded, b.occluded)
    np.testing.assert_allclose(a.target_points, b.target_points, atol=1e-4)


@pytest.mark.parametrize('field, value', [
    ('height', 0), ('width', 20.5), ('num_frames', 0), ('motion_frames', 1), ('tracks', 0),
    ('num_foreground', (2, 1)), ('num_foreground', (0, 99)), ('zoom', (0.0, 1.0)), ('zoom', 1.0),
    ('max_rotation', 90.0), ('max_translation', -0.1), ('max_perspective', 0.5), ('elastic_amplitude', 0.2),
    ('foreground_share', 1.5), ('foreground_radius', (0.3, 0.1)), ('foreground_travel', float('nan')),
    ('foreground_rotation', True), ('photographs', ('astronaut',)), ('photographs', ('stereo_motorcycle',)),
    ('photographs', ()), ('photographs', 'coffee'),
])
def test_bad_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    dataclasses.replace(TINY, **{field: value})


def test_bad_arguments_name_themselves():
  with pytest.raises(ValueError, match='seed'):
    realpix.sample_scene(-1, TINY)
  with pytest.raises(ValueError, match='num_videos'):
    realpix.evaluation_examples(0, 'first', TINY)
  with pytest.raises(ValueError, match='query_mode'):
    realpix.evaluation_examples(1, 'every', TINY)
  assert realpix.TRAIN_SEED_OFFSET not in realpix.EVAL_SEEDS


def test_evaluation_runner_and_training_eval_read_realpix(tmp_path):
  config = evaluate_configs.get_config('realpix')
  assert config.dataset == 'realpix'
  config.realpix.update(num_videos=1, num_frames=4, hw=(32, 32), tracks=8)
  examples = list(runner.examples(config, 'first'))
  assert len(examples) == 1 and examples[0].video.shape == (4, 32, 32, 3)
  config.query_modes = ('first',)
  runner.run(config, str(tmp_path))  # no checkpoint: the zero-motion baseline only
  assert (tmp_path / 'realpix_first_zero_motion.json').is_file()
  cpu = evaluate_configs.get_config('realpix_cpu')
  assert cpu.dataset == 'realpix' and tuple(cpu.resolution_hw) == (64, 64) and cpu.checkpoint

  training = tapir_configs.get_config('tiny')
  training.eval.dataset = 'realpix'
  examples = list(streams.evaluation_examples(training, 'strided'))
  assert len(examples) == training.eval.num_videos
  assert examples[0].video.shape[1:3] == tuple(training.eval.synthetic_hw)
