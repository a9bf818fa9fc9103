"""The photographic scenes: photographs on surfaces, mip-mapping, shadows, motion variety, image motion, knobs."""

import dataclasses
import hashlib

import numpy as np
import pytest

from tapir.data import kubric
from tapir.data import photographs
from tapir.data import synthetic
from tapir.data.synthetic import camera_effects
from tapir.data.synthetic import motion
from tapir.data.synthetic import photo_textures
from tapir.data.synthetic import render

# Photographs everywhere, a perfect camera and no directional light: a surface point's colour is its albedo.
FLAT_LIGHT = synthetic.SceneConfig(height=64, width=64, num_frames=6, num_static_objects=(3, 4),
                                   num_dynamic_objects=(2, 2), photo_share=1.0, shadows=False, ambient=(1.0, 1.0),
                                   camera=camera_effects.CameraEffects())


def _tracks(example, seed: int, n: int):
  """Tracks of `n` random source pixels: (target_points [n, t, 2] (x, y), occluded [n, t], query frames [n])."""
  t, h, w, _ = example['video'].shape
  rng = np.random.default_rng(seed)
  pixels = np.stack([rng.integers(0, t, n), rng.integers(0, h, n), rng.integers(0, w, n)], -1)
  tracks = kubric.track_points(example, pixels)
  return tracks.target_points, tracks.occluded, pixels[:, 0]


def _bilinear(frame: np.ndarray, xy: np.ndarray) -> np.ndarray:  # [h, w, 3], [n, 2] (x, y) -> [n, 3]
  h, w, _ = frame.shape
  x = np.clip(xy[:, 0] - 0.5, 0, w - 1.001)
  y = np.clip(xy[:, 1] - 0.5, 0, h - 1.001)
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  f = frame.astype(np.float32)
  return ((f[y0, x0] * (1 - fx) + f[y0, x0 + 1] * fx) * (1 - fy)
          + (f[y0 + 1, x0] * (1 - fx) + f[y0 + 1, x0 + 1] * fx) * fy)


