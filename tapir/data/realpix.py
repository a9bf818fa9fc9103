r"""Real pixels, known motion ("realpix"): labelled clips made of real photographs moved by exactly known maps.

A clip (`generate_clip(seed, config)`, a pure function of both) stacks layers in a fixed depth order, layer 0 at
the bottom:
  background  a crop of one photograph of `photographs.EVAL_PHOTOGRAPHS` seen through a smooth random homography
              (zoom, rotation, translation, mild perspective) after a smooth low-frequency elastic warp;
  cut-outs    layers 1 .. k: smooth star-shaped blobs cut from other photographs, each moving along its own
              smooth similarity path (stretched by a fixed aspect), some entering or leaving the frame.
Every parameter follows a cubic Bezier curve in time that spans `motion_frames` frames (a shorter clip keeps the
speed), so the motion is smooth and its magnitudes stay inside the configured ranges.

Coordinates are raster pixels (`tapir.conventions`: the centre of pixel (i, j) is (x, y) = (j + .5, i + .5));
photographs are read at level-0 texel coordinates (u, v) with the same half-texel convention and mip-mapped by
the local scale of the map (`photographs.sample`, footprint = the longer derivative of the texel position along
x or y), so a photograph seen from far away is averaged, not aliased.

Exact ground truth. Rendering uses the closed-form maps from an output pixel p at frame t to the source:
  background  texel s = H_t(p + d_t(p)), d_t a sum of sinusoids, H_t a 3x3 homography;
  cut-out k   shape coordinates o = L_kt^-1 (p - T_kt), inside iff |o| < rho_k(angle of o); texel = affine(o).
Tracks run the other way. A cut-out point o sits at T_kt + L_kt o (closed form). A background texel s sits at
the p with p + d_t(p) = H_t^-1(s), found by Newton's method in float64 to a residual below `NEWTON_TOLERANCE`
pixels (each row of the elastic Jacobian has norm < 1/2: the warp is invertible, Newton needs a few steps).
A point is occluded at frame t iff it is outside the frame (not 0 <= x < w and 0 <= y < h) or inside a cut-out
above its own layer by the renderer's own inside test, at the point's continuous position. A pixel shows the top
layer whose shape holds its centre (hard edges), so a visible point shows its own layer's colour.

`generate_clip` returns TAP-Vid's raw form: `points` [n, t, 2] (x / w, y / h), `occluded` [n, t], `video` uint8;
`evaluation_examples` turns the clips into `tapvid.TapVidExample`s and `write_npz` into TAP-Vid .npz files.
The scene itself (config, layers, their maps and the seeded draw) is `tapir.data.realpix_scene`; this module
renders it (`render_scene`), tracks it (`scene_tracks`) and serves the evaluation set.

Seeds: evaluation uses `EVAL_SEEDS` (0 .. 9999) only; training or unlabelled clips take seeds from
`TRAIN_SEED_OFFSET` (10**6) upwards, so the two never overlap.
"""

import functools
import os
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from tapir.data import photographs
from tapir.data import realpix_scene as scene_lib
from tapir.data import tapvid
from tapir.data.realpix_scene import EVAL_SEEDS  # pylint: disable=unused-import  # re-exported
from tapir.data.realpix_scene import RealPixConfig
from tapir.data.realpix_scene import RealPixScene
from tapir.data.realpix_scene import sample_scene
from tapir.data.realpix_scene import TRAIN_SEED_OFFSET  # pylint: disable=unused-import  # re-exported


class RealPixClip(NamedTuple):
  """One labelled clip in TAP-Vid's stored form."""
  video: np.ndarray  # [t, h, w, 3] uint8
  points: np.ndarray  # [n, t, 2] float32 (x / w, y / h) of raster positions
  occluded: np.ndarray  # [n, t] bool, True = occluded (outside the frame or under a higher layer)
  track_layers: np.ndarray  # [n] int32 each track's layer (0 background, k the k-th cut-out from the bottom)
  layers: np.ndarray  # [t, h, w] uint8 the top layer at each pixel centre


