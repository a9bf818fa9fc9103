"""Real photographs for the built-in data: scikit-image's bundled images, loaded once, read-only, mip-mapped.

Two disjoint sets, so that what a model is scored on was never a training texture:
  TRAIN_PHOTOGRAPHS  textures of the built-in 3-D scenes (`tapir.data.synthetic`).
  EVAL_PHOTOGRAPHS   the "real pixels, known motion" evaluation clips (`tapir.data.realpix`) and, with other seeds,
                     their unlabelled training clips.
`EXCLUDED` (the stereo pair and the face set) serve other tests and are never used here.

Images come out as float32 RGB in [0, 1] ([h, w, 3], greyscale replicated), shared between callers and
read-only (`writeable=False`). `pyramid(name)` is the image's mip-map, channels-first levels [3, h_l, w_l], each
a 2x2 box filter of the one above; `sample(levels, u, v, footprint)` reads it trilinearly at texel coordinates
(u, v) = (column, row) of level 0 + 0.5 at pixel centres, with a mirrored repeat outside the image, choosing the
level from the screen pixel's `footprint` in level-0 texels: a far-away photograph is averaged, not aliased.

scikit-image is imported on first use, never by `import tapir`.
"""

import functools
from typing import Sequence

import numpy as np

TRAIN_PHOTOGRAPHS = ('astronaut', 'brick', 'grass', 'gravel', 'retina', 'immunohistochemistry', 'coins',
                     'moon', 'clock', 'cell', 'text', 'page')
EVAL_PHOTOGRAPHS = ('coffee', 'chelsea', 'rocket', 'camera')
EXCLUDED = ('stereo_motorcycle', 'lfw_subset')


def check_names(names: Sequence[str], argument: str) -> tuple[str, ...]:
  """`names` as a tuple, or a ValueError naming `argument` if one is not a usable photograph."""
  if isinstance(names, str) or not len(names):
    raise ValueError(f'{argument} must be a non-empty sequence of photograph names, got {names!r}')
  known = TRAIN_PHOTOGRAPHS + EVAL_PHOTOGRAPHS
  for name in names:
    if name in EXCLUDED:
      raise ValueError(f'{argument}: {name!r} is reserved for other tests and never used as data')
    if name not in known:
      raise ValueError(f'{argument}: unknown photograph {name!r}; choose from {known}')
  return tuple(names)


@functools.lru_cache(maxsize=None)
def load(name: str) -> np.ndarray:  # [h, w, 3] float32 in [0, 1], read-only
  """The photograph `name` of `skimage.data` (see TRAIN_PHOTOGRAPHS, EVAL_PHOTOGRAPHS), once per process."""
  check_names((name,), 'name')
  import skimage.data  # pylint: disable=g-import-not-at-top
  image = np.asarray(getattr(skimage.data, name)())
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  image = image[..., :3].astype(np.float32) / np.float32(np.iinfo(image.dtype).max if image.dtype != bool else 1)
  image.flags.writeable = False
  return image


def _halve(level: np.ndarray) -> np.ndarray:  # [3, h, w] -> [3, ceil(h / 2), ceil(w / 2)]
  """A 2x2 box filter (an odd last row or column is repeated)."""
  if level.shape[1] % 2:
    level = np.concatenate([level, level[:, -1:]], axis=1)
  if level.shape[2] % 2:
    level = np.concatenate([level, level[:, :, -1:]], axis=2)
  return 0.25 * (level[:, ::2, ::2] + level[:, 1::2, ::2] + level[:, ::2, 1::2] + level[:, 1::2, 1::2])


@functools.lru_cache(maxsize=None)
def pyramid(name: str) -> tuple[np.ndarray, ...]:
  """Mip-map levels of `load(name)`, channels-first [3, h_l, w_l] float32, level l at 2^-l size, down to 1 px."""
  level = np.ascontiguousarray(np.moveaxis(load(name), -1, 0))
  levels = [level]
  while max(level.shape[1:]) > 1:
    level = _halve(level)
    levels.append(level)
  for level in levels:
    level.flags.writeable = False
  return tuple(levels)


def _mirror(x: np.ndarray, size: int) -> np.ndarray:
  """Integer texel indices folded into [0, size) by a mirrored repeat (period 2 size)."""
  x = np.mod(x, 2 * size)
  return np.where(x >= size, 2 * size - 1 - x, x)


def _bilinear(level: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:  # -> [3, n]
  """Bilinear read of a level at its own texel coordinates (pixel centres at +0.5), mirrored repeat."""
  _, h, w = level.shape
  x, y = u - np.float32(0.5), v - np.float32(0.5)
  x0, y0 = np.floor(x), np.floor(y)
  fx, fy = (x - x0)[None], (y - y0)[None]
  x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
  xa, xb = _mirror(x0, w), _mirror(x0 + 1, w)
  ya, yb = _mirror(y0, h), _mirror(y0 + 1, h)
  flat = level.reshape(3, -1)
  top = flat[:, ya * w + xa] * (1 - fx) + flat[:, ya * w + xb] * fx
  bottom = flat[:, yb * w + xa] * (1 - fx) + flat[:, yb * w + xb] * fx
  return top * (1 - fy) + bottom * fy


def sample(levels: Sequence[np.ndarray], u: np.ndarray, v: np.ndarray, footprint: np.ndarray) -> np.ndarray:
  """Trilinear mip-mapped colours [3, n] at level-0 texel coordinates u (columns), v (rows) [n].

  `footprint` [n] is the screen pixel's size in level-0 texels; level log2(footprint) is read (clamped to the
  pyramid), blending the two nearest levels, so no texel finer than a pixel reaches the image.
  """
  u, v = np.asarray(u, np.float32), np.asarray(v, np.float32)
  lod = np.clip(np.log2(np.maximum(np.asarray(footprint, np.float32), np.float32(1e-6))), 0, len(levels) - 1)
  out = np.zeros((3,) + u.shape, np.float32)
  base = np.floor(lod).astype(np.int64)
  for index in np.unique(base):
    where = np.flatnonzero(base == index)
    frac = (lod[where] - index)[None]
    scale = np.float32(2.0 ** -index)
    colour = _bilinear(levels[index], u[where] * scale, v[where] * scale)
    if index + 1 < len(levels):
      upper = _bilinear(levels[index + 1], u[where] * scale / 2, v[where] * scale / 2)
      colour = colour + frac * (upper - colour)
    out[:, where] = colour
  return out