def _interior(segmentation: np.ndarray, xy: np.ndarray) -> np.ndarray:  # [h, w], [n, 2] -> [n] bool
  """Points whose 3x3 pixel neighbourhood lies in one segment (bilinear reads do not mix surfaces there)."""
  h, w = segmentation.shape
  col = np.clip(np.floor(xy[:, 0]).astype(int), 1, w - 2)
  row = np.clip(np.floor(xy[:, 1]).astype(int), 1, h - 2)
  window = np.stack([segmentation[row + dy, col + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
  return (window == window[4]).all(0)


def test_a_moving_photographed_surface_point_keeps_its_colour():
  frames_checked = 0
  errors, static_errors = [], []
  for seed in range(3):
    scene = synthetic.generate_scene(seed, FLAT_LIGHT)
    xy, occluded, query_frame = _tracks(scene, seed, 256)  # [n, t, 2], [n, t], [n]
    video, segments = scene['video'], scene['segmentations'][..., 0]
    for f in range(FLAT_LIGHT.num_frames):
      for n in np.flatnonzero(~occluded[:, f]):
        q = query_frame[n]
        if q == f or occluded[n, q]:
          continue
        both = _interior(segments[f], xy[n:n + 1, f])[0] and _interior(segments[q], xy[n:n + 1, q])[0]
        if not both:
          continue
        here = _bilinear(video[f], xy[n:n + 1, f])[0]
        there = _bilinear(video[q], xy[n:n + 1, q])[0]
        errors.append(np.abs(here - there).mean())
        static_errors.append(np.abs(_bilinear(video[f], xy[n:n + 1, q])[0] - there).mean())  # ignoring motion
        frames_checked += 1
  assert frames_checked > 300
  # Colours agree along the true tracks to a few grey levels; reading at the query position instead does not.
  assert np.median(errors) < 3.0, np.median(errors)
  assert np.median(static_errors) > 3 * np.median(errors)


def _receding_floor(size: int, texture: photo_textures.PhotoTexture, height: float) -> np.ndarray:
  """A camera `height` above a photographed floor looking at the horizon: video [2, size, size, 3] float."""
  camera = synthetic.CameraPath(start=np.array([0.0, 0.3, height]), end=np.array([0.0, 0.0, height]),
                                lookat_start=np.array([0.0, 30.0, height * 0.7]),
                                lookat_end=np.array([0.0, 30.3, height * 0.7]), motion_frames=0)
  scene = synthetic.Scene(camera, [], texture, synthetic.sample_texture(np.random.default_rng(0), ('noise',),
                                                                        (0.1, 0.1)),
                          np.array([0.0, 0.0, 1.0]), 1.0)
  config = synthetic.SceneConfig(height=size, width=size, num_frames=2, photo_share=1.0, shadows=False,
                                 camera=camera_effects.CameraEffects())
  return render.render_scene(scene, config)['video'].astype(np.float32)


def test_photographs_are_mip_mapped_on_a_receding_plane(monkeypatch):
  texture = photo_textures.sample_photo_texture(np.random.default_rng(1), ('brick',), 'planar', (2.0, 2.0))
  size, factor = 48, 8
  reference = _receding_floor(size * factor, texture, 1.0)
  reference = reference.reshape(2, size, factor, size, factor, 3).mean((2, 4))  # 64 samples per pixel
  mipped = _receding_floor(size, texture, 1.0)
  sample = photographs.sample
  monkeypatch.setattr(photographs, 'sample', lambda levels, u, v, footprint: sample(levels, u, v, 0 * footprint))
  point_sampled = _receding_floor(size, texture, 1.0)
  far = slice(size // 2 - 8, size // 2 + 2)  # rows just below the horizon, where texels shrink below a pixel
  mip_error = np.abs(mipped[:, far] - reference[:, far]).mean()
  alias_error = np.abs(point_sampled[:, far] - reference[:, far]).mean()
  assert mip_error < 0.5 * alias_error, (mip_error, alias_error)
  # Shimmer: a small camera move changes the point-sampled far rows far more than the filtered ones.
  shimmer = np.abs(mipped[1, far] - mipped[0, far]).mean()
  aliased_shimmer = np.abs(point_sampled[1, far] - point_sampled[0, far]).mean()
  assert shimmer < 0.5 * aliased_shimmer, (shimmer, aliased_shimmer)


def test_sample_reads_texel_centres_exactly_and_averages_when_minified():
  image = photographs.load('brick')
  levels = photographs.pyramid('brick')
  colour = photographs.sample(levels, np.array([10.5, 200.5]), np.array([20.5, 5.5]), np.array([1.0, 1.0]))
  np.testing.assert_allclose(colour.T, image[[20, 5], [10, 200]], atol=1e-6)
  mean = photographs.sample(levels, np.array([256.0]), np.array([256.0]), np.array([1e6]))
  np.testing.assert_allclose(mean[:, 0], image.reshape(-1, 3).mean(0), atol=2e-3)
  assert not image.flags.writeable and not levels[0].flags.writeable


def test_box_faces_and_sphere_seams():
  half = np.array([1.0, 0.5, 0.8], np.float32)
  on_faces = np.array([[1.0, 0.2, -0.3], [-1.0, 0.2, -0.3], [0.3, 0.5, 0.1], [0.3, 0.1, 0.8]], np.float32).T
  coords = photo_textures.box_face_coordinates(on_faces, half)
  assert not np.allclose(coords[:, 0], coords[:, 1])  # opposite faces show different parts
  texture = photo_textures.sample_photo_texture(np.random.default_rng(3), ('astronaut',), 'spherical', (2, 2))
  # Directions just either side of the longitude seam (in the texture's own frame) get nearly the same colour.
  angle = np.float32(np.pi - 1e-4)
  local = np.array([[np.cos(angle), np.sin(angle), 0.1], [np.cos(angle), -np.sin(angle), 0.1]], np.float32).T
  world = texture.orientation.T @ local
  colours = photo_textures.evaluate_photo_texture(texture, 'spherical', world.astype(np.float32),
                                                  np.float32([1e-3, 1e-3]))
  np.testing.assert_allclose(colours[:, 0], colours[:, 1], atol=0.02)


def test_procedural_kind_is_the_renderer_before_photographs():
  config = synthetic.SceneConfig.of_kind('procedural', height=32, width=32, num_frames=4, num_static_objects=(3, 5))
  scene = synthetic.generate_scene(7, config)
  digest = hashlib.sha256(b''.join(scene[k].tobytes() for k in sorted(scene))).hexdigest()[:16]
  # Recorded from the renderer at commit 758a153, before photographs, shadows, motion variety and effects.
  assert digest == PROCEDURAL_DIGEST


PROCEDURAL_DIGEST = 'f103dacb5f8c621c'


def test_shadows_darken_the_floor_under_an_object():
  floor = photo_textures.sample_photo_texture(np.random.default_rng(0), ('page',), 'planar', (20.0, 20.0))
  box = synthetic.SceneObject('box', np.ones(3), 1.0, np.array([0.0, 0.0, 2.5]), np.zeros(3),
                              np.array([1.0, 0, 0, 0]), np.zeros(3), floor)
  camera = synthetic.CameraPath(np.array([0.0, -0.01, 12.0]), np.array([0.0, -0.01, 12.0]), np.zeros(3),
                                np.zeros(3), 0)
  dome = synthetic.sample_texture(np.random.default_rng(0), ('noise',), (0.1, 0.1))
  scene = synthetic.Scene(camera, [box], floor, dome, np.array([0.0, 0.6, 0.8]), 0.4)
  frames = {}
  for shadows in (False, True):
    config = synthetic.SceneConfig(height=48, width=48, num_frames=1, shadows=shadows, photo_share=1.0,
                                   camera=camera_effects.CameraEffects())
    frames[shadows] = render.render_scene(scene, config)
  is_floor = frames[True]['segmentations'][0, ..., 0] == 0
  darker = (frames[True]['video'][0].astype(int).sum(-1) < frames[False]['video'][0].astype(int).sum(-1) - 10)
  assert (darker & is_floor).sum() > 20  # the shadow, cast away from the light (towards -y)
  assert not (darker & ~is_floor).any()
  rows = np.nonzero(darker & is_floor)[0]
  assert rows.mean() > 24  # image rows grow towards -y here: the shadow falls on the far side from the light
  for key in ('depth', 'segmentations', 'object_coordinates'):  # ground truth unchanged
    np.testing.assert_array_equal(frames[True][key], frames[False][key])


def test_bounce_heights_fall_bounce_and_settle():
  times = np.arange(200, dtype=np.float64)
  z = motion.bounce_heights(3.0, 0.1, 0.02, 0.5, 0.6, times)
  assert z.min() >= 0.5 - 1e-9 and z[0] == 3.0
  np.testing.assert_allclose(z[:10], 3.0 + 0.1 * times[:10] - 0.01 * times[:10] ** 2)
  peaks = [z[i] for i in range(1, 199) if z[i] > z[i - 1] and z[i] >= z[i + 1]]
  assert len(peaks) >= 3 and all(a > b for a, b in zip(peaks, peaks[1:]))  # each bounce lower
  assert np.allclose(z[-20:], 0.5)


def test_dynamic_objects_get_ballistic_and_crossing_paths_and_tracks_stay_exact():
  config = dataclasses.replace(FLAT_LIGHT, ballistic_probability=1.0, crossing_probability=1.0, num_frames=8)
  scene = synthetic.sample_scene(3, config)
  dynamic = [o for o in scene.objects if o.gravity > 0]
  assert len(dynamic) == 2
  positions, _ = dynamic[0].pose(8)
  assert np.all(positions[:, 2] >= dynamic[0].rest_height - 1e-5)
  assert np.linalg.norm(positions[-1, :2] - positions[0, :2]) > 7 * 0.3 - 1e-6  # fast, across the view
  example = render.render_scene(scene, config)
  xy, _, _ = _tracks(example, 0, 128)
  assert np.isfinite(xy).all()


def test_image_motion_matches_the_tracks():
  config = dataclasses.replace(FLAT_LIGHT, num_frames=4)
  scene = synthetic.sample_scene(5, config)
  captured = {}
  original = render.image_motion

  def spy(*args):
    captured['flow'] = original(*args)
    return captured['flow']

  effects = camera_effects.sample_effects(np.random.default_rng(0), camera_effects.CameraEffects(shutter=(0.5, 0.5)))
  scene = dataclasses.replace(scene, effects=effects)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(render, 'image_motion', spy)
    example = render.render_scene(scene, config)
  flow = captured['flow']  # [t, h, w, 2]
  xy, occluded, _ = _tracks(example, 1, 256)
  checked = 0
  for n in range(xy.shape[0]):
    for f in range(3):
      if occluded[n, f] or occluded[n, f + 1]:
        continue
      if not _interior(example['segmentations'][f, ..., 0], xy[n:n + 1, f])[0]:
        continue
      col, row = np.floor(xy[n, f]).astype(int)
      # The flow of the pixel containing the point, against the point's own motion: equal up to the motion's
      # variation within one pixel.
      np.testing.assert_allclose(flow[f, row, col], xy[n, f + 1] - xy[n, f], atol=0.35)
      checked += 1
  assert checked > 100


@pytest.mark.parametrize('field, value', [
    ('photo_share', 1.5), ('ballistic_probability', -0.1), ('crossing_probability', 2.0), ('gravity', -1.0),
    ('restitution', (0.8, 0.2)), ('photographs', ('stereo_motorcycle',)), ('photographs', ('nope',)),
    ('photographs', ()), ('camera', 'realistic'),
])
def test_bad_scene_knobs_name_themselves(field, value):
  with pytest.raises(ValueError, match=field):
    synthetic.SceneConfig(**{field: value})


def test_scene_kinds():
  assert synthetic.SceneConfig.of_kind('photographic') == synthetic.SceneConfig()
  procedural = synthetic.SceneConfig.of_kind('procedural', height=32)
  assert procedural.photo_share == 0 and not procedural.shadows and procedural.height == 32
  with pytest.raises(ValueError, match='scene kind'):
    synthetic.SceneConfig.of_kind('photoreal')
