"""Model-agnostic TAP-Vid evaluation loop: run a predictor over `TapVidExample`s and score it.

    examples = tapvid.open_dataset('davis', 'tapvid_davis.pkl', 'first')
    result = evaluation.evaluate(zero_motion_predictor, examples, 'first')
    print(result.table('davis_first'))        # markdown; fmt='latex' gives the published row
    result.to_csv('davis_first.csv')          # one row per video and a mean row

A predictor maps `(video uint8 [t, h, w, 3], query_points [q, 3] (t, y, x))` to `(tracks [q, t, 2] (x, y),
occluded [q, t] bool)`, all in raster pixels of the video it was given (`tapir.conventions`). Ground truth and
predictions are rescaled to `metric_resolution` by pure multiplication before scoring (spec 4.1, 4.4), so
full-resolution inference (readers with `resolution=None`) is scored at 256x256 like everything else.
"""

import csv
import dataclasses
import json
import math
import os
from typing import Callable, Iterable, Sequence

from absl import logging
import numpy as np
import tqdm

from tapir import metrics as metrics_lib
from tapir.data import query_sampling
from tapir.data import tapvid

PredictFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def zero_motion_predictor(
    video: np.ndarray,  # [t, h, w, 3]
    query_points: np.ndarray,  # [q, 3] (t, y, x)
) -> tuple[np.ndarray, np.ndarray]:  # tracks [q, t, 2] (x, y), occluded [q, t] bool
  """The reference baseline: every point stays at its query position in all frames and is always visible."""
  num_frames = video.shape[0]
  xy = np.asarray(query_points, np.float32)[:, None, 2:0:-1]  # [q, 1, 2] (x, y)
  tracks = np.repeat(xy, num_frames, axis=1)
  return tracks, np.zeros(tracks.shape[:2], bool)


def tracker_predictor(tracker, resize_to) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """`predict(video, query_points) -> (tracks, occluded)` of any tracker with `predict(video, queries, resize_to)`
  returning `.tracks` and `.visible` (`tapir.Tracker`, `tapir.TAPNetTracker`), run at `resize_to`."""

  def predict(video, query_points):
    out = tracker.predict(video, query_points, resize_to=resize_to)
    return out.tracks, ~out.visible

  return predict


@dataclasses.dataclass
class EvaluationResult:
  """Per-video TAP-Vid metrics of one dataset and query mode, and their mean over videos."""
  query_mode: str
  metric_resolution: tuple[int, int]  # (height, width)
  video_names: list[str]  # [v]
  per_video: dict[str, np.ndarray]  # metric key -> [v] float64
  mean: dict[str, float]  # metric key -> plain mean over the v videos
  skipped: list[str] = dataclasses.field(default_factory=list)  # videos without any query (not scored)

  def table(self, name: str = 'results', fmt: str = 'markdown') -> str:
    """The published table for this result (`tapir.metrics.format_results_table`); in markdown followed by
    `skipped_note` when videos were not scored."""
    table = metrics_lib.format_results_table({name: self.mean}, fmt)
    note = self.skipped_note(name)
    return table + '\n\n' + note if note and fmt == 'markdown' else table

  def skipped_note(self, name: str = 'results') -> str:
    """'' if every video was scored, else a line naming the videos left out and why."""
    if not self.skipped:
      return ''
    return (f'{name}: {len(self.skipped)} of {len(self.skipped) + len(self.video_names)} videos not scored, '
            f'no visible point to query: {", ".join(self.skipped)}')

  def to_json(self, path: str | os.PathLike) -> None:
    """Writes the means and per-video values; NaN becomes null so the file stays standard JSON."""
    clean = lambda v: None if math.isnan(v) else float(v)
    record = {
        'query_mode': self.query_mode, 'metric_resolution': list(self.metric_resolution),
        'num_videos': len(self.video_names), 'skipped': self.skipped,
        'mean': {k: clean(v) for k, v in self.mean.items()},
        'per_video': [{'video_name': name, **{k: clean(v[i]) for k, v in self.per_video.items()}}
                      for i, name in enumerate(self.video_names)],
    }
    with open(path, 'w') as f:
      json.dump(record, f, indent=2)

  def to_csv(self, path: str | os.PathLike) -> None:
    """Writes one row per video and a final `mean` row; columns `video_name` then `tapir.metrics.METRIC_KEYS`."""
    keys = [k for k in metrics_lib.METRIC_KEYS if k in self.mean]
    with open(path, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['video_name'] + keys)
      for i, name in enumerate(self.video_names):
        writer.writerow([name] + [repr(float(self.per_video[k][i])) for k in keys])
      writer.writerow(['mean'] + [repr(self.mean[k]) for k in keys])


def _check_prediction(tracks, occluded, example: tapvid.TapVidExample) -> tuple[np.ndarray, np.ndarray]:
  tracks, occluded = np.asarray(tracks), np.asarray(occluded)
  q, t = example.occluded.shape
  if tracks.shape != (q, t, 2) or occluded.shape != (q, t):
    raise ValueError(f'predict_fn on {example.video_name!r} returned tracks {tracks.shape} and occluded '
                     f'{occluded.shape}; expected [q, t, 2] = {(q, t, 2)} and [q, t] = {(q, t)}')
  if occluded.dtype != bool:
    raise ValueError(f'predict_fn must return a boolean occluded array, got {occluded.dtype} '
                     '(threshold logits first, e.g. with tapir.conventions.visibility_from_logits)')
  return tracks, occluded


