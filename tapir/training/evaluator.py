"""Evaluation during training: the objective's predictor on `config.eval`'s dataset, every N steps.

`make_evaluator(config, task)` scores the parameters on `config.eval`'s dataset
(`tapir.data.streams.evaluation_examples`: the held-out synthetic set, rendered once per process, or a TAP-Vid
reader) in each of `config.eval.query_modes`, with the zero-motion baseline on the same videos, and paints the
first video's tracks for TensorBoard. The task's tracker is built once per run (one compilation per shape).
"""

from typing import Any, Callable

from tapir.data import streams
from tapir.evaluation import loop as evaluation
from tapir.tracking import paint

BASELINE_KEYS = ('average_jaccard', 'occlusion_accuracy', 'average_pts_within_thresh')


def make_evaluator(config, task) -> Callable[[Any, Any, int], dict[str, Any]]:
  """`(params, state, step) -> mean metrics` on `config.eval`'s dataset, plus 'tracks_image'.

  With one query mode the metric keys are the plain TAP-Vid names ('average_jaccard', ...); with several they
  are '<mode>/<name>'. 'baseline_*' keys give the zero-motion baseline's AJ, occlusion accuracy and
  <delta^x_avg> on the same videos (computed once). 'tracks_image' (uint8 [h, w, 3]) paints the first video's
  predicted and ground-truth tracks side by side (`tapir.tracking.paint.track_strip`).
  """
  modes = tuple(config.eval.query_modes)
  baseline = {}

  def evaluate(params, state, step):
    del step
    predict = task.predictor(params, state)
    out: dict[str, Any] = {}
    for mode in modes:
      prefix = '' if len(modes) == 1 else f'{mode}/'
      first = []  # (example, tracks, occluded) of the first video

      def remember(examples):
        for example in examples:
          if not first:
            first.append(example)
          yield example

      def predict_and_remember(video, query_points):
        tracks, occluded = predict(video, query_points)
        if len(first) == 1:
          first.extend([tracks, occluded])
        return tracks, occluded

      result = evaluation.evaluate(predict_and_remember, remember(streams.evaluation_examples(config, mode)), mode,
                                   progress=False)
      out.update({prefix + k: float(v) for k, v in result.mean.items()})
      if prefix + 'baseline_average_jaccard' not in baseline:  # the zero-motion baseline on the same videos, once
        scored = evaluation.evaluate(evaluation.zero_motion_predictor, streams.evaluation_examples(config, mode),
                                     mode, progress=False)
        baseline.update({f'{prefix}baseline_{k}': float(scored.mean[k]) for k in BASELINE_KEYS})
      if mode == modes[0] and len(first) == 3:
        example, tracks, occluded = first
        out['tracks_image'] = paint.track_strip(example.video, tracks, ~occluded, example.target_points,
                                                ~example.occluded)
    out.update(baseline)
    return out

  return evaluate
