"""TAP-Vid metrics: occlusion accuracy, position accuracy `<δ` and Jaccard, per video or per track.

All coordinates follow `tapir.conventions` (query_points (t, y, x), tracks (x, y), raster pixels) and must already be
in the metric resolution (256x256 for the published numbers; see `tapir.data.query_sampling.rescale_to_metric_resolution`).

Definitions (TAP-Vid paper; training_and_data spec section 4.4). For each query, its query frame is
`q = round(t)` (half to even). Frames are evaluated where E holds: `f > q` in query mode 'first' (earlier frames
and the query frame itself are excluded), `f != q` in mode 'strided'. With `vis = not gt_occluded`,
`pvis = not pred_occluded` and, for each threshold δ in {1, 2, 4, 8, 16} px, `within = |pred - gt|^2 < δ^2`
(strict; predicted occlusion ignored):

  occlusion_accuracy = Σ_E [pred_occluded == gt_occluded] / Σ_E 1
  pts_within_δ       = Σ_E (within ∧ vis) / Σ_E vis
  jaccard_δ          = TP / (Σ_E vis + FP),  TP = Σ_E (within ∧ vis ∧ pvis),  FP = Σ_E (pvis ∧ (¬vis ∨ ¬within))
  average_pts_within_thresh, average_jaccard = plain means over the five thresholds.

Sums run over queries and frames (one value per video, shape [b]) or over frames only (`get_trackwise_metrics`,
shape [b, n]). An empty denominator gives NaN. Dataset numbers are plain means of the per-video values over videos
(`average_metrics`, `MetricsAccumulator`); papers report them x100 (`format_results_table`).
"""

from typing import Iterable, Mapping

import numpy as np

from tapir.conventions import QUERY_MODES  # pylint: disable=unused-import  (metrics.QUERY_MODES, public)

THRESHOLDS = (1, 2, 4, 8, 16)  # pixels at the metric resolution; the TAP-Vid δ^0..δ^4
METRIC_KEYS = (
    ('occlusion_accuracy',)
    + tuple(f'pts_within_{d}' for d in THRESHOLDS)
    + tuple(f'jaccard_{d}' for d in THRESHOLDS)
    + ('average_jaccard', 'average_pts_within_thresh'))
# Column order of the published tables (spec 4.5).
TABLE_KEYS = (('average_jaccard', 'average_pts_within_thresh', 'occlusion_accuracy')
              + tuple(f'jaccard_{d}' for d in THRESHOLDS) + tuple(f'pts_within_{d}' for d in THRESHOLDS))
LATEX_HEADERS = (('AJ', r'$<\delta^{x}_{avg}$', 'OA')
                 + tuple(rf'Jac. $\delta^{{{i}}}$' for i in range(len(THRESHOLDS)))
                 + tuple(rf'$<\delta^{{{i}}}$' for i in range(len(THRESHOLDS))))
MARKDOWN_HEADERS = (('AJ', '<δ avg', 'OA') + tuple(f'Jac. δ={d}' for d in THRESHOLDS)
                    + tuple(f'<δ={d}' for d in THRESHOLDS))


def _as_bool(name: str, x: np.ndarray) -> np.ndarray:
  """Occlusion flags must be boolean; 0/1 integers or floats are accepted, anything else (logits) is an error."""
  x = np.asarray(x)
  if x.dtype == bool:
    return x
  if np.issubdtype(x.dtype, np.number) and np.all((x == 0) | (x == 1)):
    return x.astype(bool)
  raise ValueError(f'{name} must be boolean (True = occluded), got dtype {x.dtype} with values other than 0/1; '
                   'threshold occlusion logits or probabilities first')


