"""Tests of the camera and sensor effects on rendered clips (`tapir.data.synthetic.camera_effects`).

Each effect is checked against what it models: a point light under uniform motion smears into a centred streak of
the exposed length with its energy kept, an in-focus edge stays sharp and an out-of-focus one does not, JPEG at
quality 100 is near-lossless and at low quality shows its 8x8 blocks, shot noise grows as the square root of the
signal, and the exposure ramp is smooth and bounded.
"""

import dataclasses
import math

import numpy as np
import pytest

from tapir.data.synthetic import camera_effects as ce

T, H, W = 4, 40, 56


def _clip(seed=0, t=T, h=H, w=W):
  """A smooth colourful clip in [0.1, 0.9] with a far-to-near depth ramp and a smooth moving flow field."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w].astype(np.float32) / max(h, w)
  phase = rng.uniform(0, 2 * np.pi, (t, 1, 1, 3)).astype(np.float32)
  video = 0.5 + 0.4 * np.sin(9 * xx[..., None] + 5 * yy[..., None] + phase)
  depth = np.broadcast_to(5 + 30 * (1 - yy), (t, h, w)).astype(np.float32)
  flow = np.broadcast_to(np.stack([4 * np.cos(3 * yy), 2 * np.sin(4 * xx)], -1), (t, h, w, 2))
  return video.astype(np.float32), depth, flow.astype(np.float32)


def _apply(video, depth, flow, seed=0, **draw):
  return ce.apply_effects(video, depth, flow, ce.EffectDraw(**draw), np.random.default_rng(seed))


# ----------------------------------------------------------------------------------------------------------------
# Identity, wiring and determinism.


def test_defaults_are_an_exact_identity():
  video, depth, flow = _clip()
  draw = ce.sample_effects(np.random.default_rng(3), ce.CameraEffects())
  assert draw == ce.EffectDraw()
  out = ce.apply_effects(video, depth, flow, draw, np.random.default_rng(0))
  assert out.dtype == np.float32 and np.array_equal(out, video)
  assert ce.apply_effects(video, None, None, ce.EffectDraw(), np.random.default_rng(0)) is video


EACH_EFFECT = {
    'exposure': dict(exposure_stops=1.0),
    'motion blur': dict(shutter=(0.5, 1.0)),
    'defocus': dict(defocus_probability=1.0, aperture_px=(2.0, 3.0)),
    'shot noise': dict(shot_noise=(0.02, 0.03)),
    'read noise': dict(read_noise=(0.01, 0.02)),
    'jpeg': dict(jpeg_probability=1.0, jpeg_quality=(30, 60)),
}


@pytest.mark.parametrize('knobs', EACH_EFFECT.values(), ids=EACH_EFFECT.keys())
def test_each_effect_alone_changes_pixels(knobs):
  video, depth, flow = _clip()
  draw = ce.sample_effects(np.random.default_rng(5), ce.CameraEffects(**knobs))
  others = {k: v for k, v in draw._asdict().items() if v != getattr(ce.EffectDraw(), k)}
  assert others, draw
  out = ce.apply_effects(video, depth, flow, draw, np.random.default_rng(0))
  assert out.shape == video.shape and out.dtype == np.float32
  assert 0 <= out.min() and out.max() <= 1
  assert np.abs(out - video).mean() > 1e-3


ALL_ON = ce.CameraEffects(shutter=(0.3, 0.6), defocus_probability=1.0, aperture_px=(1.0, 2.0),
                          shot_noise=(0.01, 0.02), read_noise=(0.002, 0.004), jpeg_probability=1.0,
                          jpeg_quality=(60, 90), exposure_stops=0.5)


def test_pure_function_of_inputs_and_seed():
  video, depth, flow = _clip()

  def run(seed):
    rng = np.random.default_rng(seed)
    return ce.apply_effects(video, depth, flow, ce.sample_effects(rng, ALL_ON), rng)

  first = run(11)
  np.testing.assert_array_equal(first, run(11))
  assert not np.array_equal(first, run(12))
  np.testing.assert_array_equal(video, _clip()[0])  # inputs untouched


def test_the_draw_couples_knobs_across_settings():
  """Same seed, different knobs: the values of the unchanged effects are the same (common random numbers)."""
  a = ce.sample_effects(np.random.default_rng(8), ALL_ON)
  b = ce.sample_effects(np.random.default_rng(8), dataclasses.replace(ALL_ON, jpeg_probability=0.0))
  assert b.jpeg_quality == 0 and a.jpeg_quality > 0
  assert a._replace(jpeg_quality=0) == b


def test_realistic_draws_stay_in_their_ranges():
  rng = np.random.default_rng(0)
  draws = [ce.sample_effects(rng, ce.REALISTIC) for _ in range(400)]
  r = ce.REALISTIC
  assert all(r.shutter[0] <= d.shutter <= r.shutter[1] for d in draws)
  assert all(d.aperture_px == 0 or r.aperture_px[0] <= d.aperture_px <= r.aperture_px[1] for d in draws)
  assert all(d.jpeg_quality == 0 or r.jpeg_quality[0] <= d.jpeg_quality <= r.jpeg_quality[1] for d in draws)
  assert 0.2 < np.mean([d.aperture_px > 0 for d in draws]) < 0.4  # defocus_probability 0.3
  assert 0.8 < np.mean([d.jpeg_quality > 0 for d in draws]) <= 1  # jpeg_probability 0.9
  qualities = {ce.sample_effects(rng, ce.CameraEffects(jpeg_probability=1.0, jpeg_quality=(50, 52))).jpeg_quality
               for _ in range(100)}
  assert qualities == {50, 51, 52}


# ----------------------------------------------------------------------------------------------------------------
# Motion blur.


@pytest.mark.parametrize('motion, shutter', [((8.0, 0.0), 1.0), ((8.0, 0.0), 0.5), ((-6.0, 0.0), 1.0),
                                             ((0.0, 6.0), 1.0)])
def test_motion_blur_smears_a_point_into_a_centred_streak(motion, shutter):
  h, w, row, col = 33, 64, 16, 32
  video = np.zeros((2, h, w, 3), np.float32)
  video[:, row, col] = 1
  flow = np.broadcast_to(np.float32(motion), (2, h, w, 2))
  out = _apply(video, None, flow, shutter=shutter, blur_samples=64)[0, ..., 0]
  length = shutter * math.hypot(*motion)
  vertical = motion[0] == 0
  profile = out[:, col] if vertical else out[row]
  assert np.isclose(out.sum(), 1, atol=1e-5)  # energy kept
  assert np.isclose(profile.sum(), 1, atol=1e-5)  # all of it along the motion
  centre = row if vertical else col
  offsets = np.arange(len(profile)) - centre
  assert abs(np.sum(offsets * profile)) < 1e-4  # centred on the frame time
  assert abs(np.sum(offsets ** 2 * profile) - length ** 2 / 12) < 0.3  # a box of the exposed length
  inside = np.abs(offsets) < length / 2 - 1
  assert np.all(profile[np.abs(offsets) > length / 2 + 1] == 0)
  np.testing.assert_allclose(profile[inside], 1 / length, rtol=0.05)


def test_motion_blur_matches_a_direct_bilinear_average():
  """Against the definition written out plainly: edge-clamped bilinear reads along a non-uniform flow."""
  rng = np.random.default_rng(4)
  t, h, w, shutter, n = 2, 20, 30, 0.7, 6
  video = rng.random((t, h, w, 3), dtype=np.float32)
  flow = rng.normal(0, 3, (t, h, w, 2)).astype(np.float32)
  n_used = min(n, max(2, math.ceil(shutter * np.hypot(flow[..., 0], flow[..., 1]).max())))
  expected = np.zeros_like(video)
  frame = np.arange(t)[:, None, None]
  for s in (np.arange(n_used) + 0.5) / n_used - 0.5:
    x = np.clip(np.arange(w) + s * shutter * flow[..., 0], 0, w - 1)
    y = np.clip(np.arange(h)[:, None] + s * shutter * flow[..., 1], 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = (x - x0)[..., None], (y - y0)[..., None]
    top = video[frame, y0, x0] * (1 - ax) + video[frame, y0, x1] * ax
    bottom = video[frame, y1, x0] * (1 - ax) + video[frame, y1, x1] * ax
    expected += (top * (1 - ay) + bottom * ay) / n_used
  np.testing.assert_allclose(_apply(video, None, flow, shutter=shutter, blur_samples=n), expected, atol=2e-6)


def test_motion_blur_without_motion_is_an_identity():
  video, _, _ = _clip()
  out = _apply(video, None, np.zeros(video.shape[:3] + (2,), np.float32), shutter=1.0)
  np.testing.assert_array_equal(out, video)


# ----------------------------------------------------------------------------------------------------------------
# Defocus.


def _edge_scene(edge_depth):
  """A horizontal dark-to-bright edge at row 48 of a 64x64 clip; the focus pixel (the centre) at depth 5, the
  edge's rows (>= 40) at `edge_depth`."""
  video = np.full((3, 64, 64, 3), 0.2, np.float32)
  video[:, 48:] = 1.0
  depth = np.full((3, 64, 64), 5.0, np.float32)
  depth[:, 40:] = edge_depth
  depth[:, :, :8] = 40.0  # something out of focus everywhere, so that blurred copies are made in both cases
  return video, depth


