"""Coordinate conventions: raster coordinates, pure-multiplication rescaling, interpolation at pixel centres."""

import jax.numpy as jnp
import jax.scipy.ndimage
import numpy as np
import pytest

from tapir import conventions


def test_convert_grid_coordinates_is_pure_scaling():
  xy = jnp.array([[0.0, 0.0], [10.0, 5.0], [256.0, 128.0]])
  out = conventions.convert_grid_coordinates(xy, (256, 128), (64, 64))
  np.testing.assert_allclose(out, [[0, 0], [2.5, 2.5], [64, 64]])
  tyx = np.array([[3.0, 8.0, 4.0]], np.float32)
  np.testing.assert_allclose(conventions.convert_grid_coordinates(tyx, (5, 16, 8), (5, 32, 32)), [[3, 16, 16]])


def test_convert_grid_coordinates_rejects_mismatched_sizes():
  with pytest.raises(ValueError, match='components'):
    conventions.convert_grid_coordinates(jnp.zeros((2, 2)), (1, 2, 3), (1, 2, 3))


@pytest.mark.parametrize('mode', ['nearest', 'constant'])
def test_interp_at_pixel_centres_returns_pixel_values(mode, rng):
  grid = jnp.asarray(rng.normal(size=(6, 7, 3)), jnp.float32)
  rows, cols = np.meshgrid(np.arange(6), np.arange(7), indexing='ij')
  centres = jnp.asarray(np.stack([rows + 0.5, cols + 0.5], -1), jnp.float32)
  np.testing.assert_allclose(conventions.interp(grid, centres, mode), grid, atol=1e-6)


def test_interp_frames_are_points_not_cells(rng):
  grid = jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.float32)
  value = conventions.interp(grid, jnp.array([[1.0, 2.5, 1.5]]))  # frame 1, pixel (2, 1)
  np.testing.assert_allclose(value[0], grid[1, 2, 1], atol=1e-6)
  halfway = conventions.interp(grid, jnp.array([[0.5, 2.5, 1.5]]))
  np.testing.assert_allclose(halfway[0], (grid[0, 2, 1] + grid[1, 2, 1]) / 2, atol=1e-6)


def test_interp_boundary_modes(rng):
  grid = jnp.asarray(rng.normal(size=(4, 4, 1)), jnp.float32)
  outside = jnp.array([[-3.0, 1.5], [1.5, 9.0]])
  np.testing.assert_allclose(conventions.interp(grid, outside, 'constant'), 0.0)
  np.testing.assert_allclose(conventions.interp(grid, outside, 'nearest')[:, 0], [grid[0, 1, 0], grid[1, 3, 0]],
                             atol=1e-6)


@pytest.mark.parametrize('mode', ['nearest', 'constant'])
def test_interp_matches_map_coordinates(mode, rng):
  grid = jnp.asarray(rng.normal(size=(5, 6, 2)), jnp.float32)
  coords = jnp.asarray(rng.uniform(-2, 8, size=(50, 2)), jnp.float32)
  ours = conventions.interp(grid, coords, mode)
  for c in range(2):
    ref = jax.scipy.ndimage.map_coordinates(grid[..., c], list((coords - 0.5).T), order=1, mode=mode)
    np.testing.assert_allclose(ours[:, c], ref, atol=1e-5)


def test_visibility_rule():
  occ = np.array([-10.0, 10.0, -10.0, 0.0])
  expd = np.array([-10.0, -10.0, 10.0, 0.0])
  np.testing.assert_array_equal(conventions.visibility_from_logits(occ, expd), [True, False, False, False])


def test_frames_to_model_input_range():
  frames = np.array([0, 255], np.uint8)
  np.testing.assert_allclose(conventions.frames_to_model_input(frames), [-1.0, 1.0])
  with pytest.raises(ValueError, match='uint8'):
    conventions.frames_to_model_input(frames.astype(np.float32))