def compute_tapvid_metrics(
    query_points: np.ndarray,  # [b, n, 3] (t, y, x); only t is used
    gt_occluded: np.ndarray,  # [b, n, t] bool
    gt_tracks: np.ndarray,  # [b, n, t, 2] (x, y) pixels at the metric resolution
    pred_occluded: np.ndarray,  # [b, n, t] bool
    pred_tracks: np.ndarray,  # [b, n, t, 2] (x, y) pixels at the metric resolution
    query_mode: str,
    get_trackwise_metrics: bool = False,
) -> dict[str, np.ndarray]:  # each [b], or [b, n] with get_trackwise_metrics
  """Computes the TAP-Vid metrics defined in the module docstring (float64 arrays, keys `METRIC_KEYS`).

  Args:
    query_points: queries (t, y, x); the query frame is t rounded half to even.
    gt_occluded: ground-truth occlusion, True = occluded.
    gt_tracks: ground-truth positions (x, y); values where `gt_occluded` is True are ignored.
    pred_occluded: predicted occlusion, True = occluded.
    pred_tracks: predicted positions (x, y).
    query_mode: 'first' (evaluate frames strictly after the query frame) or 'strided' (all frames but it).
    get_trackwise_metrics: if True, one value per track ([b, n]) instead of per video ([b]).

  Returns:
    A dict from metric name to values; NaN where a denominator is empty (e.g. no visible evaluated point).
  """
  if query_mode not in QUERY_MODES:
    raise ValueError(f'query_mode must be one of {QUERY_MODES}, got {query_mode!r}')
  query_points = np.asarray(query_points)
  gt_tracks = np.asarray(gt_tracks)
  pred_tracks = np.asarray(pred_tracks)
  gt_occluded = _as_bool('gt_occluded', gt_occluded)
  pred_occluded = _as_bool('pred_occluded', pred_occluded)
  if gt_occluded.ndim != 3:
    raise ValueError(f'gt_occluded must be [b, n, t], got shape {gt_occluded.shape}')
  b, n, t = gt_occluded.shape
  expected = {'query_points': (query_points, (b, n, 3)), 'gt_tracks': (gt_tracks, (b, n, t, 2)),
              'pred_occluded': (pred_occluded, (b, n, t)), 'pred_tracks': (pred_tracks, (b, n, t, 2))}
  for name, (x, shape) in expected.items():
    if x.shape != shape:
      raise ValueError(f'{name} has shape {x.shape}, expected {shape} (b, n, t = {b}, {n}, {t} from gt_occluded)')

  query_frame = np.round(query_points[..., 0]).astype(np.int64)  # np.round rounds half to even
  frames = np.arange(t)
  if query_mode == 'first':
    evaluated = frames[None, None, :] > query_frame[..., None]  # [b, n, t]
  else:
    evaluated = frames[None, None, :] != query_frame[..., None]
  axes = (2,) if get_trackwise_metrics else (1, 2)

  def count(mask):
    return np.sum(mask & evaluated, axis=axes)

  def ratio(num, den):
    with np.errstate(invalid='ignore', divide='ignore'):
      return num / den.astype(np.float64)

  visible = ~gt_occluded
  pred_visible = ~pred_occluded
  sq_dist = np.sum(np.square(pred_tracks.astype(np.float64) - gt_tracks.astype(np.float64)), axis=-1)
  num_visible = count(visible)
  metrics = {'occlusion_accuracy': ratio(count(pred_occluded == gt_occluded), count(np.ones_like(visible)))}
  for d in THRESHOLDS:
    within = sq_dist < d * d
    metrics[f'pts_within_{d}'] = ratio(count(within & visible), num_visible)
    true_pos = count(within & visible & pred_visible)
    false_pos = count(pred_visible & ~(visible & within))
    metrics[f'jaccard_{d}'] = ratio(true_pos, num_visible + false_pos)
  metrics['average_jaccard'] = np.mean([metrics[f'jaccard_{d}'] for d in THRESHOLDS], axis=0)
  metrics['average_pts_within_thresh'] = np.mean([metrics[f'pts_within_{d}'] for d in THRESHOLDS], axis=0)
  return metrics