def test_defocus_keeps_the_focused_edge_sharp():
  video, depth = _edge_scene(edge_depth=5.0)
  out = _apply(video, depth, None, aperture_px=4.0, focus_uv=(0.5, 0.5))
  np.testing.assert_array_equal(out[:, :, 16:], video[:, :, 16:])  # CoC 0 (columns >= 16 all at depth 5)
  assert not np.array_equal(out[:, :, :8], video[:, :, :8])


def test_defocus_blurs_an_edge_far_from_focus():
  video, depth = _edge_scene(edge_depth=40.0)  # CoC = 4 * (1 - 5 / 40) = 3.5 px
  out = _apply(video, depth, None, aperture_px=4.0, focus_uv=(0.5, 0.5))
  profile = out[1, 40:58, 32, 0]  # rows 40 .. 57 across the edge
  assert np.all(np.diff(profile) >= -1e-6)  # still a monotone edge
  assert profile[6] > 0.25 and profile[7] > 0.3  # rows 46, 47 pick up the bright side
  assert profile[8] < 0.95 and profile[9] < 0.99  # rows 48, 49 the dark side
  np.testing.assert_allclose(out[1, :32, 32], video[1, :32, 32])  # the focus region (CoC 0) is untouched


# ----------------------------------------------------------------------------------------------------------------
# JPEG-like compression.