# ---------------------------------------------------------------------------------------------------------------
# Rendering and tracks.


def render_scene(scene: RealPixScene, config: RealPixConfig,
                 sources: Sequence[Sequence[np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The frames [t, h, w, 3] float32 and each pixel's top layer [t, h, w] uint8.

  `sources` are mip-maps (`photographs.pyramid` layout, [3, h_l, w_l] per level) per layer, bottom to top,
  each shaped like its layer's photograph: the default reads the photographs, a test may pass other images.
  """
  h, w = config.height, config.width
  sources = sources or tuple(photographs.pyramid(name) for name in scene.photos)
  if len(sources) != 1 + len(scene.cutouts):
    raise ValueError(f'sources must hold one mip-map per layer ({1 + len(scene.cutouts)}), got {len(sources)}')
  rows, cols = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing='ij')
  grid = np.stack([cols.ravel(), rows.ravel()], -1)  # [h w, 2] pixel centres (x, y)
  frames, layers = [], []
  for t in range(config.num_frames):
    s, jac = scene_lib.background_texels(scene.background, t, grid)
    colour = photographs.sample(sources[0], s[:, 0], s[:, 1], scene_lib.footprint(jac))  # [3, h w]
    top = np.zeros(h * w, np.uint8)
    for k, cut in enumerate(scene.cutouts, 1):
      o = scene_lib.shape_coordinates(cut, t, grid)
      inside = scene_lib.inside_shape(cut, o)
      texels = o[inside] @ cut.texture[:, :2].T + cut.texture[:, 2]
      footprint = scene_lib.footprint(cut.texture[:, :2] @ np.linalg.inv(cut.placements[t, :, :2]))
      colour[:, inside] = photographs.sample(sources[k], texels[:, 0], texels[:, 1],
                                             np.full(len(texels), footprint))
      top[inside] = k
    frames.append(colour.T.reshape(h, w, 3))
    layers.append(top.reshape(h, w))
  return np.stack(frames), np.stack(layers)


class RealPixTracks(NamedTuple):
  """The ground truth of a scene's tracks, in raster pixels."""
  xy: np.ndarray  # [n, t, 2] float64 (x, y) raster pixels at every frame
  occluded: np.ndarray  # [n, t] bool: outside the frame or under a higher layer
  layers: np.ndarray  # [n] int32 the layer each track is on (0 background, k the k-th cut-out)
  texels: np.ndarray  # [n, 2] float64 (u, v) the texel of its layer's photograph each track follows


def scene_tracks(scene: RealPixScene, config: RealPixConfig) -> RealPixTracks:
  """Where `config.tracks` points of the scene are at every frame, and whether they are occluded.

  A track is anchored where a candidate anchor lands (on the top layer there, hence visible at its frame): the
  first `foreground_share * tracks` anchors on cut-outs, the rest on the background (topped up from either).
  """
  frame, anchor = scene.anchors[:, 0].astype(np.int64), scene.anchors[:, 1:]
  layer = scene_lib.top_layer(scene, frame, anchor)
  on_cutout, on_background = np.flatnonzero(layer > 0), np.flatnonzero(layer == 0)
  want = min(round(config.foreground_share * config.tracks), len(on_cutout))
  chosen = np.concatenate([on_cutout[:want], on_background[:config.tracks - want]])
  chosen = np.sort(np.concatenate([chosen, on_cutout[want:want + config.tracks - len(chosen)]]))
  frame, anchor, layer = frame[chosen], anchor[chosen], layer[chosen]
  xy, texels = np.zeros((len(chosen), config.num_frames, 2)), np.zeros((len(chosen), 2))
  here = layer == 0
  texels[here], _ = scene_lib.background_texels(scene.background, frame[here], anchor[here])
  xy[here] = scene_lib.background_positions(scene.background, texels[here])
  for k, cut in enumerate(scene.cutouts, 1):
    here = layer == k
    o = scene_lib.shape_coordinates(cut, frame[here], anchor[here])  # [n_k, 2]
    xy[here] = np.einsum('tij,nj->nti', cut.placements[:, :, :2], o) + cut.placements[:, :, 2]
    texels[here] = o @ cut.texture[:, :2].T + cut.texture[:, 2]
  frames = np.broadcast_to(np.arange(config.num_frames), xy.shape[:2])
  in_frame = (xy[..., 0] >= 0) & (xy[..., 0] < config.width) & (xy[..., 1] >= 0) & (xy[..., 1] < config.height)
  occluded = ~in_frame | (scene_lib.top_layer(scene, frames, xy) > layer[:, None])
  return RealPixTracks(xy, occluded, layer, texels)


def generate_clip(seed: int, config: RealPixConfig | None = None) -> RealPixClip:
  """Clip `seed` (a pure function of (seed, config); evaluation uses `EVAL_SEEDS` only)."""
  config = config or RealPixConfig()
  scene = sample_scene(seed, config)
  frames, layers = render_scene(scene, config)
  tracks = scene_tracks(scene, config)
  video = np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8)
  points = (tracks.xy / np.array([config.width, config.height])).astype(np.float32)
  return RealPixClip(video, points, tracks.occluded, tracks.layers, layers)


# ---------------------------------------------------------------------------------------------------------------
# The evaluation set.


@functools.lru_cache(maxsize=1)  # one set per process: every evaluation, predictor and query mode reuses it
def _evaluation_set(num_videos: int, config: RealPixConfig) -> tuple[tuple[np.ndarray, ...], ...]:
  clips = []
  for seed in EVAL_SEEDS[:num_videos]:
    clip = generate_clip(seed, config)
    arrays = (clip.video, clip.points, clip.occluded)
    for a in arrays:
      a.flags.writeable = False
    clips.append(arrays)
  return tuple(clips)


def _check_num_videos(num_videos) -> int:
  if not isinstance(num_videos, (int, np.integer)) or isinstance(num_videos, bool) \
      or not 1 <= num_videos <= len(EVAL_SEEDS):
    raise ValueError(f'num_videos must be an integer in [1, {len(EVAL_SEEDS)}], got {num_videos!r}')
  return int(num_videos)


def evaluation_examples(num_videos: int, query_mode: str,
                        config: RealPixConfig | None = None) -> Iterator[tapvid.TapVidExample]:
  """Clips `EVAL_SEEDS[:num_videos]` as TAP-Vid examples (named realpix_0000, ...) with 'first' or 'strided'
  queries, at the config's own size. Rendered once per process and kept in memory (the most recent set; 30
  clips of 24 x 256² take 141 MB), so repeated evaluations, predictors and query modes reuse them."""
  num_videos = _check_num_videos(num_videos)
  if query_mode not in tapvid.QUERY_MODES:
    raise ValueError(f'query_mode must be one of {tapvid.QUERY_MODES}, got {query_mode!r}')
  config = config or RealPixConfig()

  def generate():
    for seed, (video, points, occluded) in zip(EVAL_SEEDS, _evaluation_set(num_videos, config)):
      yield tapvid.make_example(video, points, occluded, f'realpix_{seed:04d}', query_mode, resolution=None,
                                source=f'realpix clip {seed}')
  return generate()


def write_npz(directory: str | os.PathLike, num_videos: int, config: RealPixConfig | None = None) -> list[str]:
  """Writes clips `EVAL_SEEDS[:num_videos]` as TAP-Vid .npz files `<directory>/realpix_<seed>.npz`, readable by
  `tapvid.read_npz_dataset` (the 'npz' reader); returns their paths."""
  num_videos = _check_num_videos(num_videos)
  os.makedirs(directory, exist_ok=True)
  paths = []
  for seed, arrays in zip(EVAL_SEEDS, _evaluation_set(num_videos, config or RealPixConfig())):
    paths.append(os.path.join(os.fspath(directory), f'realpix_{seed:04d}.npz'))
    tapvid.write_npz_example(paths[-1], *arrays)
  return paths