class MetricsAccumulator:
  """Collects per-video metrics and averages them over videos (plain mean, as the TAP-Vid papers report).

      acc = MetricsAccumulator()
      for ...: acc.add(compute_tapvid_metrics(...))   # each value [b]
      acc.mean()                                       # {key: float}

  A NaN value for a video propagates to the mean of that key, as in the reference evaluation.
  """

  def __init__(self):
    self._values: dict[str, list[np.ndarray]] = {}

  def add(self, metrics: Mapping[str, np.ndarray]) -> None:
    """Adds per-video metrics: each value a scalar or [b] (b videos)."""
    if self._values and set(metrics) != set(self._values):
      raise ValueError(f'metric keys changed: had {sorted(self._values)}, got {sorted(metrics)}')
    sizes = {np.atleast_1d(v).shape for v in metrics.values()}
    if len(sizes) > 1 or any(len(s) != 1 for s in sizes):
      raise ValueError(f'expected per-video metrics (scalars or [b] arrays, same b), got shapes {sizes}')
    for key, value in metrics.items():
      self._values.setdefault(key, []).append(np.atleast_1d(np.asarray(value, np.float64)))

  @property
  def num_videos(self) -> int:
    return sum(v.shape[0] for v in next(iter(self._values.values()), []))

  def per_video(self) -> dict[str, np.ndarray]:  # each [num_videos]
    return {k: np.concatenate(v) for k, v in self._values.items()}

  def mean(self) -> dict[str, float]:
    if not self._values:
      raise ValueError('no metrics added')
    return {k: float(np.mean(v)) for k, v in self.per_video().items()}


def average_metrics(per_video: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
  """Plain mean over videos of per-video metrics (each value a scalar or [b])."""
  acc = MetricsAccumulator()
  for metrics in per_video:
    acc.add(metrics)
  return acc.mean()


# ---------------------------------------------------------------------------------------------------------------
# PCK (JHMDB keypoint propagation; spec 4.7).

PCK_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5)
PCK_KEYS = tuple(f'pck@{a}' for a in PCK_ALPHAS)