def _photo(h, w, seed=0):
  """Smooth colour gradients plus mild grey texture: like a photograph, chroma smoother than luma."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w].astype(np.float32) / 32
  base = 0.5 + 0.3 * np.sin(xx[..., None] * np.float32([1.0, 1.3, 0.7]) + yy[..., None] * np.float32([0.6, 1, 1.5]))
  return np.clip(base + rng.normal(0, 0.03, (2, h, w, 1)), 0, 1).astype(np.float32)


def test_jpeg_tables_follow_libjpeg():
  luma, chroma = ce.jpeg_tables(50)
  assert luma[0, 0] == 16 and luma[7, 7] == 99 and chroma[0, 0] == 17 and chroma[7, 7] == 99
  assert np.all(ce.jpeg_tables(100)[0] == 1)
  assert ce.jpeg_tables(75)[0][0, 0] == 8 and ce.jpeg_tables(1)[0].max() == 255
  with pytest.raises(ValueError, match='quality'):
    ce.jpeg_tables(0)


@pytest.mark.parametrize('h, w', [(48, 64), (30, 45)])
def test_jpeg_at_quality_100_is_near_lossless(h, w):
  video = _photo(h, w)
  out = _apply(video, None, None, jpeg_quality=100, jpeg_chroma_subsampling=False)
  assert out.shape == video.shape
  error = np.abs(out - video)
  assert error.max() < 3 / 255 and error.mean() < 0.5 / 255  # rounding the coefficients to integers only
  subsampled = _apply(video, None, None, jpeg_quality=100)  # 4:2:0 costs chroma detail only
  assert np.abs(subsampled - video).mean() < 1 / 255


def test_low_jpeg_quality_shows_blocks():
  yy, xx = np.mgrid[:64, :64].astype(np.float32)
  ramp = (0.15 + 0.7 * (xx + 0.5 * yy) / 96)[None, ..., None] * np.float32([1.0, 0.9, 0.8])
  video = np.repeat(ramp, 2, axis=0).astype(np.float32)  # a smooth ramp: no edges of its own
  errors = {}
  for quality in (5, 90):
    out = _apply(video, None, None, jpeg_quality=quality)
    assert 0 <= out.min() and out.max() <= 1
    errors[quality] = np.abs(out - video).mean()
    if quality == 5:
      steps = np.abs(np.diff(out[..., 0], axis=2))  # [t, h, w - 1] across columns c | c + 1
      across = steps[..., 7::8].mean()  # block boundaries
      within = np.delete(steps, np.s_[7::8], axis=2).mean()
      assert across > 3 * within
  assert errors[5] > 3 * errors[90]


# ----------------------------------------------------------------------------------------------------------------
# Noise and exposure.


@pytest.mark.parametrize('shot, read', [(0.05, 0.0), (0.0, 0.03), (0.04, 0.02)])
def test_noise_keeps_the_mean_and_grows_with_the_signal(shot, read):
  stds = []
  for level in (0.2, 0.8):
    video = np.full((4, 64, 64, 3), level, np.float32)
    out = _apply(video, None, None, seed=1, shot_noise=shot, read_noise=read)
    expected = math.sqrt(shot ** 2 * level + read ** 2)
    assert abs(out.mean() - level) < 4 * expected / math.sqrt(out.size)
    np.testing.assert_allclose(out.std(), expected, rtol=0.03)
    stds.append(out.std())
  if read == 0:
    np.testing.assert_allclose(stds[1] / stds[0], 2, rtol=0.05)  # sqrt(0.8 / 0.2)
  if shot == 0:
    np.testing.assert_allclose(stds[1], stds[0], rtol=0.05)


def test_exposure_gains_are_a_smooth_bounded_ramp():
  start, end, t = -0.3, 0.2, 24
  gains = ce.exposure_gains(start, end, t)
  stops = np.log2(gains.astype(np.float64))
  np.testing.assert_allclose([stops[0], stops[-1]], [start, end], atol=1e-6)
  assert np.all(np.diff(stops) >= 0) and start - 1e-6 <= stops.min() and stops.max() <= end + 1e-6
  bend = abs(end - start) * np.pi ** 2 / 2 / (t - 1) ** 2  # |e''| bound of the half-cosine
  assert np.abs(np.diff(stops, 2)).max() <= bend * 1.01
  assert ce.exposure_gains(0.4, 0.1, 1).tolist() == [np.float32(2 ** 0.4)]


def test_exposure_draws_stay_within_the_stops():
  rng = np.random.default_rng(0)
  effects = ce.CameraEffects(exposure_stops=0.5)
  draws = [ce.sample_effects(rng, effects) for _ in range(300)]
  ends = np.array([(d.exposure_start, d.exposure_end) for d in draws])
  assert np.abs(ends).max() <= 0.25 and np.abs(ends[:, 1] - ends[:, 0]).max() <= 0.5
  assert np.abs(ends).max() > 0.2  # the range is used
  video, _, _ = _clip()
  draw = draws[0]
  out = ce.apply_effects(video, None, None, draw, rng)
  gains = ce.exposure_gains(draw.exposure_start, draw.exposure_end, len(video))
  np.testing.assert_allclose(out, np.clip(video * gains[:, None, None, None], 0, 1), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Validation.

BAD_KNOBS = [
    ('shutter', (0.5, 0.2)), ('shutter', (-0.1, 0.2)), ('shutter', (0.0, 1.5)), ('shutter', [0.0, 0.5]),
    ('shutter', (0.0, math.nan)), ('blur_samples', 0), ('blur_samples', 2.5), ('blur_samples', True),
    ('defocus_probability', -0.1), ('defocus_probability', 1.5), ('aperture_px', (-1.0, 2.0)),
    ('aperture_px', (2.0, 1.0)), ('aperture_px', (0.0, math.inf)), ('shot_noise', (-0.01, 0.02)),
    ('shot_noise', (0.03, 0.01)), ('read_noise', (-1.0, 0.0)), ('jpeg_probability', 2.0),
    ('jpeg_probability', None), ('jpeg_quality', (0, 50)), ('jpeg_quality', (50, 101)), ('jpeg_quality', (90, 50)),
    ('jpeg_quality', (50.5, 90)), ('jpeg_chroma_subsampling', 'yes'), ('exposure_stops', -0.5),
    ('exposure_stops', math.inf),
]


@pytest.mark.parametrize('knob, value', BAD_KNOBS)
def test_bad_knobs_raise_naming_the_knob(knob, value):
  with pytest.raises(ValueError, match=f'^{knob}='):
    ce.CameraEffects(**{knob: value})


def test_realistic_is_valid_and_not_the_identity():
  assert ce.REALISTIC != ce.CameraEffects()
  assert dataclasses.replace(ce.REALISTIC) == ce.REALISTIC


def test_bad_inputs_raise_naming_the_argument():
  video, depth, flow = _clip()
  with pytest.raises(ValueError, match='video'):
    _apply(video[..., :2], depth, flow, shutter=0.5)
  with pytest.raises(ValueError, match='flow'):
    _apply(video, depth, None, shutter=0.5)
  with pytest.raises(ValueError, match='flow'):
    _apply(video, depth, flow[:, :, :-1], shutter=0.5)
  with pytest.raises(ValueError, match='depth'):
    _apply(video, depth[1:], flow, aperture_px=1.0)
  with pytest.raises(ValueError, match='jpeg_quality'):
    _apply(video, depth, flow, jpeg_quality=101)
