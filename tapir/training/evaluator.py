"""Evaluation during training: the model's predictor, the periodic evaluator and the summary writer.

`make_evaluator(config)` scores the parameters on `config.eval`'s dataset (`tapir.data.streams.evaluation_examples`:
the held-out synthetic set, rendered once per process, or a TAP-Vid reader) and the zero-motion baseline on the same
videos, and paints the first video's tracks for TensorBoard.
"""

from typing import Any, Callable, Mapping

from absl import logging

from tapir.data import streams
from tapir.evaluation import loop as evaluation
from tapir.tracking import paint
from tapir.tracking import tapnet as tapnet_tracker
from tapir.tracking import tracker as tracker_lib
from tapir.training import state as training


def model_predictor(params, state, model_kwargs: Mapping[str, Any], chunk_size: int = 64, kind: str = 'tapir',
                    tapnet_resolution: tuple[int, int] = (256, 256)):
  """`predict(video uint8, queries) -> (tracks, occluded)` for `tapir.evaluation.loop.evaluate`.

  `kind` is `config.model_kind`; TAP-Net has no built-in resolution and runs at `tapnet_resolution`.
  """
  if kind == 'tapnet':  # config.model_kind (`tapir.training.state.model_kind`)
    tracker = tapnet_tracker.TAPNetTracker(params, state, model_kwargs, chunk_size, resolution=tapnet_resolution)
  else:
    tracker = tracker_lib.Tracker(params, state, model_kwargs, query_chunk_size=chunk_size)
  return evaluation.tracker_predictor(tracker, tracker.resolution)


def make_evaluator(config) -> Callable[[Any, Any, int], dict[str, Any]]:
  """`(params, state, step) -> mean metrics` on `config.eval`'s dataset, plus 'tracks_image'.

  Also reports the zero-motion baseline's AJ, occlusion accuracy and <delta^x_avg> on the same videos
  ('baseline_*'; computed once).

  'tracks_image' (uint8 [h, w, 3]) paints the first video's predicted and ground-truth tracks side by side
  (`tapir.paint.track_strip`); the trainer writes it to TensorBoard and the work directory.
  """
  baseline = {}

  def evaluate(params, state, step):
    del step
    predict = model_predictor(params, state, training.model_kwargs(config), config.eval.chunk_size,
                              config.get('model_kind', 'tapir'), tuple(config.data.train_size))
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

    result = evaluation.evaluate(predict_and_remember, remember(streams.evaluation_examples(config)),
                                 config.eval.query_mode, progress=False)
    out: dict[str, Any] = {k: float(v) for k, v in result.mean.items()}
    if not baseline:  # the zero-motion baseline on the same videos, once
      scored = evaluation.evaluate(evaluation.zero_motion_predictor, streams.evaluation_examples(config),
                                   config.eval.query_mode, progress=False)
      baseline.update({'baseline_' + k: float(scored.mean[k]) for k in ('average_jaccard', 'occlusion_accuracy',
                                                                          'average_pts_within_thresh')})
    out.update(baseline)
    if len(first) == 3:
      example, tracks, occluded = first
      out['tracks_image'] = paint.track_strip(example.video, tracks, ~occluded, example.target_points,
                                            ~example.occluded)
    return out

  return evaluate


def summary_writer(directory: str):
  """A TensorBoard event-file writer (tensorboardX), or None if it is not installed."""
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('tensorboardX is not installed: no TensorBoard summaries (pip install tensorboardX)')
    return None
  return tensorboardX.SummaryWriter(directory)