class PckAccumulator:
  """PCK@alpha pooled over all frames of all videos added, per joint, then averaged over the joints (in %).

  Per frame, the normaliser is `0.6 * sqrt(w_b^2 + h_b^2)` with (w_b, h_b) the extent of that frame's evaluated
  (valid) ground-truth joints; a joint counts as correct when `distance / normaliser <= alpha` (non-strict).
  Per joint: `100 * correct / max(evaluated, 1e-12)`; the reported value is the mean over all joints, a joint
  never evaluated counting as 0. Coordinates are pixels of the original frames.
  """

  def __init__(self, num_joints: int = 15):
    self.num_joints = num_joints
    self._correct = np.zeros((len(PCK_ALPHAS), num_joints))
    self._total = np.zeros(num_joints)
    self.num_videos = 0

  def add(self, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> None:
    """pred, gt [j, t, 2] (x, y) original pixels; valid [j] bool (joints evaluated in every frame)."""
    pred, gt, valid = np.asarray(pred, np.float64), np.asarray(gt, np.float64), np.asarray(valid, bool)
    if gt.ndim != 3 or gt.shape[0] != self.num_joints or gt.shape[-1] != 2 or pred.shape != gt.shape:
      raise ValueError(f'pred and gt must both be [{self.num_joints}, t, 2]; got {pred.shape} and {gt.shape}')
    if valid.shape != (self.num_joints,):
      raise ValueError(f'valid must be [{self.num_joints}] bool; got {valid.shape}')
    self.num_videos += 1
    if not valid.any():
      return
    joints = gt[valid]  # [v, t, 2]
    extent = joints.max(axis=0) - joints.min(axis=0)  # [t, 2] (w_b, h_b)
    scale = 0.6 * np.sqrt(np.sum(np.square(extent), axis=-1))  # [t]
    with np.errstate(invalid='ignore', divide='ignore'):
      ratio = np.linalg.norm(pred[valid] - joints, axis=-1) / scale  # [v, t]
    for i, alpha in enumerate(PCK_ALPHAS):
      self._correct[i, valid] += np.sum(ratio <= alpha, axis=1)
    self._total[valid] += gt.shape[1]

  def per_joint(self) -> np.ndarray:  # [len(PCK_ALPHAS), num_joints] in %
    return 100 * self._correct / np.maximum(self._total, 1e-12)

  def mean(self) -> dict[str, float]:
    """{'pck@0.1': ..., ..., 'pck@0.5': ...}: means over the joints, in percent."""
    return {k: float(v) for k, v in zip(PCK_KEYS, self.per_joint().mean(axis=1))}


def format_pck_table(results: Mapping[str, Mapping[str, float]], fmt: str = 'markdown') -> str:
  """PCK rows (values already in %, `PckAccumulator.mean`): markdown with 1 decimal, or LaTeX with '.3'.

  (The reference's LaTeX log multiplies these percentages by 100 once more; this does not.)
  """
  if fmt not in ('markdown', 'latex'):
    raise ValueError(f"fmt must be 'markdown' or 'latex', got {fmt!r}")
  for name, means in results.items():
    missing = [k for k in PCK_KEYS if k not in means]
    if missing:
      raise ValueError(f'results[{name!r}] lacks PCK keys {missing}')
  if fmt == 'latex':
    lines = [' & '.join(f'PCK@{a}' for a in PCK_ALPHAS)]
    return '\n'.join(lines + [' & '.join(format(m[k], '.3') for k in PCK_KEYS) for m in results.values()])
  lines = ['| Dataset | ' + ' | '.join(f'PCK@{a}' for a in PCK_ALPHAS) + ' |', '|---' + '|---:' * len(PCK_KEYS) + '|']
  lines += ['| ' + ' | '.join([name] + [f'{m[k]:.1f}' for k in PCK_KEYS]) + ' |' for name, m in results.items()]
  return '\n'.join(lines)


def _latex_value(value: float) -> str:
  # Python's '.3' general format, as the reference logs it: 58.46 -> '58.5', 5.0 -> '5.0', 100.0 -> '1e+02'.
  return format(value * 100, '.3')


def format_results_table(results: Mapping[str, Mapping[str, float]], fmt: str = 'markdown') -> str:
  """Formats dataset means (e.g. from `MetricsAccumulator.mean`) as the published table, values x100.

  Columns: AJ, <δ avg, OA, Jaccard at δ = 1..16, <δ at δ = 1..16 (`TABLE_KEYS`).

  Args:
    results: row name (dataset / query mode) -> {metric key: mean over videos}.
    fmt: 'markdown' (one row per name, 1 decimal) or 'latex': exactly the reference log (spec 4.5), i.e. the
      header line `AJ & $<\\delta^{x}_{avg}$ & OA & Jac. $\\delta^{0}$ & ...` followed by one line of values per
      row, each value formatted with Python's '.3' and joined by ' & ' (no row names, no trailing `\\\\`).

  Returns:
    The table as a string, lines separated by newlines.
  """
  if fmt not in ('markdown', 'latex'):
    raise ValueError(f"fmt must be 'markdown' or 'latex', got {fmt!r}")
  for name, means in results.items():
    missing = [k for k in TABLE_KEYS if k not in means]
    if missing:
      raise ValueError(f'results[{name!r}] lacks metric keys {missing}')
  if fmt == 'latex':
    lines = [' & '.join(LATEX_HEADERS)]
    lines += [' & '.join(_latex_value(means[k]) for k in TABLE_KEYS) for means in results.values()]
    return '\n'.join(lines)
  header = ('Dataset',) + MARKDOWN_HEADERS
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] + ['---:'] * len(TABLE_KEYS)) + '|']
  for name, means in results.items():
    lines.append('| ' + ' | '.join([name] + [f'{means[k] * 100:.1f}' for k in TABLE_KEYS]) + ' |')
  return '\n'.join(lines)
