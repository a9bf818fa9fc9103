"""Photographed cards in the built-in scenes: placement, an unchanged draw without them, exact tracks, knobs."""

import dataclasses
import pickle

import numpy as np
import pytest

from tapir.data import geometry
from tapir.data import synthetic
from tapir.data.synthetic import camera_effects
from tapir.data.synthetic import cards
from tapir.data.synthetic import render
from tests import test_photo_scenes as photo_tests

ALL_CARDS = cards.Cards(probability=1.0)


def _same(a, b) -> bool:
  """Equal scene parts, arrays included (dataclass equality does not compare arrays)."""
  return pickle.dumps(a) == pickle.dumps(b)


def _card_objects(scene):
  return [o for o in scene.objects if o.shape == 'box' and o.half[2] == cards._THICKNESS]  # pylint: disable=protected-access


def test_without_cards_the_draw_is_unchanged_and_cards_replace_only_dynamic_objects():
  config = synthetic.SceneConfig(height=64, width=64, num_frames=8, num_static_objects=(3, 3),
                                 num_dynamic_objects=(3, 3))
  for seed in range(3):
    plain = synthetic.sample_scene(seed, config)
    assert _same(plain, synthetic.sample_scene(seed, dataclasses.replace(config, cards=cards.Cards())))
    with_cards = synthetic.sample_scene(seed, dataclasses.replace(config, cards=ALL_CARDS))
    assert not _same(plain.objects, with_cards.objects)
    # Static objects, floor, dome, light, camera and effects are untouched.
    assert _same(with_cards.objects[:3], plain.objects[:3])
    assert _same(dataclasses.replace(with_cards, objects=()), dataclasses.replace(plain, objects=()))
    assert len(_card_objects(with_cards)) == 3


def test_cards_face_the_camera_in_front_of_the_scene_at_their_image_size():
  knobs = cards.Cards(probability=1.0, max_tilt=0.0, max_spin=0.0)
  config = synthetic.SceneConfig(height=64, width=64, num_frames=8, num_dynamic_objects=(3, 3), cards=knobs)
  checked = 0
  for seed in range(4):
    scene = synthetic.sample_scene(seed, config)
    cameras, lookats = scene.camera.positions(8), scene.camera.lookats(8)
    rotation = geometry.quaternion_to_matrix(geometry.look_at_quaternion(cameras[4], lookats[4]))
    distance = np.linalg.norm(lookats[4] - cameras[4])
    for card in _card_objects(scene):
      positions, quaternions = card.pose(8)
      local = rotation.T @ (positions[4] - cameras[4])
      depth = -local[2]
      assert knobs.depth[0] * distance - 1e-6 <= depth <= knobs.depth[1] * distance + 1e-6
      normal = geometry.quaternion_to_matrix(quaternions[4]) @ np.array([0.0, 0.0, 1.0])
      assert abs(normal @ rotation[:, 2]) > 1 - 1e-6  # untilted: the thin axis along the view
      fraction = 2 * card.scale / (depth * synthetic.SENSOR_WIDTH / synthetic.FOCAL_LENGTH)
      assert knobs.view_fraction[0] - 1e-6 <= fraction <= knobs.view_fraction[1] + 1e-6
      assert np.all(positions[:, 2] > 0)
      checked += 1
  assert checked >= 8


def test_a_photographed_card_point_keeps_its_colour_and_cards_occlude_the_background():
  config = dataclasses.replace(photo_tests.FLAT_LIGHT, num_static_objects=(0, 0), num_dynamic_objects=(2, 2),
                               num_frames=6, cards=ALL_CARDS)
  errors, occluded_background = [], 0
  for seed in range(3):
    example = render.render_scene(synthetic.sample_scene(seed, config), config)
    xy, occluded, query_frame = photo_tests._tracks(example, seed, 256)  # pylint: disable=protected-access
    video, segments = example['video'], example['segmentations'][..., 0]
    for n in range(xy.shape[0]):
      q = query_frame[n]
      col, row = np.clip(np.floor(xy[n, q]).astype(int), 0, 63)
      on_card = segments[q, row, col] > 0  # no static objects: every object is a card
      occluded_background += int(not on_card and occluded[n].any())
      if not on_card:
        continue
      for f in np.flatnonzero(~occluded[n]):
        if f == q or not (photo_tests._interior(segments[f], xy[n:n + 1, f])[0]  # pylint: disable=protected-access
                          and photo_tests._interior(segments[q], xy[n:n + 1, q])[0]):  # pylint: disable=protected-access
          continue
        here = photo_tests._bilinear(video[f], xy[n:n + 1, f])[0]  # pylint: disable=protected-access
        there = photo_tests._bilinear(video[q], xy[n:n + 1, q])[0]  # pylint: disable=protected-access
        errors.append(np.abs(here - there).mean())
  assert len(errors) > 100
  assert np.median(errors) < 3.0, np.median(errors)
  assert occluded_background > 10  # the cards hide and reveal the background behind them


def test_a_scene_with_cards_renders_with_the_realistic_camera():
  config = synthetic.SceneConfig(height=32, width=32, num_frames=4, num_static_objects=(1, 2),
                                 num_dynamic_objects=(2, 2), cards=ALL_CARDS, camera=camera_effects.REALISTIC)
  example = synthetic.generate_scene(7, config)
  assert example['video'].shape == (4, 32, 32, 3) and np.isfinite(example['depth']).all()


@pytest.mark.parametrize('field, value', [
    ('probability', 1.5), ('probability', True), ('view_fraction', (0.5, 0.2)), ('depth', (0.0, 0.5)),
    ('depth', (0.5, 1.5)), ('image_speed', (0.1,)), ('max_tilt', 90.0), ('max_spin', -0.1),
    ('extent', (0.0, 1.0)),
])
def test_bad_card_knobs_name_themselves(field, value):
  with pytest.raises(ValueError, match=f'cards.{field}'):
    cards.Cards(**{field: value})


def test_scene_config_rejects_a_cards_that_is_not_cards():
  with pytest.raises(ValueError, match='cards'):
    synthetic.SceneConfig(cards=0.5)


def test_the_training_config_reaches_the_cards():
  from configs import tapir as tapir_config  # pylint: disable=g-import-not-at-top
  from tapir.data import streams  # pylint: disable=g-import-not-at-top
  config = tapir_config.get_config('cpu')
  assert streams.scene_config(config).cards == cards.Cards()  # off by default: the scenes are as before
  with config.unlocked():
    config.data.synthetic_cards = 0.5
  assert streams.scene_config(config).cards.probability == 0.5
  with config.unlocked():
    config.data.synthetic_cards = 2.0
  with pytest.raises(ValueError, match='cards.probability'):
    streams.scene_config(config)