def score_example(
    example: tapvid.TapVidExample,
    pred_tracks: np.ndarray,  # [q, t, 2] (x, y) pixels of example.video
    pred_occluded: np.ndarray,  # [q, t] bool
    query_mode: str,
    metric_resolution: Sequence[int] = (256, 256),
) -> dict[str, float]:
  """TAP-Vid metrics of one video after rescaling everything to `metric_resolution`."""
  pred_tracks, pred_occluded = _check_prediction(pred_tracks, pred_occluded, example)
  video_hw = example.video.shape[1:3]
  query_points, gt_tracks = example.query_points, example.target_points
  if tuple(video_hw) != tuple(metric_resolution):
    query_points, gt_tracks = query_sampling.rescale_to_metric_resolution(
        query_points, gt_tracks, video_hw, metric_resolution)
    _, pred_tracks = query_sampling.rescale_to_metric_resolution(None, pred_tracks, video_hw, metric_resolution)
  scores = metrics_lib.compute_tapvid_metrics(
      query_points[None], example.occluded[None], gt_tracks[None], pred_occluded[None], pred_tracks[None],
      query_mode)
  return {k: float(v[0]) for k, v in scores.items()}


def evaluate(
    predict_fn: PredictFn,
    examples: Iterable[tapvid.TapVidExample],
    query_mode: str,
    metric_resolution: Sequence[int] = (256, 256),
    progress: bool = True,
) -> EvaluationResult:
  """Runs `predict_fn` on every example and scores it (see the module docstring for its contract).

  Args:
    predict_fn: (video uint8 [t, h, w, 3], query_points [q, 3] (t, y, x)) -> (tracks [q, t, 2] (x, y),
      occluded [q, t] bool), coordinates in pixels of the video it receives.
    examples: e.g. `tapvid.open_dataset(...)`, read with the same `query_mode`.
    query_mode: 'first' or 'strided': which frames are scored (`tapir.metrics`).
    metric_resolution: (height, width) at which the metrics are computed; 256x256 for published numbers.
    progress: show a tqdm progress bar.

  Returns:
    An `EvaluationResult`. Videos without any query are skipped with a warning (they have nothing to score).
  """
  if query_mode not in metrics_lib.QUERY_MODES:
    raise ValueError(f'query_mode must be one of {metrics_lib.QUERY_MODES}, got {query_mode!r}')
  metric_resolution = tuple(int(s) for s in metric_resolution)
  accumulator = metrics_lib.MetricsAccumulator()
  names, skipped = [], []
  for example in tqdm.tqdm(examples, desc=f'TAP-Vid ({query_mode})', unit='video', disable=not progress):
    if example.query_points.shape[0] == 0:
      logging.warning('video %s has no visible point to query: skipped', example.video_name)
      skipped.append(example.video_name)
      continue
    tracks, occluded = predict_fn(example.video, example.query_points)
    accumulator.add(score_example(example, tracks, occluded, query_mode, metric_resolution))
    names.append(example.video_name)
  if not names:
    raise ValueError('no video to evaluate: the dataset is empty or no video has a visible point')
  return EvaluationResult(query_mode, metric_resolution, names, accumulator.per_video(), accumulator.mean(),
                          skipped)


@dataclasses.dataclass
class PckResult:
  """JHMDB keypoint propagation: PCK@0.1..0.5 in percent over the scored videos (`tapir.metrics.PckAccumulator`)."""
  video_names: list[str]
  mean: dict[str, float]  # 'pck@0.1' ... 'pck@0.5' -> %
  per_joint: np.ndarray  # [5, 15] %

  def table(self, name: str = 'jhmdb', fmt: str = 'markdown') -> str:
    return metrics_lib.format_pck_table({name: self.mean}, fmt)

  def to_json(self, path: str | os.PathLike) -> None:
    with open(path, 'w') as f:
      json.dump({'num_videos': len(self.video_names), 'video_names': self.video_names, 'mean': self.mean,
                 'per_joint': self.per_joint.tolist()}, f, indent=2)


def evaluate_jhmdb(predict_fn: PredictFn, videos: Iterable, progress: bool = True) -> PckResult:
  """Runs `predict_fn` (as `evaluate`'s) on `tapir.data.jhmdb.JhmdbVideo`s and scores PCK at the original size.

  Predictions for the valid joints are rescaled from the video's pixels to the original frames by pure
  multiplication (spec 4.7); predicted occlusion is ignored. Videos without a valid joint count for nothing.
  """
  accumulator = None
  names = []
  for v in tqdm.tqdm(videos, desc='JHMDB', unit='video', disable=not progress):
    accumulator = accumulator or metrics_lib.PckAccumulator(v.joints.shape[0])
    pred = np.zeros_like(v.joints)
    if v.query_points.shape[0]:
      tracks, _ = predict_fn(v.video, v.query_points)
      tracks = np.asarray(tracks, np.float64)
      if tracks.shape != (v.query_points.shape[0], v.video.shape[0], 2):
        raise ValueError(f'predict_fn on {v.video_name!r} returned tracks {tracks.shape}; expected '
                         f'{(v.query_points.shape[0], v.video.shape[0], 2)}')
      (h, w), (vh, vw) = v.image_hw, v.video.shape[1:3]
      pred[v.valid] = tracks * np.array([w / vw, h / vh])
    accumulator.add(pred, v.joints, v.valid)
    names.append(v.video_name)
  if not names:
    raise ValueError('no JHMDB video to evaluate')
  return PckResult(names, accumulator.mean(), accumulator.per_joint())

