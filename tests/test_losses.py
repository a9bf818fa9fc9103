"""Training losses on inputs whose values can be checked by hand."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tapir import losses

SHAPE_256 = (1, 2, 256, 256, 3)


def _loss(points, target, occluded, expected_dist=None, shape=SHAPE_256, occ_logits=None, **kw):
  """`tapnet_loss` with the Huber term unweighted (position_loss_weight=1) unless `kw` says otherwise."""
  kw.setdefault('position_loss_weight', 1.0)
  points, target = jnp.asarray(points, jnp.float32), jnp.asarray(target, jnp.float32)
  occluded = jnp.asarray(occluded)
  occ_logits = jnp.zeros(occluded.shape) if occ_logits is None else jnp.asarray(occ_logits, jnp.float32)
  return losses.tapnet_loss(points, occ_logits, target, occluded, shape, expected_dist=expected_dist, **kw)


def test_zero_error_gives_zero_huber_and_finite_gradient():
  target = np.full((1, 1, 2, 2), 10.0)
  huber, _, _ = _loss(target, target, np.zeros((1, 1, 2), bool))
  assert float(huber) == 0.0
  grad = jax.grad(lambda p: _loss(p, target, np.zeros((1, 1, 2), bool))[0])(jnp.asarray(target, jnp.float32))
  assert np.isfinite(np.asarray(grad)).all()


def test_huber_branches_and_occluded_frames():
  target = np.zeros((1, 1, 2, 2))
  points = np.array([[[[3.0, 0.0], [6.0, 8.0]]]])  # errors 3 px (quadratic) and 10 px (linear)
  huber, _, _ = _loss(points, target, np.zeros((1, 1, 2), bool))
  np.testing.assert_allclose(huber, (3**2 / 2 + 4 * (10 - 2)) / 2, rtol=1e-6)
  huber, _, _ = _loss(points, target, np.array([[[False, True]]]))
  np.testing.assert_allclose(huber, (3**2 / 2) / 2, rtol=1e-6)  # occluded frame contributes 0 but counts


def test_positions_are_compared_at_256x256():
  target = np.zeros((1, 1, 1, 2))
  points = np.array([[[[1.0, 0.0]]]])  # 1 px in a 128-wide video = 2 px at 256
  huber, _, _ = _loss(points, target, np.zeros((1, 1, 1), bool), shape=(1, 1, 128, 128, 3))
  np.testing.assert_allclose(huber, 2.0**2 / 2, rtol=1e-6)


def test_occlusion_cross_entropy():
  _, occ, _ = _loss(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), np.array([[[True, False]]]),
                    occ_logits=np.array([[[0.0, 2.0]]]))
  np.testing.assert_allclose(occ, (np.log(2) + np.log1p(np.exp(2.0))) / 2, rtol=1e-6)


@pytest.mark.parametrize('error, far', [(5.9, 0.0), (6.1, 1.0)])
def test_uncertainty_target_crosses_at_6px(error, far):
  target = np.zeros((1, 1, 1, 2))
  points = np.array([[[[error, 0.0]]]])
  logit = 1.5
  _, _, unc = _loss(points, target, np.zeros((1, 1, 1), bool), expected_dist=jnp.full((1, 1, 1), logit),
                    expected_dist_threshold=6.0)
  expected = -far * np.log(1 / (1 + np.exp(-logit))) - (1 - far) * np.log(1 / (1 + np.exp(logit)))
  np.testing.assert_allclose(unc, expected, rtol=1e-5)


def test_uncertainty_does_not_train_positions():
  target = np.zeros((1, 1, 1, 2))
  grad = jax.grad(lambda p: _loss(p, target, np.zeros((1, 1, 1), bool), expected_dist=jnp.ones((1, 1, 1)))[2])(
      jnp.full((1, 1, 1, 2), 7.0))
  np.testing.assert_array_equal(grad, 0.0)


def test_tapnet_loss_keeps_the_reference_order_with_the_library_names():
  names = list(inspect.signature(losses.tapnet_loss).parameters)
  assert names == ['points', 'occlusion', 'target_points', 'target_occ', 'shape', 'mask', 'expected_dist',
                   'position_loss_weight', 'expected_dist_threshold', 'huber_delta', 'rebalance_factor',
                   'occlusion_loss_mask', 'renamed']
  defaults = {k: p.default for k, p in inspect.signature(losses.tapnet_loss).parameters.items()}
  assert (defaults['position_loss_weight'], defaults['expected_dist_threshold'], defaults['huber_delta']) == (
      0.05, 6.0, 4.0)
  # The reference's keyword names still work, with a warning naming the new ones.
  rng = np.random.default_rng(0)
  args = (rng.normal(0, 20, (1, 2, 3, 2)), rng.normal(size=(1, 2, 3)), rng.normal(0, 20, (1, 2, 3, 2)),
          rng.uniform(size=(1, 2, 3)) < 0.3, (1, 3, 64, 64, 3))
  kwargs = dict(expected_dist=rng.normal(size=(1, 2, 3)))
  new = losses.tapnet_loss(*args, **kwargs, huber_delta=2.0, expected_dist_threshold=3.0)
  with pytest.warns(DeprecationWarning, match='huber_loss_delta is now called huber_delta'):
    old = losses.tapnet_loss(*args, **kwargs, huber_loss_delta=2.0, expected_dist_thresh=3.0)
  np.testing.assert_array_equal(new, old)
  with pytest.raises(TypeError, match='huber_detla'):
    losses.tapnet_loss(*args, huber_detla=2.0)


def test_tapnet_loss_defaults_by_hand():
  """Reference defaults: Huber weighted 0.05 (delta 4), uncertainty threshold 6 px."""
  points = jnp.asarray([[[[3.0, 0.0], [7.0, 0.0]]]])  # errors 3 px (quadratic) and 7 px (linear; > 6, < 8)
  target = jnp.zeros((1, 1, 2, 2))
  occluded = jnp.zeros((1, 1, 2), bool)
  occ_logits = jnp.asarray([[[0.0, 1.0]]])
  expd_logits = jnp.full((1, 1, 2), 2.0)
  huber, occ, unc = losses.tapnet_loss(points, occ_logits, target, occluded, SHAPE_256, None, expd_logits)
  np.testing.assert_allclose(huber, 0.05 * (3**2 / 2 + 4 * (7 - 2)) / 2, rtol=1e-6)  # 0.6125
  np.testing.assert_allclose(occ, (np.log(2) + np.log1p(np.e)) / 2, rtol=1e-6)
  # 3 px: target 0, BCE = log(1 + e^2); 7 px: target 1 (the old 8 px default gave 0), BCE = log(1 + e^-2).
  np.testing.assert_allclose(unc, (np.log1p(np.exp(2.0)) + np.log1p(np.exp(-2.0))) / 2, rtol=1e-6)
  _, _, no_unc = losses.tapnet_loss(points, occ_logits, target, occluded, SHAPE_256)
  assert float(no_unc) == 0.0


def test_tapnet_loss_mask_and_rebalance_by_hand():
  points = jnp.asarray([[[[2.0, 0.0], [2.0, 0.0]]]])  # 2 px: Huber 2 on each frame
  target = jnp.zeros((1, 1, 2, 2))
  occluded = jnp.asarray([[[False, True]]])
  logits = jnp.zeros((1, 1, 2))  # BCE log 2 per frame
  mask = jnp.asarray([[[1.0, 0.5]]])
  huber, occ, _ = losses.tapnet_loss(points, logits, target, occluded, SHAPE_256, mask=mask, rebalance_factor=2.0,
                                     occlusion_loss_mask=jnp.asarray([[[1.0, 4.0]]]))
  np.testing.assert_allclose(huber, 0.05 * 2.0 / 2, rtol=1e-6)  # occluded frame 0, still in the mean
  # visible frame: log2 * 1 * (1 + 2) * 1; occluded frame: log2 * 0.5 * 1 * 4.
  np.testing.assert_allclose(occ, np.log(2) * (3 + 2) / 2, rtol=1e-6)


def test_tapir_loss_sums_every_estimate_with_equal_weight():
  target = np.zeros((1, 1, 1, 2), np.float32)
  occluded = np.zeros((1, 1, 1), bool)
  estimate = lambda e: jnp.asarray([[[[e, 0.0]]]], jnp.float32)
  zeros = jnp.zeros((1, 1, 1))
  outputs = dict(tracks=estimate(1.0), occlusion=zeros, expected_dist=zeros,
                 unrefined_tracks=[estimate(2.0), estimate(3.0)], unrefined_occlusion=[zeros, zeros],
                 unrefined_expected_dist=[zeros, zeros])
  terms = losses.tapir_loss(outputs, target, occluded, SHAPE_256)
  np.testing.assert_allclose(terms.position, [0.5, 2.0, 4.5])
  np.testing.assert_allclose(terms.total, 0.05 * 7.0 + 3 * np.log(2) + 3 * np.log(2), rtol=1e-6)
